"""Against a real IPFS node (Kubo, started here): the RPC client, push and pull.

The node runs offline on loopback in the suite's private network namespace (tests/ipfs_node.py).
What a test checks on the node it checks with the node's own API, not with ipldmount's client.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuse_helpers import check, cli
from ipfs_node import IpfsNode, start_node

from ipldmount.blocks import DirectoryBlockstore, car
from ipldmount.errors import IncompleteDagError, RemoteError, RemoteTimeoutError
from ipldmount.ipld import cid as cids
from ipldmount.remote.exchange import missing_subtrees, pull, push
from ipldmount.remote.http import Timeouts
from ipldmount.remote.kubo import KuboNode
from ipldmount.remote.limits import BLOCK_LIMIT
from ipldmount.tree.model import Tree

pytest_plugins = ("ipfs_node",)

SEED_CAR = Path(__file__).parent / "data/seed_example/seed_example.car"
SEED_ROOT = "bafyreidn66mk3fktszrfwayonvpq6y3agtnb5e5o22ivof5tgikbxt7k6u"


@pytest.fixture
def kubo(node: IpfsNode) -> Iterator[KuboNode]:
    client = KuboNode(node.url, block_timeout=2.0)
    yield client
    client.close()


def _store(path: Path) -> DirectoryBlockstore:
    return DirectoryBlockstore(path, durable=False)


def _tree_store(path: Path, files: dict[str, bytes]) -> tuple[DirectoryBlockstore, bytes]:
    store = _store(path)
    tree = Tree(store)
    for name, data in files.items():
        tree.write_file(name, data)
    return store, tree.commit()


def _array(chunks: int, size: int = 4096, tag: bytes = b"") -> dict[str, bytes]:
    files = {"arr/.zarray": b'{"zarr_format": 2}' + tag}
    files.update({f"arr/{i}": tag + i.to_bytes(8, "little") * (size // 8) for i in range(chunks)})
    return files


def _pinned_on(node: IpfsNode, root: bytes) -> bool:
    answer = json.loads(node.rpc("pin/ls", type="recursive", cid_base="base32"))
    return cids.cid_to_str(root) in answer.get("Keys", {})


# --- the RPC client ----------------------------------------------------------------


def test_blocks_round_trip_and_are_verified(kubo: KuboNode) -> None:
    data = b"a raw block for the node"
    cid = cids.block_cid(cids.RAW, data)
    kubo.put_block(cid, data)
    assert kubo.get_block(cid) == data
    assert kubo.block_size(cid) == len(data)
    node_value = b"\xa1aa\xd8*X%\x00" + cid  # {"a": link}: dag-cbor
    node_cid = cids.block_cid(cids.DAG_CBOR, node_value)
    kubo.put_block(node_cid, node_value)
    assert kubo.get_block(node_cid) == node_value


def test_a_missing_block_fails_within_the_timeout(kubo: KuboNode) -> None:
    missing = cids.block_cid(cids.RAW, b"no node has this")
    started = time.monotonic()
    with pytest.raises(RemoteTimeoutError, match="block/get"):
        kubo.get_block(missing)
    assert time.monotonic() - started < 10
    assert kubo.block_size(missing, seconds=1.0) is None


def test_a_block_over_the_node_limit_is_refused_before_sending(kubo: KuboNode) -> None:
    data = bytes(BLOCK_LIMIT + 1)
    with pytest.raises(RemoteError, match="over the"):
        kubo.put_block(cids.block_cid(cids.RAW, data), data)


def test_a_node_that_is_not_there_is_a_clear_error() -> None:
    client = KuboNode("http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(RemoteError, match=r"IPFS node http://127\.0\.0\.1:9"):
        client.version()


def test_a_frozen_node_times_out_instead_of_hanging(node: IpfsNode) -> None:
    client = KuboNode(node.url, block_timeout=1.0)
    data = b"present, but the node will not answer"
    cid = cids.block_cid(cids.RAW, data)
    client.put_block(cid, data)
    node.pause()
    try:
        started = time.monotonic()
        with pytest.raises(RemoteTimeoutError):
            client.get_block(cid)
        assert time.monotonic() - started < 15
    finally:
        node.resume()
    assert client.get_block(cid) == data


def test_the_node_reports_a_cid_the_client_compares() -> None:
    client = KuboNode("http://127.0.0.1:9")
    data = b"x"
    cid = cids.block_cid(cids.RAW, data)
    other = cids.block_cid(cids.DAG_CBOR, data)  # same bytes, another codec: a different CID
    client._check_key({"Key": cids.cid_to_str(cid)}, cid, "block/put")
    with pytest.raises(RemoteError, match="a different CID"):
        client._check_key({"Key": cids.cid_to_str(other)}, cid, "block/put")
    with pytest.raises(RemoteError, match="a different CID"):
        client._check_key({"Key": "not a cid"}, cid, "block/put")


# --- push and pull ---------------------------------------------------------------


def test_push_then_pull_gives_the_same_root_and_bytes(node: IpfsNode, kubo: KuboNode, tmp_path: Path) -> None:
    files = _array(40, tag=b"pp")
    source, root = _tree_store(tmp_path / "a", files)
    sent = push(source, root, kubo, pin=True)
    assert sent.blocks == sum(1 for _ in car.iter_closure(source, root))
    assert _pinned_on(node, root)
    again = push(source, root, kubo, pin=True)
    assert again.already and again.blocks == 0

    target = _store(tmp_path / "b")
    fetched = pull(target, root, [kubo])
    assert fetched.blocks == sent.blocks and fetched.nbytes == sent.nbytes
    tree = Tree(target, root, read_only=True)
    for name, data in files.items():
        assert tree.read_file(name) == data
    assert pull(target, root, [kubo]).already


def test_a_push_after_a_change_sends_only_the_change(kubo: KuboNode, tmp_path: Path) -> None:
    store, first = _tree_store(tmp_path / "a", _array(200, tag=b"ch"))
    full = push(store, first, kubo, pin=True)
    tree = Tree(store, first)
    tree.write_file("arr/7", b"changed")
    second = tree.commit()
    sent = push(store, second, kubo, bases=[first], pin=True)
    assert sent.base == first
    assert 0 < sent.blocks <= 4 < full.blocks  # the chunk, its directory, the root
    target = _store(tmp_path / "b")
    pull(target, second, [kubo])
    assert Tree(target, second, read_only=True).read_file("arr/7") == b"changed"


def test_a_pull_resumes_with_what_is_missing(kubo: KuboNode, tmp_path: Path) -> None:
    store, root = _tree_store(tmp_path / "a", _array(30, tag=b"rs"))
    push(store, root, kubo, pin=True)
    target = _store(tmp_path / "b")
    blocks = list(car.iter_closure(store, root))
    for cid, data in blocks[: len(blocks) // 2]:  # as if a pull stopped halfway
        target.put_block(cid, data)
    gaps = missing_subtrees(target, root)
    assert gaps
    fetched = pull(target, root, [kubo])
    assert fetched.blocks == len(blocks) - len(blocks) // 2
    assert fetched.requests == len(gaps)
    assert not missing_subtrees(target, root)


def test_a_root_the_node_lacks_is_a_clear_error_and_stores_nothing(kubo: KuboNode, tmp_path: Path) -> None:
    _, root = _tree_store(tmp_path / "a", {"only": b"here"})
    target = _store(tmp_path / "b")
    with pytest.raises(IncompleteDagError, match="could not be fetched"):
        pull(target, root, [kubo])
    assert list(target) == []


def test_push_of_an_incomplete_dag_names_the_missing_block(kubo: KuboNode, tmp_path: Path) -> None:
    store, root = _tree_store(tmp_path / "a", _array(3, tag=b"inc"))
    leaf = cids.block_cid(cids.RAW, b"inc" + (1).to_bytes(8, "little") * 512)
    store.block_path(leaf).unlink()
    with pytest.raises(IncompleteDagError, match=cids.cid_to_str(leaf)):
        push(store, root, kubo, pin=True)


# --- the command line -------------------------------------------------------------


def test_cli_push_pull_and_the_seed_example(node: IpfsNode, tmp_path: Path) -> None:
    """The seed README stores its dataset on an IPFS node: here it goes there and back."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli("import", SEED_CAR, "--store", a).returncode == 0
    pushed = cli("push", SEED_ROOT, "--ipfs", node.url, "--pin", "--store", a)
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.strip() == SEED_ROOT
    with SEED_CAR.open("rb") as stream:
        blocks = len(list(car.read_car(stream)[1]))
    assert f"sent {blocks} blocks" in pushed.stderr and "pinned" in pushed.stderr
    again = cli("push", SEED_ROOT, "--ipfs", node.url, "--pin", "--store", a)
    assert "nothing sent" in again.stderr
    pulled = cli("pull", SEED_ROOT, "--store", b, env={"IPLDMOUNT_IPFS": node.url})
    assert pulled.returncode == 0, pulled.stderr
    assert f"fetched {blocks} blocks" in pulled.stderr
    for path in (".zattrs", ".zgroup", "a/.zarray", "a/.zattrs", "a/0"):
        a_bytes = cli("cat", f"{SEED_ROOT}/{path}", "--store", a).stdout
        assert cli("cat", f"{SEED_ROOT}/{path}", "--store", b).stdout == a_bytes
    log = cli("log", "--json", "--store", b)
    assert json.loads(log.stdout)[0]["source"] == "pull"


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    store = tmp_path / "s"
    assert cli("import", SEED_CAR, "--store", store).returncode == 0
    nowhere = cli("push", SEED_ROOT, "--store", store)
    assert nowhere.returncode == 1 and "push needs an IPFS node" in nowhere.stderr
    assert len(nowhere.stderr.strip().splitlines()) == 1
    refused = cli("push", SEED_ROOT, "--ipfs", "http://127.0.0.1:9", "--store", store)
    assert refused.returncode == 1 and "IPFS node http://127.0.0.1:9" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    bad_url = cli("pull", SEED_ROOT, "--ipfs", "ftp://x", "--store", store)
    assert bad_url.returncode == 1 and "not an http:// or https:// URL" in bad_url.stderr


