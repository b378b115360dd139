"""The mutable tree: exact legacy CIDs, lossless round trips, POSIX-like changes, determinism."""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from hamt_helpers import old_order_copy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ipldmount.blocks import Blockstore, MemoryBlockstore
from ipldmount.errors import (
    AlreadyExistsError,
    BlockNotFoundError,
    CorruptBlockError,
    DirectoryNotEmptyError,
    FormatError,
    InvalidMoveError,
    InvalidNameError,
    IpldmountError,
    IsDirectoryError,
    NameTooLongError,
    NotDirectoryError,
    NotFoundError,
    ReadOnlyError,
    StoreFullError,
)
from ipldmount.format import dirnode, hamt, metadata
from ipldmount.ipld import cid as cids
from ipldmount.ipld import codec
from ipldmount.tree.model import Broken, Directory, File, Tree

MIB = 1 << 20
BLOCK_LIMIT = MIB

SEED_ROOT = "bafyreidn66mk3fktszrfwayonvpq6y3agtnb5e5o22ivof5tgikbxt7k6u"
SEED_CHUNK = "bafkreihc4ibtvz7btvualgou5mfbgwncwshmlovmoudgyml7x6crlhcu54"
SEED_FILES = [".zattrs", ".zgroup", "a/.zarray", "a/.zattrs", "a/0"]


# --- helpers ----------------------------------------------------------------------


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def zattrs(value: Any) -> bytes:
    """Metadata bytes exactly as zarr-python 2 writes them (so they inline)."""
    return metadata.render(".zattrs", value)


def read_tree(tree: Tree, path: str = "") -> dict[str, bytes]:
    return {name: tree.read_all(file) for name, file in tree.walk_files(path)}


def tree_dirs(tree: Tree) -> set[str]:
    """Every directory path below the root (the root itself not included)."""
    found: set[str] = set()
    stack: list[tuple[str, Directory]] = [("", tree.root)]
    while stack:
        prefix, directory = stack.pop()
        for name, node in tree.entries(directory).items():
            if isinstance(node, Directory):
                found.add(prefix + name)
                stack.append((prefix + name + "/", node))
    return found


def build(
    store: Blockstore, files: dict[str, bytes], dirs: Iterable[str] = (), order: Iterable[str] | None = None
) -> bytes:
    """The root CID of a fresh tree holding *files* (written in *order*) and the empty *dirs*."""
    tree = Tree(store)
    for path in order if order is not None else sorted(files):
        tree.write_file(path, files[path])
    for path in sorted(dirs):
        tree.makedirs(path)
    return tree.commit()


def node_value(store: Blockstore, cid: bytes) -> Any:
    return codec.decode(store.get(cid))


def assert_blocks_within_limit(store: Blockstore) -> None:
    oversized = [cids.cid_to_str(cid) for cid in store if store.size(cid) > BLOCK_LIMIT]
    assert not oversized


def copy_store(store: Blockstore, leave_out: Iterable[bytes] = ()) -> MemoryBlockstore:
    skip = set(leave_out)
    copy = MemoryBlockstore()
    for cid in store:
        if cid not in skip:
            copy.put_block(cid, store.get(cid))
    return copy


