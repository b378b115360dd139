"""DAG walks: the blocks a new root adds to an old one (a CAR of the change), against the
difference of the two closures; what it reads is counted, never timed."""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st
from test_diff import consistent

from ipldmount.blocks import Blockstore, MemoryBlockstore
from ipldmount.blocks.car import export_car, import_car, read_car
from ipldmount.blocks.dag import iter_closure, iter_new_blocks
from ipldmount.format import hamt
from ipldmount.ipld import cid as cids
from ipldmount.ipld import codec
from ipldmount.tree.model import EMPTY_DIRECTORY, Tree

Files = dict[str, bytes]


def build(store: Blockstore, files: Files, tree: Tree | None = None) -> bytes:
    tree = tree or Tree(store)
    for path, data in files.items():
        tree.write_file(path, data)
    return tree.commit()


def closure(store: Blockstore, root: bytes) -> set[bytes]:
    return {cid for cid, _ in iter_closure(store, root)}


def sent(store: Blockstore, root: bytes, since: bytes) -> list[bytes]:
    return [cid for cid, _ in iter_new_blocks(store, root, since)]


names = st.sampled_from(["a", "b", "c", ".zattrs", "0", "1"])
paths = st.lists(names, min_size=1, max_size=3).map("/".join)
contents = st.sampled_from([b"", b"x", b"y", b"{}", b"z" * 3000])
trees = st.dictionaries(paths, contents, max_size=10)


def test_against_the_empty_tree_it_is_the_whole_closure_in_export_order() -> None:
    store = MemoryBlockstore()
    root = build(store, {f"d{i}/f{j}": b"%d.%d" % (i, j) for i in range(5) for j in range(40)})
    empty = store.put(EMPTY_DIRECTORY, cids.DAG_CBOR)
    assert list(iter_new_blocks(store, root, empty)) == list(iter_closure(store, root))


@settings(max_examples=200, deadline=None)
@given(trees, trees)
def test_it_sends_every_new_block_and_only_blocks_of_the_new_root(a: Files, b: Files) -> None:
    store = MemoryBlockstore()
    old, new = build(store, consistent(a)), build(store, consistent(b))
    blocks = sent(store, new, old)
    assert len(blocks) == len(set(blocks)), "a block sent twice"
    assert closure(store, new) - closure(store, old) <= set(blocks) <= closure(store, new)


@settings(max_examples=100, deadline=None)
@given(trees, trees)
def test_its_car_rebuilds_the_new_root_where_the_old_one_is(a: Files, b: Files) -> None:
    store = MemoryBlockstore()
    old, new = build(store, consistent(a)), build(store, consistent(b))
    change = io.BytesIO()
    export_car(store, new, change, since=old)
    elsewhere = MemoryBlockstore()
    for cid, data in iter_closure(store, old):
        elsewhere.put_block(cid, data)
    assert import_car(elsewhere, io.BytesIO(change.getvalue())) == [new]
    assert dict(iter_closure(elsewhere, new)) == dict(iter_closure(store, new))
    roots, _ = read_car(io.BytesIO(change.getvalue()))
    assert roots == [new]


def test_nothing_when_nothing_changed() -> None:
    store = MemoryBlockstore()
    root = build(store, {"a/b": b"1"})
    assert sent(store, root, root) == []


def test_a_moved_subtree_is_not_sent_again() -> None:
    store = MemoryBlockstore()
    tree = Tree(store)
    old = build(store, {f"data/{i}": b"chunk %d" % i for i in range(300)}, tree)
    tree.rename(*tree.locate("data"), *tree.locate("renamed"))
    tree.write_file("renamed/new", b"a new chunk")
    new = tree.commit()
    assert set(sent(store, new, old)) == closure(store, new) - closure(store, old)


class CountingStore(MemoryBlockstore):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[bytes] = []

    def get(self, cid: bytes) -> bytes:
        self.reads.append(cid)
        return super().get(cid)

    def read(self, cid: bytes, offset: int = 0, size: int = -1) -> bytes:
        self.reads.append(cid)
        return super().read(cid, offset, size)


def test_one_chunk_changed_among_ten_thousand_sends_its_path_and_reads_little() -> None:
    store = CountingStore()
    prefix = "c" * 100  # long names: the directory outgrows one block and is sharded
    files = {f"arr/{prefix}{i}.{j}": b"chunk %d.%d" % (i, j) for i in range(100) for j in range(100)}
    files[".zarray"] = b'{"zarr_format": 2}'
    tree = Tree(store)
    before = build(store, files, tree)
    after = build(store, {f"arr/{prefix}42.7": b"changed"}, tree)
    arr = codec.decode(store.get(after))["arr"]
    assert hamt.is_root(codec.decode(store.get(arr.cid)))
    store.reads.clear()
    blocks = sent(store, after, before)
    reads = list(store.reads)
    assert set(blocks) == closure(store, after) - closure(store, before)
    assert blocks[0] == after and cids.block_cid(cids.RAW, b"changed") in blocks
    assert len(blocks) <= 6, f"{len(blocks)} blocks for one chunk: the root, arr, its HAMT path, the chunk"
    replaced = closure(store, before) - closure(store, after)
    assert set(reads) <= set(blocks) | replaced, "read a block the change did not touch"
    assert len(reads) == len(set(reads)), "read a block twice"
