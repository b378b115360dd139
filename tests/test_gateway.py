"""`ipldmount serve` (a trustless gateway over a store) and the gateway client, over real HTTP.

The server is checked with plain urllib requests against the trustless gateway specification;
the client against the server, and against a hostile server that sends wrong bytes.
"""

from __future__ import annotations

import http.server
import io
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuse_helpers import cli
from ipfs_node import TRUSTLESS_CLIENT, require_node

from ipldmount.adapters.serve import GatewayServer
from ipldmount.blocks import DirectoryBlockstore, car
from ipldmount.errors import CarError, IncompleteDagError, RemoteError
from ipldmount.ipld import cid as cids
from ipldmount.ipld import codec
from ipldmount.ipld.codec import Link
from ipldmount.ipld.varint import encode_varint
from ipldmount.remote.exchange import pull
from ipldmount.remote.gateway import Gateway
from ipldmount.tree.model import Tree

Served = tuple[GatewayServer, DirectoryBlockstore, bytes]
FILES = {"arr/.zarray": b'{"zarr_format": 2}', **{f"arr/{i}": bytes([i]) * 3000 for i in range(20)}}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    store = DirectoryBlockstore(tmp_path / "served", durable=False)
    tree = Tree(store)
    for name, data in FILES.items():
        tree.write_file(name, data)
    root = tree.commit()
    server = GatewayServer(store, ("127.0.0.1", 0))
    server.start_in_thread()
    try:
        yield server, store, root
    finally:
        server.shutdown()
        server.server_close()


