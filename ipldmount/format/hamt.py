"""Sharded directories: an IPLD HashMap (HAMT) of name -> entry.

An IPLD HashMap with fixed parameters: the hash is sha2-256 of the UTF-8 name,
8 bits of it pick the slot at each level (so level *d* uses byte *d* of the
digest), and a slot holds a bucket of at most 3 entries before it becomes a
child node. The structure is built from the sorted set of entries, so it
depends on the entries alone, never on insertion order (FORMAT.md 6.4).

Bitmaps are written in the spec's order (slot *i* is bit ``2**(i % 8)`` of byte
``i // 8``). Stores written before hold nodes in the old order (a big-endian
integer): readers tell them apart node by node, read them, and say so (the
*notice* callbacks), and a change meeting one rewrites the whole HAMT.
"""

from __future__ import annotations

import bisect
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any, Final, Literal, NamedTuple

from ipldmount.blocks import BlockSink, Blockstore
from ipldmount.errors import FormatError
from ipldmount.ipld import cid as cids
from ipldmount.ipld import codec

HASH_ALG = cids.SHA2_256
BUCKET_SIZE = 3
BITMAP_BYTES = 32  # 2**8 slots
ROOT_KEYS = frozenset({"hashAlg", "bucketSize", "hamt"})
# A node sits at depth 0 (the root's) to 31: each level takes 8 of sha2-256's 256 bits, so a node
# any deeper has no hash bits left to place its entries by, and the HAMT is malformed (FORMAT.md 6.4).
# Walks down a HAMT are bounded by it, whatever a block links to.
MAX_DEPTH = 32
SPEC_ORDER: Final = "little"  # slot i: byte i // 8, bit 2**(i % 8) (the spec, iamap)
OLD_ORDER: Final = "big"  # before: slot i: byte 31 - i // 8, bit 2**(i % 8) (a big-endian integer)

Notice = Callable[[], None] | None
"""Called for each node read in the old bitmap order (None: read it quietly)."""

_Item = tuple[bytes, bytes, Any]  # (digest, key, value)
Order = Literal["little", "big"]


def bitmap_of(slots: Iterable[int], order: Order = SPEC_ORDER) -> bytes:
    """The 32-byte bitmap in which *slots* are occupied (the spec's order unless told)."""
    return sum(1 << slot for slot in set(slots)).to_bytes(BITMAP_BYTES, order)


def slots_of(bitmap: bytes, order: Order = SPEC_ORDER) -> list[int]:
    """The occupied slots of *bitmap*, in increasing order: the slot of each data element."""
    if order == OLD_ORDER:
        bitmap = bitmap[::-1]
    return [8 * index + bit for index, byte in enumerate(bitmap) for bit in _BITS[byte]]


_BITS = [[bit for bit in range(8) if byte >> bit & 1] for byte in range(256)]  # bits set, low first


def is_root(value: Any) -> bool:
    """True when a DAG-CBOR map is a HAMT root rather than a plain directory.

    A plain directory can never look like this: its entries are links or maps,
    and ``hashAlg`` here is an integer.
    """
    return type(value) is dict and value.keys() == ROOT_KEYS and type(value["hashAlg"]) is int


def build(store: BlockSink, entries: Mapping[str, Any]) -> dict[str, Any]:
    """The root map of a HAMT holding *entries*; child nodes are stored as blocks."""
    return _root(_build_node(store, _hashed(_keyed(entries)), 0))


def _root(node: list[Any]) -> dict[str, Any]:
    return {"hashAlg": HASH_ALG, "bucketSize": BUCKET_SIZE, "hamt": node}


def _keyed(entries: Mapping[str, Any]) -> list[tuple[bytes, Any]]:
    return [(name.encode("utf-8"), value) for name, value in entries.items()]


def _hashed(pairs: Iterable[tuple[bytes, Any]]) -> list[_Item]:
    """``(digest, key, value)`` items in the order the HAMT lays them out: by digest (lists,
    not generators: a new directory of 100,000 names goes through here)."""
    sha256 = hashlib.sha256
    items = [(sha256(key).digest(), key, value) for key, value in pairs]
    items.sort()
    return items