def read_car(path: Path) -> tuple[list[bytes], dict[bytes, bytes]]:
    """Roots and blocks of a CARv1 file whose CIDs are all CIDv1 sha2-256 (36 bytes)."""
    data = path.read_bytes()

    def varint(position: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            byte = data[position]
            value |= (byte & 0x7F) << shift
            position += 1
            if byte < 0x80:
                return value, position
            shift += 7

    length, position = varint(0)
    header = codec.decode(data[position : position + length])
    assert header["version"] == 1
    position += length
    blocks: dict[bytes, bytes] = {}
    while position < len(data):
        length, position = varint(position)
        section = data[position : position + length]
        blocks[section[: cids.CID_LENGTH]] = section[cids.CID_LENGTH :]
        position += length
    return [link.cid for link in header["roots"]], blocks


def seed_files(seed_tree_dir: Path) -> dict[str, bytes]:
    return {path: (seed_tree_dir / path).read_bytes() for path in SEED_FILES}


# --- the seed test vector -----------------------------------------------------------


def test_seed_vector_every_write_order(store: Blockstore, seed_tree_dir: Path) -> None:
    files = seed_files(seed_tree_dir)
    roots = {build(store, files, order=order) for order in itertools.permutations(SEED_FILES)}
    assert [cids.cid_to_str(root) for root in roots] == [SEED_ROOT]


def test_seed_vector_blocks_match_the_seed_car(store: Blockstore, seed_tree_dir: Path) -> None:
    root = build(store, seed_files(seed_tree_dir))
    car_roots, car_blocks = read_car(seed_tree_dir.parent / "seed_example.car")
    assert car_roots == [root]
    # nothing but the blocks the seed wrote: inline metadata leaves no stray raw blocks behind
    assert {cid: store.get(cid) for cid in store} == car_blocks
    value = node_value(store, root)
    assert value["a"]["0"] == codec.Link(cids.parse_cid(SEED_CHUNK))
    assert value[".zgroup"] == {"zarr_format": 2}
    assert value["a"][".zattrs"] == {"_ARRAY_DIMENSIONS": ["a"]}


def test_seed_vector_with_whole_files(store: Blockstore, seed_tree_dir: Path) -> None:
    tree = Tree(store, whole_files=True)
    for path, data in seed_files(seed_tree_dir).items():
        tree.write_file(path, data)
    assert cids.cid_to_str(tree.commit()) == SEED_ROOT


def test_seed_vector_from_buffers(store: Blockstore, seed_tree_dir: Path) -> None:
    tree = Tree(store)
    for index, (path, data) in enumerate(seed_files(seed_tree_dir).items()):
        buffer = bytearray(data) if index % 2 else memoryview(data)
        tree.write_file(path, buffer)  # type: ignore[arg-type]  # accepted at run time, not in the hint
    assert cids.cid_to_str(tree.commit()) == SEED_ROOT


def test_seed_vector_reopens_byte_exact(store: Blockstore, seed_tree_dir: Path) -> None:
    files = seed_files(seed_tree_dir)
    root = build(store, files)
    tree = Tree(store, root)
    assert read_tree(tree) == files
    assert tree.listdir() == [".zattrs", ".zgroup", "a"]
    assert tree.listdir("a") == [".zarray", ".zattrs", "0"]
    for path, data in files.items():
        assert tree.read_file(path) == data
        assert tree.size(tree.resolve(path)) == len(data)
    assert tree.commit() == root  # nothing changed


def test_seed_vector_after_rewriting_every_file(store: Blockstore, seed_tree_dir: Path) -> None:
    files = seed_files(seed_tree_dir)
    root = build(store, files)
    tree = Tree(store, root)
    for path, data in files.items():
        tree.write_file(path, data)
    assert tree.commit() == root


def test_write_delete_write_again(store: Blockstore, seed_tree_dir: Path) -> None:
    tree = Tree(store)
    for path, data in seed_files(seed_tree_dir).items():
        tree.write_file(path, data)
    base = tree.commit()
    tree.write_file("a/1", b"\x04" * 24)
    with_chunk = tree.commit()
    assert with_chunk != base
    tree.remove("a/1")
    assert tree.commit() == base
    tree.write_file("a/1", b"\x04" * 24)
    assert tree.commit() == with_chunk
    tree.write_file("extra/deep/file", b"x")
    with_deep = tree.commit()
    tree.remove("extra/deep/file")
    tree.remove("extra/deep")
    tree.remove("extra")
    assert tree.commit() == with_chunk
    tree.write_file("extra/deep/file", b"x")
    assert tree.commit() == with_deep


def test_overwrite_and_restore_content(store: Blockstore) -> None:
    tree = Tree(store)
    tree.write_file("f", b"one")
    tree.write_file(".zattrs", zattrs({"a": 1}))
    first = tree.commit()
    tree.write_file("f", b"two")
    tree.write_file(".zattrs", zattrs({"a": 2}))
    assert tree.commit() != first
    tree.write_file("f", b"one")
    tree.write_file(".zattrs", zattrs({"a": 1}))
    assert tree.commit() == first


# --- round trips of every kind of entry ------------------------------------------------

ZARRAY_V2 = zattrs({"chunks": [3], "dtype": "<f8", "fill_value": "NaN", "shape": [3], "zarr_format": 2})
ROUND_TRIP_FILES: dict[str, bytes] = {
    "empty": b"",
    "small.bin": b"hello",
    "exactly-one-block": payload(MIB, seed=1),
    "chunked.bin": payload(MIB + 12345, seed=2),
    "g/.zattrs": zattrs({"title": "t\u00e9st", "scale": 0.5, "big": 2**64 - 1, "neg": -0.0}),
    "g/.zarray": ZARRAY_V2,
    "g/.zgroup": b'{\n  "zarr_format": 2\n}',  # two-space indent: not inlined, still exact
    "g/.zmetadata": b"not json at all",
    "g/zarr.json": metadata.render("zarr.json", {"node_type": "group", "zarr_format": 3}),
    "g/sub/zarr.json": json.dumps({"zarr_format": 3, "node_type": "group"}, indent=2).encode(),
    "g/huge/.zattrs": zattrs({"blob": "y" * (MIB + 10)}),  # over the inline limit: a chunked file
    "g/notmeta.json": zattrs({"a": 1}),
    "n1/n2/n3/n4/leaf": b"deep",
    ".zattrs/inside": b"a directory named like metadata",
    ".zattrs/.zattrs": zattrs({}),
    "names/hamt": b"h",
    "names/hashAlg": b"18",
    "names/bucketSize": b"3",
    "names/\u00e9\u00e8\u65e5\u672c": b"utf-8 name",
    "names/" + "x" * 255: b"longest name",
    "names/with space and \u2603": b"",
}
ROUND_TRIP_DIRS = {"emptydir", "n1/emptier", "hamtdir/hamt", "zarr.json"}


def test_round_trip_of_every_entry_kind(store: Blockstore) -> None:
    root = build(store, ROUND_TRIP_FILES, ROUND_TRIP_DIRS)
    tree = Tree(store, root)
    assert read_tree(tree) == ROUND_TRIP_FILES
    assert tree_dirs(tree) >= ROUND_TRIP_DIRS
    assert tree.listdir("emptydir") == []
    assert tree.listdir("zarr.json") == []
    assert isinstance(tree.resolve(".zattrs"), Directory)
    assert isinstance(tree.resolve("zarr.json"), Directory)
    assert isinstance(tree.resolve("names/hamt"), File)
    assert isinstance(tree.resolve("hamtdir/hamt"), Directory)
    for path, data in ROUND_TRIP_FILES.items():
        assert tree.size(tree.resolve(path)) == len(data)
        reader = tree.reader(tree.resolve_file(path))
        assert reader.read(1, 3) == data[1:4]
        assert reader.read(len(data), 5) == b""
    assert_blocks_within_limit(store)

    value = node_value(store, root)
    g = value["g"]
    assert g[".zattrs"] == {"title": "t\u00e9st", "scale": 0.5, "big": 2**64 - 1, "neg": -0.0}
    assert g[".zarray"]["fill_value"] == "NaN"
    assert g["zarr.json"] == {"node_type": "group", "zarr_format": 3}
    for name in (".zgroup", ".zmetadata", "notmeta.json"):
        assert g[name] == codec.Link(cids.block_cid(cids.RAW, ROUND_TRIP_FILES["g/" + name]))
    assert isinstance(g["huge"][".zattrs"], codec.Link)
    assert cids.codec_of(g["huge"][".zattrs"].cid) == cids.DAG_CBOR
    assert isinstance(g["sub"]["zarr.json"], codec.Link)  # zarr-python 3 key order: not inlined
    assert isinstance(value[".zattrs"], codec.Link)  # a directory under a metadata name is a link
    assert isinstance(value["zarr.json"], codec.Link)
    assert value["emptydir"] == {}
    assert isinstance(value["chunked.bin"], codec.Link)


def test_reloaded_tree_re_encodes_identically(store: Blockstore) -> None:
    """Dirtying every directory of a reloaded tree must re-encode it to the same bytes."""
    root = build(store, ROUND_TRIP_FILES, ROUND_TRIP_DIRS)
    tree = Tree(store, root)
    for path in ["", *sorted(tree_dirs(tree))]:
        probe = f"{path}/probe" if path else "probe"
        tree.write_file(probe, b"p")
        tree.remove(probe)
    assert tree.root.dirty
    assert tree.commit() == root
    assert read_tree(Tree(store, root)) == ROUND_TRIP_FILES


def test_round_trip_is_order_independent(store: Blockstore) -> None:
    expected = build(store, ROUND_TRIP_FILES, ROUND_TRIP_DIRS)
    order = list(ROUND_TRIP_FILES)
    random.Random(3).shuffle(order)
    assert build(MemoryBlockstore(), ROUND_TRIP_FILES, ROUND_TRIP_DIRS, order=order) == expected


@pytest.mark.parametrize("reload", [False, True])
def test_metadata_renamed_between_names(store: Blockstore, reload: bool) -> None:
    """Moving metadata between names re-decides inlining by the new name's rule."""
    v2 = zattrs({"b": [1, 2]})
    tree = Tree(store)
    tree.write_file(".zattrs", v2)
    tree.write_file("plain", v2)
    committed = tree.commit()
    if reload:  # inline values come back as InlineFile, raw blocks as StoredFile
        tree = Tree(store, committed)
    tree.rename(tree.root, ".zattrs", tree.root, "zarr.json")  # v2 text under the v3 rule: not inline
    tree.rename(tree.root, "plain", tree.root, ".zarray")  # raw block becomes inline
    root = tree.commit()
    value = node_value(store, root)
    assert value["zarr.json"] == codec.Link(cids.block_cid(cids.RAW, v2))
    assert value[".zarray"] == {"b": [1, 2]}
    assert root == build(MemoryBlockstore(), {"zarr.json": v2, ".zarray": v2})
    assert read_tree(Tree(store, root)) == {"zarr.json": v2, ".zarray": v2}


def test_whole_files_keeps_one_raw_block(store: Blockstore) -> None:
    data = payload(3 * MIB, seed=3)
    tree = Tree(store, whole_files=True)
    tree.write_file("big", data)
    root = tree.commit()
    link = node_value(store, root)["big"]
    assert link == codec.Link(cids.block_cid(cids.RAW, data))
    assert store.size(link.cid) == 3 * MIB
    reopened = Tree(store, root)
    assert reopened.read_file("big") == data
    assert (
        reopened.reader(reopened.resolve_file("big")).read(2 * MIB - 1, 2) == data[2 * MIB - 1 : 2 * MIB + 1]
    )
    chunked = Tree(MemoryBlockstore())
    chunked.write_file("big", data)
    assert chunked.commit() != root


# --- sharding and demotion ------------------------------------------------------------


def chunk_keys(rows: int, cols: int) -> list[str]:
    return [f"{i}.{j}" for i in range(rows) for j in range(cols)]


def test_sharded_directory(store: Blockstore) -> None:
    keys = chunk_keys(150, 200)  # 30,000 entries
    contents = {f"arr/{key}": bytes([index % 251]) for index, key in enumerate(keys)}
    contents["arr/.zarray"] = ZARRAY_V2
    contents[".zgroup"] = zattrs({"zarr_format": 2})

    with store.batch():
        root = build(store, contents)
    assert_blocks_within_limit(store)
    value = node_value(store, root)
    assert value[".zgroup"] == {"zarr_format": 2}
    assert isinstance(value["arr"], codec.Link)
    arr = node_value(store, value["arr"].cid)
    assert hamt.is_root(arr)
    assert len(dict(hamt.iter_entries(store, arr))) == len(keys) + 1

    tree = Tree(store, root)
    assert tree.listdir("arr") == sorted([*keys, ".zarray"])
    assert read_tree(tree) == contents

    order = list(contents)
    random.Random(30_000).shuffle(order)
    assert build(MemoryBlockstore(), contents, order=order) == root

    # change a reloaded sharded directory: the result depends on the contents alone
    tree.write_file("arr/0.0", b"changed")
    for key in keys[1:200]:
        tree.remove("arr/" + key)
    changed = tree.commit()
    expected = dict(contents)
    expected["arr/0.0"] = b"changed"
    for key in keys[1:200]:
        del expected["arr/" + key]
    assert changed == build(MemoryBlockstore(), expected)
    assert read_tree(Tree(store, changed)) == expected


def test_sharded_root_shrinks_back_to_a_map(store: Blockstore) -> None:
    keys = chunk_keys(150, 200)
    with store.batch():
        root = build(store, {key: b"\x01" for key in keys})
    assert hamt.is_root(node_value(store, root))
    assert_blocks_within_limit(store)
    tree = Tree(store, root)
    assert len(tree.listdir()) == len(keys)
    for key in keys[1000:]:
        tree.remove(key)
    small = tree.commit()
    remaining = {key: b"\x01" for key in keys[:1000]}
    assert small == build(MemoryBlockstore(), remaining)
    value = node_value(store, small)
    assert not hamt.is_root(value) and len(value) == 1000
    assert read_tree(Tree(store, small)) == remaining


def test_files_named_like_hamt_keys_stay_a_plain_directory(store: Blockstore) -> None:
    files = {"d/hashAlg": b"18", "d/bucketSize": b"3", "d/hamt": b"[]"}
    root = build(store, files)
    d = node_value(store, root)["d"]
    assert set(d) == {"hashAlg", "bucketSize", "hamt"} and not hamt.is_root(d)
    assert read_tree(Tree(store, root)) == files
    dirs_root = build(store, {}, dirs=["e/hashAlg", "e/bucketSize", "e/hamt"])
    assert tree_dirs(Tree(store, dirs_root)) == {"e", "e/hashAlg", "e/bucketSize", "e/hamt"}


def big_inline_contents(groups: int) -> dict[str, bytes]:
    """Many subdirectories whose inline metadata together pushes their parent over 1 MiB."""
    return {
        f"vars/g{index:03d}/.zattrs": zattrs({"index": index, "text": "t" * (4000 + 37 * index)})
        for index in range(groups)
    } | {f"vars/g{index:03d}/0": bytes([index]) for index in range(groups)}


def test_large_inline_subdirectories_are_demoted(store: Blockstore) -> None:
    contents = big_inline_contents(200)
    root = build(store, contents)
    assert_blocks_within_limit(store)
    vars_value = node_value(store, root)["vars"]
    if isinstance(vars_value, codec.Link):
        vars_value = node_value(store, vars_value.cid)
    assert not hamt.is_root(vars_value)
    inline = {name for name, entry in vars_value.items() if isinstance(entry, dict)}
    linked = {name for name, entry in vars_value.items() if isinstance(entry, codec.Link)}
    assert inline and linked and len(inline) + len(linked) == 200
    # the largest entries are the ones demoted
    assert max(int(name[1:]) for name in inline) < min(int(name[1:]) for name in linked)
    assert len(codec.encode(vars_value)) <= BLOCK_LIMIT

    order = list(contents)
    random.Random(200).shuffle(order)
    assert build(MemoryBlockstore(), contents, order=order) == root
    assert read_tree(Tree(store, root)) == contents


def test_nested_inline_metadata_stays_under_the_limit(store: Blockstore) -> None:
    """Inline content accumulates up a chain of directories; every level must still fit."""
    contents = {
        "/".join(f"d{level}" for level in range(depth)) + "/.zattrs": zattrs(
            {"blob": "z" * 300_000, "d": depth}
        )
        for depth in range(1, 9)
    }
    root = build(store, contents)
    assert_blocks_within_limit(store)
    assert read_tree(Tree(store, root)) == contents
    assert build(MemoryBlockstore(), contents, order=sorted(contents, reverse=True)) == root


def fixed(cid: bytes) -> Callable[[], bytes]:
    return lambda: cid


def block_depths(store: Blockstore) -> list[int]:
    return [codec.depth(node_value(store, cid)) for cid in store if cids.codec_of(cid) == cids.DAG_CBOR]


def test_deep_directory_chain(store: Blockstore) -> None:
    """600 nested directories: inline nesting is capped, so the commit neither recurses nor fails."""
    deep = "/".join(f"d{level}" for level in range(600))
    contents = {deep + "/f": b"deep", "d0/d1/g": b"shallow"}
    root = build(store, contents)
    assert max(block_depths(store)) <= dirnode.MAX_NODE_DEPTH
    assert read_tree(Tree(store, root)) == contents
    assert build(MemoryBlockstore(), contents, order=sorted(contents, reverse=True)) == root


def test_deeply_nested_metadata_is_a_link(store: Blockstore) -> None:
    value: Any = 1
    for _ in range(dirnode.MAX_NODE_DEPTH + 5):
        value = [value]
    shallow = {"k": [[[1]]]}
    contents = {"deep/.zattrs": zattrs(value), "shallow/.zattrs": zattrs(shallow)}
    root = build(store, contents)
    root_value = node_value(store, root)
    assert root_value["deep"][".zattrs"] == codec.Link(cids.block_cid(cids.RAW, contents["deep/.zattrs"]))
    assert root_value["shallow"][".zattrs"] == shallow
    assert max(block_depths(store)) <= dirnode.MAX_NODE_DEPTH
    assert read_tree(Tree(store, root)) == contents


def _entry_sizes(most: int) -> st.SearchStrategy[dict[str, int | None]]:
    """Up to *most* names, each a link (None) or an inline value of about that many bytes."""
    return st.dictionaries(
        st.text(alphabet="abcdefgh.", min_size=1, max_size=6),
        st.one_of(st.none(), st.integers(0, 600)),
        min_size=1,
        max_size=most,
    )


def _entry_forms(sizes: dict[str, int | None]) -> dict[str, dirnode.EntryForm]:
    """A link entry per name of size None, else an inlinable map of about that many bytes."""
    forms: dict[str, dirnode.EntryForm] = {}
    for name, size in sizes.items():
        link = fixed(cids.block_cid(cids.RAW, name.encode()))
        if size is None:
            forms[name] = dirnode.EntryForm(link=link)
        else:
            value = {"blob": b"b" * size}
            forms[name] = dirnode.EntryForm(link=link, inline=value, inline_size=len(codec.encode(value)))
    return forms


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    _entry_sizes(20),
    st.integers(200, 3000),
)
def test_layout_rule(sizes: dict[str, int | None], limit: int) -> None:
    """dirnode.layout with a small limit: the node fits, and only the largest entries are links."""
    store = MemoryBlockstore()
    forms = _entry_forms(sizes)
    form = dirnode.layout(store, forms, limit=limit)
    if form.sharded:
        all_links = {name: codec.Link(cids.block_cid(cids.RAW, name.encode())) for name in sizes}
        assert len(codec.encode(all_links)) > limit
        assert dict(hamt.iter_entries(store, form.value)) == all_links
        return
    assert len(form.data) <= limit
    inline = [forms[name].inline_size for name, entry in form.value.items() if isinstance(entry, dict)]
    demoted = [
        forms[name].inline_size
        for name, entry in form.value.items()
        if isinstance(entry, codec.Link) and sizes[name] is not None
    ]
    if demoted:
        assert min(demoted) >= max(inline, default=0)
        # demotion stopped as soon as the node fit: re-inlining the smallest demoted entry would overflow
        smallest = min(demoted)
        link_size = dirnode.LINK_SIZE
        assert len(form.data) + smallest - link_size > limit or smallest <= link_size


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    _entry_sizes(60),
    st.integers(200, 3000),
    st.randoms(use_true_random=False),
)
def test_entries_given_as_bare_links_lay_out_as_their_entry_forms(
    sizes: dict[str, int | None], limit: int, rng: random.Random
) -> None:
    """A stored chunk is handed to layout as a bare link (no EntryForm per file): the node, plain
    or sharded, is byte for byte the one its EntryForm gives, wherever the limit falls."""
    store = MemoryBlockstore()
    forms = _entry_forms(sizes)
    bare = {name for name, size in sizes.items() if size is None and rng.random() < 0.7}
    links = {name: codec.Link(cids.block_cid(cids.RAW, name.encode())) for name in bare}
    rest = {name: form for name, form in forms.items() if name not in bare}
    expected = dirnode.layout(MemoryBlockstore(), forms, limit=limit)
    got = dirnode.layout(store, rest, limit=limit, links=links)
    assert (got.sharded, got.data) == (expected.sharded, expected.data)