def test_cli_reads_a_root_only_the_node_has(node: IpfsNode, tmp_path: Path) -> None:
    a, fresh = tmp_path / "a", tmp_path / "fresh"
    assert cli("import", SEED_CAR, "--store", a).returncode == 0
    check(cli("push", SEED_ROOT, "--ipfs", node.url, "--store", a))
    chunk = cli("cat", f"{SEED_ROOT}/a/0", "--store", a).stdout
    fetched = check(cli("cat", f"{SEED_ROOT}/a/0", "--ipfs", node.url, "--store", fresh))
    assert fetched.stdout == chunk
    listing = check(cli("ls", f"{SEED_ROOT}/a", "--store", fresh, env={"IPLDMOUNT_IPFS": node.url}))
    assert listing.stdout.split() == [".zarray", ".zattrs", "0"]
    nothing = cli("ls", SEED_ROOT, "--store", tmp_path / "other")  # no node named: nothing contacted
    assert nothing.returncode == 1 and "no blockstore" in nothing.stderr


def test_a_node_that_stops_mid_pull_is_an_error_in_bounded_time_and_the_pull_resumes(
    tmp_path: Path,
) -> None:
    own = start_node()  # frozen midway: not the module's node
    try:
        kubo = KuboNode(own.url, block_timeout=2.0, timeouts=Timeouts(read=2.0))
        files = {f"arr/{i}": bytes([i]) * (1 << 20) for i in range(48)}
        source, root = _tree_store(tmp_path / "a", files)
        push(source, root, kubo)
        target = _store(tmp_path / "b")

        def freeze_after_ten(blocks: int, nbytes: int) -> None:
            if blocks == 10:
                own.pause()  # the node stops answering in the middle of the stream

        started = time.monotonic()
        with pytest.raises(IncompleteDagError, match=r"no answer in time|gave up"):
            pull(target, root, [kubo], progress=freeze_after_ten)
        assert time.monotonic() - started < 30
        own.resume()
        kept = sum(1 for cid in _leaves(files) if target.has(cid))
        fetched = pull(target, root, [kubo])
        assert fetched.blocks == len(files) - kept  # only what the first pull had not stored
        tree = Tree(target, root, read_only=True)
        assert all(tree.read_file(name) == data for name, data in files.items())
    finally:
        own.stop()


def _leaves(files: dict[str, bytes]) -> list[bytes]:
    return [cids.block_cid(cids.RAW, data) for data in files.values()]