def _build_node(store: BlockSink, items: list[_Item], depth: int) -> list[Any]:
    """A node of *items* at *depth* (recursive, bounded by MAX_DEPTH levels)."""
    if depth >= MAX_DEPTH:
        raise FormatError("HAMT ran out of hash bits (identical sha2-256 digests)")
    slots: list[int] = []
    data: list[Any] = []
    for slot, group in _by_slot(items, depth):
        slots.append(slot)
        data.append(_element(store, group, depth))
    return [bitmap_of(slots), data]


def _element(store: BlockSink, group: list[_Item], depth: int) -> Any:
    if len(group) == 1:  # most slots of a large HAMT's leaves: nothing to sort
        return [[group[0][1], group[0][2]]]
    if len(group) <= BUCKET_SIZE:
        return [[key, value] for _, key, value in sorted(group, key=lambda item: item[1])]
    child = _build_node(store, group, depth + 1)
    return codec.Link(store.put(encode_node(child), cids.DAG_CBOR))


def encode_node(node: list[Any]) -> bytes:
    """A node's DAG-CBOR, byte for byte :func:`codec.encode`'s, written by its known shape
    (``[bitmap, [bucket or link, ...]]``, a bucket ``[[key, value], ...]``): a commit of a new
    directory of 100,000 names writes 4,800 nodes, and the general walk was half its time.
    A value other than a link goes through :func:`codec.encode` (checked there)."""
    bitmap, data = node
    if type(bitmap) is not bytes or len(bitmap) > _SHORT or len(data) > _SHORT:
        return codec.encode(node)
    parts = [_NODE_HEAD, _BYTES_HEAD[len(bitmap)], bitmap, _ARRAY_HEAD[len(data)]]
    append, link, encoded_link = parts.append, codec.Link, codec.encoded_link
    for element in data:
        if type(element) is link:
            append(encoded_link(element.cid))
            continue
        if len(element) > _SHORT:
            return codec.encode(node)
        append(_ARRAY_HEAD[len(element)])
        for key, value in element:
            if type(key) is not bytes or len(key) > _SHORT:
                return codec.encode(node)
            append(_PAIR_HEAD)
            append(_BYTES_HEAD[len(key)])
            append(key)
            append(encoded_link(value.cid) if type(value) is link else codec.encode(value))
    return b"".join(parts)


_SHORT = 256  # lengths up to this have their heads made once (a name is at most 255 bytes)
_ARRAY_HEAD = [codec.head(codec.ARRAY, length) for length in range(_SHORT + 1)]
_BYTES_HEAD = [codec.head(codec.BYTES, length) for length in range(_SHORT + 1)]
_NODE_HEAD = codec.head(codec.ARRAY, 2)
_PAIR_HEAD = codec.head(codec.ARRAY, 2)


REMOVE = object()  # in the changes given to update(): the name goes


class _OldOrder(Exception):
    """An update met a node in the old bitmap order: the HAMT is built anew instead."""


def update(
    reader: Blockstore,
    sink: BlockSink,
    root: dict[str, Any],
    changes: Mapping[str, Any],
    notice: Notice = None,
) -> dict[str, Any]:
    """The root map of the HAMT that :func:`build` would give for *root*'s entries with *changes*
    applied (name -> new entry, or :data:`REMOVE`), rewriting only the nodes on the changed names'
    paths: the nodes read come from *reader*, the new ones go to *sink*. Byte for byte what
    :func:`build` gives, because both follow the one canonical shape: a slot holds a bucket of up
    to 3 entries sorted by key, or a link to a child node when more share it. A path that meets
    a node in the old bitmap order makes it a :func:`build` of all the entries (read whole): a
    node kept in that order would keep the HAMT from its canonical CID."""
    _check_root(root)
    try:
        node = _update_node(reader, sink, root["hamt"], _hashed(_keyed(changes)), 0)
    except _OldOrder:
        if notice is not None:
            notice()
        return build(sink, _applied(dict(iter_entries(reader, root)), changes))
    return _root(node if node is not None else _EMPTY_NODE)


_EMPTY_NODE: list[Any] = [bytes(BITMAP_BYTES), []]


