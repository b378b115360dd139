"""Reading UnixFS by hand-made DAGs: every layout rule, the cases importers rarely make (data beside
links, identity and CIDv0 links, uneven parts) and hostile blocks. Real importers' trees are
read in test_ipfs_unixfs.py."""

from __future__ import annotations

import os

import pytest
from unixfs_blocks import (
    DIRECTORY,
    FILE,
    SHARD,
    SYMLINK,
    cidv0,
    identity,
    put,
    put_directory,
    put_file,
    put_raw,
    unixfs,
)

from ipldmount.blocks import MemoryBlockstore
from ipldmount.blocks.dag import block_links, iter_closure
from ipldmount.blocks.gc import collect_garbage
from ipldmount.errors import FormatError, IpldmountError, ReadOnlyError
from ipldmount.format import unixfs as unixfs_format
from ipldmount.ipld import cid as cids
from ipldmount.tree.model import Broken, Directory, File, Tree
from ipldmount.tree.unixfs import UnixfsTree, open_tree


@pytest.fixture
def store() -> MemoryBlockstore:
    return MemoryBlockstore()


def _uneven_file(store: MemoryBlockstore) -> tuple[bytes, bytes]:
    """A file as no single importer lays it out: own data, then a raw leaf, a dag-pb leaf, an
    identity leaf, and a nested node linked by CIDv0 (a trickle layout's uneven depths)."""
    content = os.urandom(5000)
    own, raw, pb_leaf, inline, nested_a, nested_b = (
        content[:10],
        content[10:1000],
        content[1000:2500],
        content[2500:2520],
        content[2520:4000],
        content[4000:],
    )
    leaf_cid = put(store, [], unixfs(FILE, pb_leaf, filesize=len(pb_leaf)))
    nested = put_file(
        store, [(put_raw(store, nested_a), len(nested_a)), (put_raw(store, nested_b), len(nested_b))]
    )
    parts = [
        (put_raw(store, raw), len(raw)),
        (leaf_cid, len(pb_leaf)),
        (identity(inline), len(inline)),
        (cidv0(nested), len(nested_a) + len(nested_b)),
    ]
    return put_file(store, parts, own), content


def test_a_file_is_its_own_data_then_its_parts(store: MemoryBlockstore) -> None:
    root, content = _uneven_file(store)
    tree = open_tree(store, put_directory(store, [("f", root)]), read_only=True)
    reader = tree.reader(tree.resolve_file("f"))
    assert reader.size == len(content) == tree.size(tree.resolve_file("f"))
    assert reader.read(0, len(content)) == content
    for offset in (0, 5, 10, 999, 1000, 2499, 2510, 2519, 2520, 3999, 4000, 4999):
        for size in (1, 7, 1500, 6000):
            assert reader.read(offset, size) == content[offset : offset + size], (offset, size)


def test_directory_entries_of_every_link_kind(store: MemoryBlockstore) -> None:
    sub = put_directory(store, [("x", put_raw(store, b"deep"))])
    leaf = put(store, [], unixfs(FILE, b"pb bytes", filesize=8))
    root = put_directory(
        store,
        [
            ("raw", put_raw(store, b"raw bytes")),
            ("inline", identity(b"inline bytes")),
            ("inline-pb", identity(unixfs_pb_leaf := _pb_leaf(b"inline pb"), cids.DAG_PB)),
            ("leaf", cidv0(leaf)),
            ("sub", cidv0(sub)),
            ("empty", put(store, [], unixfs(FILE))),
        ],
    )
    assert unixfs_pb_leaf
    tree = open_tree(store, root, read_only=True)
    assert isinstance(tree, UnixfsTree)
    assert tree.names(tree.root) == ["empty", "inline", "inline-pb", "leaf", "raw", "sub"]
    expected = {
        "raw": b"raw bytes",
        "inline": b"inline bytes",
        "inline-pb": b"inline pb",
        "leaf": b"pb bytes",
        "sub/x": b"deep",
        "empty": b"",
    }
    assert {path: tree.read_file(path) for path in expected} == expected
    assert dict((path, tree.read_file(path)) for path, _ in tree.walk_files()) == expected
    assert tree.subdirectories(tree.root) == 1


