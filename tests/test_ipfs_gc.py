"""``gc --evict-pinned``: the store as a cache of an IPFS node. Blocks of roots the node holds
pinned may go; what exists only here, or what a mount reads, never does."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from fuse_helpers import Mounts, assert_one_line_error, check, cli
from ipfs_node import IpfsNode, free_port

from ipldmount.blocks import DirectoryBlockstore
from ipldmount.blocks.car import write_car_file
from ipldmount.ipld import cid as cids
from ipldmount.repo.attributes import Meta
from ipldmount.repo.home import StoreHome
from ipldmount.tree.model import Tree

pytest_plugins = ("fuse_helpers", "ipfs_node")

SHARED, ONLY_A, ONLY_B = os.urandom(300_000), os.urandom(200_000), os.urandom(100_000)


def _import(store: Path, tmp_path: Path, name: str, files: dict[str, bytes]) -> str:
    """A tree made elsewhere and imported (a root of its own origin in the history)."""
    origin = DirectoryBlockstore(tmp_path / f"origin-{name}", durable=False)
    tree = Tree(origin)
    for path, data in files.items():
        tree.write_file(path, data)
    root = tree.commit()
    car = tmp_path / f"{name}.car"
    write_car_file(origin, root, car)
    check(cli("import", car, "--store", store))
    return cids.cid_to_str(root)


@pytest.fixture
def two_roots(node: IpfsNode, tmp_path: Path) -> tuple[Path, str, str]:
    """A store with root A (pushed and pinned) and root B (only here); they share a file."""
    store = tmp_path / "store"
    root_a = _import(store, tmp_path, "a", {"shared": SHARED, "only-a": ONLY_A})
    root_b = _import(store, tmp_path, "b", {"shared": SHARED, "only-b": ONLY_B})
    check(cli("push", root_a, "--ipfs", node.url, "--pin", "--store", store))
    return store, root_a, root_b


def _has(store: Path, data: bytes) -> bool:
    return DirectoryBlockstore(store).has(cids.block_cid(cids.RAW, data))


def test_blocks_of_a_pinned_root_go_unless_a_local_root_needs_them(
    node: IpfsNode, two_roots: tuple[Path, str, str]
) -> None:
    store, root_a, root_b = two_roots
    plain = json.loads(check(cli("gc", "--grace", "0", "--json", "--store", store)).stdout)
    assert plain["removed_blocks"] == 0 and plain["left_to_node"] == []  # both kept by history
    result = check(
        cli("gc", "--evict-pinned", "--ipfs", node.url, "--grace", "0", "--json", "--store", store)
    )
    report = json.loads(result.stdout)
    assert report["left_to_node"] == [root_a]
    assert report["removed_blocks"] == 2  # A's root node and its own file
    assert not _has(store, ONLY_A) and not DirectoryBlockstore(store).has(cids.parse_cid(root_a))
    assert _has(store, SHARED) and _has(store, ONLY_B)  # B is only here: all of it stays
    assert sorted(check(cli("ls", root_b, "--store", store)).stdout.split()) == ["only-b", "shared"]
    fetched = check(cli("ls", root_a, "--ipfs", node.url, "--store", store)).stdout.split()
    assert sorted(fetched) == ["only-a", "shared"]  # A reads back through the node


def test_a_root_a_mount_reads_is_never_left_to_the_node(
    mounts: Mounts, node: IpfsNode, two_roots: tuple[Path, str, str]
) -> None:
    store, root_a, _ = two_roots
    mnt = mounts(store=store).mount(root_a, "--read-only")  # no node: it reads only the store
    report = json.loads(
        check(
            cli("gc", "--evict-pinned", "--ipfs", node.url, "--grace", "0", "--json", "--store", store)
        ).stdout
    )
    assert report["left_to_node"] == [] and report["removed_blocks"] == 0
    assert (mnt / "only-a").read_bytes() == ONLY_A


def test_evicting_without_a_node_answering_removes_nothing(two_roots: tuple[Path, str, str]) -> None:
    store, _, _ = two_roots
    before = sorted(DirectoryBlockstore(store))
    result = cli(
        "gc", "--evict-pinned", "--ipfs", f"http://127.0.0.1:{free_port()}", "--grace", "0", "--store", store
    )
    assert_one_line_error(result)
    assert_one_line_error(cli("gc", "--evict-pinned", "--store", store), "needs an IPFS node")
    assert sorted(DirectoryBlockstore(store)) == before


def test_gc_after_a_lazy_mount_counts_what_the_node_holds_and_removes_none_of_it(
    mounts: Mounts, node: IpfsNode, two_roots: tuple[Path, str, str], tmp_path: Path
) -> None:
    _, root_a, _ = two_roots
    store = tmp_path / "lazy-store"
    mnt = mounts(store=store).mount(root_a, "--ipfs", node.url)
    (mnt / "new").write_bytes(b"written on a lazy mount")
    root = mnt.sync()
    mnt.unmount()
    before = sorted(DirectoryBlockstore(store))

    # The new root reaches the two files the mount never read: not here, and not lost.
    alone = cli("gc", "--grace", "0", "--store", store)
    assert_one_line_error(alone, "2 blocks that kept roots reach cannot be read here")
    assert "--ipfs URL" in alone.stderr
    told = check(cli("gc", "--grace", "0", "--json", "--ipfs", node.url, "--store", store))
    report = json.loads(told.stdout)
    assert report["missing_blocks"] == 2 and len(report["missing"]) == 2
    assert report["kept_roots"].keys() == {root}
    assert f"reads fetch them from {node.url}" in told.stderr
    now = set(DirectoryBlockstore(store))
    assert now <= set(before) and cids.parse_cid(root) in now
    again = mounts(store=store).mount(root, "--ipfs", node.url, "--read-only")
    files = {"shared": SHARED, "only-a": ONLY_A, "new": b"written on a lazy mount"}
    assert {name: (again / name).read_bytes() for name in files} == files


def test_files_of_a_root_left_to_the_node_keep_their_modes_and_times(
    node: IpfsNode, two_roots: tuple[Path, str, str]
) -> None:
    store, _, _ = two_roots
    table = StoreHome(DirectoryBlockstore(store)).attribute_table
    meta = Meta(stat.S_IFREG | 0o600, 1000, 100, 1, 1, 1)
    only_a, gone = cids.block_cid(cids.RAW, ONLY_A), cids.block_cid(cids.RAW, b"in no root")
    table.save([("only-a", only_a, meta), ("gone", gone, meta)])
    table.close()
    report = json.loads(
        check(
            cli("gc", "--evict-pinned", "--ipfs", node.url, "--grace", "0", "--json", "--store", store)
        ).stdout
    )
    assert not _has(store, ONLY_A) and report["attribute_rows_removed"] == 1  # only the row of "gone"
    table = StoreHome(DirectoryBlockstore(store)).attribute_table
    assert table.lookup("only-a", only_a) is not None and table.lookup("gone", gone) is None