def _applied(entries: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    for name, value in changes.items():
        if value is REMOVE:
            entries.pop(name, None)
        else:
            entries[name] = value
    return entries


def _update_node(
    reader: Blockstore, sink: BlockSink, node: Any, changes: list[_Item], depth: int
) -> list[Any] | None:
    """A node with *changes* applied (None when nothing is left in it); recursive through
    :func:`_update_element`, at most MAX_DEPTH levels (a deeper child is refused as it is read)."""
    read = _read(reader, node, depth)
    if read.old:
        raise _OldOrder
    slots = read.slots()
    for slot, group in _by_slot(changes, depth):
        element = _update_element(reader, sink, slots.get(slot), group, depth)
        if element is None:
            slots.pop(slot, None)
        else:
            slots[slot] = element
    if not slots:
        return None
    return [bitmap_of(slots), [slots[slot] for slot in sorted(slots)]]


def _by_slot(items: list[_Item], depth: int) -> Iterator[tuple[int, list[_Item]]]:
    """*items* (sorted by digest, sharing its first *depth* bytes) in runs that share a slot at
    *depth*: each run ends where the digests reach the next slot's prefix (a bisection)."""
    start, count = 0, len(items)
    while start < count:
        digest = items[start][0]
        slot = digest[depth]
        # (prefix,) sorts before every item whose digest starts with it, after every other
        end = count if slot == 255 else bisect.bisect_left(items, (digest[:depth] + _NEXT[slot],), start)
        yield slot, items[start:end]
        start = end


_NEXT = [bytes((slot + 1,)) for slot in range(255)]


def _update_element(
    reader: Blockstore, sink: BlockSink, element: Any, changes: list[_Item], depth: int
) -> Any:
    """One slot's element with *changes* applied: a bucket, a link to a child, or None (empty)."""
    if isinstance(element, codec.Link):
        child = _update_node(reader, sink, _load_child(reader, element.cid, depth + 1), changes, depth + 1)
        if child is None:
            return None
        few = _few_entries(child)
        if few is not None:  # what is left fits in a bucket: the child goes
            return _element(sink, few, depth)
        return codec.Link(sink.put(encode_node(child), cids.DAG_CBOR))
    current = {key: value for key, value in _bucket_items(element)} if element is not None else {}
    for _, key, value in changes:
        if value is REMOVE:
            current.pop(key, None)
        else:
            current[key] = value
    if not current:
        return None
    return _element(sink, _hashed(current.items()), depth)


def _few_entries(node: list[Any]) -> list[_Item] | None:
    """A node's entries if it holds no link and at most a bucket's worth, else None."""
    _, data = _check_node(node)
    if any(isinstance(element, codec.Link) for element in data):
        return None
    found = [item for element in data for item in _bucket_items(element)]
    return _hashed(found) if len(found) <= BUCKET_SIZE else None


def _bucket_items(bucket: Any) -> list[tuple[bytes, Any]]:
    if not (isinstance(bucket, list) and 0 < len(bucket) <= BUCKET_SIZE):
        raise FormatError("malformed HAMT element (expected a link or a bucket of 1-3 entries)")
    for entry in bucket:
        if not (isinstance(entry, list) and len(entry) == 2 and type(entry[0]) is bytes):
            raise FormatError("malformed HAMT bucket entry (expected [key, value])")
    return [(entry[0], entry[1]) for entry in bucket]


def iter_entries(store: Blockstore, root: dict[str, Any], notice: Notice = None) -> Iterator[tuple[str, Any]]:
    """Every (name, entry) of a HAMT, checking the structure as it goes."""
    _check_root(root)
    yield from _walk_entries(store, root["hamt"], 0, notice)


def _check_root(root: dict[str, Any]) -> None:
    if root["hashAlg"] != HASH_ALG or root["bucketSize"] != BUCKET_SIZE:
        raise FormatError(
            f"unsupported HAMT parameters hashAlg={root['hashAlg']} bucketSize={root['bucketSize']}"
        )


# --- reading a node: its bitmap's order --------------------------------------------------


class _Read(NamedTuple):
    """A node checked and its bitmap's order found."""

    bits: int  # bit i set when slot i is occupied, whichever order the block is in
    data: list[Any]
    old: bool  # the block is in the old order

    def element(self, slot: int) -> Any:
        """The element of *slot*, or None when it is empty."""
        if not self.bits >> slot & 1:
            return None
        return self.data[(self.bits & ((1 << slot) - 1)).bit_count()]

    def slots(self) -> dict[int, Any]:
        """Slot number -> element."""
        occupied = [slot for slot in range(BITMAP_BYTES * 8) if self.bits >> slot & 1]
        return dict(zip(occupied, self.data, strict=True))


def _read(store: Blockstore, node: Any, depth: int, notice: Notice = None) -> _Read:
    """*node* (at *depth*) checked, in the order its bitmap is in (FORMAT.md 6.4)."""
    bitmap, data = _check_node(node)
    old = _in_old_order(store, bitmap, data, depth)
    if old and notice is not None:
        notice()
    return _Read(int.from_bytes(bitmap, OLD_ORDER if old else SPEC_ORDER), data, old)


def _in_old_order(store: Blockstore, bitmap: bytes, data: list[Any], depth: int) -> bool:
    """Whether a node's bitmap is in the old order. A bitmap that reads the same both ways needs no
    answer (False); otherwise its buckets tell, each key hashing at *depth* to its element's slot
    under one order only, or, if they cannot, the keys of a child whose slot the orders disagree
    on. A node that fits neither order is malformed."""
    if bitmap == bitmap[::-1]:
        return False
    spec, old = slots_of(bitmap, SPEC_ORDER), slots_of(bitmap, OLD_ORDER)
    fits_spec = fits_old = True
    for index, element in enumerate(data):
        if isinstance(element, codec.Link):
            continue
        for slot in _key_slots(element, depth):
            fits_spec &= slot == spec[index]
            fits_old &= slot == old[index]
    if fits_spec != fits_old:
        return fits_old
    if fits_spec:  # no bucket where the orders disagree: a child there tells
        index = next(index for index, (a, b) in enumerate(zip(spec, old, strict=True)) if a != b)
        slot = hashlib.sha256(_first_key(store, data[index], depth + 1)).digest()[depth]
        if slot in (spec[index], old[index]):
            return slot == old[index]
    raise FormatError("malformed HAMT: a node's entries are not in the slots its bitmap gives them")


def _key_slots(bucket: Any, depth: int) -> list[int]:
    """The slot at *depth* of each key of a bucket (checked as far as hashing needs: a listing or
    a lookup checks the rest of it where it reads it)."""
    try:
        return [hashlib.sha256(entry[0]).digest()[depth] for entry in bucket]
    except (TypeError, IndexError, KeyError):
        _bucket_items(bucket)  # says what is wrong
        raise FormatError("malformed HAMT bucket") from None


def _first_key(store: Blockstore, element: Any, depth: int) -> bytes:
    """The first key under a link to a child node at *depth* (following first elements down)."""
    while isinstance(element, codec.Link):
        _, data = _check_node(_load_child(store, element.cid, depth))
        if not data:
            raise FormatError("malformed HAMT: an empty child node")
        element, depth = data[0], depth + 1
    return _bucket_items(element)[0][0]


MISSING = object()  # the side of a difference where a name is absent; find() of an absent name

NodeCache = MutableMapping[bytes, Any]
"""Child nodes read (checked, their order found) by CID, kept between lookups by whoever owns
the mapping."""


def find(
    store: Blockstore,
    root: dict[str, Any],
    name: str,
    cache: NodeCache | None = None,
    notice: Notice = None,
) -> Any:
    """The entry under *name*, or :data:`MISSING`: only the nodes on its digest's path are read."""
    _check_root(root)
    key = name.encode("utf-8")
    digest = hashlib.sha256(key).digest()
    read = _read(store, root["hamt"], 0, notice)
    for depth in range(MAX_DEPTH):
        found = _step(read, key, digest[depth])
        if not isinstance(found, Next):
            return found
        read = _read_child(store, found.cid, depth + 1, cache, notice)
    raise too_deep()


class Next(NamedTuple):
    """What :func:`step` answers when the name's slot holds a child node: its CID."""

    cid: bytes


def step(store: Blockstore, node: Any, name: str, depth: int) -> Any:
    """One level of a lookup of *name* in *node* (at *depth*): the entry, :data:`MISSING`, or
    :class:`Next` (the child node to read next): so a caller can read many lookups' next nodes
    side by side. The node's bitmap order is found as :func:`find` finds it (FORMAT.md 6.4)."""
    key = name.encode("utf-8")
    return _step(_read(store, node, depth), key, hashlib.sha256(key).digest()[depth])


def _step(read: _Read, key: bytes, slot: int) -> Any:
    element = read.element(slot)
    if element is None:
        return MISSING
    if isinstance(element, codec.Link):
        return Next(element.cid)
    return next((value for found, value in _bucket_items(element) if found == key), MISSING)


def check_path(
    store: Blockstore,
    root: dict[str, Any],
    name: str,
    check_entry: Callable[[str, Any], None],
    cache: NodeCache | None = None,
    checked: tuple[set[bytes], bytes | None] | None = None,
    notice: Notice = None,
) -> None:
    """Check every node a change to *name* rewrites: those on its digest's path, each whole (its
    structure, and every entry of its buckets: *check_entry*, and no name twice), since a change
    re-encodes them. FormatError at the first fault; nodes off the path are not read (they keep
    their CIDs: a change costs its path, not the directory). *checked*: the CIDs of nodes found
    whole before (added to), and the CID of the block holding *root* (None: not stored), so a
    node is checked once however many changes pass through it."""
    _check_root(root)
    seen_before, cid = checked if checked is not None else (set(), None)
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    read = _read(store, root["hamt"], 0, notice)
    for depth in range(MAX_DEPTH):
        if cid is None or cid not in seen_before:
            _check_node_whole(read.data, check_entry)
            if cid is not None:
                seen_before.add(cid)
        element = read.element(digest[depth])
        if not isinstance(element, codec.Link):
            return
        cid = element.cid
        read = _read_child(store, cid, depth + 1, cache, notice)
    raise too_deep()


def _check_node_whole(data: list[Any], check_entry: Callable[[str, Any], None]) -> None:
    seen: set[str] = set()
    for element in data:
        if isinstance(element, codec.Link):
            continue
        for found, value in _bucket_entries(element):
            if found in seen:
                raise FormatError(f"the name {found!r} is in a HAMT node twice")
            seen.add(found)
            check_entry(found, value)


def too_deep() -> FormatError:
    return FormatError(
        f"malformed HAMT: a node deeper than {MAX_DEPTH} levels (sha2-256 has bits for {MAX_DEPTH})"
    )


def _load_child(store: Blockstore, cid: bytes, depth: int) -> Any:
    """The decoded child node at *depth*, refused past the deepest level the hash allows."""
    if depth >= MAX_DEPTH:
        raise too_deep()
    return codec.decode(store.get(cid))


class NodeLRU(OrderedDict[bytes, Any]):
    """Child nodes read, least recently used first, bounded by an estimate of the memory their
    decoded form takes (*budget* bytes): NODE_BYTES for a node, and ENTRY_BYTES for each of its
    elements and bucket entries (a name's bytes and its link). Measured on a 100,000-name
    directory: 6.6 KB decoded for a node of about 21 names and 1.1 KB encoded; the estimate
    gives 6.9 KB. A FIFO of a few hundred nodes would make one pass over such a directory decode
    its 4,791 nodes 33,000 times."""

    def __init__(self, budget: int) -> None:
        super().__init__()
        self.budget = budget
        self.held = 0  # estimated bytes of the nodes held
        self._weights: dict[bytes, int] = {}

    def get(self, key: bytes, default: Any = None) -> Any:
        value = super().get(key, default)
        if key in self._weights:
            self.move_to_end(key)
        return value

    def __setitem__(self, key: bytes, value: Any) -> None:
        if key in self._weights:
            self.held -= self._weights.pop(key)
        super().__setitem__(key, value)
        self._weights[key] = weight = _weight(value)
        self.held += weight
        while self.held > self.budget and len(self) > 1:
            old, _ = self.popitem(last=False)
            self.held -= self._weights.pop(old)


NODE_BYTES = 600
ENTRY_BYTES = 300


def _weight(read: Any) -> int:
    data = read.data if isinstance(read, _Read) else []
    entries = sum(1 if isinstance(element, codec.Link) else len(element) for element in data)
    return NODE_BYTES + ENTRY_BYTES * entries


def _read_child(store: Blockstore, cid: bytes, depth: int, cache: NodeCache | None, notice: Notice) -> _Read:
    """The child node at *depth* read (from *cache* when there: its order is found once)."""
    read = cache.get(cid) if cache is not None else None
    if read is None:
        read = _read(store, _load_child(store, cid, depth), depth)
        if cache is not None:
            cache[cid] = read
    if read.old and notice is not None:
        notice()
    return read


def diff_entries(store: Blockstore, a: dict[str, Any], b: dict[str, Any]) -> Iterator[tuple[str, Any, Any]]:
    """``(name, entry in a, entry in b)`` for every name whose entry differs (:data:`MISSING` where
    absent), walking both HAMTs node by node: a child both link to by the same CID is never read."""
    _check_root(a)
    _check_root(b)
    yield from _diff_nodes(store, a["hamt"], b["hamt"])


def _diff_nodes(store: Blockstore, a: Any, b: Any) -> Iterator[tuple[str, Any, Any]]:
    """The differing entries under two nodes at depth 0, in no set order (the caller sorts): an
    explicit stack of node pairs, a level deeper for each pair of links to different children."""
    stack: list[tuple[Any, Any, int]] = [(a, b, 0)]
    while stack:
        left_node, right_node, depth = stack.pop()
        left, right = _read(store, left_node, depth).slots(), _read(store, right_node, depth).slots()
        for slot in sorted(left.keys() | right.keys()):
            x, y = left.get(slot), right.get(slot)
            if x == y:
                continue
            if isinstance(x, codec.Link) and isinstance(y, codec.Link):
                pair = (_load_child(store, x.cid, depth + 1), _load_child(store, y.cid, depth + 1))
                stack.append((*pair, depth + 1))
                continue
            old, new = dict(_element_entries(store, x, depth)), dict(_element_entries(store, y, depth))
            for name in sorted(old.keys() | new.keys()):
                before, after = old.get(name, MISSING), new.get(name, MISSING)
                if before != after:
                    yield name, before, after


def _element_entries(store: Blockstore, element: Any, depth: int) -> Iterator[tuple[str, Any]]:
    """The entries under one element of a node at *depth*: a link to a child node, or a bucket
    (None: none)."""
    if element is None:
        return
    if isinstance(element, codec.Link):
        yield from _walk_entries(store, _load_child(store, element.cid, depth + 1), depth + 1)
    else:
        yield from _bucket_entries(element)  # checks it is a bucket


_END = object()


def _walk_entries(
    store: Blockstore, node: Any, depth: int, notice: Notice = None
) -> Iterator[tuple[str, Any]]:
    """Every entry under *node* (at *depth*), in slot order, each child where it stands: an
    explicit stack of the nodes on the way down, at most MAX_DEPTH of them."""
    stack: list[tuple[Iterator[Any], int]] = [(iter(_node_data(store, node, depth, notice)), depth)]
    while stack:
        elements, level = stack[-1]
        element = next(elements, _END)
        if element is _END:
            stack.pop()
        elif isinstance(element, codec.Link):
            child = _load_child(store, element.cid, level + 1)
            stack.append((iter(_node_data(store, child, level + 1, notice)), level + 1))
        else:
            yield from _bucket_entries(element)  # checks it is a bucket


def child_links(node: Any) -> list[bytes]:
    """The CIDs of a node's child nodes, in slot order (a HAMT root's own map: of its top node):
    the blocks the directory is made of below its root, none of its entries'."""
    if is_root(node):
        node = node["hamt"]
    _, data = _check_node(node)
    return [element.cid for element in data if isinstance(element, codec.Link)]


def _node_data(store: Blockstore, node: Any, depth: int, notice: Notice) -> list[Any]:
    """A node's elements, checked; its children asked for side by side (a remote store)."""
    data = _read(store, node, depth, notice).data
    store.prefetch([element.cid for element in data if isinstance(element, codec.Link)])
    return data


def _check_node(node: Any) -> tuple[bytes, list[Any]]:
    if not (isinstance(node, list) and len(node) == 2 and type(node[0]) is bytes and type(node[1]) is list):
        raise FormatError("malformed HAMT node (expected [bitmap, data])")
    bitmap, data = node
    if len(bitmap) != BITMAP_BYTES or int.from_bytes(bitmap).bit_count() != len(data):
        raise FormatError("HAMT bitmap does not match its data")
    return bitmap, data


def _bucket_entries(bucket: Any) -> Iterator[tuple[str, Any]]:
    for key, value in _bucket_items(bucket):
        try:
            name = key.decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError("HAMT key is not UTF-8") from None
        yield name, value