def _pb_leaf(data: bytes) -> bytes:
    from unixfs_blocks import pb_node

    return pb_node([], unixfs(FILE, data, filesize=len(data)))


def test_what_is_neither_file_nor_directory_is_listed_and_refused(store: MemoryBlockstore) -> None:
    link = put(store, [], unixfs(SYMLINK, b"/etc/passwd"))
    missing = cids.block_cid(cids.DAG_PB, b"never stored")
    sha512 = bytes([0x01, cids.RAW, 0x13, 0x40]) + bytes(64)
    root = put_directory(
        store, [("link", link), ("missing", missing), ("odd", sha512), ("ok", put_raw(store, b"1"))]
    )
    tree = open_tree(store, root, read_only=True)
    assert tree.names(tree.root) == ["link", "missing", "odd", "ok"]
    for name, why in (("link", "symlink"), ("missing", "not found"), ("odd", "unsupported CID")):
        node = tree.lookup(tree.root, name)
        assert isinstance(node, Broken)
        with pytest.raises(IpldmountError, match=why):
            tree.size(node)
    assert tree.read_file("ok") == b"1"


def test_a_unixfs_tree_is_read_only(store: MemoryBlockstore) -> None:
    root = put_directory(store, [("a", put_raw(store, b"a"))])
    with pytest.raises(ReadOnlyError, match="UnixFS"):
        open_tree(store, root)
    tree = open_tree(store, root, read_only=True)
    for change in (
        lambda: tree.write_file("b", b"b"),
        lambda: tree.remove("a"),
        lambda: tree.makedirs("d"),
    ):
        with pytest.raises(ReadOnlyError):
            change()
    assert tree.commit() == root and set(store) == {root, cids.block_cid(cids.RAW, b"a")}


def test_a_root_that_is_a_file_is_refused(store: MemoryBlockstore) -> None:
    root, _ = _uneven_file(store)
    with pytest.raises(FormatError, match="UnixFS file, not a directory"):
        open_tree(store, root, read_only=True)


def test_our_own_roots_still_open_as_our_format(store: MemoryBlockstore) -> None:
    tree = Tree(store)
    tree.write_file("a", b"a")
    root = tree.commit()
    assert type(open_tree(store, root)) is Tree


# --- hostile blocks ---------------------------------------------------------------------------


def _file_entry(
    store: MemoryBlockstore, links: list[tuple[bytes, str | None, int | None]], message: bytes
) -> Tree:
    root = put_directory(store, [("f", put(store, links, message))])
    return open_tree(store, root, read_only=True)


def test_parts_and_blocksizes_that_disagree_make_the_file_unreadable(store: MemoryBlockstore) -> None:
    leaf = put_raw(store, b"abc")
    tree = _file_entry(store, [(leaf, None, 3)], unixfs(FILE, blocksizes=(3, 3)))
    node = tree.lookup(tree.root, "f")
    assert isinstance(node, Broken) and "2 blocksizes" in str(node.error)
    tree = _file_entry(store, [(leaf, None, 3)], unixfs(FILE, filesize=99, blocksizes=(3,)))
    assert "filesize 99" in str(tree.lookup(tree.root, "f").error)  # type: ignore[attr-defined]


def test_a_part_shorter_than_its_parent_says_is_an_error_not_short_data(store: MemoryBlockstore) -> None:
    leaf = put_raw(store, b"abc")
    tree = _file_entry(store, [(leaf, None, 3), (leaf, None, 3)], unixfs(FILE, blocksizes=(3, 5)))
    file = tree.resolve_file("f")
    assert tree.size(file) == 8
    with pytest.raises(FormatError, match="shorter"):
        tree.reader(file).read(0, 8)


