"""Attributes kept outside the CIDs: saved at sync by path and content, found again by any later
mount of the store; never part of a root."""

from __future__ import annotations

import os
import stat
from pathlib import Path

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
