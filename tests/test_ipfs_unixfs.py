"""UnixFS trees made by real importers (the node's ``ipfs add -r``, and ipfs-car), mounted
read-only and read with real tools: every file byte-identical, xarray opens the dataset, and a
copy into a writable mount becomes ipldmount's own format."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from fuse_helpers import Mount, Mounts, assert_one_line_error, check, cli
from ipfs_node import IpfsNode, ipfs_car_pack

from ipldmount.blocks import DirectoryBlockstore, MemoryBlockstore
from ipldmount.errors import ReadOnlyError
from ipldmount.ipld import cid as cids
from ipldmount.remote.fetching import BlockFetcher, FetchingBlockstore
from ipldmount.remote.kubo import KuboNode
from ipldmount.tree.unixfs import open_tree

pytest_plugins = ("fuse_helpers", "ipfs_node")
pytestmark = pytest.mark.fuse


SHARDED_CHUNKS = 1200  # `precip` has this many chunk files: over the threshold below, a HAMT shard
ADD_VARIANTS = {
    # CIDv0 links, dag-pb leaves, balanced DAG of 256 KiB chunks: Kubo's historical default
    "v0-balanced": {"cid_version": "0", "raw_leaves": "false"},
    # CIDv1, raw leaves, and large directories sharded (Kubo's current default shape)
    "v1-raw-sharded": {"cid_version": "1", "raw_leaves": "true", "shard_split_threshold": "1000"},
    # trickle DAG of small chunks: uneven depths, many levels
    "trickle": {"cid_version": "1", "trickle": "true", "chunker": "size-16384", "raw_leaves": "false"},
}


def _dataset() -> xr.Dataset:
    """A small climate-like dataset: a big-chunked variable (files of several UnixFS chunks) and
    a variable of many tiny chunks (a directory the node shards)."""
    rng = np.random.default_rng(7)
    time = np.arange(6)
    lat, lon = np.linspace(-60, 60, 121), np.linspace(0, 359, 180)
    return xr.Dataset(
        {
            "temp": (("time", "lat", "lon"), rng.normal(15, 8, (6, 121, 180)).astype("float32")),
            "precip": (("step", "station"), rng.random((SHARDED_CHUNKS, 8)).astype("float64")),
        },
        coords={"time": time, "lat": lat, "lon": lon, "step": np.arange(SHARDED_CHUNKS)},
        attrs={"title": "climate-like test data"},
    )


@pytest.fixture(scope="module")
def climate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dataset as a zarr v2 directory on ext4 (uncompressed, so chunk files are large)."""
    directory = tmp_path_factory.mktemp("source") / "climate"
    encoding = {
        "temp": {"chunks": (3, 121, 180), "compressors": None},  # 256 KiB per chunk file
        "precip": {"chunks": (1, 8)},
    }
    _dataset().to_zarr(str(directory), encoding=encoding, consolidated=True, zarr_format=2)
    return directory


