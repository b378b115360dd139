"""Versions as data without FUSE: commit nodes, branches moved by compare-and-swap, resolution of
every kind of root argument, two in-process writers on one branch, gc from the history, and the
upgrade of a store from before commits."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import zarr
import zarr.core.buffer

from ipldmount.adapters import cli
from ipldmount.adapters.zarr_store import IPLDStore
from ipldmount.blocks import DirectoryBlockstore, MemoryBlockstore
from ipldmount.blocks.gc import mark
from ipldmount.errors import FormatError, IpldmountError
from ipldmount.format.commit import COMMIT_KEY, Commit, ancestry, decode_commit, merge_base, read_commit
from ipldmount.ipld import cid as cids
from ipldmount.ipld import codec
from ipldmount.repo.branches import BranchMovedError
from ipldmount.repo.registry import RootRecord
from ipldmount.repo.repository import Repository
from ipldmount.repo.retention import Retention
from ipldmount.session.advance import MergeConflictError
from ipldmount.tree.unixfs import open_tree


def buffer(data: bytes) -> zarr.core.buffer.Buffer:
    return zarr.core.buffer.default_buffer_prototype().buffer.from_bytes(data)


def tree_of(repository: Repository, files: dict[str, bytes]) -> bytes:
    tree = open_tree(repository.local, None)
    for path, data in files.items():
        tree.write_file(path, data)
    return tree.commit()


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = cli.main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return code, out, err


# --- the commit node ---------------------------------------------------------------------


def test_a_commit_round_trips_and_keeps_keys_it_does_not_know() -> None:
    store = MemoryBlockstore()
    tree = Repository(store).make_commit  # noqa: F841 - a store in memory still makes commits
    root = tree_of(Repository(store), {"a": b"1"})
    commit = Commit(root, (), "2026-12-07T18:00:00.000Z", "first", {"author": "x"})
    decoded = decode_commit(commit.encode())
    assert decoded == commit and decoded.extra == {"author": "x"}
    child = Commit(root, (cids.block_cid(cids.DAG_CBOR, commit.encode()),), "2026-12-07T18:00:01.000Z")
    assert decode_commit(child.encode()).parents == child.parents
    assert "message" not in codec.decode(child.encode())


@pytest.mark.parametrize(
    "value",
    [
        {COMMIT_KEY: 2, "tree": None, "parents": [], "time": ""},
        {COMMIT_KEY: 1, "parents": [], "time": ""},
        {COMMIT_KEY: 1, "tree": "not a link", "parents": [], "time": ""},
        {COMMIT_KEY: True, "parents": [], "time": ""},
    ],
)
def test_malformed_commits_are_refused(value: dict[str, object]) -> None:
    with pytest.raises(FormatError):
        decode_commit(codec.encode(value))


def test_no_directory_reads_as_a_commit_and_no_commit_as_a_directory() -> None:
    store = MemoryBlockstore()
    repository = Repository(store)
    root = tree_of(repository, {"ipldmount": b"x", "commit": b"y"})
    assert read_commit(store, root) is None
    commit = repository.make_commit(root, [])
    with pytest.raises(IpldmountError):
        open_tree(store, commit, read_only=True).listdir()  # a name with "/" makes it no directory


def test_merge_base_and_ancestry_cost_the_lines_since_they_parted() -> None:
    repository = Repository(MemoryBlockstore())
    base = repository.make_commit(tree_of(repository, {"a": b"0"}), [])
    line = [base]
    for index in range(50):
        line.append(repository.make_commit(tree_of(repository, {"a": bytes([index])}), [line[-1]]))
    ours = repository.make_commit(tree_of(repository, {"b": b"ours"}), [line[-1]])
    theirs = repository.make_commit(tree_of(repository, {"b": b"theirs"}), [line[-1]])
    assert merge_base(repository.local, ours, theirs) == line[-1]
    assert [cid for cid, _ in ancestry(repository.local, [ours], limit=3)] == [ours, line[-1], line[-2]]
    unrelated = repository.make_commit(tree_of(repository, {"z": b"z"}), [])
    assert merge_base(repository.local, ours, unrelated) is None


# --- branches and resolution -------------------------------------------------------------


@pytest.fixture
def repository(tmp_path: Path) -> Repository:
    return Repository.at(tmp_path / "store")


def age(repository: Repository, seconds: float = 3600) -> None:
    """Date every block back and end this process's lease, as if written long ago."""
    store = repository.local
    assert isinstance(store, DirectoryBlockstore)
    store.settle(time.time() + 1)
    then = time.time() - seconds
    for cid in store:
        os.utime(store.block_path(cid), (then, then))