# --- rename, unlink, rmdir --------------------------------------------------------------


@pytest.fixture
def small_tree(store: Blockstore) -> Tree:
    tree = Tree(store)
    tree.write_file("f1", b"one")
    tree.write_file("f2", b"two")
    tree.write_file("full/x", b"x")
    tree.makedirs("empty")
    tree.makedirs("d1/sub/subsub")
    tree.write_file("d1/file", b"in d1")
    return tree


def test_rename_file_over_file(small_tree: Tree) -> None:
    root = small_tree.root
    small_tree.rename(root, "f1", root, "f2")
    assert small_tree.read_file("f2") == b"one"
    assert not small_tree.exists("f1")
    assert small_tree.commit() == build(
        MemoryBlockstore(), {"f2": b"one", "full/x": b"x", "d1/file": b"in d1"}, ["empty", "d1/sub/subsub"]
    )


def test_rename_dir_over_empty_dir(small_tree: Tree) -> None:
    root = small_tree.root
    small_tree.rename(root, "d1", root, "empty")
    assert not small_tree.exists("d1")
    assert small_tree.read_file("empty/file") == b"in d1"
    assert small_tree.listdir("empty/sub") == ["subsub"]
    small_tree.commit()
    assert read_tree(Tree(small_tree.store, small_tree.commit()))["empty/file"] == b"in d1"


def test_rename_into_other_directory_and_back(small_tree: Tree) -> None:
    before = small_tree.commit()
    root = small_tree.root
    small_tree.rename(root, "f1", small_tree.resolve_dir("d1/sub"), "moved")
    assert small_tree.read_file("d1/sub/moved") == b"one"
    assert small_tree.commit() != before
    small_tree.rename(small_tree.resolve_dir("d1/sub"), "moved", root, "f1")
    assert small_tree.commit() == before


