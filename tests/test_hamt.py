"""Sharded directories: a HAMT that depends on its entries alone and keeps every node small."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import pytest
from hamt_helpers import old_order_copy
from hypothesis import given, settings
from hypothesis import strategies as st

from ipldmount.blocks import Blockstore, MemoryBlockstore
from ipldmount.errors import FormatError
from ipldmount.format import hamt
from ipldmount.ipld import cid as cids
from ipldmount.ipld import codec

BLOCK_LIMIT = 1 << 20


def link_for(name: str) -> codec.Link:
    return codec.Link(cids.block_cid(cids.RAW, name.encode()))


def chunk_entries(count: int) -> dict[str, Any]:
    """zarr-style chunk keys with links, as a sharded directory holds them."""
    side = max(1, int(count**0.5) + 1)
    names = [f"{i}.{j}" for i in range(side) for j in range(side)][:count]
    return {name: link_for(name) for name in names}


def lookup(store: Blockstore, root: dict[str, Any], name: str) -> Any:
    """Find *name* the way any HashMap reader would: follow the digest bytes down the tree."""
    digest = hashlib.sha256(name.encode()).digest()
    node = root["hamt"]
    for depth in range(32):
        bitmap, data = node
        slots = hamt.slots_of(bitmap)  # the spec's order: slot i is bit 2**(i % 8) of byte i // 8
        slot = digest[depth]
        if slot not in slots:
            raise KeyError(name)
        element = data[slots.index(slot)]
        if isinstance(element, codec.Link):
            node = codec.decode(store.get(element.cid))
            continue
        for key, value in element:
            if key == name.encode():
                return value
        raise KeyError(name)
    raise AssertionError("ran out of digest bytes")


def check_structure(store: Blockstore, node: list[Any], depth: int = 0, prefix: bytes = b"") -> int:
    """Check the placement invariants of a node and its children; return how many entries they hold."""
    bitmap, data = node
    slots = hamt.slots_of(bitmap)
    assert len(slots) == len(data)
    count = 0
    for slot, element in zip(slots, data, strict=True):
        if isinstance(element, codec.Link):
            block = store.get(element.cid)
            assert len(block) <= BLOCK_LIMIT
            child = codec.decode(block)
            assert cids.block_cid(cids.DAG_CBOR, codec.encode(child)) == element.cid
            held = check_structure(store, child, depth + 1, prefix + bytes([slot]))
            assert held > hamt.BUCKET_SIZE  # a child only where a bucket would overflow
            count += held
        else:
            assert 1 <= len(element) <= hamt.BUCKET_SIZE
            keys = [key for key, _ in element]
            assert keys == sorted(keys)
            for key in keys:
                digest = hashlib.sha256(key).digest()
                assert digest[:depth] == prefix and digest[depth] == slot
            count += len(element)
    return count


@pytest.mark.parametrize("count", [0, 1, 3, 4, 1000, 50_000])
def test_build_and_iterate(store: Blockstore, count: int) -> None:
    entries = chunk_entries(count)
    with store.batch():
        root = hamt.build(store, entries)
    assert hamt.is_root(root)
    assert root["hashAlg"] == cids.SHA2_256 and root["bucketSize"] == 3
    assert len(codec.encode(root)) <= BLOCK_LIMIT
    assert dict(hamt.iter_entries(store, root)) == entries
    assert check_structure(store, root["hamt"]) == count
    for name in list(entries)[:: max(1, count // 200)]:
        assert lookup(store, root, name) == entries[name]
    with pytest.raises(KeyError):
        lookup(store, root, "not there")
    for cid in store:
        assert store.size(cid) <= BLOCK_LIMIT
    # decoding what was stored and iterating again gives the same
    reloaded = codec.decode(codec.encode(root))
    assert hamt.is_root(reloaded)
    assert dict(hamt.iter_entries(store, reloaded)) == entries


def test_empty_hamt_shape(store: Blockstore) -> None:
    root = hamt.build(store, {})
    assert root == {"hashAlg": cids.SHA2_256, "bucketSize": 3, "hamt": [bytes(32), []]}
    assert list(store) == []


def test_small_hamt_stores_no_blocks(store: Blockstore) -> None:
    root = hamt.build(store, chunk_entries(3))
    assert list(store) == []  # however their digests fall, three entries fit in root buckets
    assert len(root["hamt"][1]) <= 3


def test_insertion_order_does_not_matter() -> None:
    entries = chunk_entries(5000)
    names = list(entries)
    first_store = MemoryBlockstore()
    expected = codec.encode(hamt.build(first_store, entries))
    rng = random.Random(5)
    for _ in range(3):
        rng.shuffle(names)
        other_store = MemoryBlockstore()
        assert codec.encode(hamt.build(other_store, {name: entries[name] for name in names})) == expected
        assert set(other_store) == set(first_store)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=20), st.integers(0, 2**32), max_size=60), st.randoms())
def test_order_independence_property(entries: dict[str, int], rng: random.Random) -> None:
    names = list(entries)
    rng.shuffle(names)
    shuffled = {name: entries[name] for name in names}
    store_a, store_b = MemoryBlockstore(), MemoryBlockstore()
    root_a, root_b = hamt.build(store_a, entries), hamt.build(store_b, shuffled)
    assert codec.encode(root_a) == codec.encode(root_b)
    assert dict(hamt.iter_entries(store_a, root_a)) == entries
    assert check_structure(store_a, root_a["hamt"]) == len(entries)


def test_colliding_prefixes_nest() -> None:
    """Names whose digests share leading bytes force deeper levels; all must still be found."""
    store = MemoryBlockstore()
    by_first_byte: dict[int, list[str]] = {}
    for i in range(20_000):
        name = f"n{i}"
        by_first_byte.setdefault(hashlib.sha256(name.encode()).digest()[0], []).append(name)
    crowded = max(by_first_byte.values(), key=len)
    entries = {name: link_for(name) for name in crowded}
    root = hamt.build(store, entries)
    assert len(root["hamt"][1]) == 1 and isinstance(root["hamt"][1][0], codec.Link)
    assert dict(hamt.iter_entries(store, root)) == entries
    assert check_structure(store, root["hamt"]) == len(entries)


def test_non_ascii_names(store: Blockstore) -> None:
    entries = {name: link_for(name) for name in ["é", "日本語", "\U0001f600", "a\u0301", "x" * 255]}
    root = hamt.build(store, entries)
    assert dict(hamt.iter_entries(store, root)) == entries
    for name in entries:
        assert lookup(store, root, name) == entries[name]


# --- telling a HAMT root from a plain directory ------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        {"hashAlg": link_for("a"), "bucketSize": link_for("b"), "hamt": link_for("c")},
        {"hashAlg": {}, "bucketSize": {}, "hamt": {}},
        {"hashAlg": {"x": link_for("x")}, "bucketSize": link_for("b"), "hamt": {}},
        {"hashAlg": 18, "bucketSize": 3},
        {"hashAlg": True, "bucketSize": 3, "hamt": [bytes(32), []]},  # FORMAT.md 3.1: never a boolean
        {"hashAlg": 18.0, "bucketSize": 3, "hamt": [bytes(32), []]},
        {"hashAlg": 18, "bucketSize": 3, "hamt": [bytes(32), []], "other": {}},
        {},
        [bytes(32), []],
    ],
    ids=repr,
)
def test_is_root_false(value: Any) -> None:
    assert not hamt.is_root(value)


def test_plain_directory_with_hamt_like_names_is_not_a_root(store: Blockstore) -> None:
    plain = {"hashAlg": link_for("1"), "bucketSize": link_for("2"), "hamt": link_for("3")}
    assert not hamt.is_root(codec.decode(codec.encode(plain)))
    sharded = hamt.build(store, plain)
    assert hamt.is_root(codec.decode(codec.encode(sharded)))
    assert dict(hamt.iter_entries(store, sharded)) == plain


# --- malformed nodes ------------------------------------------------------------------------

NAME = b"a"
SLOT = hashlib.sha256(NAME).digest()[0]
BITMAP = hamt.bitmap_of([SLOT])
GOOD_BUCKET = [[NAME, link_for("a")]]


def root_with(node: Any, hash_alg: Any = cids.SHA2_256, bucket_size: Any = 3) -> dict[str, Any]:
    return {"hashAlg": hash_alg, "bucketSize": bucket_size, "hamt": node}


def test_good_hand_made_root(store: Blockstore) -> None:
    assert dict(hamt.iter_entries(store, root_with([BITMAP, [GOOD_BUCKET]]))) == {"a": link_for("a")}


@pytest.mark.parametrize(
    "root",
    [
        root_with([BITMAP, [GOOD_BUCKET]], hash_alg=0x22),
        root_with([BITMAP, [GOOD_BUCKET]], bucket_size=4),
        root_with([BITMAP, [GOOD_BUCKET]], bucket_size="3"),
        root_with({}),
        root_with("node"),
        root_with([BITMAP]),
        root_with([BITMAP, [GOOD_BUCKET], 1]),
        root_with(["bitmap", [GOOD_BUCKET]]),
        root_with([BITMAP, GOOD_BUCKET[0]]),
        root_with([BITMAP[1:], [GOOD_BUCKET]]),
        root_with([BITMAP + b"\x00", [GOOD_BUCKET]]),
        root_with([bytes(32), [GOOD_BUCKET]]),  # bitmap says empty, data has one element
        root_with([b"\xff" * 32, [GOOD_BUCKET]]),
        root_with([BITMAP, [[]]]),  # empty bucket
        root_with([BITMAP, [GOOD_BUCKET * 4]]),  # bucket over the size
        root_with([BITMAP, [5]]),
        root_with([BITMAP, [{"a": 1}]]),
        root_with([BITMAP, [[["a", link_for("a")]]]]),  # key is a string, not bytes
        root_with([BITMAP, [[[NAME]]]]),
        root_with([BITMAP, [[[NAME, 1, 2]]]]),
        root_with([BITMAP, [[b"\xff\xfe", 1]]]),
        root_with([BITMAP, [[[b"\xff\xfe", 1]]]]),  # key not UTF-8
    ],
    ids=lambda root: repr(root["hamt"])[:50] + f"-{root['hashAlg']}-{root['bucketSize']}",
)
def test_malformed(store: Blockstore, root: dict[str, Any]) -> None:
    with pytest.raises(FormatError):
        dict(hamt.iter_entries(store, root))


@pytest.mark.parametrize("child", [{"a": 1}, [BITMAP], [bytes(32), [GOOD_BUCKET]], "x"], ids=repr)
def test_malformed_child_node(store: Blockstore, child: Any) -> None:
    cid = store.put(codec.encode(child), cids.DAG_CBOR)
    with pytest.raises(FormatError):
        dict(hamt.iter_entries(store, root_with([BITMAP, [codec.Link(cid)]])))


# --- updates in place -------------------------------------------------------------------


class CountingStore(MemoryBlockstore):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.puts = 0

    def get(self, cid: bytes) -> bytes:
        self.reads += 1
        return super().get(cid)

    def put(self, data: bytes, codec: int) -> bytes:
        self.puts += 1
        return super().put(data, codec)


def _blocks_of(store: Blockstore, root: dict[str, Any]) -> dict[bytes, bytes]:
    """Every HAMT node block under *root*."""
    found: dict[bytes, bytes] = {}
    stack = [root["hamt"]]
    while stack:
        _, data = stack.pop()
        for element in data:
            if isinstance(element, codec.Link):
                block = store.get(element.cid)
                found[element.cid] = block
                stack.append(codec.decode(block))
    return found


names_strategy = st.text(alphabet="abc.0123456789", min_size=1, max_size=6)


@settings(max_examples=150, deadline=None)
@given(
    st.sets(names_strategy, max_size=600),
    st.lists(st.tuples(names_strategy, st.booleans(), st.integers(0, 3)), max_size=60),
)
def test_an_update_gives_byte_for_byte_what_a_build_gives(
    initial: set[str], ops: list[tuple[str, bool, int]]
) -> None:
    store = MemoryBlockstore()
    entries: dict[str, Any] = {name: link_for(name) for name in initial}
    root = hamt.build(store, entries)
    changes: dict[str, Any] = {}
    for name, remove, version in ops:
        changes[name] = hamt.REMOVE if remove else link_for(f"{name}/{version}")
    for name, value in changes.items():
        if value is hamt.REMOVE:
            entries.pop(name, None)
        else:
            entries[name] = value
    fresh = MemoryBlockstore()
    expected = hamt.build(fresh, entries)
    updated = hamt.update(store, store, root, changes)
    assert codec.encode(updated) == codec.encode(expected)
    assert _blocks_of(store, updated) == _blocks_of(fresh, expected)


def test_removing_entries_collapses_nodes_down_to_the_empty_root() -> None:
    store = MemoryBlockstore()
    entries = chunk_entries(3000)
    root = hamt.build(store, entries)
    for batch in range(0, 3000, 500):
        names = list(entries)[batch : batch + 500]
        root = hamt.update(store, store, root, dict.fromkeys(names, hamt.REMOVE))
        left = {name: entries[name] for name in list(entries)[batch + 500 :]}
        assert codec.encode(root) == codec.encode(hamt.build(MemoryBlockstore(), left))
    assert codec.encode(root) == codec.encode(hamt.build(MemoryBlockstore(), {}))


def test_one_change_in_a_hundred_thousand_touches_only_its_path() -> None:
    store = CountingStore()
    entries = chunk_entries(100_000)
    root = hamt.build(store, entries)
    store.reads = store.puts = 0
    updated = hamt.update(store, store, root, {"7.7": link_for("new")})
    assert store.reads <= 3 and store.puts <= 3, (store.reads, store.puts)
    entries["7.7"] = link_for("new")
    assert codec.encode(updated) == codec.encode(hamt.build(MemoryBlockstore(), entries))


# --- deeper than the hash allows (issue: a 10,000-deep chain crashed listing with a RecursionError)


def chain(store: Blockstore, levels: int, name: bytes = NAME, value: Any = None) -> dict[str, Any]:
    """A root whose nodes form a chain *levels* deep, each linking the next in *name*'s slot at its
    depth (slot 0 past the 32 digest bytes), the last holding *name* in a bucket."""
    digest = hashlib.sha256(name).digest()

    def slot(depth: int) -> bytes:
        return hamt.bitmap_of([digest[depth] if depth < len(digest) else 0])

    node: list[Any] = [slot(levels - 1), [[[name, value or link_for(name.decode())]]]]
    for depth in reversed(range(levels - 1)):
        node = [slot(depth), [codec.Link(store.put(codec.encode(node), cids.DAG_CBOR))]]
    return root_with(node)


def test_a_hamt_as_deep_as_its_hash_allows_is_read() -> None:
    store = MemoryBlockstore()
    root = chain(store, hamt.MAX_DEPTH)  # nodes at depths 0 to 31
    assert dict(hamt.iter_entries(store, root)) == {"a": link_for("a")}
    assert hamt.find(store, root, "a") == link_for("a")
    assert hamt.find(store, root, "b") is hamt.MISSING
    other = chain(store, hamt.MAX_DEPTH, value=link_for("changed"))
    assert list(hamt.diff_entries(store, root, other)) == [("a", link_for("a"), link_for("changed"))]


@pytest.mark.parametrize("levels", [hamt.MAX_DEPTH + 1, 10_000])
def test_a_hamt_deeper_than_its_hash_allows_is_refused_in_one_line(levels: int) -> None:
    store = MemoryBlockstore()
    root = chain(store, levels)
    other = chain(store, levels, value=link_for("changed"))
    attempts = [
        lambda: dict(hamt.iter_entries(store, root)),
        lambda: hamt.find(store, root, "a"),
        lambda: list(hamt.diff_entries(store, root, other)),
        lambda: hamt.update(store, store, root, {"a": link_for("new")}),
    ]
    for attempt in attempts:
        with pytest.raises(FormatError, match="deeper than 32 levels"):
            attempt()


# --- the old bitmap order (before the spec's): read node by node, rewritten on a change -------


class Notices:
    """A notice callback that counts the old-order nodes it is told of."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def test_an_old_order_hamt_is_read_and_one_change_makes_it_canonical() -> None:
    store = MemoryBlockstore()
    entries = chunk_entries(5000)
    built = hamt.build(store, entries)
    old = old_order_copy(store, built)
    assert old["hamt"][0] == built["hamt"][0] == b"\xff" * 32  # a full root reads the same both ways
    assert codec.encode(old) != codec.encode(built)  # its children do not
    notices = Notices()
    assert dict(hamt.iter_entries(store, old, notices)) == entries
    assert notices.count > 0
    for name, value in entries.items():
        assert hamt.find(store, old, name, {}) == value
    assert hamt.find(store, old, "not there") is hamt.MISSING
    assert list(hamt.diff_entries(store, old, built)) == []
    changed = hamt.update(store, store, old, {"new": link_for("new")})
    fresh = MemoryBlockstore()
    expected = hamt.build(fresh, {**entries, "new": link_for("new")})
    assert codec.encode(changed) == codec.encode(expected)
    assert _blocks_of(store, changed) == _blocks_of(fresh, expected)