def test_a_file_whose_part_is_a_directory_is_refused(store: MemoryBlockstore) -> None:
    sub = put_directory(store, [])
    tree = _file_entry(store, [(sub, None, 4)], unixfs(FILE, blocksizes=(4,)))
    with pytest.raises(FormatError, match="directory"):
        tree.reader(tree.resolve_file("f")).read(0, 4)


def test_a_part_of_length_0_that_is_a_directory_is_refused_before_any_read(store: MemoryBlockstore) -> None:
    """FORMAT.md 12.3: a part that is a directory makes the file malformed, whatever its length;
    one of length 0 is read when its node is, as no read of the file would reach it."""
    leaf, sub = put_raw(store, b"abcd"), put_directory(store, [])
    tree = _file_entry(store, [(leaf, None, 4), (sub, None, 0)], unixfs(FILE, blocksizes=(4, 0)))
    file = tree.resolve_file("f")
    assert tree.size(file) == 4
    with pytest.raises(FormatError, match="directory"):
        tree.reader(file)
    empty = put(store, [], unixfs(FILE, b""))
    tree = _file_entry(store, [(leaf, None, 4), (empty, None, 0)], unixfs(FILE, blocksizes=(4, 0)))
    assert tree.read_file("f") == b"abcd"  # a file part of length 0 is fine


def test_a_part_that_is_neither_raw_nor_dag_pb_is_refused(store: MemoryBlockstore) -> None:
    """A dag-cbor part is no UnixFS node: its bytes are not the file's (they once were read as such)."""
    leaf, cbor = put_raw(store, b"abcd"), store.put(b"\x44abcd", cids.DAG_CBOR)
    for length in (4, 0):
        tree = _file_entry(
            store, [(leaf, None, 4), (cbor, None, length)], unixfs(FILE, blocksizes=(4, length))
        )
        with pytest.raises(FormatError, match="neither a raw block nor a dag-pb node"):
            tree.reader(tree.resolve_file("f"))


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "nul\x00"])
def test_an_invalid_name_makes_the_directory_unreadable(store: MemoryBlockstore, name: str) -> None:
    root = put_directory(store, [("sub", put_directory(store, [(name, put_raw(store, b"x"))]))])
    tree = open_tree(store, root, read_only=True)
    with pytest.raises(FormatError, match="invalid name"):
        tree.names(tree.resolve_dir("sub"))


def test_a_name_twice_makes_the_directory_unreadable(store: MemoryBlockstore) -> None:
    one = put_raw(store, b"x")
    tree = open_tree(store, put_directory(store, [("a", one), ("a", one)]), read_only=True)
    with pytest.raises(FormatError, match="twice"):
        tree.names(tree.root)


@pytest.mark.parametrize(
    ("fanout", "hash_type", "why"),
    [(3, 0x22, "fanout 3"), (None, 0x22, "fanout None"), (1 << 20, 0x22, "fanout"), (256, 0x12, "hash 0x12")],
)
def test_a_shard_of_unknown_shape_is_refused(
    store: MemoryBlockstore, fanout: int | None, hash_type: int, why: str
) -> None:
    shard = put(store, [], unixfs(SHARD, b"\x00", hash_type=hash_type, fanout=fanout))
    with pytest.raises(FormatError, match=why):
        open_tree(store, shard, read_only=True)


def test_shard_links_must_name_buckets(store: MemoryBlockstore) -> None:
    bad = put(store, [(put_raw(store, b"x"), "Z", 1)], unixfs(SHARD, b"\x01", hash_type=0x22, fanout=256))
    tree = open_tree(store, bad, read_only=True)
    with pytest.raises(FormatError, match="bucket"):
        tree.names(tree.root)
    plain = put_directory(store, [])
    nested = put(store, [(plain, "00", 1)], unixfs(SHARD, b"\x01", hash_type=0x22, fanout=256))
    tree = open_tree(store, nested, read_only=True)
    with pytest.raises(FormatError, match="not a shard"):
        tree.names(tree.root)


