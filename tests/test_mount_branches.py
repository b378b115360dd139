"""Versions as data through real mounts: commits, branches, merges, rollbacks that stick,
discard, and gc that keeps every version something still names."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from fuse_helpers import (
    Mounts,
    assert_one_line_error,
    check,
    cli,
    last_line,
    pid_alive,
    read_file,
    start_cli,
    wait_for,
    write_file,
)

from ipldmount.blocks import DirectoryBlockstore
from ipldmount.blocks.gc import mark
from ipldmount.ipld.cid import parse_cid
from ipldmount.repo.repository import Repository

pytest_plugins = ("fuse_helpers",)
pytestmark = pytest.mark.fuse


def sync_json(mount_cli: object, *args: object) -> dict[str, object]:
    result = check(mount_cli(*args, "--json"))  # type: ignore[operator]
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_the_rollback_of_the_issue_sticks_and_gc_keeps_v1(mounts: Mounts) -> None:
    m = mounts("m")
    m.mount("empty")
    write_file(m / "a.txt", b"one\n")
    v1 = last_line(check(m.cli("sync", m.path, "-m", "v1")).stdout)
    write_file(m / "a.txt", b"two\n")
    v2 = m.unmount()
    assert v1 != v2
    m.mount(v1)
    result = check(m.cli("sync", m.path, "-m", "rollback to v1"))
    assert last_line(result.stdout) == v1
    assert "commit" in result.stdout  # a commit even though the tree is an older one
    assert m.unmount() == v1
    check(m.cli("gc", "--grace", "0"))
    m.mount("resume")
    assert read_file(m / "a.txt") == b"one\n"
    m.unmount()
    listed = check(m.cli("ls", v1))
    assert "a.txt" in listed.stdout
    log = check(m.cli("log", "--json"))
    messages = [entry["message"] for entry in json.loads(log.stdout)]
    assert {"v1", "rollback to v1"} <= set(messages)


def test_sync_says_the_commit_and_prints_the_tree_last(mounts: Mounts) -> None:
    m = mounts().mount("empty")
    write_file(m / "x", b"x")
    result = check(m.cli("sync", m.path, "-m", "first"))
    lines = result.stdout.splitlines()
    assert lines[-2].startswith("committed on branch main: commit ")
    answer = sync_json(m.cli, "sync", m.path)
    assert answer["tree"] == lines[-1] and answer["branch"] == "main" and answer["committed"] is False
    branches = json.loads(check(m.cli("branches", "--json")).stdout)
    assert branches[0]["branch"] == "main" and branches[0]["tree"] == lines[-1]
    assert branches[0]["commit"] == answer["commit"]


def test_two_mounts_of_one_branch_merge_disjoint_changes(mounts: Mounts) -> None:
    a = mounts("a").mount("empty")
    write_file(a / "base.txt", b"base")
    (a / "arr").mkdir()
    write_file(a / "arr/.zattrs", b'{"units": "K"}')
    a.sync()
    b = mounts("b").mount("main")
    write_file(a / "arr/0", b"chunk zero from a")
    write_file(b / "arr/1", b"chunk one from b")
    a.sync()
    answer = sync_json(b.cli, "sync", b.path, "-m", "b's chunk")
    assert answer["merged"] is True
    assert read_file(b / "arr/0") == b"chunk zero from a"  # the merge shows in b at once
    assert read_file(b / "arr/1") == b"chunk one from b"
    log = json.loads(check(b.cli("log", "main", "--json")).stdout)
    assert len(log[0]["parents"]) == 2 and "main" in log[0]["names"]
    a.unmount()
    b.unmount()


def test_overlapping_changes_refuse_list_the_paths_and_lose_nothing(mounts: Mounts) -> None:
    a = mounts("a").mount("empty")
    write_file(a / "same.txt", b"base")
    a.sync()
    b = mounts("b").mount("main")
    write_file(a / "same.txt", b"from a")
    write_file(b / "same.txt", b"from b")
    write_file(b / "other.txt", b"only b")
    a.sync()
    error = assert_one_line_error(b.cli("sync", b.path), "same.txt")
    assert "--branch" in error and "discard" in error
    assert read_file(b / "same.txt") == b"from b"  # kept, unsynced
    answer = sync_json(b.cli, "sync", b.path, "--branch", "b-work")
    assert answer["branch"] == "b-work" and answer["committed"] is True
    assert check(b.cli("cat", "b-work/same.txt")).stdout == "from b"
    assert check(b.cli("cat", "main/same.txt")).stdout == "from a"
    a.unmount()
    b.unmount()


def test_discard_drops_a_live_mounts_changes(mounts: Mounts) -> None:
    m = mounts().mount("empty")
    write_file(m / "kept.txt", b"kept")
    synced = m.sync()
    write_file(m / "kept.txt", b"changed")
    write_file(m / "new.txt", b"new")
    result = check(m.cli("discard", m.path))
    assert last_line(result.stdout) == synced
    assert read_file(m / "kept.txt") == b"kept"
    assert not (m / "new.txt").exists()
    assert m.unmount() == synced


def test_reset_moves_the_branch_and_the_live_mount_follows(mounts: Mounts) -> None:
    m = mounts().mount("empty")
    write_file(m / "a", b"1")
    first = m.sync()
    write_file(m / "a", b"2")
    m.sync()
    write_file(m / "b", b"unsynced")
    refused = m.cli("reset", "main", "main~1")
    assert refused.returncode != 0 and "unsynced" in refused.stderr
    check(m.cli("reset", "main", "main~1", "--discard"))
    assert read_file(m / "a") == b"1" and not (m / "b").exists()
    assert m.unmount() == first
    moves = json.loads(check(m.cli("reflog", "main", "--json")).stdout)
    assert moves[0]["source"] == "reset" and len(moves) == 3


def test_a_mountpoint_as_a_root_means_what_it_shows_now(mounts: Mounts) -> None:
    m = mounts().mount("empty")
    write_file(m / "a", b"1")
    first = m.sync()
    write_file(m / "a", b"2")
    m.sync()
    check(m.cli("reset", m.path, first, "--discard"))
    check(m.cli("tag", "now", m.path))
    assert check(m.cli("cat", "now/a")).stdout == "1"
    assert check(m.cli("diff", first, m.path)).stdout == ""
    m.unmount()


def test_a_killed_daemon_never_leaves_a_branch_on_an_incomplete_tree(mounts: Mounts) -> None:
    m = mounts().mount("empty")
    for round_ in range(3):
        for index in range(20):
            write_file(m / f"f{index}", os.urandom(100_000))
        check(m.cli("sync", m.path, "-m", f"round {round_}"))
    for index in range(20):
        write_file(m / f"f{index}", os.urandom(100_000))
    syncing = start_cli("sync", m.path, "--store", m.store)  # a sync racing the kill
    pid = m.daemon_pid()
    assert pid is not None
    time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid), 10, "the daemon's exit")
    syncing.communicate(timeout=30)
    repository = Repository(DirectoryBlockstore(m.store))
    for name, head in repository.branches().items():
        commit = repository.commit(head)
        assert not mark(repository.local, [commit.tree], check_leaves=True).missing_count, name
    check(cli("unmount", m.path, "--store", m.store))
    m.mount("resume")
    assert len(list(Path(m.path).iterdir())) == 20
    m.unmount()


def test_gc_keeps_what_branches_tags_mounts_and_the_reflog_name(mounts: Mounts) -> None:
    m = mounts().mount("empty")
    trees = []
    for index in range(4):
        write_file(m / "data", f"version {index}".encode())
        trees.append(m.sync())
    check(m.cli("tag", "first", "main~3"))
    m.unmount()
    report = check(m.cli("gc", "--grace", "0", "--keep-last", "1"))
    assert report.returncode == 0
    store = DirectoryBlockstore(m.store)
    assert store.has(parse_cid(trees[0]))  # the tag's commit's tree
    assert store.has(parse_cid(trees[3]))  # the branch head and the mountpoint's head
    log = json.loads(check(m.cli("log", "main", "--json")).stdout)
    assert len(log) == 4  # the chain stays readable
    expired = [entry for entry in log if not entry["tree_stored"]]
    assert [entry["tree"] for entry in expired] == [trees[2], trees[1]]


def test_an_unmount_whose_merge_conflicts_keeps_the_changes_for_resume(mounts: Mounts) -> None:
    a = mounts("a").mount("empty")
    write_file(a / "f", b"base")
    a.sync()
    b = mounts("b").mount("main")
    write_file(a / "f", b"from a")
    a.unmount()
    write_file(b / "f", b"from b")
    result = b.cli("unmount", b.path)
    assert result.returncode == 1 and "f" in result.stderr and "Traceback" not in result.stderr
    wait_for(lambda: not b.daemon_pid() or not pid_alive(b.daemon_pid() or 0), 30, "the daemon's exit")
    b.mount("resume")
    assert read_file(b / "f") == b"from b"  # nothing lost
    refused = b.cli("sync", b.path, "--branch", "main")
    assert refused.returncode == 1 and "exists" in refused.stderr
    answer = json.loads(check(b.cli("sync", b.path, "--branch", "mine", "--json")).stdout)
    assert answer["branch"] == "mine"
    b.unmount()
    assert check(b.cli("cat", "main/f")).stdout == "from a"
    assert check(b.cli("cat", "mine/f")).stdout == "from b"