def test_a_spec_order_hamt_gives_no_notice(store: Blockstore) -> None:
    notices = Notices()
    root = hamt.build(store, chunk_entries(5000))
    assert len(dict(hamt.iter_entries(store, root, notices))) == 5000
    assert hamt.find(store, root, "1.1", None, notices) == link_for("1.1")
    assert notices.count == 0


def _two_full_slots() -> dict[str, Any]:
    """Entries filling two root slots with 4 names each, the two not mirror images by byte (so the
    root's bitmap differs between the orders): a root of two links and no bucket."""
    by_slot: dict[int, list[str]] = {}
    for number in range(100_000):
        name = f"n{number}"
        by_slot.setdefault(hashlib.sha256(name.encode()).digest()[0], []).append(name)
        full = [slot for slot, names in by_slot.items() if len(names) == 4]
        if len(full) == 2 and hamt.bitmap_of(full) != hamt.bitmap_of(full)[::-1]:
            return {name: link_for(name) for slot in full for name in by_slot[slot]}
    raise AssertionError("no two slots found")


def test_a_node_without_buckets_is_told_by_its_child(store: Blockstore) -> None:
    entries = _two_full_slots()
    built = hamt.build(store, entries)
    assert all(isinstance(element, codec.Link) for element in built["hamt"][1])
    old = old_order_copy(store, built)
    for root in (built, old):
        notices = Notices()
        for name, value in entries.items():
            assert hamt.find(store, root, name, None, notices) == value
        assert dict(hamt.iter_entries(store, root)) == entries
        assert (notices.count > 0) == (root is old)