@pytest.mark.parametrize(
    ("source", "target", "error"),
    [
        ("d1", "full", DirectoryNotEmptyError),
        ("f1", "empty", IsDirectoryError),
        ("d1", "f1", NotDirectoryError),
        ("missing", "f1", NotFoundError),
    ],
)
def test_rename_refused(small_tree: Tree, source: str, target: str, error: type[Exception]) -> None:
    before = read_tree(small_tree), tree_dirs(small_tree)
    root = small_tree.root
    with pytest.raises(error):
        small_tree.rename(root, source, root, target)
    assert (read_tree(small_tree), tree_dirs(small_tree)) == before


def test_rename_directory_into_itself(small_tree: Tree) -> None:
    root = small_tree.root
    d1 = small_tree.resolve_dir("d1")
    for target in (d1, small_tree.resolve_dir("d1/sub"), small_tree.resolve_dir("d1/sub/subsub")):
        with pytest.raises(InvalidMoveError):
            small_tree.rename(root, "d1", target, "x")
    assert small_tree.exists("d1/sub/subsub")


def test_rename_without_replace(small_tree: Tree) -> None:
    root = small_tree.root
    with pytest.raises(AlreadyExistsError):
        small_tree.rename(root, "f1", root, "f2", replace=False)
    with pytest.raises(AlreadyExistsError):
        small_tree.rename(root, "d1", root, "empty", replace=False)
    assert small_tree.read_file("f1") == b"one" and small_tree.read_file("f2") == b"two"
    small_tree.rename(root, "f1", root, "f3", replace=False)
    assert small_tree.read_file("f3") == b"one"


def test_rename_onto_itself_is_a_no_op(small_tree: Tree) -> None:
    before = small_tree.commit()
    small_tree.rename(small_tree.root, "f1", small_tree.root, "f1")
    small_tree.rename(small_tree.root, "d1", small_tree.root, "d1")
    assert small_tree.commit() == before


def test_unlink_and_rmdir(small_tree: Tree) -> None:
    root = small_tree.root
    with pytest.raises(IsDirectoryError):
        small_tree.unlink(root, "empty")
    with pytest.raises(DirectoryNotEmptyError):
        small_tree.rmdir(root, "full")
    with pytest.raises(DirectoryNotEmptyError):
        small_tree.remove("d1/sub")
    with pytest.raises(NotDirectoryError):
        small_tree.rmdir(root, "f1")
    with pytest.raises(NotFoundError):
        small_tree.unlink(root, "missing")
    with pytest.raises(NotFoundError):
        small_tree.remove("full/missing")
    with pytest.raises(NotDirectoryError):
        small_tree.remove("f1/x")
    small_tree.rmdir(root, "empty")
    small_tree.unlink(small_tree.resolve_dir("full"), "x")
    small_tree.rmdir(root, "full")
    assert small_tree.listdir() == ["d1", "f1", "f2"]


def test_write_file_conflicts(small_tree: Tree) -> None:
    with pytest.raises(IsDirectoryError):
        small_tree.write_file("empty", b"x")
    with pytest.raises(NotDirectoryError):
        small_tree.write_file("f1/x", b"x")
    with pytest.raises(NotDirectoryError):
        small_tree.makedirs("f1/x")
    with pytest.raises(AlreadyExistsError):
        small_tree.mkdir(small_tree.root, "f1")
    with pytest.raises(AlreadyExistsError):
        small_tree.create(small_tree.root, "empty")


# --- names -------------------------------------------------------------------------------

BAD_NAMES: list[tuple[str, type[Exception]]] = [
    ("", InvalidNameError),
    (".", InvalidNameError),
    ("..", InvalidNameError),
    ("a/b", InvalidNameError),
    ("/", InvalidNameError),
    ("nul\0byte", InvalidNameError),
    ("\ud800", InvalidNameError),
    ("x" * 256, NameTooLongError),
    ("\u00e9" * 128, NameTooLongError),  # 128 characters, 256 bytes
    ("\U0001f600" * 64, NameTooLongError),  # 64 characters, 256 bytes
]
GOOD_NAMES = ["x" * 255, "\u00e9" * 127 + "x", "\U0001f600" * 63 + "abc", "...", ".hidden", " ", "a\\b"]


@pytest.mark.parametrize(("name", "error"), BAD_NAMES, ids=[repr(name)[:20] for name, _ in BAD_NAMES])
def test_bad_names(store: Blockstore, name: str, error: type[Exception]) -> None:
    tree = Tree(store)
    file = tree.write_file("f", b"x")
    root = tree.root
    with pytest.raises(error):
        tree.create(root, name)
    with pytest.raises(error):
        tree.mkdir(root, name)
    with pytest.raises(error):
        tree.rename(root, "f", root, name)
    with pytest.raises(error):
        tree.link(file, root, name)
    assert tree.listdir() == ["f"]


@pytest.mark.parametrize("name", GOOD_NAMES, ids=[repr(name)[:20] for name in GOOD_NAMES])
def test_good_names(store: Blockstore, name: str) -> None:
    assert len(name.encode()) <= 255
    tree = Tree(store)
    tree.create(tree.root, name, tree.store_bytes(b"content"))
    tree.mkdir(tree.makedirs("dirs"), name)
    root = tree.commit()
    reopened = Tree(store, root)
    assert reopened.read_file(name) == b"content"
    assert isinstance(reopened.resolve("dirs/" + name), Directory)
    assert reopened.listdir() == sorted([name, "dirs"])


# --- hard links ------------------------------------------------------------------------------


def test_hard_link_shares_content_changes(store: Blockstore) -> None:
    tree = Tree(store)
    file = tree.write_file("a/f", b"one")
    tree.link(file, tree.makedirs("b"), "g")
    tree.link(file, tree.resolve_dir("a"), "f2")
    first = tree.commit()
    assert first == build(MemoryBlockstore(), {"a/f": b"one", "a/f2": b"one", "b/g": b"one"})

    tree.set_content(file, tree.store_bytes(b"two"))
    assert tree.read_file("a/f") == tree.read_file("a/f2") == tree.read_file("b/g") == b"two"
    second = tree.commit()
    value = node_value(store, second)
    link = codec.Link(cids.block_cid(cids.RAW, b"two"))
    assert value["a"] == {"f": link, "f2": link} and value["b"] == {"g": link}
    assert second == build(MemoryBlockstore(), {"a/f": b"two", "a/f2": b"two", "b/g": b"two"})

    tree.unlink(tree.resolve_dir("a"), "f")
    tree.set_content(file, tree.store_bytes(b"three"))
    assert tree.read_file("b/g") == tree.read_file("a/f2") == b"three"
    third = tree.commit()
    assert read_tree(Tree(store, third)) == {"a/f2": b"three", "b/g": b"three"}


def test_hard_link_refusals(small_tree: Tree) -> None:
    root = small_tree.root
    with pytest.raises(IsDirectoryError):
        small_tree.link(small_tree.resolve_dir("d1"), root, "dlink")
    with pytest.raises(AlreadyExistsError):
        small_tree.link(small_tree.resolve_file("f1"), root, "f2")


def test_hard_linked_metadata_inlines_under_both_names(store: Blockstore) -> None:
    tree = Tree(store)
    file = tree.write_file("x/.zattrs", zattrs({"a": 1}))
    tree.link(file, tree.makedirs("y"), ".zattrs")
    tree.set_content(file, tree.content_for(".zattrs", zattrs({"a": 2})))
    value = node_value(store, tree.commit())
    assert value == {"x": {".zattrs": {"a": 2}}, "y": {".zattrs": {"a": 2}}}


# --- read-only trees -------------------------------------------------------------------------


def test_read_only_tree_refuses_changes(store: Blockstore, seed_tree_dir: Path) -> None:
    files = seed_files(seed_tree_dir)
    root = build(store, files)
    tree = Tree(store, root, read_only=True)
    top = tree.root
    chunk = tree.resolve_file("a/0")
    refused: list[Callable[[], object]] = [
        lambda: tree.write_file("new", b"x"),
        lambda: tree.write_file("a/0", b"x"),
        lambda: tree.write_file(".zattrs", b"{}"),
        lambda: tree.create(top, "new"),
        lambda: tree.mkdir(top, "new"),
        lambda: tree.makedirs("new/dir"),
        lambda: tree.unlink(top, ".zattrs"),
        lambda: tree.rmdir(top, "a"),
        lambda: tree.remove("a/0"),
        lambda: tree.rename(top, ".zattrs", top, "moved"),
        lambda: tree.link(chunk, top, "hard"),
        lambda: tree.set_content(chunk, tree.content_for("0", b"y")),
    ]
    for attempt in refused:
        with pytest.raises(ReadOnlyError):
            attempt()
    assert read_tree(tree) == files
    assert not tree.root.dirty
    assert tree.commit() == root


# --- missing blocks ---------------------------------------------------------------------------


