"""Packed rows: a stored directory's untouched file entries without a node each (EntryTable), and
the tree that keeps them so (listing, lookups, taking a row, full layouts)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipldmount.blocks import Blockstore, MemoryBlockstore
from ipldmount.errors import FormatError
from ipldmount.format import hamt
from ipldmount.format.entrytable import EntryTable
from ipldmount.format.files import StoredFile
from ipldmount.ipld import cid as cids
from ipldmount.ipld import codec
from ipldmount.tree.model import Directory, File, Node, Tree


def raw(data: bytes) -> bytes:
    return cids.block_cid(cids.RAW, data)


def test_only_links_to_sha256_raw_blocks_are_rows() -> None:
    assert EntryTable.holds(raw(b"x"))
    assert not EntryTable.holds(cids.block_cid(cids.DAG_CBOR, codec.encode({})))
    assert not EntryTable.holds(raw(b"x")[:-1])


@settings(max_examples=60, deadline=None)
@given(
    st.sets(st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=12), max_size=300),
    st.data(),
)
def test_rows_are_found_by_name_and_taken_one_by_one(names: set[str], data: st.DataObject) -> None:
    ordered = list(names)  # UTF-8 names, in whatever order a directory holds them
    table = EntryTable()
    for name in ordered:
        table.add(name, raw(name.encode()))
    assert table.seal() is None
    assert len(table) == table.live == len(ordered)
    for position, name in enumerate(ordered):
        assert table.find(name) == position and table.name(position) == name
        assert table.key(position) == name.encode() and table.cid(position) == raw(name.encode())
        assert table.size(position) is None
    assert table.find("not" * 5 + "there") is None
    taken = data.draw(st.sets(st.sampled_from(range(len(ordered))))) if ordered else set()
    for position in taken:
        table.take(position)
    for position, name in enumerate(ordered):
        live = position not in taken
        assert table.is_live(position) == live and (table.find(name) == position) == live
        assert table.name(position) == name, "a taken row keeps its name"
    assert list(table.live_positions()) == [p for p in range(len(ordered)) if p not in taken]
    assert table.live == len(ordered) - len(taken)


def test_a_name_added_twice_is_reported() -> None:
    table = EntryTable()
    for name in ("a", "b", "a"):
        table.add(name, raw(name.encode()))
    assert table.seal() == "a"


def test_names_that_are_not_utf8_are_never_found() -> None:
    table = EntryTable()
    table.add("é", raw(b"1"))
    assert table.seal() is None
    assert table.find("é") == 0 and table.find("\udce9") is None


def _array(store: Blockstore, count: int) -> tuple[bytes, dict[str, bytes]]:
    """A stored root with "arr": *count* chunks (rows), .zarray (inline metadata) and "sub" (a directory)."""
    tree = Tree(store)
    files = {str(i): b"%06d" % i for i in range(count)}
    for name, data in files.items():
        tree.write_file(f"arr/{name}", data)
    tree.write_file("arr/.zarray", b'{"zarr_format": 2}')
    tree.write_file("arr/sub/x", b"x")
    return tree.commit(), files


@pytest.mark.parametrize("count", [10, 3000])  # a plain directory, a sharded one
def test_a_listing_makes_nodes_only_for_entries_that_are_not_rows(count: int) -> None:
    store = MemoryBlockstore()
    root, files = _array(store, count)
    tree = Tree(store, root)
    arr = tree.resolve_dir("arr")
    names, table = tree.listing(arr)
    assert table is not None and "sub" in names and set(names) <= {".zarray", "sub"}
    assert all(table.find(name) is not None for name in files) and table.live == count + 2 - len(names)
    assert tree.names(arr) == sorted([*files, ".zarray", "sub"])
    assert tree.find_row(arr, "7") == (table, table.find("7"))
    assert tree.subdirectories(arr) == 1 and not tree.is_empty(arr)
    node = tree.get_entry(arr, "7")
    assert isinstance(node, File) and tree.read_all(node) == files["7"]
    assert tree.find_row(arr, "7") is None and tree.get_entry(arr, "7") is node
    assert table.live == count + 1 - len(names) and tree.listing(arr)[0] == sorted([*names, "7"])
    assert tree.commit() == root, "a row taken and nothing changed"


def test_a_node_made_from_a_row_is_told_and_keeps_what_was_learnt() -> None:
    store = MemoryBlockstore()
    root, _ = _array(store, 50)
    tree = Tree(store, root)
    told: list[tuple[int, Node]] = []
    tree.on_node_from_row = lambda table, position, node: told.append((position, node))
    arr = tree.resolve_dir("arr")
    _, table = tree.listing(arr)
    assert table is not None
    position = table.find("3")
    assert position is not None
    table.sizes[position] = 6
    node = tree.lookup(arr, "3")
    assert told == [(position, node)]
    assert isinstance(node, File) and isinstance(node.content, StoredFile)
    assert node.content.known_size == 6 and node.content.cid == table.cid(position)
    assert node.links == ((arr, "3"),)


@pytest.mark.parametrize("count", [10, 3000])
def test_changes_to_a_listed_directory_commit_as_on_one_never_listed(count: int) -> None:
    """Removing a name lays the directory out in full: rows give their links without a node; the
    root is the one a tree that never listed it gives, and metadata is still inlined."""
    store = MemoryBlockstore()
    root, _ = _array(store, count)
    listed, unlisted = Tree(store, root), Tree(store, root)
    listed.listing(listed.resolve_dir("arr"))
    for tree in (listed, unlisted):
        tree.remove("arr/5")
        tree.write_file("arr/new", b"new")
        tree.rename(tree.resolve_dir("arr"), "6", tree.root, "moved")
    assert listed.commit() == unlisted.commit()
    assert listed.read_file("moved") == b"%06d" % 6
    arr = listed.resolve_dir("arr")
    assert arr.table is not None and arr.table.live == count - 2, "rows still untouched stay rows"
    assert listed.is_empty(arr) is False


def test_a_directory_of_rows_only_is_empty_once_they_are_gone() -> None:
    store = MemoryBlockstore()
    tree = Tree(store)
    tree.write_file("d/a", b"1")
    tree.write_file("d/b", b"2")
    tree = Tree(store, tree.commit())
    d = tree.resolve_dir("d")
    assert tree.listing(d)[0] == [] and not tree.is_empty(d)
    tree.remove("d/a")
    tree.remove("d/b")
    assert tree.is_empty(d) and tree.names(d) == []
    tree.rmdir(tree.root, "d")


def test_entries_makes_every_row_a_node() -> None:
    store = MemoryBlockstore()
    root, files = _array(store, 100)
    tree = Tree(store, root)
    arr = tree.resolve_dir("arr")
    tree.listing(arr)
    entries = tree.entries(arr)
    assert sorted(entries) == sorted([*files, ".zarray", "sub"]) and arr.table is None
    assert all(isinstance(entries[name], File) for name in files)


def _sharded_with_a_row_and_a_directory_of_one_name(store: Blockstore) -> bytes:
    """A root whose directory "d" is a HAMT holding "a" twice: a raw block and a directory."""
    key = b"a"
    bitmap = hamt.bitmap_of([hashlib.sha256(key).digest()[0]])
    chunk = codec.Link(store.put(b"chunk", cids.RAW))
    directory = codec.Link(store.put(codec.encode({}), cids.DAG_CBOR))
    hamt_root = {
        "hashAlg": cids.SHA2_256,
        "bucketSize": 3,
        "hamt": [bitmap, [[[key, chunk], [key, directory]]]],
    }
    d = store.put(codec.encode(hamt_root), cids.DAG_CBOR)
    return store.put(codec.encode({"d": codec.Link(d)}), cids.DAG_CBOR)


def test_a_name_both_a_row_and_a_node_is_refused() -> None:
    store = MemoryBlockstore()
    tree = Tree(store, _sharded_with_a_row_and_a_directory_of_one_name(store))
    d = tree.resolve_dir("d")
    with pytest.raises(FormatError, match="twice"):
        tree.listing(d)
    assert not d.complete and d.table is None
    with pytest.raises(FormatError, match="twice"):
        tree.names(d)


def test_a_row_whose_block_is_missing_is_listed_and_fails_when_read() -> None:
    store = MemoryBlockstore()
    root, _ = _array(store, 20)
    tree = Tree(store, root)
    arr = tree.resolve_dir("arr")
    _, table = tree.listing(arr)
    assert table is not None
    position = table.find("4")
    assert position is not None
    store.delete(table.cid(position))
    node = tree.lookup(arr, "4")
    assert isinstance(node, File) and not isinstance(node, Directory)
    with pytest.raises(Exception, match="not"):
        tree.read_all(node)


def test_rows_made_nodes_while_a_commit_lays_the_directory_out_stay_in_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A mount opens chunks from its own thread while a sync lays their directory out: entries
    whose rows become nodes after the layout read the directory are still in the new root."""
    store = MemoryBlockstore()
    root, files = _array(store, 10)  # a plain directory: any change lays it out in full
    tree = Tree(store, root)
    arr = tree.resolve_dir("arr")
    tree.listing(arr)
    tree.write_file("arr/new", b"new")
    entry_form = Tree._entry_form
    opened: list[Node | None] = []

    def opening_meanwhile(self: Tree, *args: Any) -> Any:
        if not opened:  # as the first entry is laid out, "the mount" opens every chunk
            opened.extend(tree.get_entry(arr, name) for name in files)
        return entry_form(self, *args)

    monkeypatch.setattr(Tree, "_entry_form", opening_meanwhile)
    committed = tree.commit()
    monkeypatch.undo()
    assert opened and all(isinstance(node, File) for node in opened)
    unlisted = Tree(store, root)
    unlisted.write_file("arr/new", b"new")
    assert committed == unlisted.commit()
