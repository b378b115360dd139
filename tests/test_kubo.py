"""What is particular to Kubo, the node users run (started here, with nobody to talk to):
CIDs and codecs as it stores them, its block size limit, pinned imports of large DAGs, its
own CAR export, and its trustless gateway as a source for pull and lazy mounts."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuse_helpers import Mounts, cli
from ipfs_node import IpfsNode, start_node

from ipldmount.blocks import DirectoryBlockstore, car
from ipldmount.errors import RemoteError
from ipldmount.ipld import cid as cids
from ipldmount.ipld import codec
from ipldmount.remote.exchange import pull, push
from ipldmount.remote.gateway import Gateway
from ipldmount.remote.http import Timeouts
from ipldmount.remote.kubo import KuboNode
from ipldmount.remote.limits import MAX_BLOCK
from ipldmount.tree.model import Tree

pytest_plugins = ("fuse_helpers", "ipfs_node")

FILES = {
    "data/.zgroup": b'{"zarr_format": 2}',
    "data/t/.zarray": b'{"chunks": [4], "dtype": "<f8", "shape": [16], "zarr_format": 2}',
    **{f"data/t/{i}": bytes([i]) * 5000 for i in range(4)},
    "big.bin": bytes(range(256)) * 9000,  # a chunked file: more than one block
}


@pytest.fixture(scope="module")
def gateway_node() -> Iterator[IpfsNode]:
    """A node whose trustless gateway is on loopback too."""
    node = start_node(gateway=True)
    try:
        yield node
    finally:
        node.stop()


def _tree(store: DirectoryBlockstore, files: dict[str, bytes]) -> bytes:
    tree = Tree(store)
    for path, data in files.items():
        tree.write_file(path, data)
    return tree.commit()


def _origin(tmp_path: Path, files: dict[str, bytes] = FILES) -> tuple[DirectoryBlockstore, bytes]:
    store = DirectoryBlockstore(tmp_path / "origin", durable=False)
    return store, _tree(store, files)


def test_blocks_keep_their_codec_and_cid_on_kubo(node: IpfsNode) -> None:
    """block/put with ``cid-codec``: Kubo names a raw and a DAG-CBOR block as we do, in base32."""
    client = KuboNode(node.url)
    raw = b"raw bytes for kubo"
    cbor = codec.encode({"a": 1, "b": [b"x"]})
    for cid, data in ((cids.block_cid(cids.RAW, raw), raw), (cids.block_cid(cids.DAG_CBOR, cbor), cbor)):
        client.put_block(cid, data)
        stat = json.loads(node.ipfs("block", "stat", "--enc=json", cids.cid_to_str(cid)))
        assert stat["Key"] == cids.cid_to_str(cid)  # base32, CIDv1, the same codec
        assert stat["Size"] == len(data)
        assert client.get_block(cid) == data


def test_a_block_of_two_mib_goes_through_and_one_byte_more_is_refused_first(node: IpfsNode) -> None:
    client = KuboNode(node.url)
    data = bytes(range(256)) * (MAX_BLOCK // 256)
    cid = cids.block_cid(cids.RAW, data)
    client.put_block(cid, data)
    assert client.get_block(cid) == data
    assert client.block_size(cid) == MAX_BLOCK
    with pytest.raises(RemoteError, match="over the"):
        client.put_block(cids.block_cid(cids.RAW, data + b"!"), data + b"!")


def test_a_pinned_push_of_a_large_dag_is_pinned_whole(node: IpfsNode, tmp_path: Path) -> None:
    """dag/import with pin-roots, 20,000 blocks at once."""
    files = {f"arr/{i}": i.to_bytes(4, "little") for i in range(20_000)}
    store, root = _origin(tmp_path, files)
    client = KuboNode(node.url)
    push(store, root, client, pin=True)
    assert client.is_pinned(root)
    pins = node.ipfs("pin", "ls", "--type=recursive", "--quiet", cids.cid_to_str(root)).split()
    assert pins == [cids.cid_to_str(root)]
    refs = node.ipfs("refs", "--recursive", "--unique", "--offline", cids.cid_to_str(root), timeout=300)
    assert len(refs.split()) + 1 == len(list(store))  # every block of the DAG, and the root


def test_pin_add_of_a_large_dag_already_on_the_node(node: IpfsNode, tmp_path: Path) -> None:
    """pin/add (recursive) of 20,000 blocks imported unpinned: Kubo walks them all, in time."""
    files = {f"arr/{i}": (i + 1_000_000).to_bytes(4, "little") for i in range(20_000)}
    store, root = _origin(tmp_path, files)
    client = KuboNode(node.url)
    push(store, root, client, pin=False)
    assert not client.is_pinned(root)
    client.pin(root)
    assert client.is_pinned(root)


def test_kubos_dag_export_is_our_car_block_for_block(node: IpfsNode, tmp_path: Path) -> None:
    """What Kubo exports of our tree is the DAG we made: same root, same blocks, each verified."""
    store, root = _origin(tmp_path)
    push(store, root, KuboNode(node.url), pin=True)
    exported = tmp_path / "kubo.car"
    node.ipfs_to_file(exported, "dag", "export", cids.cid_to_str(root))
    with exported.open("rb") as stream:
        roots, sections = car.read_car(stream)
        blocks = list(sections)
    assert roots == [root]
    assert {cid: data for cid, data in blocks} == {cid: store.get(cid) for cid in store}


def test_kubos_own_add_reads_back_through_our_unixfs_reader(node: IpfsNode, tmp_path: Path) -> None:
    """A directory `ipfs add -r` made (dag-pb, raw leaves, CIDv1) pulls and lists as it was."""
    source = tmp_path / "src"
    for path, data in FILES.items():
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        (source / path).write_bytes(data)
    added = node.ipfs("add", "-r", "-Q", "--hidden", "--cid-version=1", str(source)).strip()
    store = tmp_path / "store"
    pulled = cli("pull", added, "--ipfs", node.url, "--store", str(store))
    assert pulled.returncode == 0, pulled.stderr
    listed = cli("ls", f"{added}/data/t", "--store", str(store))
    assert listed.returncode == 0, listed.stderr
    assert sorted(listed.stdout.split()) == sorted([".zarray", "0", "1", "2", "3"])
    for path, data in FILES.items():
        shown = subprocess.run(
            [sys.executable, "-m", "ipldmount", "cat", f"{added}/{path}", "--store", str(store)],
            capture_output=True,
            timeout=60,
        )
        assert shown.stdout == data, path


def test_pull_from_kubos_trustless_gateway(gateway_node: IpfsNode, tmp_path: Path) -> None:
    origin, root = _origin(tmp_path)
    push(origin, root, KuboNode(gateway_node.url), pin=True)
    store = DirectoryBlockstore(tmp_path / "store", durable=False)
    gateway = Gateway(gateway_node.gateway_url)
    assert gateway.get_block(root) == origin.get(root)
    pull(store, root, [gateway])
    assert set(store) == set(origin)


def test_a_lazy_mount_reads_through_kubos_gateway(
    mounts: Mounts, gateway_node: IpfsNode, tmp_path: Path
) -> None:
    origin, root = _origin(tmp_path)
    push(origin, root, KuboNode(gateway_node.url), pin=True)
    mnt = mounts()
    mnt.mount(cids.cid_to_str(root), "--gateway", gateway_node.gateway_url, "--read-only")
    for path, data in FILES.items():
        assert (mnt / path).read_bytes() == data


def test_a_block_kubos_gateway_lacks_is_a_clear_error_within_the_timeout(gateway_node: IpfsNode) -> None:
    missing = cids.block_cid(cids.RAW, b"nobody has this block")
    gateway = Gateway(gateway_node.gateway_url, Timeouts(connect=2.0, total=5.0))
    with pytest.raises(RemoteError, match="gateway"):
        gateway.get_block(missing)