# --- the DAG walks: GC, CARs, push and pull follow dag-pb links -------------------------------


def test_walks_follow_dag_pb_links_and_skip_identity(store: MemoryBlockstore) -> None:
    root, _ = _uneven_file(store)
    directory = put_directory(store, [("f", root), ("i", identity(b"x"))])
    links = block_links(directory, store.get(directory))
    assert links == [root]  # the identity CID holds its bytes: nothing to walk to
    closure = [cid for cid, _ in iter_closure(store, directory)]
    assert set(closure) == set(store) and all(cids.inline_data(cid) is None for cid in closure)
    report = collect_garbage(store, [directory], grace=0)
    assert report.removed_blocks == 0
    put_raw(store, b"unreachable")
    assert collect_garbage(store, [directory], grace=0).removed_blocks == 1


def test_find_entry_in_a_plain_directory(store: MemoryBlockstore) -> None:
    one = put_raw(store, b"1")
    root = put_directory(store, [("a", one)])
    node = unixfs_format.read_node(store, root)
    assert unixfs_format.find_entry(store, node, "a") == one
    assert unixfs_format.find_entry(store, node, "b") is None


def test_node_kinds(store: MemoryBlockstore) -> None:
    tree = open_tree(store, put_directory(store, [("d", put(store, [], unixfs(DIRECTORY)))]), read_only=True)
    assert isinstance(tree.lookup(tree.root, "d"), Directory)
    assert tree.is_empty(tree.resolve_dir("d"))
    assert not isinstance(tree.lookup(tree.root, "d"), File)


class _CountingStore(MemoryBlockstore):
    """Counts how often each block is read."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: dict[bytes, int] = {}

    def get(self, cid: bytes) -> bytes:
        self.reads[cid] = self.reads.get(cid, 0) + 1
        return super().get(cid)


def test_a_long_file_of_dag_pb_leaves_is_read_once_each_in_bounded_memory() -> None:
    store = _CountingStore()
    content = os.urandom(60 * 1000)
    leaves = [
        (put(store, [], unixfs(FILE, content[start : start + 1000], filesize=1000)), 1000)
        for start in range(0, len(content), 1000)
    ]
    root = put_file(store, leaves)
    tree = open_tree(store, put_directory(store, [("f", root)]), read_only=True)
    file = tree.resolve_file("f")
    store.reads.clear()
    reader = tree.reader(file)
    assert b"".join(reader.read(offset, 1000) for offset in range(0, len(content), 1000)) == content
    assert store.reads[root] == 1  # opened: the root decoded once, and handed to the reader
    assert all(store.reads[leaf] == 1 for leaf, _ in leaves)  # what a leaf is, and its bytes: one read
    assert isinstance(reader, unixfs_format.UnixfsReader)
    assert len(reader._leaves) <= reader.LEAVES_KEPT and len(reader._decoded) == 1


def test_an_identity_cid_over_the_limit_is_refused() -> None:
    from multiformats import CID

    big = CID("base32", 1, "raw", ("identity", bytes(cids.MAX_IDENTITY + 1)))
    with pytest.raises(IpldmountError, match="identity CID"):
        cids.parse_cid(str(big))
    assert cids.inline_data(identity(bytes(cids.MAX_IDENTITY + 1))) is None


def test_shards_nested_without_end_are_refused(store: MemoryBlockstore) -> None:
    """A chain of one-link shards deeper than any real directory needs (fanout 2: a bit a level)."""
    below = put(store, [(put_raw(store, b"x"), "0name", 1)], unixfs(SHARD, b"\x01", hash_type=0x22, fanout=2))
    for _ in range(unixfs_format.MAX_SHARD_DEPTH + 1):
        below = put(store, [(below, "0", 1)], unixfs(SHARD, b"\x01", hash_type=0x22, fanout=2))
    tree = open_tree(store, below, read_only=True)
    with pytest.raises(FormatError, match="nested over"):
        tree.names(tree.root)