def test_missing_block_gives_a_broken_entry(store: Blockstore) -> None:
    contents = {
        "top.txt": b"top",
        "sub/ok.txt": b"fine",
        "sub/big.bin": payload(MIB + 10, seed=11),
        "sub/.zattrs/inner": b"in a linked directory",
        "sub/.zgroup": zattrs({"zarr_format": 2}),
    }
    root = build(store, contents)
    sub_value = node_value(store, root)["sub"]
    big_cid, dir_cid = sub_value["big.bin"].cid, sub_value[".zattrs"].cid
    assert cids.codec_of(big_cid) == cids.codec_of(dir_cid) == cids.DAG_CBOR
    damaged = copy_store(store, leave_out=[big_cid, dir_cid])

    tree = Tree(damaged, root)
    assert tree.read_file("top.txt") == b"top"
    assert tree.read_file("sub/ok.txt") == b"fine"
    assert tree.read_file("sub/.zgroup") == contents["sub/.zgroup"]
    assert tree.listdir("sub") == [".zattrs", ".zgroup", "big.bin", "ok.txt"]
    sub = tree.resolve_dir("sub")
    for name, cid in (("big.bin", big_cid), (".zattrs", dir_cid)):
        node = tree.lookup(sub, name)
        assert isinstance(node, Broken) and node.cid == cid
        with pytest.raises(BlockNotFoundError):
            tree.size(node)
        with pytest.raises(BlockNotFoundError):
            tree.resolve("sub/" + name)
    with pytest.raises(BlockNotFoundError):
        tree.read_file("sub/big.bin")
    with pytest.raises(BlockNotFoundError):
        tree.read_file("sub/.zattrs/inner")
    with pytest.raises(BlockNotFoundError):
        read_tree(tree)

    tree.write_file("sub/new.txt", b"new")
    tree.write_file("other/file", b"other")
    changed = tree.commit()
    new_sub = node_value(damaged, changed)["sub"]
    assert new_sub["big.bin"] == codec.Link(big_cid)
    assert new_sub[".zattrs"] == codec.Link(dir_cid)
    intact = Tree(store, root)
    intact.write_file("sub/new.txt", b"new")
    intact.write_file("other/file", b"other")
    assert intact.commit() == changed

    # a broken entry can still be removed
    tree.remove("sub/big.bin")
    intact.remove("sub/big.bin")
    assert tree.commit() == intact.commit()


def test_missing_root_block(store: Blockstore) -> None:
    root = build(store, {"f": b"x"})
    with pytest.raises(BlockNotFoundError):
        Tree(MemoryBlockstore(), root)


def test_missing_raw_block_fails_on_read(store: Blockstore) -> None:
    root = build(store, {"d/f": b"raw content", "d/g": b"sibling"})
    damaged = copy_store(store, leave_out=[cids.block_cid(cids.RAW, b"raw content")])
    tree = Tree(damaged, root)
    assert tree.read_file("d/g") == b"sibling"
    with pytest.raises(BlockNotFoundError):
        tree.read_file("d/f")


# --- the model-based property test ---------------------------------------------------------------

NAMES = ["a", "b", ".zattrs", "zarr.json", "0.0"]
paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)

json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**64), 2**64 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=10,
)
contents = st.one_of(
    st.binary(max_size=40),
    json_values.map(lambda value: metadata.render(".zattrs", value)),
    json_values.map(lambda value: metadata.render("zarr.json", value)),
    json_values.map(lambda value: json.dumps(value, indent=4).encode()),
    st.builds(
        lambda size, seed: payload(size, seed),
        st.sampled_from([MIB - 1, MIB, MIB + 1, 2 * MIB + 3]),
        st.integers(0, 3),
    ),
    st.sampled_from([300_000, 700_000]).map(lambda size: zattrs({"blob": "m" * size})),
)


def parent_of(path: str) -> str:
    return path.rpartition("/")[0]


class TreeModel(RuleBasedStateMachine):
    """Random changes to a Tree and to a {path: bytes} model must agree at every step."""

    def __init__(self) -> None:
        super().__init__()
        self.store: Blockstore = MemoryBlockstore()
        self.tree = Tree(self.store)
        self.files: dict[str, bytes] = {}
        self.dirs: set[str] = set()
        self.committed: tuple[bytes | None, dict[str, bytes], set[str]] = (None, {}, set())

    # model helpers

    def kind(self, path: str) -> str | None:
        if path in self.files:
            return "file"
        if path in self.dirs:
            return "dir"
        return None

    def below(self, path: str) -> list[str]:
        prefix = path + "/"
        return [p for p in [*self.files, *self.dirs] if p.startswith(prefix)]

    def parents_error(self, path: str) -> type[IpldmountError] | None:
        """The error resolving *path*'s parent directory gives, if any."""
        parts = path.split("/")
        for depth in range(1, len(parts)):
            kind = self.kind("/".join(parts[:depth]))
            if kind is None:
                return NotFoundError
            if kind == "file":
                return NotDirectoryError
        return None

    def add_parents(self, path: str) -> None:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            self.dirs.add("/".join(parts[:depth]))

    def existing(self) -> list[str]:
        return sorted([*self.files, *self.dirs])

    # rules

    @rule(path=paths, data=contents)
    def write_file(self, path: str, data: bytes) -> None:
        parts = path.split("/")
        blocked = any(self.kind("/".join(parts[:depth])) == "file" for depth in range(1, len(parts)))
        if blocked:
            with pytest.raises(NotDirectoryError):
                self.tree.write_file(path, data)
        elif path in self.dirs:
            with pytest.raises(IsDirectoryError):
                self.tree.write_file(path, data)
        else:
            self.tree.write_file(path, data)
            self.files[path] = data
            self.add_parents(path)

    @rule(path=paths)
    def makedirs(self, path: str) -> None:
        parts = path.split("/")
        if any(self.kind("/".join(parts[:depth])) == "file" for depth in range(1, len(parts) + 1)):
            with pytest.raises(NotDirectoryError):
                self.tree.makedirs(path)
        else:
            self.tree.makedirs(path)
            self.add_parents(path)
            self.dirs.add(path)

    @rule(path=paths)
    def remove(self, path: str) -> None:
        error = self.parents_error(path)
        if error is None:
            kind = self.kind(path)
            if kind is None:
                error = NotFoundError
            elif kind == "dir" and self.below(path):
                error = DirectoryNotEmptyError
        if error is not None:
            with pytest.raises(error):
                self.tree.remove(path)
            return
        self.tree.remove(path)
        self.files.pop(path, None)
        self.dirs.discard(path)

    @precondition(lambda self: self.files or self.dirs)
    @rule(data=st.data())
    def remove_existing(self, data: st.DataObject) -> None:
        self.remove(data.draw(st.sampled_from(self.existing()), label="path"))

    @precondition(lambda self: self.files or self.dirs)
    @rule(data=st.data(), replace=st.booleans())
    def rename(self, data: st.DataObject, replace: bool) -> None:
        source = data.draw(st.sampled_from(self.existing()), label="source")
        target_parent = data.draw(st.sampled_from(["", *sorted(self.dirs)]), label="target parent")
        new_name = data.draw(st.sampled_from(NAMES), label="new name")
        target = f"{target_parent}/{new_name}" if target_parent else new_name
        source_kind, target_kind = self.kind(source), self.kind(target)

        error: type[IpldmountError] | None = None
        if source == target:
            pass
        elif source_kind == "dir" and target.startswith(source + "/"):
            error = InvalidMoveError
        elif target_kind is not None:
            if not replace:
                error = AlreadyExistsError
            elif target_kind == "dir" and source_kind == "file":
                error = IsDirectoryError
            elif target_kind == "dir" and self.below(target):
                error = DirectoryNotEmptyError
            elif target_kind == "file" and source_kind == "dir":
                error = NotDirectoryError

        def attempt() -> None:
            self.tree.rename(
                self.tree.resolve_dir(parent_of(source)),
                source.rpartition("/")[2],
                self.tree.resolve_dir(target_parent),
                new_name,
                replace=replace,
            )

        if error is not None:
            with pytest.raises(error):
                attempt()
            return
        attempt()
        if source == target:
            return
        self.files.pop(target, None)
        self.dirs.discard(target)

        def moved(path: str) -> str:
            return target + path[len(source) :]

        moving = [source, *self.below(source)]
        for path in moving:
            if path in self.files:
                self.files[moved(path)] = self.files.pop(path)
            else:
                self.dirs.discard(path)
                self.dirs.add(moved(path))

    @rule()
    def commit(self) -> None:
        blocks_before = len(self.store)
        preview = self.tree.preview_root()
        assert len(self.store) == blocks_before, "a preview stores nothing"
        root = self.tree.commit()
        assert preview == root
        assert not self.tree.root.dirty
        assert self.tree.commit() == root
        assert root == build(MemoryBlockstore(), self.files, self.dirs)
        assert_blocks_within_limit(self.store)
        self.committed = (root, dict(self.files), set(self.dirs))

    @rule()
    def reopen(self) -> None:
        """Drop uncommitted changes: open the last committed root again."""
        root, files, dirs = self.committed
        self.tree = Tree(self.store, root) if root is not None else Tree(self.store)
        self.files, self.dirs = dict(files), set(dirs)

    @rule()
    def commit_and_reopen(self) -> None:
        self.commit()
        self.reopen()

    @invariant()
    def same_contents(self) -> None:
        assert read_tree(self.tree) == self.files
        assert tree_dirs(self.tree) == self.dirs

    @invariant()
    def subdirectory_counts(self) -> None:
        for path in ["", *self.dirs]:
            prefix = path + "/" if path else ""
            children = {d for d in self.dirs if d.startswith(prefix) and "/" not in d[len(prefix) :]}
            assert self.tree.subdirectories(self.tree.resolve_dir(path)) == len(children), path

    @invariant()
    def shown_cids_are_fetchable(self) -> None:
        """Every CID describe() gives names a block in the store; nothing else claims one."""
        for path in [*self.files, *self.dirs]:
            state = self.tree.describe(self.tree.resolve(path))
            assert sum([state.cid is not None, state.inline, state.changed]) == 1, (path, state)
            if state.cid is not None:
                assert self.store.has(state.cid), path