def commits_on_main(repository: Repository, count: int) -> list[bytes]:
    made: list[bytes] = []
    for index in range(count):
        tree = tree_of(repository, {"data": f"version {index}".encode()})
        commit = repository.make_commit(tree, made[-1:], f"v{index}")
        repository.move_branch("main", made[-1] if made else None, commit, why="test")
        made.append(commit)
    return made


def test_branches_move_only_by_compare_and_swap(repository: Repository) -> None:
    first, second = commits_on_main(repository, 2)
    with pytest.raises(BranchMovedError) as moved:
        repository.move_branch("main", first, first, why="stale")
    assert moved.value.head == second
    with pytest.raises(BranchMovedError):
        repository.move_branch("main", None, first, why="exists")
    with pytest.raises(IpldmountError, match="is a tree, not a commit"):
        repository.move_branch("other", None, repository.commit(first).tree, why="tree")
    repository.move_branch("main", second, None, why="delete")
    assert repository.branches() == {}


def test_concurrent_moves_from_one_head_let_exactly_one_through(repository: Repository) -> None:
    (base,) = commits_on_main(repository, 1)
    tree = repository.commit(base).tree
    candidates = [repository.make_commit(tree, [base], f"writer {index}") for index in range(8)]
    won: list[bytes] = []
    lost: list[bytes] = []

    def move(commit: bytes) -> None:
        try:
            repository.move_branch("main", base, commit, why="race")
            won.append(commit)
        except BranchMovedError:
            lost.append(commit)

    threads = [threading.Thread(target=move, args=(commit,)) for commit in candidates]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and len(lost) == 7 and repository.branches()["main"] == won[0]


def test_every_kind_of_root_argument_resolves(repository: Repository, tmp_path: Path) -> None:
    made = commits_on_main(repository, 3)
    trees = [repository.commit(commit).tree for commit in made]
    assert repository.resolve("main").commit == made[2] and repository.resolve("main").branch == "main"
    assert repository.resolve("main~0").commit == made[2]
    assert repository.resolve("main~2").tree == trees[0]
    assert repository.resolve(cids.cid_to_str(made[1])).tree == trees[1]
    assert repository.resolve(cids.cid_to_str(trees[1])).commit is None
    repository.tag("v1", cids.cid_to_str(made[1]))
    assert repository.tags()["v1"] == cids.cid_to_str(made[1])  # a tag names the commit
    assert repository.resolve("v1~1").commit == made[0]
    assert repository.split_target("main~1/data")[0] == trees[1]
    with pytest.raises(IpldmountError, match="fewer than 4 commits"):
        repository.resolve("main~3")
    with pytest.raises(IpldmountError, match="number of commits"):
        repository.resolve("main~x")
    with pytest.raises(IpldmountError, match="is a tag"):
        repository.move_branch("v1", None, made[0], why="clash")


def test_log_lists_parents_names_and_expired_trees(
    repository: Repository, capsys: pytest.CaptureFixture[str]
) -> None:
    made = commits_on_main(repository, 3)
    store = repository.home.root
    code, out, _ = run(capsys, "log", "main", "--json", "--store", store)
    entries = json.loads(out)
    assert code == 0 and [entry["commit"] for entry in entries] == [cids.cid_to_str(c) for c in made[::-1]]
    assert entries[0]["names"] == ["main"] and entries[0]["changed"] == 1
    assert entries[0]["parents"] == [cids.cid_to_str(made[1])] and entries[2]["parents"] == []
    code, out, _ = run(capsys, "log", "--store", store)
    assert out.count("* commit") == 3 and "v2" in out and "(main)" in out
    code, out, _ = run(capsys, "reflog", "main", "--store", store)
    assert code == 0 and len(out.strip().splitlines()) == 3  # three moves, newest first
    assert "(new) -> " + cids.cid_to_str(made[0]) in out.strip().splitlines()[-1]
    code, out, _ = run(capsys, "branches", "--store", store)
    assert out.startswith("main  " + cids.cid_to_str(made[2]))


# --- two writers on one branch, in-process ---------------------------------------------------