def _get(url: str, accept: str | None = None, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def _answers(url: str) -> bool:
    try:
        return _get(url)[0] == 200
    except urllib.error.URLError:  # not listening yet
        return False


def _car_blocks(data: bytes) -> tuple[list[bytes], list[bytes]]:
    roots, sections = car.read_car(io.BytesIO(data))
    return roots, [cid for cid, _ in sections]


# --- the server, by the specification -------------------------------------------------


def test_raw_block_by_format_and_by_accept(served: Served) -> None:
    server, store, root = served
    name = cids.cid_to_str(root)
    for url, accept in (
        (f"{server.url}/ipfs/{name}?format=raw", None),
        (f"{server.url}/ipfs/{name}", "application/vnd.ipld.raw"),
    ):
        status, headers, body = _get(url, accept)
        assert status == 200
        assert body == store.get(root)
        assert headers["Content-Type"] == "application/vnd.ipld.raw"
        assert headers["Content-Disposition"] == f'attachment; filename="{name}.bin"'
        assert headers["Etag"] and "immutable" in headers["Cache-Control"]


def test_car_of_the_whole_dag_and_of_one_block(
    served: Served,
) -> None:
    server, store, root = served
    name = cids.cid_to_str(root)
    status, headers, body = _get(f"{server.url}/ipfs/{name}?format=car", "application/vnd.ipld.car")
    assert status == 200
    assert headers["Content-Type"] == "application/vnd.ipld.car; version=1; order=dfs; dups=n"
    roots, blocks = _car_blocks(body)
    assert roots == [root]
    assert blocks == [cid for cid, _ in car.iter_closure(store, root)]
    for scope in ("block", "entity"):
        _, _, body = _get(f"{server.url}/ipfs/{name}?format=car&dag-scope={scope}")
        assert _car_blocks(body)[1] == [root]


def test_probe_missing_path_and_refusals(served: Served) -> None:
    server, _, root = served
    status, _, body = _get(f"{server.url}/ipfs/bafkqaaa?format=raw")
    assert (status, body) == (200, b"")
    status, _, body = _get(f"{server.url}/ipfs/bafkqaaa", "application/vnd.ipld.car")
    assert status == 200 and _car_blocks(body) == ([bytes([1, 0x55, 0, 0])], [])
    missing = cids.cid_to_str(cids.block_cid(cids.RAW, b"not served"))
    assert _get(f"{server.url}/ipfs/{missing}?format=raw")[0] == 404
    assert _get(f"{server.url}/ipfs/{missing}?format=car")[0] == 404
    assert _get(f"{server.url}/ipfs/{missing}?format=raw", method="HEAD")[0] == 404
    assert _get(f"{server.url}/ipfs/not-a-cid?format=raw")[0] == 400
    assert _get(f"{server.url}/ipfs/{cids.cid_to_str(root)}", "application/x-tar")[0] == 406
    assert _get(f"{server.url}/ipfs/{cids.cid_to_str(root)}?format=tar")[0] == 400
    assert _get(f"{server.url}/ipfs/{cids.cid_to_str(root)}?format=car&car-version=2")[0] == 400
    status, headers, body = _get(f"{server.url}/ipfs/{cids.cid_to_str(root)}?format=raw", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0


def test_a_car_is_cut_short_where_a_block_is_missing(served: Served, tmp_path: Path) -> None:
    server, store, root = served
    leaf = cids.block_cid(cids.RAW, bytes([5]) * 3000)
    store.block_path(leaf).unlink()
    client = Gateway(server.url)
    target = DirectoryBlockstore(tmp_path / "target", durable=False)
    with pytest.raises(IncompleteDagError, match="could not be fetched"):
        pull(target, root, [client])
    assert not target.has(leaf) and target.has(root)  # what arrived verified is kept


def test_an_independent_client_verifies_what_the_server_sends(served: Served) -> None:
    """@ipld/car, multiformats and @ipld/dag-cbor (JavaScript, from npm) read the server's CAR and
    raw block, verify every block and find the DAG complete."""
    require_node(network=False)
    server, store, root = served
    result = subprocess.run(
        ["node", str(TRUSTLESS_CLIENT), server.url, cids.cid_to_str(root)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    closure = list(car.iter_closure(store, root))
    expected = {"blocks": len(closure), "bytes": sum(len(data) for _, data in closure)}
    assert json.loads(result.stdout) == expected


# --- the client --------------------------------------------------------------------


def test_pull_from_the_gateway(served: Served, tmp_path: Path) -> None:
    server, store, root = served
    client = Gateway(server.url)
    assert client.get_block(root) == store.get(root)
    target = DirectoryBlockstore(tmp_path / "target", durable=False)
    fetched = pull(target, root, [client])
    assert fetched.requests == 1 and fetched.blocks == len(list(car.iter_closure(store, root)))
    tree = Tree(target, root, read_only=True)
    assert {name: tree.read_file(name) for name in FILES} == FILES


def test_gateways_are_tried_in_order(served: Served, tmp_path: Path) -> None:
    server, _, root = served
    target = DirectoryBlockstore(tmp_path / "target", durable=False)
    fetched = pull(target, root, [Gateway("http://127.0.0.1:9"), Gateway(server.url)])
    assert not fetched.already and Tree(target, root, read_only=True).read_file("arr/3") == FILES["arr/3"]


class _Liar(http.server.BaseHTTPRequestHandler):
    """A gateway that answers every request with the wrong bytes, in the right content type."""

    def do_GET(self) -> None:
        wanted = "car" if "format=car" in self.path else "raw"
        body = b"wrong bytes"
        if wanted == "car":  # a well-formed CAR whose one block does not hash to its CID
            honest = cids.block_cid(cids.RAW, b"honest")
            header = codec.encode({"roots": [Link(honest)], "version": 1})
            body = encode_varint(len(header)) + header
            body += encode_varint(len(honest) + len(b"lies")) + honest + b"lies"
        self.send_response(200)
        self.send_header("Content-Type", f"application/vnd.ipld.{wanted}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def liar() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Liar)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_gateway_that_lies_gets_nothing_into_the_store(liar: str, tmp_path: Path) -> None:
    cid = cids.block_cid(cids.RAW, b"honest")
    with pytest.raises(RemoteError, match="wrong block"):
        Gateway(liar).get_block(cid)
    target = DirectoryBlockstore(tmp_path / "target", durable=False)
    with pytest.raises((IncompleteDagError, CarError)):
        pull(target, cid, [Gateway(liar)])
    assert list(target) == []


# --- the command --------------------------------------------------------------------


def test_cli_serve_then_pull_through_it(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    seed = Path(__file__).parent / "data/seed_example/seed_example.car"
    root = cli("import", seed, "--store", a).stdout.strip()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "ipldmount", "serve", "--port", str(port), "--store", str(a)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not _answers(f"http://127.0.0.1:{port}/ipfs/bafkqaaa?format=raw"):
            assert time.monotonic() < deadline and server.poll() is None, "serve did not start"
            time.sleep(0.1)
        pulled = cli("pull", root, "--gateway", f"http://127.0.0.1:{port}", "--store", b)
        assert pulled.returncode == 0, pulled.stderr
        assert (
            cli("cat", f"{root}/a/0", "--store", b).stdout == cli("cat", f"{root}/a/0", "--store", a).stdout
        )
        assert json.loads(cli("log", "--json", "--store", b).stdout)[0]["source"] == "pull"
    finally:
        server.terminate()
        server.wait(timeout=10)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = cli("serve", "--port", str(taken.getsockname()[1]), "--store", a)
    assert busy.returncode == 1 and "cannot listen" in busy.stderr
    assert len(busy.stderr.strip().splitlines()) == 1