def test_a_node_that_fits_neither_order_is_refused(store: Blockstore) -> None:
    wrong = [hamt.bitmap_of([(SLOT + 1) % 256]), [GOOD_BUCKET]]  # the bucket's key is not in that slot
    for attempt in (
        lambda: dict(hamt.iter_entries(store, root_with(wrong))),
        lambda: hamt.find(store, root_with(wrong), "a"),
        lambda: hamt.update(store, store, root_with(wrong), {"b": link_for("b")}),
    ):
        with pytest.raises(FormatError, match="not in the slots its bitmap gives them"):
            attempt()


def test_the_node_cache_keeps_the_most_recently_used_within_its_budget() -> None:
    """hamt.NodeLRU: a hit moves a node to the back; past the budget the least recent go."""
    link = codec.Link(cids.block_cid(cids.RAW, b"x"))
    node = hamt._Read(bits=1, data=[[[b"name", link]] * 3], old=False)  # one bucket of 3 entries
    weight = hamt._weight(node)
    assert weight == hamt.NODE_BYTES + 3 * hamt.ENTRY_BYTES
    keys = [bytes([index]) * 36 for index in range(4)]
    cache = hamt.NodeLRU(budget=3 * weight)  # room for three
    for key in keys[:3]:
        cache[key] = node
    assert cache.get(keys[0]) is node  # now the most recent
    cache[keys[3]] = node  # over budget: the least recent (keys[1]) goes
    assert list(cache) == [keys[2], keys[0], keys[3]]
    assert cache.held == 3 * weight <= cache.budget
    cache[keys[3]] = node  # stored again: counted once
    assert cache.held == 3 * weight