def _files_of(directory: Path) -> dict[str, bytes]:
    return {
        f"{directory.name}/{path.relative_to(directory)}": path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def added(node: IpfsNode, climate: Path) -> dict[str, str]:
    """The climate directory added to the node in each way: variant -> root CID (as printed)."""
    files = _files_of(climate)
    return {name: node.add(files, **options)[climate.name] for name, options in ADD_VARIANTS.items()}


def assert_same_tree(expected: Path, actual: Path) -> None:
    """Every directory and file of *expected* is in *actual*, byte-identical, and nothing more."""
    for here, directories, files in os.walk(expected):
        there = actual / Path(here).relative_to(expected)
        assert sorted(os.listdir(there)) == sorted(directories + files), there
        for name in files:
            assert (there / name).stat().st_size == (Path(here) / name).stat().st_size, there / name
            assert filecmp.cmp(Path(here) / name, there / name, shallow=False), there / name


def _import(node: IpfsNode, root: str, store: Path, tmp_path: Path) -> None:
    car = tmp_path / "export.car"
    car.write_bytes(node.rpc("dag/export", arg=root, timeout=120))
    check(cli("import", car, "--store", store))


@pytest.mark.parametrize("variant", list(ADD_VARIANTS))
def test_an_ipfs_add_tree_mounts_read_only_byte_identical(
    mounts: Mounts, node: IpfsNode, added: dict[str, str], climate: Path, tmp_path: Path, variant: str
) -> None:
    root = added[variant]
    if variant == "v0-balanced":
        assert root.startswith("Qm")  # a CIDv0 root, typed as users have it
    mnt = mounts(store=tmp_path / "store")
    _import(node, root, mnt.store, tmp_path)
    result = check(mnt.cli("mount", root, mnt.path))  # no --read-only: UnixFS mounts read-only anyway
    assert "read-only" in result.stderr
    assert_same_tree(climate, mnt.path)
    with pytest.raises(OSError) as caught:
        (mnt / "new-file").write_bytes(b"x")
    assert caught.value.errno == 30  # EROFS
    status = mnt.status()
    assert status["read_only"] is True
    chunk = mnt / "temp" / "0.0.0"  # its UnixFS CID, as the node gave it (v1), not "changed"
    assert os.getxattr(chunk, "user.ipld.cid").decode().startswith(("bafy", "bafk"))
    assert "user.ipld.dirty" not in os.listxattr(chunk)


def test_xarray_opens_the_dataset_through_the_mount(
    mounts: Mounts, node: IpfsNode, added: dict[str, str], tmp_path: Path
) -> None:
    mnt = mounts(store=tmp_path / "store")
    _import(node, added["v1-raw-sharded"], mnt.store, tmp_path)
    mnt.mount(added["v1-raw-sharded"], "--read-only")
    opened = xr.open_zarr(str(mnt.path), consolidated=True)
    xr.testing.assert_identical(opened.load(), _dataset())
    from ipldmount import IPLDStore  # the zarr Store reads the UnixFS tree too (read-only)

    store = IPLDStore(DirectoryBlockstore(mnt.store), added["v1-raw-sharded"], read_only=True)
    xr.testing.assert_identical(xr.open_zarr(store, consolidated=True).load(), _dataset())
    with pytest.raises(ReadOnlyError, match="UnixFS"):
        IPLDStore(DirectoryBlockstore(mnt.store), added["v1-raw-sharded"])


def _blocks_in(store: Path) -> int:
    return sum(len(names) for _, _, names in os.walk(store / "blocks"))


def test_a_lazy_mount_of_a_sharded_tree_reads_one_chunk_for_o_depth_blocks(
    mounts: Mounts, node: IpfsNode, added: dict[str, str], climate: Path
) -> None:
    mnt = mounts().mount(added["v1-raw-sharded"], "--ipfs", node.url)
    chunk = (mnt / "precip" / "1117.0").read_bytes()
    assert chunk == (climate / "precip" / "1117.0").read_bytes()
    fetched = _blocks_in(mnt.store)
    assert fetched <= 6, f"{fetched} blocks for one chunk"  # root, precip's shard path, the chunk
    assert_same_tree(climate, mnt.path)  # and the rest on demand, all verified


def test_pull_then_mount_offline(
    mounts: Mounts, node: IpfsNode, added: dict[str, str], climate: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    check(cli("pull", added["trickle"], "--ipfs", node.url, "--store", store))
    again = cli("pull", added["trickle"], "--ipfs", node.url, "--store", store)
    assert "nothing fetched" in check(again).stderr
    mnt = mounts(store=store).mount(added["trickle"], "--read-only")  # no node named: all local
    assert_same_tree(climate, mnt.path)


def test_an_ipfs_car_pack_mounts_byte_identical(mounts: Mounts, climate: Path, tmp_path: Path) -> None:
    car = tmp_path / "climate.car"
    root = ipfs_car_pack(climate, car)
    mnt = mounts().mount(car, "--read-only")  # a .car is imported, then its root mounted
    assert_same_tree(climate, mnt.path)
    listed = check(mnt.cli("ls", root)).stdout.split()
    assert sorted(name.rstrip("/") for name in listed) == sorted(os.listdir(climate))


def test_cat_and_ls_read_a_unixfs_tree(
    node: IpfsNode, added: dict[str, str], climate: Path, tmp_path: Path
) -> None:
    root = added["v0-balanced"]
    store = tmp_path / "store"
    _import(node, root, store, tmp_path)
    cat = subprocess.run(
        [*_cli_command(), "cat", f"{root}/temp/0.0.0", "--store", str(store)], capture_output=True, check=True
    )
    assert cat.stdout == (climate / "temp" / "0.0.0").read_bytes()
    assert "0.0.0" in check(cli("ls", f"{root}/temp", "--store", store)).stdout
    assert_one_line_error(cli("diff", root, root, "--store", store), "is UnixFS")


def _cli_command() -> list[str]:
    import sys

    return [sys.executable, "-m", "ipldmount"]


@pytest.fixture
def writable_copy(mounts: Mounts, node: IpfsNode, added: dict[str, str], tmp_path: Path) -> Iterator[Mount]:
    source = mounts("unixfs", store=tmp_path / "store")
    _import(node, added["v0-balanced"], source.store, tmp_path)
    source.mount(added["v0-balanced"], "--read-only")
    target = mounts("ours", store=tmp_path / "store").mount("empty")
    shutil.copytree(source.path, target / "climate")
    yield target


def test_a_copy_into_a_writable_mount_becomes_our_format(writable_copy: Mount, climate: Path) -> None:
    assert_same_tree(climate, writable_copy / "climate")
    root = writable_copy.unmount()
    assert cids.codec_of(cids.parse_cid(root)) == cids.DAG_CBOR
    store = DirectoryBlockstore(writable_copy.store)
    assert not any(cids.codec_of(cid) == cids.DAG_PB for cid in _our_closure(store, root))
    from ipldmount import IPLDStore

    # consolidated=False: zarr looks for consolidated metadata of a group at the root, which has none
    # (the same from a local directory)
    opened = xr.open_zarr(IPLDStore(store, root, read_only=True), group="climate", consolidated=False)
    xr.testing.assert_identical(opened.load(), _dataset())


def _our_closure(store: DirectoryBlockstore, root: str) -> list[bytes]:
    from ipldmount.blocks.dag import iter_closure

    return [cid for cid, _ in iter_closure(store, cids.parse_cid(root))]


class _CountingNode(KuboNode):
    """The node's RPC client, counting what it is asked (in-process: the reader's requests)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.blocks = self.cars = 0

    def get_block(self, cid: bytes) -> bytes:
        self.blocks += 1
        return super().get_block(cid)

    def export_car(self, root: bytes) -> Iterator[bytes]:
        self.cars += 1
        return super().export_car(root)


def test_a_remote_file_read_in_order_comes_in_few_requests(node: IpfsNode) -> None:
    """Reading a UnixFS file forward fetches each stretch of it (a node of at most 64 MiB) as one
    CAR, not a request per 256 KiB leaf; every byte is verified and comes back as added."""
    data = os.urandom(24 << 20)
    root = cids.parse_cid(node.add({"d/big.bin": data}, cid_version="1", raw_leaves="true")["d"])
    counting = _CountingNode(node.url)
    store = FetchingBlockstore(MemoryBlockstore(), BlockFetcher([counting]))
    tree = open_tree(store, root, read_only=True)
    reader = tree.reader(tree.resolve_file("big.bin"))
    got = b"".join(reader.read(offset, 1 << 20) for offset in range(0, len(data), 1 << 20))
    assert got == data
    leaves = len(data) // (256 << 10)
    assert counting.cars >= 1 and counting.blocks < leaves // 2, (counting.cars, counting.blocks)