def test_two_stores_on_one_branch_merge_disjoint_chunks(tmp_path: Path) -> None:
    path = tmp_path / "store"
    first = IPLDStore(DirectoryBlockstore(path), branch="main")
    array = zarr.create_array(first, name="t", shape=(8,), chunks=(1,), dtype="i4", fill_value=0)
    first.freeze("the array")
    second = IPLDStore(DirectoryBlockstore(path), branch="main")
    array[0] = 10
    zarr.open_array(second, path="t", mode="r+")[7] = 70
    first.freeze("chunk 0")
    second.freeze("chunk 7")
    merged = Repository.at(path).commit(Repository.at(path).branches()["main"])
    assert len(merged.parents) == 2
    reread = IPLDStore(DirectoryBlockstore(path), branch="main", read_only=True)
    assert list(zarr.open_array(reread, path="t", mode="r")[:]) == [10, 0, 0, 0, 0, 0, 0, 70]
    assert list(zarr.open_array(second, path="t", mode="r")[:]) == [10, 0, 0, 0, 0, 0, 0, 70]


def test_overlapping_writes_refuse_and_keep_both(tmp_path: Path) -> None:
    path = tmp_path / "store"
    first = IPLDStore(DirectoryBlockstore(path), branch="main")
    first.set_sync("x", buffer(b"base"))
    first.freeze()
    second = IPLDStore(DirectoryBlockstore(path), branch="main")
    first.set_sync("x", buffer(b"first"))
    second.set_sync("x", buffer(b"second"))
    first.freeze()
    with pytest.raises(MergeConflictError) as conflict:
        second.freeze()
    assert conflict.value.paths == ["x"]
    assert second.get_sync("x") is not None and bytes(second.get_sync("x").to_bytes()) == b"second"  # type: ignore[union-attr]
    head = Repository.at(path).branches()["main"]
    assert Repository.at(path).file_at(cids.cid_to_str(head) + "/x")[0].read_file("x") == b"first"


def test_attribute_edits_to_different_keys_merge(tmp_path: Path) -> None:
    path = tmp_path / "store"
    first = IPLDStore(DirectoryBlockstore(path), branch="main")
    group = zarr.open_group(first, mode="w", zarr_format=2)
    group.attrs["title"] = "base"
    first.freeze()
    second = IPLDStore(DirectoryBlockstore(path), branch="main")
    zarr.open_group(first, mode="r+").attrs["units"] = "K"
    zarr.open_group(second, mode="r+").attrs["source"] = "model"
    first.freeze()
    second.freeze()
    attrs = dict(zarr.open_group(IPLDStore(DirectoryBlockstore(path), branch="main"), mode="r").attrs)
    assert attrs == {"title": "base", "units": "K", "source": "model"}


# --- gc from the history -------------------------------------------------------------------


def test_gc_expires_old_trees_and_keeps_the_chain_readable(repository: Repository) -> None:
    made = commits_on_main(repository, 5)
    trees = [repository.commit(commit).tree for commit in made]
    repository.tag("first", cids.cid_to_str(made[0]))
    age(repository)
    report = repository.collect(Retention(keep_last=2, grace=0))
    assert report.commits == 5
    store = repository.local
    for kept in (trees[0], trees[3], trees[4]):
        assert not mark(store, [kept], check_leaves=True).missing_count
    assert not store.has(trees[1]) and not store.has(trees[2])
    assert [cid for cid, _ in ancestry(store, [made[4]])] == made[::-1]
    assert "branch main: its head" in report.kept[cids.cid_to_str(trees[4])]


def test_gc_keeps_a_branch_moves_within_the_grace_period(repository: Repository) -> None:
    made = commits_on_main(repository, 3)
    trees = [repository.commit(commit).tree for commit in made]
    age(repository, 7200)  # the blocks are old; the branch's moves were just now
    report = repository.collect(Retention(keep_last=1, grace=3600))
    assert all(not mark(repository.local, [tree], check_leaves=True).missing_count for tree in trees)
    assert "branch main named it within the grace period" in report.kept[cids.cid_to_str(trees[0])]
    repository.collect(Retention(keep_last=1, grace=0))
    assert not repository.local.has(trees[0]) and repository.local.has(trees[2])


# --- stores from before commits ---------------------------------------------------------------