_CIDS = st.builds(
    lambda data, codec_: cids.block_cid(codec_, data),
    st.binary(max_size=64),
    st.sampled_from([cids.RAW, cids.DAG_CBOR]),
)
_INTS = st.integers(min_value=-(2**64), max_value=2**64 - 1)  # DAG-CBOR's range
_VALUES = st.one_of(
    _CIDS.map(codec.Link),
    _INTS,
    st.text(max_size=8),
    st.dictionaries(st.text(max_size=4), _INTS, max_size=3),
)
_BUCKETS = st.lists(st.tuples(st.binary(max_size=300), _VALUES).map(list), min_size=1, max_size=3)


@given(
    bitmap=st.binary(min_size=32, max_size=32),
    data=st.lists(st.one_of(_CIDS.map(codec.Link), _BUCKETS), max_size=40),
)
def test_the_node_encoder_writes_what_the_general_encoder_writes(bitmap: bytes, data: list[Any]) -> None:
    node = [bitmap, data]
    assert hamt.encode_node(node) == codec.encode(node)


def test_the_node_encoder_leaves_odd_shapes_to_the_general_encoder() -> None:
    link = codec.Link(cids.block_cid(cids.RAW, b"x"))
    assert hamt.encode_node([b"\x00" * 32, [[["name", link]]]]) == codec.encode(
        [b"\x00" * 32, [[["name", link]]]]
    )
    with pytest.raises(ValueError):  # what the general encoder refuses, this refuses too
        hamt.encode_node([b"\x00" * 32, [[[b"k", float("nan")]]]])
