"""`ipldmount serve` beside Kubo's own gateway: the same requests, the same answers.

The IPFS gateway conformance suite cannot be fetched here (its Go module is not served), so this
checks `serve` against the reference implementation itself: a UnixFS DAG made by Kubo
(`ipfs add`), pulled into our store, then asked of both gateways with the trustless and path
gateway requests the specifications define. Status codes, content types and, for CARs, the
exact sequence of blocks (order=dfs, with and without duplicates) must agree.
"""

from __future__ import annotations

import io
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from ipfs_node import start_node

from ipldmount.adapters.serve import GatewayServer
from ipldmount.blocks import DirectoryBlockstore, car
from ipldmount.ipld import cid as cids
from ipldmount.remote.exchange import pull
from ipldmount.remote.kubo import KuboNode

PATTERN = bytes(range(256)) * 4096  # 1 MiB: repeated 256 KiB chunks, so a CAR has duplicates
FILES = {
    "big.bin": bytes(i * 7 % 251 for i in range(1_300_000)),  # five 256 KiB leaves under one node
    "same.bin": PATTERN,
    "sub/small.txt": b"hello from a small file\n",
    "sub/zarr.json": b'{"zarr_format": 3, "node_type": "group"}',
    **{f"shard/name-{i:04d}-padded-out-to-a-long-entry": str(i).encode() for i in range(4000)},
}


@dataclass
class Pair:
    ours: str
    kubo: str
    root: str


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    home = tmp_path_factory.mktemp("vs")
    source = home / "src"
    for path, data in FILES.items():
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        (source / path).write_bytes(data)
    node = start_node(gateway=True)
    server = None
    try:
        root = node.ipfs("add", "-r", "-Q", "--cid-version=1", str(source), timeout=300).strip()
        store = DirectoryBlockstore(home / "store", durable=False)
        pull(store, cids.parse_cid(root), [KuboNode(node.url)])
        server = GatewayServer(store, ("127.0.0.1", 0))
        server.start_in_thread()
        yield Pair(server.url, node.gateway_url, root)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        node.stop()


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes

    def blocks(self) -> list[str]:
        """A CAR answer's blocks, in order, as CID strings."""
        _, sections = car.read_car(io.BytesIO(self.body))
        return [cids.cid_to_str(cid) for cid, _ in sections]