def legacy_store(path: Path) -> tuple[Repository, list[bytes]]:
    repository = Repository.at(path)
    roots = [tree_of(repository, {"a": f"{index}".encode()}) for index in range(3)]
    registry = repository.home.registry
    for index, root in enumerate(roots):
        parent = roots[index - 1] if index else None
        registry.record(RootRecord.made(root, "mount", "/mnt/old", parent, f"sync {index}"))
    return repository, roots


def test_an_old_history_becomes_commits_once_and_resumably(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repository, roots = legacy_store(tmp_path / "store")
    before = (tmp_path / "store" / "roots.log").read_bytes()
    registry_type = type(repository.home.registry)
    monkeypatch.setattr(registry_type, "fill", lambda self, change: (_ for _ in ()).throw(OSError("cut")))
    with pytest.raises(OSError):
        repository.upgrade_history()  # cut short before the history was rewritten
    assert (tmp_path / "store" / "roots.log").read_bytes() == before
    monkeypatch.undo()
    assert repository.upgrade_history() == 3
    assert repository.upgrade_history() == 0
    records = repository.history()
    assert all(record.commit for record in records)
    newest = repository.commit(cids.parse_cid(records[0].commit or ""))
    assert newest.tree == roots[2] and newest.message == "sync 2"
    line = [
        commit.tree for _, commit in ancestry(repository.local, [cids.parse_cid(records[0].commit or "")])
    ]
    assert line == roots[::-1]
    assert repository.last_version_at(Path("/mnt/old")).tree == roots[2]  # resume goes on from it
    fresh = Repository.at(tmp_path / "again")
    fresh_roots = legacy_store(tmp_path / "again")[1]
    assert fresh_roots == roots
    fresh.upgrade_history()
    assert [r.commit for r in fresh.history()] == [r.commit for r in records]  # the same commits


# --- kill -9 while committing ------------------------------------------------------------

WRITER = """
import os, sys, zarr.core.buffer
from ipldmount.adapters.zarr_store import IPLDStore
from ipldmount.blocks import DirectoryBlockstore
store = IPLDStore(DirectoryBlockstore(sys.argv[1], durable=False), branch="main")
proto = zarr.core.buffer.default_buffer_prototype()
index = 0
while True:
    for _ in range(20):
        store.set_sync(f"c/{sys.argv[2]}.{index % 100}", proto.buffer.from_bytes(os.urandom(30_000)))
        index += 1
    store.freeze(f"freeze {index}")
    print(index, flush=True)
"""


def test_a_writer_killed_while_committing_never_leaves_a_branch_on_a_partial_tree(tmp_path: Path) -> None:
    import random
    import signal
    import subprocess
    import sys

    path = tmp_path / "store"
    for attempt in range(6):
        writers = [
            subprocess.Popen(
                [sys.executable, "-c", WRITER, str(path), str(number)], stdout=subprocess.PIPE, text=True
            )
            for number in range(2)  # two writers on one branch, disjoint keys: merges while being killed
        ]
        for writer in writers:
            assert writer.stdout is not None
            assert writer.stdout.readline(), "a writer died before its first freeze"
        time.sleep(random.uniform(0.05, 0.4))
        for writer in writers:
            writer.send_signal(signal.SIGKILL)
            writer.wait()
        repository = Repository.at(path)
        head = repository.branches()["main"]
        for cid, commit in ancestry(repository.local, [head]):
            missing = mark(repository.local, [commit.tree], check_leaves=True).missing_count
            assert not missing, f"attempt {attempt}: commit {cids.cid_to_str(cid)} names a partial tree"
    history = list(ancestry(Repository.at(path).local, [Repository.at(path).branches()["main"]]))
    assert any(len(commit.parents) == 2 for _, commit in history)  # the two writers did merge
    report = Repository.at(path).collect(Retention(grace=0))
    assert report.collection.missing_blocks == 0


def test_a_writer_with_nothing_new_follows_the_branch(tmp_path: Path) -> None:
    path = tmp_path / "store"
    first = IPLDStore(DirectoryBlockstore(path), branch="main")
    first.set_sync("a", buffer(b"1"))
    first.freeze()
    idle = IPLDStore(DirectoryBlockstore(path), branch="main")
    first.set_sync("b", buffer(b"2"))
    first.freeze()
    assert idle.get_sync("b") is None
    assert idle.freeze() == first.root and idle.commit == first.commit  # no commit of its own
    assert bytes(idle.get_sync("b").to_bytes()) == b"2"  # type: ignore[union-attr]