TestTreeModel = TreeModel.TestCase
TestTreeModel.settings = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class TreeModelOnDisk(TreeModel):
    """The same machine over a DirectoryBlockstore (fewer examples: every put hits the disk)."""

    @initialize()
    def on_disk(self) -> None:
        import tempfile

        from ipldmount.blocks import DirectoryBlockstore

        self._tmp = tempfile.TemporaryDirectory()
        self.store = DirectoryBlockstore(Path(self._tmp.name) / "store")
        self.tree = Tree(self.store)

    def teardown(self) -> None:
        self._tmp.cleanup()


TestTreeModelOnDisk = TreeModelOnDisk.TestCase
TestTreeModelOnDisk.settings = settings(
    max_examples=25,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- hostile directory blocks (issue: a change must never drop what could not be read) ------


def _root_with(store: Blockstore, value: dict[Any, Any]) -> bytes:
    """Store a directory node as given, bypassing the encoder's checks where it would refuse."""
    import cbor2

    prepared = {
        key: cbor2.CBORTag(42, b"\0" + entry.cid) if isinstance(entry, codec.Link) else entry
        for key, entry in value.items()
    }
    return store.put(cbor2.dumps(prepared, canonical=True), cids.DAG_CBOR)


@pytest.mark.parametrize("bad", ["a\0b", ".", "..", "", "a/b", "../../x", "x" * 256])
def test_a_directory_with_an_invalid_name_refuses_changes_and_keeps_everything(
    store: Blockstore, bad: str
) -> None:
    ok = codec.Link(store.put(b"kept", cids.RAW))
    root = _root_with(store, {bad: codec.Link(store.put(b"bad", cids.RAW)), "ok": ok})
    tree = Tree(store, root)
    for _ in range(2):  # the second attempt must not see a half-loaded directory
        with pytest.raises(FormatError):
            tree.entries(tree.root)
        with pytest.raises(FormatError):
            tree.write_file("newfile", b"x")
    assert tree.commit() == root, "nothing changed, nothing dropped"


def test_a_nested_byte_string_key_makes_its_block_malformed(store: Blockstore) -> None:
    import cbor2

    inner = {b"bytes-key": {}}
    data = cbor2.dumps({"ok": {}, "sub": {"deeper": inner}}, canonical=True)
    root = store.put(data, cids.DAG_CBOR)
    with pytest.raises(CorruptBlockError):
        Tree(store, root)
    # linked from a readable parent: a broken entry, and the parent still changes and commits
    parent = _root_with(store, {"sub": codec.Link(root), "f": codec.Link(store.put(b"f", cids.RAW))})
    tree = Tree(store, parent)
    assert isinstance(tree.lookup(tree.root, "sub"), Broken)
    tree.write_file("new", b"n")
    committed = codec.decode(store.get(tree.commit()))
    assert committed["sub"] == codec.Link(root), "the broken entry keeps its link"


def test_a_failed_commit_leaves_the_tree_changed(store: Blockstore, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = Tree(store)
    tree.write_file("d/e/f", payload(3 * MIB))
    real_put = type(store).put

    def failing_put(self: Blockstore, data: bytes, codec_: int) -> bytes:
        if codec_ == cids.DAG_CBOR:
            raise StoreFullError("full")
        return real_put(self, data, codec_)

    monkeypatch.setattr(type(store), "put", failing_put)
    with pytest.raises(StoreFullError):
        tree.commit()
    monkeypatch.undo()
    assert tree.root.dirty and tree.describe(tree.resolve("d")).changed
    root = tree.commit()
    assert read_tree(Tree(store, root)) == {"d/e/f": payload(3 * MIB)}


def test_a_commit_does_not_need_blocks_the_change_did_not_touch(store: Blockstore) -> None:
    tree = Tree(store)
    tree.write_file("arr/.zattrs", b'{"not": "inlined"}')  # raw: not the exact rendering
    tree.write_file("arr/0", b"chunk")
    root = tree.commit()
    missing = cids.block_cid(cids.RAW, b'{"not": "inlined"}')
    if isinstance(store, MemoryBlockstore):
        del store._blocks[missing]
    else:
        store.block_path(missing).unlink()  # type: ignore[attr-defined]
    tree = Tree(store, root)
    tree.write_file("arr/1", b"another chunk")
    new_root = tree.commit()
    arr = codec.decode(store.get(new_root))["arr"]
    assert arr[".zattrs"] == codec.Link(missing), "the unreadable file keeps its link"


def test_describe_says_what_a_node_is_made_of(store: Blockstore) -> None:
    tree = Tree(store)
    tree.write_file("small/.zattrs", zattrs({"a": 1}))
    tree.write_file("small/data", b"bytes")
    tree.makedirs("linked/.zgroup")  # a directory under a metadata name is always its own block
    assert tree.describe(tree.resolve("small/.zattrs")).changed
    tree.commit()
    assert tree.describe(tree.resolve("small/.zattrs")).inline
    assert tree.describe(tree.resolve("small")).inline
    assert tree.describe(tree.resolve("small/data")).cid == cids.block_cid(cids.RAW, b"bytes")
    linked = tree.describe(tree.resolve("linked/.zgroup")).cid
    assert linked is not None and store.has(linked)
    assert tree.describe(tree.root).cid == tree.root.cid
    tree.write_file("small/more", b"m")
    assert tree.describe(tree.resolve("small")).changed and tree.describe(tree.root).changed


# --- sharded directories committed in place ---------------------------------------------


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2 KB block limit: directories shard at a few dozen entries, so hypothesis can reach it."""
    from ipldmount.format import dirnode

    monkeypatch.setattr(dirnode.layout, "__defaults__", (2000,))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["write", "write", "write", "remove", "mkdir", "commit", "list", "read"]),
            st.integers(0, 119),
            st.integers(0, 3),
        ),
        max_size=80,
    )
)
def test_a_sharded_directory_committed_in_place_equals_one_built_afresh(
    small_blocks: None, ops: list[tuple[str, int, int]]
) -> None:
    store = MemoryBlockstore()
    tree = Tree(store)
    model: dict[str, bytes | None] = {f"arr/{i}": b"chunk %d" % i for i in range(100)}  # None: a folder
    for path, data in model.items():
        tree.write_file(path, data or b"")
    tree = Tree(store, tree.commit())  # opened afresh: the sharded directory is read name by name
    for op, index, version in ops:
        path = f"arr/{index}"
        if op == "commit":
            tree.commit()
        elif op == "list":
            assert sorted(tree.listdir("arr")) == sorted(p.split("/")[1] for p in model)
        elif op == "read":
            found = tree.resolve(path) if path in model else None
            assert (found is None) == (path not in model)
            if model.get(path) is not None:
                assert tree.read_file(path) == model[path]
        elif op == "remove" and path in model:
            tree.remove(path) if model[path] is not None else tree.rmdir(*tree.locate(path))
            del model[path]
        elif op == "mkdir" and path not in model:
            tree.makedirs(path)
            model[path] = None
        elif op == "write" and model.get(path, b"") is not None:
            data = b"v%d of %d" % (version, index)
            tree.write_file(path, data)
            model[path] = data
    assert tree.commit() == _built_afresh(model)


def _built_afresh(model: dict[str, bytes | None]) -> bytes:
    fresh = Tree(MemoryBlockstore())
    for path, data in model.items():
        fresh.makedirs(path) if data is None else fresh.write_file(path, data)
    return fresh.commit()


def test_a_lookup_in_a_sharded_directory_reads_only_its_path(small_blocks: None) -> None:
    store = MemoryBlockstore()
    tree = Tree(store)
    for i in range(2000):
        tree.write_file(f"arr/{i}", b"chunk %d" % i)
    tree = Tree(store, tree.commit())
    arr = tree.resolve_dir("arr")
    assert tree.read_file("arr/1234") == b"chunk 1234"
    tree.write_file("arr/77", b"overwritten")
    assert tree.get_entry(arr, "nope") is None
    root = tree.commit()
    assert not arr.complete and len(tree.entries(arr)) == 2000 and arr.complete
    assert tree.read_file("arr/77") == b"overwritten" and tree.read_file("arr/78") == b"chunk 78"
    assert Tree(store, root).read_file("arr/77") == b"overwritten"


def test_one_chunk_written_into_a_sharded_directory_rewrites_only_its_path(
    small_blocks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ipldmount.format import hamt

    store = MemoryBlockstore()
    tree = Tree(store)
    model: dict[str, bytes | None] = {f"arr/{i}": b"chunk %d" % i for i in range(300)}
    for path, data in model.items():
        tree.write_file(path, data or b"")
    tree.commit()
    calls: list[str] = []
    real_build = hamt.build
    monkeypatch.setattr(hamt, "build", lambda *args: calls.append("build") or pytest.fail("a full build"))
    real_update = hamt.update
    monkeypatch.setattr(hamt, "update", lambda *args: calls.append("update") or real_update(*args))
    tree.write_file("arr/7", b"overwritten")
    model["arr/7"] = b"overwritten"
    tree.write_file("arr/new", b"added")
    model["arr/new"] = b"added"
    root = tree.commit()
    assert calls == ["update"]
    monkeypatch.setattr(hamt, "build", real_build)
    assert root == _built_afresh(model)


def test_a_stat_of_a_sharded_directory_does_not_count_its_subdirectories(small_blocks: None) -> None:
    """Counting would read every node; known once the directory is read in full, and kept right."""
    store = MemoryBlockstore()
    tree = Tree(store)
    for i in range(300):
        tree.write_file(f"arr/{i}", b"chunk %d" % i)
    tree.mkdir(tree.resolve_dir("arr"), "sub")
    tree = Tree(store, tree.commit())
    arr = tree.resolve_dir("arr")
    assert tree.known_subdirectories(arr) is None
    tree.write_file("arr/7", b"changed")  # dirty now: still not counted
    assert tree.known_subdirectories(arr) is None and not arr.complete
    assert tree.subdirectories(arr) == 1  # asked for exactly: read in full
    tree.mkdir(arr, "sub2")
    assert tree.known_subdirectories(arr) == 2
    assert tree.known_subdirectories(tree.root) == 1  # a plain directory: always counted


def test_a_file_s_links_follow_hard_links_and_unlinks() -> None:
    """The first link is kept in the node itself, the others beside it: every order of unlinking
    leaves the right names, and a path always follows a name that still exists."""
    tree = Tree(MemoryBlockstore())
    file = tree.write_file("a/f", b"x")
    a, b = tree.resolve_dir("a"), tree.makedirs("b")
    tree.link(file, b, "g")
    tree.link(file, a, "h")
    assert file.links == ((a, "f"), (b, "g"), (a, "h")) and file.link_count == 3
    tree.unlink(a, "f")  # the first goes: the next one becomes first
    assert file.links == ((b, "g"), (a, "h")) and tree.path_of(file) == "b/g" and file.parent is b
    tree.unlink(a, "h")
    assert file.links == ((b, "g"),) and file.link_count == 1
    tree.unlink(b, "g")
    assert file.links == () and file.link_count == 0 and file.parent is None and tree.path_of(file) is None


def _with_an_old_order_directory(store: Blockstore, files: dict[str, bytes]) -> bytes:
    """A root holding *files* under "d", a sharded directory written in the pre-spec bitmap order
    (as ipldmount wrote it before taking the spec's), the rest as it is written now."""
    tree = Tree(store)
    for name, data in files.items():
        tree.write_file(f"d/{name}", data)
    top = codec.decode(store.get(tree.commit()))
    old = old_order_copy(store, codec.decode(store.get(top["d"].cid)))
    top["d"] = codec.Link(store.put(codec.encode(old), cids.DAG_CBOR))
    return store.put(codec.encode(top), cids.DAG_CBOR)


OLD_FILES = {f"{i}": b"chunk %d" % i for i in range(2000)}


def test_an_old_order_directory_is_read_and_warned_of_once(
    small_blocks: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from ipldmount.tree import model

    monkeypatch.setattr(model, "_WARNED_OLD_ORDER", set())
    store = MemoryBlockstore()
    root = _with_an_old_order_directory(store, OLD_FILES)
    for _ in range(2):  # a second tree over the same directory, in the same process, is not warned of
        tree = Tree(store, root)
        assert sorted(tree.listdir("d")) == sorted(OLD_FILES)
        assert all(tree.read_file(f"d/{name}") == data for name, data in OLD_FILES.items())
        assert Tree(store, root).read_file("d/1234") == b"chunk 1234"  # by lookup alone
    warnings = [record.getMessage() for record in caplog.records if "pre-spec" in record.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("sharded directory 'd' ("), warnings
    assert "chunk" not in warnings[0]


@pytest.mark.parametrize("read_first", [False, True])
@pytest.mark.parametrize("change", ["write", "remove"])
def test_one_change_rewrites_an_old_order_directory_whole(
    small_blocks: None, read_first: bool, change: str
) -> None:
    store = MemoryBlockstore()
    tree = Tree(store, _with_an_old_order_directory(store, OLD_FILES))
    if read_first:
        assert tree.read_file("d/7") == b"chunk 7"
    expected = dict(OLD_FILES)
    if change == "write":
        tree.write_file("d/new", b"new")
        expected["new"] = b"new"
    else:
        tree.remove("d/77")
        del expected["77"]
    assert tree.commit() == _built_afresh({f"d/{name}": data for name, data in expected.items()})


def _full_root_with_one_child() -> tuple[dict[str, bytes], str]:
    """Files filling every root slot of a HAMT, one per slot but four in one (a child node): the
    root's bitmap is all ones, the same in both orders. Also a name whose slot is a bucket."""
    by_slot: dict[int, list[str]] = {}
    number = 0
    while len(by_slot) < 256 or max(len(names) for names in by_slot.values()) < 4:
        by_slot.setdefault(hashlib.sha256(b"n%d" % number).digest()[0], []).append(f"n{number}")
        number += 1
    crowded = next(slot for slot, names in by_slot.items() if len(names) >= 4)
    names = [name for slot, found in by_slot.items() for name in found[: 4 if slot == crowded else 1]]
    alone = next(found[0] for slot, found in by_slot.items() if slot != crowded)
    return {name: name.encode() for name in names}, alone


def test_a_change_meeting_no_old_order_node_leaves_the_others(small_blocks: None) -> None:
    """The limit FORMAT.md 6.4 states: a change whose path meets only symmetric or spec-order nodes
    rewrites only that path, so an old-order node elsewhere stays (read correctly) and the CID is
    not the canonical one, until a change to a directory known to hold one lays it out afresh."""
    files, alone = _full_root_with_one_child()
    store = MemoryBlockstore()
    tree = Tree(store, _with_an_old_order_directory(store, files))
    tree.write_file(f"d/{alone}", b"changed")
    files[alone] = b"changed"
    canonical = _built_afresh({f"d/{name}": data for name, data in files.items()})
    assert tree.commit() != canonical
    assert sorted(tree.listdir("d")) == sorted(files)  # reads the old-order child: now known
    assert all(tree.read_file(f"d/{name}") == data for name, data in files.items())
    tree.write_file(f"d/{alone}", b"again")
    files[alone] = b"again"
    assert tree.commit() == _built_afresh({f"d/{name}": data for name, data in files.items()})


def _sharded_with_a_name_twice(store: Blockstore) -> bytes:
    """A root whose directory "d" is a HAMT holding "a" twice (one bucket, two entries)."""
    key = b"a"
    bitmap = hamt.bitmap_of([hashlib.sha256(key).digest()[0]])
    first, second = (codec.Link(store.put(data, cids.RAW)) for data in (b"one", b"two"))
    hamt_root = {"hashAlg": cids.SHA2_256, "bucketSize": 3, "hamt": [bitmap, [[[key, first], [key, second]]]]}
    directory = store.put(codec.encode(hamt_root), cids.DAG_CBOR)
    return store.put(codec.encode({"d": codec.Link(directory)}), cids.DAG_CBOR)


def test_a_sharded_directory_holding_a_name_twice_is_refused_as_it_is_read(store: Blockstore) -> None:
    """Read entry by entry, the duplicate is still found: listing refuses, and so does removing
    the name (which copy it named is undefined), and nothing of the directory is kept."""
    root = _sharded_with_a_name_twice(store)
    tree = Tree(store, root)
    directory = tree.resolve_dir("d")
    with pytest.raises(FormatError, match="twice"):
        tree.entries(directory)
    assert not directory.complete
    hamt_root = codec.decode(store.get(codec.decode(store.get(root))["d"].cid))
    with pytest.raises(FormatError, match="twice"):
        dirnode.plain_entries(store, hamt_root)
    again = Tree(store, root)
    removed = again.resolve_dir("d")
    with pytest.raises(FormatError, match="twice"):
        again.unlink(removed, "a")
    with pytest.raises(FormatError, match="twice"):
        again.entries(removed)
    assert again.commit() == root, "nothing changed"


# --- directories that cannot be read in full are never re-encoded (issue 19) --------------------


def _link(store: Blockstore, data: bytes) -> codec.Link:
    return codec.Link(store.put(data, cids.RAW))


def _sharded_with_an_invalid_name(store: Blockstore) -> tuple[bytes, bytes]:
    """A root whose "d" is a HAMT holding "ok", a subdirectory "sub" and the invalid name "a/b"
    (in buckets of their own: finding "ok" never reads it). Returns (root, the HAMT's block)."""
    sub = store.put(codec.encode({"x": _link(store, b"x")}), cids.DAG_CBOR)
    entries = {"ok": _link(store, b"kept"), "sub": codec.Link(sub), "a/b": _link(store, b"?")}
    shard = store.put(codec.encode(hamt.build(store, entries)), cids.DAG_CBOR)
    root = store.put(codec.encode({"d": codec.Link(shard), "f": _link(store, b"f")}), cids.DAG_CBOR)
    return root, shard


def test_a_sharded_directory_holding_an_invalid_name_refuses_every_change(store: Blockstore) -> None:
    root, shard = _sharded_with_an_invalid_name(store)
    tree = Tree(store, root)
    assert tree.read_file("d/ok") == b"kept" and tree.read_file("d/sub/x") == b"x"  # lookups read a path
    d = tree.resolve_dir("d")
    changes: list[Callable[[], object]] = [
        lambda: tree.write_file("d/new", b"n"),
        lambda: tree.write_file("d/ok", b"changed"),
        lambda: tree.unlink(d, "ok"),
        lambda: tree.mkdir(d, "newdir"),
        lambda: tree.rename(tree.root, "f", d, "f"),
        lambda: tree.write_file("d/sub/y", b"y"),  # a change below it re-encodes it too
    ]
    for change in changes:
        with pytest.raises(FormatError, match="'d' cannot be changed: an invalid name"):
            change()
    assert tree.read_file("f") == b"f" and tree.read_file("d/ok") == b"kept"
    assert tree.commit() == root, "nothing changed"
    tree.write_file("g", b"beside it")
    assert codec.decode(store.get(tree.commit()))["d"] == codec.Link(shard)


@pytest.mark.parametrize(
    "content",
    [
        {"x": 5},  # an integer under an ordinary name
        {".zattrs": b"bytes"},  # inline metadata that is not JSON
        {"inner": {"x": 5}},  # in a directory inline in the block
        {"inner": {"a/b": {}}},  # an invalid name, one level down
    ],
    ids=repr,
)
def test_a_linked_directory_holding_an_invalid_value_keeps_its_link(
    store: Blockstore, content: dict[str, Any]
) -> None:
    """A small directory block that could not be read in full is not inlined into its parent when
    the parent is rewritten (it once was: same entries, link gone); it refuses every use."""
    sub = store.put(codec.encode({**content, "ok": _link(store, b"kept")}), cids.DAG_CBOR)
    root = store.put(codec.encode({"sub": codec.Link(sub), "f": _link(store, b"f")}), cids.DAG_CBOR)
    tree = Tree(store, root)
    assert isinstance(tree.lookup(tree.root, "sub"), Broken)
    with pytest.raises(FormatError, match="malformed"):
        tree.resolve_dir("sub")  # and so no write can reach into it
    tree.write_file("g", b"an unrelated change")
    new_root = tree.commit()
    assert codec.decode(store.get(new_root))["sub"] == codec.Link(sub)
    assert Tree(store, new_root).read_file("g") == b"an unrelated change"


def test_a_root_holding_an_invalid_inline_directory_refuses_changes(store: Blockstore) -> None:
    """The root's block is checked whole too: it is never re-encoded with what it could not read."""
    root = store.put(codec.encode({"inner": {"x": 5}, "f": _link(store, b"f")}), cids.DAG_CBOR)
    tree = Tree(store, root)
    for _ in range(2):
        with pytest.raises(FormatError, match="malformed"):
            tree.entries(tree.root)
        with pytest.raises(FormatError, match="malformed"):
            tree.write_file("g", b"g")
    assert tree.commit() == root


def test_a_hamt_10000_nodes_deep_is_refused_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`ls ROOT/d` once printed a 2,001-line RecursionError (and the mount answered EIO, logging it)."""
    from ipldmount.adapters import cli
    from ipldmount.blocks import DirectoryBlockstore

    store = DirectoryBlockstore(tmp_path / "store")
    digest = hashlib.sha256(b"a").digest()

    def bitmap(depth: int) -> bytes:  # the slot of "a" while the digest lasts, then slot 0
        return hamt.bitmap_of([digest[depth] if depth < 32 else 0])

    node: list[Any] = [bitmap(10_000), [[[b"a", _link(store, b"a")]]]]
    with store.batch():
        for depth in reversed(range(10_000)):
            node = [bitmap(depth), [codec.Link(store.put(codec.encode(node), cids.DAG_CBOR))]]
        shard = store.put(codec.encode({"hashAlg": 18, "bucketSize": 3, "hamt": node}), cids.DAG_CBOR)
        root = store.put(codec.encode({"d": codec.Link(shard)}), cids.DAG_CBOR)
    tree = Tree(store, root)
    for attempt in (
        lambda: tree.listdir("d"),
        lambda: tree.resolve("d/a"),
        lambda: tree.write_file("d/a", b""),  # a change rewrites the nodes on its path: this one
    ):
        with pytest.raises(FormatError, match="deeper than 32 levels"):
            attempt()
    assert cli.main(["ls", f"{cids.cid_to_str(root)}/d", "--store", str(store.root)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and "deeper than 32 levels" in err, err


def test_identity_cids_are_for_unixfs_only(store: Blockstore) -> None:
    """FORMAT.md 2.1: accepted as CIDs, but in this format a root or an entry naming one is refused."""
    from ipldmount.ipld.varint import encode_varint

    def identity(codec_: int, data: bytes) -> bytes:
        return bytes([0x01, codec_, 0x00]) + encode_varint(len(data)) + data

    with pytest.raises(FormatError, match="identity"):
        Tree(store, identity(cids.DAG_CBOR, codec.encode({})))
    entries = {
        "raw": codec.Link(identity(cids.RAW, b"x")),
        "dir": codec.Link(identity(cids.DAG_CBOR, b"\xa0")),
    }
    tree = Tree(store, store.put(codec.encode(entries), cids.DAG_CBOR))
    assert all(isinstance(tree.lookup(tree.root, name), Broken) for name in entries)


def test_a_change_to_a_sharded_directory_checks_its_path_and_keeps_the_rest_by_cid(store: Blockstore) -> None:
    """A change costs the HAMT nodes on its name's path: an invalid name elsewhere is neither read
    nor dropped (its node keeps its CID), and a change whose path reaches it is refused."""
    entries: dict[str, Any] = {f"c{n}": _link(store, b"%d" % n) for n in range(2_000)}
    entries["a/b"] = _link(store, b"?")
    shard = store.put(codec.encode(hamt.build(store, entries)), cids.DAG_CBOR)
    root = store.put(codec.encode({"d": codec.Link(shard)}), cids.DAG_CBOR)
    bad_slot = hashlib.sha256(b"a/b").digest()[0]
    far = next(f"n{n}" for n in range(1_000) if hashlib.sha256(b"n%d" % n).digest()[0] != bad_slot)
    near = next(f"n{n}" for n in range(10_000) if hashlib.sha256(b"n%d" % n).digest()[0] == bad_slot)

    tree = Tree(store, root)
    with pytest.raises(FormatError, match="'d' cannot be changed: an invalid name"):
        tree.write_file(f"d/{near}", b"x")
    tree.write_file(f"d/{far}", b"x")
    new_root = tree.commit()
    shard_now = codec.decode(store.get(codec.decode(store.get(new_root))["d"].cid))
    old_children = codec.decode(store.get(shard))["hamt"][1]
    assert hamt.find(store, shard_now, "a/b") == entries["a/b"]  # kept, never re-encoded
    kept = [element for element in shard_now["hamt"][1] if element in old_children]
    assert len(kept) == len(old_children) - 1  # every node but the one on the change's path
    assert Tree(store, new_root).read_file(f"d/{far}") == b"x"