def _get(base: str, path: str, headers: dict[str, str] | None = None) -> Answer:
    request = urllib.request.Request(base + path, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return Answer(reply.status, reply.headers.get("Content-Type", ""), reply.read())
    except urllib.error.HTTPError as error:
        return Answer(error.code, error.headers.get("Content-Type", ""), b"")


def _both(pair: Pair, path: str, headers: dict[str, str] | None = None) -> tuple[Answer, Answer]:
    return _get(pair.ours, path, headers), _get(pair.kubo, path, headers)


def _media(content_type: str) -> dict[str, str]:
    """A content type's media type and parameters, normalized for comparison."""
    media, *params = (part.strip() for part in content_type.split(";"))
    return {"": media.lower(), **{k.strip(): v.strip() for k, _, v in (p.partition("=") for p in params)}}


CAR_REQUESTS = [
    "{root}?format=car",
    "{root}?format=car&dag-scope=block",
    "{root}?format=car&dag-scope=entity",
    "{root}/big.bin?format=car&dag-scope=entity",
    "{root}/big.bin?format=car&dag-scope=block",
    "{root}/same.bin?format=car&dag-scope=entity",
    "{root}/sub/small.txt?format=car&dag-scope=block",
    "{root}/shard?format=car&dag-scope=entity",
    "{root}/shard/name-0042-padded-out-to-a-long-entry?format=car",
    "{root}/sub?format=car&dag-scope=all",
]


@pytest.mark.parametrize("request_path", CAR_REQUESTS)
def test_a_car_has_the_blocks_kubos_has_in_the_same_order(pair: Pair, request_path: str) -> None:
    ours, kubo = _both(pair, "/ipfs/" + request_path.format(root=pair.root))
    assert (ours.status, kubo.status) == (200, 200)
    assert _media(ours.content_type)[""] == _media(kubo.content_type)[""] == "application/vnd.ipld.car"
    assert ours.blocks() == kubo.blocks()


LEAF = 256 << 10  # Kubo's default chunker: the leaves of big.bin


@pytest.mark.parametrize(
    ("entity_bytes", "leaves"),
    [
        ("0:1000", [0]),
        ("300000:800000", [1, 2, 3]),
        ("-1000:*", [4]),
        ("1000000:*", [3, 4]),
        ("0:*", [0, 1, 2, 3, 4]),
    ],
)
def test_entity_bytes_sends_the_fewest_blocks_and_kubo_sends_them_all(
    pair: Pair, entity_bytes: str, leaves: list[int]
) -> None:
    """The spec: "a Gateway MUST return only the minimal set of blocks necessary to verify the
    specified byte range". Kubo 0.43 sends every leaf of the file whatever the range; we send the
    path, the file's node and the leaves that hold the range, in Kubo's order."""
    ours, kubo = _both(pair, f"/ipfs/{pair.root}/big.bin?format=car&entity-bytes={entity_bytes}")
    assert (ours.status, kubo.status) == (200, 200)
    path_and_node, all_leaves = kubo.blocks()[:2], kubo.blocks()[2:]
    assert len(all_leaves) == -(-len(FILES["big.bin"]) // LEAF)
    assert ours.blocks() == path_and_node + [all_leaves[i] for i in leaves]


def test_duplicates_on_request_as_kubo_sends_them(pair: Pair) -> None:
    accept = {"Accept": "application/vnd.ipld.car; version=1; order=dfs; dups=y"}
    ours, kubo = _both(pair, f"/ipfs/{pair.root}/same.bin", accept)
    assert (ours.status, kubo.status) == (200, 200)
    assert _media(ours.content_type).get("dups") == _media(kubo.content_type).get("dups") == "y"
    assert ours.blocks() == kubo.blocks()
    assert len(ours.blocks()) > len(set(ours.blocks()))  # the repeated leaf, each time


@pytest.mark.parametrize("path", ["", "/big.bin", "/sub/small.txt", "/shard"])
def test_a_raw_block_by_path_is_kubos(pair: Pair, path: str) -> None:
    ours, kubo = _both(pair, f"/ipfs/{pair.root}{path}?format=raw")
    assert (ours.status, kubo.status) == (200, 200)
    assert ours.body == kubo.body
    assert _media(ours.content_type)[""] == _media(kubo.content_type)[""] == "application/vnd.ipld.raw"


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/big.bin", {}),
        ("/sub/small.txt", {}),
        ("/big.bin", {"Range": "bytes=1000-299999"}),
        ("/big.bin", {"Range": "bytes=-500"}),
        ("/shard/name-3999-padded-out-to-a-long-entry", {}),
    ],
)
def test_file_bytes_by_path_are_kubos(pair: Pair, path: str, headers: dict[str, str]) -> None:
    ours, kubo = _both(pair, f"/ipfs/{pair.root}{path}", headers)
    assert ours.status == kubo.status and ours.status in (200, 206)
    assert ours.body == kubo.body


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/ipfs/{root}/no-such-name?format=raw", {}),
        ("/ipfs/{missing}?format=raw", {"Cache-Control": "only-if-cached"}),
        ("/ipfs/{root}/big.bin?format=car&entity-bytes=nonsense", {}),
        ("/ipfs/not-a-cid?format=raw", {}),
    ],
)
def test_refusals_have_kubos_status(pair: Pair, path: str, headers: dict[str, str]) -> None:
    missing = cids.cid_to_str(cids.block_cid(cids.RAW, b"held by neither gateway"))
    ours, kubo = _both(pair, path.format(root=pair.root, missing=missing), headers)
    assert ours.status == kubo.status, (ours.status, kubo.status)
    assert ours.status >= 400
