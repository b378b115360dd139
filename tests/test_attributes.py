"""Attributes kept outside the CIDs: saved at sync by path and content, found again by any later
mount of the store; never part of a root."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest

from ipldmount.blocks import DirectoryBlockstore, MemoryBlockstore
from ipldmount.ipld.cid import parse_cid
from ipldmount.repo.attributes import Attributes, AttributeTable, Meta
from ipldmount.repo.home import StoreHome
from ipldmount.repo.repository import Repository
from ipldmount.session.runner import run_in_place
from ipldmount.session.session import Session
from ipldmount.tree.model import Tree


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
    session = Session(Repository(home.blocks, home=home), tmp_path / "mnt", None)
    file = run_in_place(session.create(session.tree.root, "tmp.name"))
    session.attributes.set(file, Meta(stat.S_IFREG | 0o640, 0, 0, 5, 5, 5))
    run_in_place(session.rename(session.tree.root, "tmp.name", session.tree.root, "final"))
    root = parse_cid(run_in_place(session.sync()).root)
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
    monkeypatch.setattr("ipldmount.repo.attributes.DIRECTORY_ROWS", 2)
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
    monkeypatch.setattr("ipldmount.repo.attributes.PRUNE_PAGE", 2)  # several pages
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


# --- renames: rows follow what moves --------------------------------------------------------


def test_a_copy_takes_the_rows_of_a_path_and_its_subtree_in_one_statement(tmp_path: Path) -> None:
    """Only the range of the primary key under the old path is read: its cost is those rows;
    the old rows stay (the old root and a discarded journal still read them)."""
    rows = table(tmp_path)
    meta = Meta(stat.S_IFREG | 0o600, 1, 2, 3, 3, 3)
    kept = [("d", b""), ("d/k", b"c1"), ("d/k", b"c0"), ("d/s/x", b"c2"), ("d0", b"c3"), ("d-e/y", b"c4")]
    rows.save((path, cid, meta) for path, cid in kept)
    statements: list[str] = []
    rows._connect().set_trace_callback(statements.append)
    rows.copy("d", "n/e")
    assert [s for s in statements if s.startswith("INSERT")] and len(statements) == 3, statements
    for path, cid in [("n/e", b""), ("n/e/k", b"c1"), ("n/e/k", b"c0"), ("n/e/s/x", b"c2"), *kept]:
        assert rows.lookup(path, cid) == meta, path
    assert rows.lookup("n/e0", b"c3") is None and rows.lookup("n/e-e/y", b"c4") is None


def test_a_renamed_directory_s_contents_keep_their_modes(tmp_path: Path) -> None:
    """Nothing under the directory is loaded before the rename: the rows copied at the rename
    answer under the new path, now and after a sync and remount."""
    store = MemoryBlockstore()
    tree = Tree(store)
    attributes = Attributes(table(tmp_path), tree)
    key = tree.write_file("proj/sub/id_key", b"secret")
    attributes.set(key, Meta(stat.S_IFREG | 0o600, 0, 0, 1, 1, 1))
    attributes.set(tree.resolve("proj/sub"), Meta(stat.S_IFDIR | 0o700, 0, 0, 1, 1, 1))
    tree.write_file("proj/open", b"anyone")
    root = tree.commit()
    attributes.save()

    later = Tree(store, root)
    moved = Attributes(table(tmp_path), later)
    project = later.resolve("proj")
    moved.get(project)  # as the rename handler does, before the rename
    later.rename(later.root, "proj", later.root, "proj2")
    assert moved.rows_follow(project)
    moved.copy_rows("proj", "proj2")
    moved.changed(project)
    assert moved.get(later.resolve("proj2/sub/id_key")).mode == stat.S_IFREG | 0o600
    assert moved.get(later.resolve("proj2/sub")).mode == stat.S_IFDIR | 0o700
    assert moved.get(later.resolve("proj2/open")).mode == stat.S_IFREG | 0o644
    root = later.commit()
    moved.save()
    again = Tree(store, root)
    assert (
        Attributes(table(tmp_path), again).get(again.resolve("proj2/sub/id_key")).mode == stat.S_IFREG | 0o600
    )


def test_only_a_file_read_from_the_table_has_rows_to_copy(tmp_path: Path) -> None:
    """A file made in this mount (rsync's and zarr's temporaries, renamed into place) costs no
    query at its rename; nor does anything while the table holds no row."""
    store = MemoryBlockstore()
    tree = Tree(store)
    attributes = Attributes(table(tmp_path), tree)
    new = tree.write_file("new", b"new")
    assert not attributes.rows_follow(tree.root)  # the table is empty
    attributes.set(new, Meta(stat.S_IFREG | 0o600, 0, 0, 1, 1, 1))
    root = tree.commit()
    attributes.save()
    assert not attributes.rows_follow(new)
    later = Tree(store, root)
    again = Attributes(table(tmp_path), later)
    kept = later.resolve("new")
    assert again.get(kept).kept and again.rows_follow(kept)


def test_a_hard_link_is_saved_under_each_of_its_names(tmp_path: Path) -> None:
    store = MemoryBlockstore()
    tree = Tree(store)
    attributes = Attributes(table(tmp_path), tree)
    file = tree.write_file("a/key", b"secret")
    tree.link(file, tree.makedirs("b"), "same")
    attributes.set(file, Meta(stat.S_IFREG | 0o600, 0, 0, 1, 1, 1))
    root = tree.commit()
    attributes.save()
    again = Tree(store, root)
    later = Attributes(table(tmp_path), again)
    assert [later.get(again.resolve(p)).mode for p in ("a/key", "b/same")] == [stat.S_IFREG | 0o600] * 2


# --- a table that cannot be read: never wider, never silent -------------------------------------


def corrupt(path: Path) -> bytes:
    garbage = bytes(range(256)) * 16  # the first page: header and schema
    with open(path, "r+b") as stream:
        stream.write(garbage)
    return garbage


def saved_table(tmp_path: Path) -> tuple[MemoryBlockstore, bytes]:
    """A store whose table keeps f (0640) and d (0750); the root of that tree."""
    store = MemoryBlockstore()
    tree = Tree(store)
    attributes = Attributes(table(tmp_path), tree)
    attributes.set(tree.write_file("d/f", b"f"), Meta(stat.S_IFREG | 0o640, 0, 0, 1, 1, 1))
    attributes.set(tree.resolve("d"), Meta(stat.S_IFDIR | 0o750, 0, 0, 1, 1, 1))
    tree.write_file("g", b"never changed")
    root = tree.commit()
    attributes.save()
    attributes.table.close()
    return store, root


def modes(attributes: Attributes, *paths: str) -> list[int]:
    return [stat.S_IMODE(attributes.get(attributes.tree.resolve(path)).mode) for path in paths]


def test_an_unreadable_table_gives_private_defaults(tmp_path: Path) -> None:
    store, root = saved_table(tmp_path)
    corrupt(tmp_path / "attributes.sqlite")
    tree = Tree(store, root)
    attributes = Attributes(table(tmp_path), tree)
    assert modes(attributes, "d/f", "d", "g", "") == [0o600, 0o700, 0o600, 0o700]
    assert not attributes.table.trusted()
    problem = attributes.table.warning()
    assert problem is not None and "cannot be read" in problem and "not a database" in problem


def test_recover_moves_a_corrupt_table_aside_and_the_new_one_stays_private(tmp_path: Path) -> None:
    store, root = saved_table(tmp_path)
    path = tmp_path / "attributes.sqlite"
    garbage = corrupt(path)
    said = table(tmp_path).recover()
    assert said is not None and "moved aside to" in said and "0600" in said and "0700" in said
    aside = [p for p in tmp_path.glob("attributes.sqlite.corrupt-*") if not p.name.endswith(("-wal", "-shm"))]
    assert len(aside) == 1 and str(aside[0]) in said
    assert aside[0].read_bytes().startswith(garbage)
    assert table(tmp_path).recover() is None  # the new table reads
    tree = Tree(store, root)
    later = Attributes(table(tmp_path), tree)
    assert modes(later, "d/f", "d", "g") == [0o600, 0o700, 0o600]  # lost: private, in every later mount
    later.editable(tree.resolve("g")).mode = stat.S_IFREG | 0o644
    tree.commit()
    later.save()
    again = Attributes(table(tmp_path), Tree(store, root))
    assert modes(again, "g", "d/f") == [0o644, 0o600]


def test_recover_leaves_a_readable_missing_or_busy_table_where_it_is(
    tmp_path: Path, monkeypatch: Any
) -> None:
    assert table(tmp_path).recover() is None
    assert not (tmp_path / "attributes.sqlite").exists()
    saved_table(tmp_path)
    assert table(tmp_path).recover() is None
    busy = table(tmp_path)

    def locked(*args: object) -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(busy, "_connect", locked)
    said = busy.recover()
    assert said is not None and "locked" in said and "0600" in said
    assert not list(tmp_path.glob("attributes.sqlite.corrupt-*"))


def test_a_table_corrupted_under_a_mount_is_moved_aside_at_its_next_save(tmp_path: Path) -> None:
    store, root = saved_table(tmp_path)
    tree = Tree(store, root)
    attributes = Attributes(table(tmp_path), tree)
    assert modes(attributes, "d/f") == [0o640]  # connected, the table read
    corrupt(tmp_path / "attributes.sqlite")
    attributes.editable(tree.resolve("g")).mode = stat.S_IFREG | 0o604
    tree.commit()
    attributes.save()
    warning = attributes.table.warning()
    assert warning is not None and "moved aside" in warning
    later = Attributes(table(tmp_path), Tree(store, root))
    assert modes(later, "g", "d/f", "d") == [0o604, 0o600, 0o700]


def test_changes_a_table_refused_are_saved_at_the_next_sync(tmp_path: Path, monkeypatch: Any) -> None:
    store = MemoryBlockstore()
    tree = Tree(store)
    attributes = Attributes(table(tmp_path), tree)
    file = tree.write_file("f", b"f")
    attributes.set(file, Meta(stat.S_IFREG | 0o600, 0, 0, 1, 1, 1))
    root = tree.commit()

    def locked(values: object) -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(attributes.table, "_write", locked)
    attributes.save()
    warning = attributes.table.warning()
    assert warning is not None and "not saved" in warning and "locked" in warning
    monkeypatch.undo()
    attributes.save()
    assert attributes.table.warning() is None
    assert modes(Attributes(table(tmp_path), Tree(store, root)), "f") == [0o600]


def test_a_rename_the_table_could_not_follow_is_copied_at_the_next_sync(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """The table is busy at the rename: the copy waits for the sync instead of being dropped
    (the renamed directory's contents would come back with the public defaults)."""
    monkeypatch.setattr("ipldmount.repo.attributes.RETRY_AFTER", 0)
    store, root = saved_table(tmp_path)
    tree = Tree(store, root)
    attributes = Attributes(table(tmp_path), tree)
    busy = sqlite3.OperationalError("database is locked")
    with monkeypatch.context() as patched:
        patched.setattr(attributes.table, "_connect", lambda: (_ for _ in ()).throw(busy))
        directory = tree.resolve("d")
        attributes.get(directory)
        tree.rename(tree.root, "d", tree.root, "e")
        assert attributes.rows_follow(directory)  # the table cannot say it holds nothing
        attributes.copy_rows("d", "e")
        assert modes(attributes, "e/f") == [0o600]  # meanwhile: private, never wider
    tree.commit()
    attributes.save()
    assert modes(Attributes(table(tmp_path), Tree(store, tree.commit())), "e/f") == [0o640]
