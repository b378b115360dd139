"""diff_roots: what changed between two trees, against a reference over plain dicts, and at the
cost of the change (blocks read counted, never timed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipldmount.adapters import cli
from ipldmount.blocks import Blockstore, DirectoryBlockstore, MemoryBlockstore, dag
from ipldmount.format.diff import Change, diff_roots
from ipldmount.ipld.cid import cid_to_str
from ipldmount.repo.home import StoreHome
from ipldmount.repo.registry import RootRecord
from ipldmount.tree.model import Tree

Files = dict[str, bytes]  # path -> bytes; a path ending in "/" is an empty directory


def build(store: Blockstore, files: Files) -> bytes:
    tree = Tree(store)
    for path, data in files.items():
        if path.endswith("/"):
            tree.makedirs(path.rstrip("/"))
        else:
            tree.write_file(path, data)
    return tree.commit()


def nest(files: Files) -> dict[str, Any]:
    """{"a": {"b": b"..."}}: directories as dicts, files as bytes."""
    root: dict[str, Any] = {}
    for path, data in files.items():
        *folders, name = path.rstrip("/").split("/")
        node = root
        for folder in folders:
            node = node.setdefault(folder, {})
        if path.endswith("/"):
            node.setdefault(name, {})
        else:
            node[name] = data
    return root


def reference(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[Change]:
    changes = []
    for name in sorted(a.keys() | b.keys()):
        x, y = a.get(name), b.get(name)
        path = prefix + name
        if x == y:
            continue
        if isinstance(x, dict) and isinstance(y, dict):
            changes += reference(x, y, path + "/")
        elif isinstance(x, bytes) and isinstance(y, bytes):
            changes.append(Change("modified", path))
        else:
            if x is not None:
                changes.append(Change("removed", path + "/" * isinstance(x, dict)))
            if y is not None:
                changes.append(Change("added", path + "/" * isinstance(y, dict)))
    return changes


def test_the_kinds_of_change() -> None:
    store = MemoryBlockstore()
    a = build(
        store, {"keep": b"k", "gone": b"g", "edit": b"1", "d/x": b"x", "swap": b"file", ".zattrs": b"{}"}
    )
    changed = {"keep": b"k", "new/deep/f": b"n", "edit": b"2", "d/x": b"x", "d/y": b"y", "swap/in": b""}
    b = build(store, {**changed, ".zattrs": b'{"a": 1}'})
    assert list(diff_roots(store, a, b)) == [
        Change("modified", ".zattrs"),
        Change("added", "d/y"),
        Change("modified", "edit"),
        Change("removed", "gone"),
        Change("added", "new/"),
        Change("removed", "swap"),
        Change("added", "swap/"),
    ]
    assert list(diff_roots(store, a, a)) == []


names = st.sampled_from(["a", "b", "c", ".zattrs", "0", "1"])
paths = st.lists(names, min_size=1, max_size=3).map("/".join)
trees = st.dictionaries(paths, st.sampled_from([b"", b"x", b"y", b"{}"]), max_size=8)


def consistent(files: Files) -> Files:
    """Drop paths that need a file to be a directory too (the tree refuses those)."""
    kept: Files = {}
    for path in sorted(files, key=len):
        parents = ["/".join(path.split("/")[:i]) for i in range(1, path.count("/") + 1)]
        if not any(parent in kept for parent in parents) and not any(
            other.startswith(path + "/") for other in kept
        ):
            kept[path] = files[path]
    return kept


@settings(max_examples=150, deadline=None)
@given(trees, trees)
def test_diff_matches_a_reference_over_dicts(a: Files, b: Files) -> None:
    a, b = consistent(a), consistent(b)
    store = MemoryBlockstore()
    assert list(diff_roots(store, build(store, a), build(store, b))) == reference(nest(a), nest(b))


class CountingStore(MemoryBlockstore):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def get(self, cid: bytes) -> bytes:
        self.reads += 1
        return super().get(cid)

    def read(self, cid: bytes, offset: int = 0, size: int = -1) -> bytes:
        self.reads += 1
        return super().read(cid, offset, size)


def test_one_change_in_a_sharded_directory_reads_only_its_path() -> None:
    store = CountingStore()
    files = {f"arr/{i}.{j}": bytes([i, j]) for i in range(100) for j in range(100)}  # 10,000: sharded
    before = build(store, files)
    files["arr/42.7"] = b"changed"
    after = build(store, files)
    store.reads = 0
    assert list(diff_roots(store, before, after)) == [Change("modified", "arr/42.7")]
    assert store.reads < 20, f"{store.reads} blocks read to find one change among 10,000 entries"


def test_the_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    store = DirectoryBlockstore(tmp_path / "store")
    a = build(store, {"x": b"1", "gone": b""})
    b = build(store, {"x": b"2", "new/f": b""})
    assert cli.main(["tag", "old", cid_to_str(a), "--store", str(store.root)]) == 0
    capsys.readouterr()
    assert cli.main(["diff", "old", cid_to_str(b), "--store", str(store.root)]) == 0
    assert capsys.readouterr().out == "D gone\nA new/\nM x\n"
    assert cli.main(["diff", cid_to_str(a), cid_to_str(b), "--json", "--store", str(store.root)]) == 0
    assert '"change": "modified"' in capsys.readouterr().out


# --- deep trees (issue: every walk over a tree's depth is iterative) -----------------------------

DEEP = "/".join(["d"] * 1100)  # 1,100 nested directories: a link every 64 levels, ~18 blocks


def test_a_tree_1100_directories_deep_is_diffed_walked_and_read(store: Blockstore) -> None:
    before = build(store, {f"{DEEP}/f": b"1", "top": b"t"})
    tree = Tree(store, before)
    assert tree.read_file(f"{DEEP}/f") == b"1"  # loaded a directory at a time
    tree.write_file(f"{DEEP}/f", b"2")
    after = tree.commit()
    assert list(diff_roots(store, before, after)) == [Change("modified", f"{DEEP}/f")]
    gone = build(store, {f"{DEEP}/g": b"", "top": b"t"})
    assert list(diff_roots(store, after, gone)) == [
        Change("removed", f"{DEEP}/f"),
        Change("added", f"{DEEP}/g"),
    ]
    closure = {cid for cid, _ in dag.iter_closure(store, after)}
    new = {cid for cid, _ in dag.iter_new_blocks(store, after, before)}
    assert after in new and new <= closure and len(closure) > 1100 // 64
    assert sorted(path for path, _ in Tree(store, after).walk_files()) == [f"{DEEP}/f", "top"]


def test_log_and_diff_of_a_deep_tree_print_one_line_each(tmp_path: Path) -> None:
    """Each record of `log` is a diff with its parent: a deep tree once made every one fail."""
    store = DirectoryBlockstore(tmp_path / "store")
    before = build(store, {f"{DEEP}/f": b"1"})
    after = build(store, {f"{DEEP}/f": b"2"})
    registry = StoreHome(store).registry  # two lines from before commits: upgraded to a line of two
    registry.record(RootRecord(cid_to_str(before), RootRecord.now(), "mount", "/mnt/x"))
    registry.record(RootRecord(cid_to_str(after), RootRecord.now(), "mount", "/mnt/x", cid_to_str(before)))

    def run(*args: str) -> list[str]:
        command = [sys.executable, "-m", "ipldmount", *args, "--store", str(store.root)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
        return result.stdout.splitlines()

    newest, oldest = json.loads("\n".join(run("log", "--json")))
    assert newest["tree"] == cid_to_str(after) and newest["changed"] == 1 and oldest["changed"] is None
    assert "(1 path changed)" in "\n".join(run("log"))
    assert run("diff", cid_to_str(before), cid_to_str(after)) == [f"M {DEEP}/f"]
