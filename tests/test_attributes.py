"""Attributes kept outside the CIDs: saved at sync by path and content, found again by any later
mount of the store; never part of a root."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from ipldmount.blocks import DirectoryBlockstore, MemoryBlockstore
from ipldmount.ipld.cid import parse_cid
from ipldmount.state.attributes import Attributes, AttributeTable, Meta
from ipldmount.state.home import StoreHome
from ipldmount.state.session import Session
from ipldmount.tree import Tree


def table(tmp_path: Path) -> AttributeTable:
    return AttributeTable(tmp_path / "attributes.sqlite", lambda path, flags: os.open(path, flags, 0o600))


def test_attributes_come_back_for_the_same_path_and_bytes(tmp_path: Path) -> None:
    store = MemoryBlockstore()
    tree = Tree(store)
    attributes = Attributes(table(tmp_path), tree)
    file = tree.write_file("d/a", b"same bytes")
    other = tree.write_file("d/b", b"other bytes")
    directory = tree.resolve("d")
    attributes.set(file, Meta(stat.S_IFREG | 0o600, 1000, 100, 1, 1_000_000_000, 1))
    attributes.set(directory, Meta(stat.S_IFDIR | 0o700, 1000, 100, 1, 2_000_000_000, 1))
    root = tree.commit()
    attributes.save()

    again = Tree(store, root)
    later = Attributes(table(tmp_path), again)
    meta = later.get(again.resolve("d/a"))
    assert (meta.mode, meta.uid, meta.gid, meta.mtime_ns) == (stat.S_IFREG | 0o600, 1000, 100, 1_000_000_000)
    assert later.get(again.resolve("d")).mtime_ns == 2_000_000_000
    assert later.get(again.resolve("d/b")).mode == stat.S_IFREG | 0o644  # never set: the default
    assert other.content.content_cid() != file.content.content_cid()

    changed = Tree(store, root)
    changed.write_file("d/a", b"new bytes")  # other content at that path: not the same file
    assert Attributes(table(tmp_path), changed).get(changed.resolve("d/a")).mode == stat.S_IFREG | 0o644


def test_a_renamed_file_keeps_its_attributes_under_its_new_path(tmp_path: Path) -> None:
    home = StoreHome(DirectoryBlockstore(tmp_path / "store"))
    session = Session(home.blocks, home, tmp_path / "mnt", None)
    file = session.create(session.tree.root, "tmp.name")
    session.attributes.set(file, Meta(stat.S_IFREG | 0o640, 0, 0, 5, 5, 5))
    session.rename(session.tree.root, "tmp.name", session.tree.root, "final")
    root = parse_cid(session.sync().root)
    session.close(clean=True)
    tree = Tree(home.blocks, root)
    meta = Attributes(home.attribute_table, tree).get(tree.resolve("final"))
    assert meta.mode == stat.S_IFREG | 0o640 and meta.mtime_ns == 5


def test_a_directory_s_rows_are_read_at_once_and_kept_right(tmp_path: Path, monkeypatch: Any) -> None:
    """A listing asks for every entry: one query per directory, not per entry; deeper paths, a
    directory too big to keep and rows saved later all still answer right."""
    rows = table(tmp_path)
    modes = {"a": 0o600, "b": 0o640}
    meta = {name: Meta(stat.S_IFREG | mode, 7, 8, mode, mode, mode) for name, mode in modes.items()}
    rows.save(
        [
            ("d/a", b"cid-a", meta["a"]),
            ("d/sub/a", b"cid-a", meta["b"]),  # same name and bytes one level down: another file
            ("top", b"cid-t", meta["b"]),
            ("big/x", b"cid-x", meta["a"]),
            ("big/y", b"cid-y", meta["b"]),
            ("big/z", b"cid-z", meta["a"]),
        ]
    )
    queries: list[str] = []
    rows._connect().set_trace_callback(queries.append)
    monkeypatch.setattr("ipldmount.state.attributes.DIRECTORY_ROWS", 2)
    assert rows.lookup("d/a", b"cid-a") == meta["a"]
    assert rows.lookup("d/a", b"other") is None and rows.lookup("d/nothing", b"cid-a") is None
    assert rows.lookup("d/sub/a", b"cid-a") == meta["b"]
    assert rows.lookup("top", b"cid-t") == meta["b"] and rows.lookup("d", b"") is None
    assert len(queries) == 5, queries  # d, d/sub: one each; the root's subtree is too big: 1 + 2
    assert [rows.lookup(f"big/{n}", f"cid-{n}".encode()) for n in "xyz"] == [meta["a"], meta["b"], meta["a"]]
    assert len(queries) == 5 + 1 + 3  # too many under big/ too: one query each
    rows.save([("d/new", b"cid-n", meta["b"])])
    assert rows.lookup("d/new", b"cid-n") == meta["b"]  # a save forgets what was read


def test_an_empty_table_costs_no_path_per_file(tmp_path: Path, monkeypatch: Any) -> None:
    """Most stores keep no attributes: a listing then makes no path (nor query) per entry."""
    tree = Tree(MemoryBlockstore())
    file = tree.write_file("d/a", b"bytes")
    attributes = Attributes(table(tmp_path), tree)

    def no_path(node: object) -> str:
        raise AssertionError("path_of asked although the table is empty")

    monkeypatch.setattr(tree, "path_of", no_path)
    assert attributes.get(file).mode == stat.S_IFREG | 0o644


def test_pruning_drops_the_rows_of_contents_no_longer_kept(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr("ipldmount.state.attributes.PRUNE_PAGE", 2)  # several pages
    attributes = table(tmp_path)
    meta = Meta(stat.S_IFREG | 0o600, 1000, 100, 1, 1, 1)
    kept, gone = b"\x01kept", b"\x01gone"
    rows = [("a", kept), ("b", gone), ("c/d", gone), ("c/e", kept), ("c", b""), ("f", gone)]
    attributes.save((path, cid, meta) for path, cid in rows)

    assert attributes.prune(lambda cid: cid == kept, dry_run=True) == 3
    assert all(attributes.lookup(path, cid) is not None for path, cid in rows)  # a dry run keeps them
    assert attributes.prune(lambda cid: cid == kept) == 3
    assert [path for path, cid in rows if attributes.lookup(path, cid)] == ["a", "c/e", "c"]
    assert attributes.prune(lambda cid: cid == kept) == 0


def test_pruning_a_store_without_attributes_makes_no_table(tmp_path: Path) -> None:
    assert table(tmp_path).prune(lambda cid: False) == 0
    assert not (tmp_path / "attributes.sqlite").exists()


def test_pruning_an_unreadable_table_is_logged_and_removes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "attributes.sqlite"
    path.write_bytes(b"not a database, and not empty either" * 100)
    assert table(tmp_path).prune(lambda cid: False) == 0
    assert "cannot be pruned" in caplog.text
    assert path.read_bytes() == b"not a database, and not empty either" * 100
