"""A misbehaving IPFS node and trustless gateway on loopback, for tests of what a client must survive.

One HTTP server (a thread of the test process) answers both the Kubo RPC API (``POST
/api/v0/...``) and the trustless gateway (``GET /ipfs/CID``) from a set of honest blocks, except
where told to misbehave: per kind of request ("block", "car", "pin", "import", ...), one of
:data:`BEHAVIOURS`. Nothing it does outlives :meth:`Hostile.stop`: every response ends when the
server stops, when its writes find nobody reading for a few seconds, or after RESPONSE_LIMIT.
"""

from __future__ import annotations

import http.server
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from ipldmount.blocks.car import car_header, section_head
from ipldmount.ipld import cid as cids

RESPONSE_LIMIT = 90.0  # seconds any one response may go on
ZEROS_LIMIT = (
    400 << 20
)  # bytes of an endless body sent at most (a client that keeps it all grows past 400 MB)
TRICKLE_EVERY = 0.5  # seconds between the bytes of a trickle
PIECE = 64 << 10
BEHAVIOURS = (
    "honest",
    "wrong",  # bytes that do not hash to the CID (a block), a CAR whose block does not
    "oversized",  # a block of 3 MiB, its length stated
    "huge",  # claims 10 GB (Content-Length) and sends zeros until stopped
    "endless",  # no length, zeros until stopped
    "claims-32g",  # a CAR whose first section claims 32 GiB, then zeros
    "error-huge",  # HTTP 500 whose body claims 600 MB and sends zeros until stopped
    "trickle",  # the honest answer, one byte every TRICKLE_EVERY seconds
    "reset",  # the connection is reset once the request is read
    "bad-json",  # JSON of the wrong shape (pin/ls: {"Keys": [1, 2, 3]})
    "not-json",  # an HTML page where JSON belongs
    "strays",  # a CAR of one valid block that is not in the DAG, sent again and again
)
HTML = b"<html><body>Bad gateway</body></html>"


@dataclass
class Hostile:
    """The server: *blocks* it holds honestly, *behaviour* per kind of request (default honest)."""

    blocks: dict[bytes, bytes]
    root: bytes
    behaviour: dict[str, str] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.hostile = self
        self.thread = threading.Thread(target=self.server.serve_forever, name="hostile-node", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def mode(self, kind: str, arg: str = "") -> str:
        """How to answer *kind* for *arg*: ``behaviour["block CID"]``, else ``behaviour["block"]``."""
        return self.behaviour.get(f"{kind} {arg}") or self.behaviour.get(kind, "honest")

    def car(self) -> bytes:
        """An honest CAR of every block (the root's first)."""
        order = [self.root, *(cid for cid in self.blocks if cid != self.root)]
        return car_header([self.root]) + b"".join(
            section_head(cid, len(self.blocks[cid])) + self.blocks[cid] for cid in order
        )


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    hostile: Hostile


class _Handler(http.server.BaseHTTPRequestHandler):
    timeout = 5  # a write nobody reads for this long ends the response
    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    @property
    def hostile(self) -> Hostile:
        return self.server.hostile

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        kind = "car" if query.get("format") == ["car"] else "block"
        self._answer(kind, parts.path.removeprefix("/ipfs/"), gateway=True)

    def do_POST(self) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        command = parts.path.removeprefix("/api/v0/")
        kinds = {"block/get": "block", "dag/export": "car", "pin/ls": "pin", "dag/import": "import"}
        kinds |= {"version": "version", "block/stat": "stat", "pin/add": "pin-add", "block/put": "put"}
        self._read_body()
        self._answer(kinds.get(command, command), query.get("arg", [""])[0], gateway=False)

    def _read_body(self) -> None:
        """Read (and drop) what the client sends: a CAR to import, a block to put."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                self.rfile.read(size + 2)
            self.rfile.readline()
        else:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self, kind: str, arg: str, *, gateway: bool) -> None:
        mode = self.hostile.mode(kind, arg)
        self.hostile.requests.append(f"{kind} {mode}")
        try:
            if mode == "reset":
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                return
            status, content_type, body = _honest(self.hostile, kind, arg, gateway)
            if mode == "honest":
                return self._send(status, content_type, [body], len(body))
            self._misbehave(mode, kind, content_type, body)
        except OSError:  # the client went away: that is what it should do
            self.close_connection = True

    def _misbehave(self, mode: str, kind: str, content_type: str, body: bytes) -> None:
        if mode == "wrong":
            wrong = _wrong_car(self.hostile.root) if kind == "car" else b"wrong bytes"
            self._send(200, content_type, [wrong], len(wrong))
        elif mode == "oversized":
            self._send(200, content_type, [b"\0" * (3 << 20)], 3 << 20)
        elif mode == "huge":
            self._send(200, content_type, self._zeros(), 10 * 10**9)
        elif mode == "endless":
            self._send(200, content_type, self._zeros(), None)
        elif mode == "claims-32g":
            head = car_header([self.hostile.root]) + section_head(self.hostile.root, 32 << 30)
            self._send(200, content_type, self._zeros(head), None)
        elif mode == "error-huge":
            self._send(500, "text/plain", self._zeros(b"Internal error: "), 600 * 10**6)
        elif mode == "trickle":
            self._send(200, content_type, self._trickled(body), len(body))
        elif mode == "bad-json":
            self._send(200, "application/json", [_bad_json(kind)], None)
        elif mode == "strays":
            self._send(200, content_type, self._strays(), None)
        elif mode == "not-json":
            self._send(200, "text/html", [HTML], len(HTML))
        else:
            raise AssertionError(f"no such behaviour: {mode}")

    def _send(
        self, status: int, content_type: str, pieces: Iterator[bytes] | list[bytes], length: int | None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        for piece in pieces:
            self.wfile.write(piece)
            self.wfile.flush()

    def _zeros(self, head: bytes = b"") -> Iterator[bytes]:
        yield head
        ends = time.monotonic() + RESPONSE_LIMIT
        zeros = b"\0" * PIECE
        for _ in range(ZEROS_LIMIT // PIECE):
            if self.hostile.stopping.is_set() or time.monotonic() > ends:
                return
            yield zeros

    def _strays(self) -> Iterator[bytes]:
        stray = b"\1" * (1 << 20)
        cid = cids.block_cid(cids.RAW, stray)
        section = section_head(cid, len(stray)) + stray
        yield car_header([self.hostile.root])
        for _ in range(ZEROS_LIMIT // len(section)):
            if self.hostile.stopping.is_set():
                return
            yield section

    def _trickled(self, body: bytes) -> Iterator[bytes]:
        ends = time.monotonic() + RESPONSE_LIMIT
        for index in range(len(body)):
            if self.hostile.stopping.wait(TRICKLE_EVERY) or time.monotonic() > ends:
                return
            yield body[index : index + 1]


def _honest(hostile: Hostile, kind: str, arg: str, gateway: bool) -> tuple[int, str, bytes]:
    """What an honest node or gateway answers: (status, content type, body)."""
    cid = _parse(arg)
    known = cid is not None and cid in hostile.blocks
    if kind == "block":
        if not known:
            return (404, "text/plain", b"not found") if gateway else _kubo_error("block not found")
        assert cid is not None
        return 200, "application/vnd.ipld.raw" if gateway else "text/plain", hostile.blocks[cid]
    if kind == "car":
        return 200, "application/vnd.ipld.car", hostile.car()
    if kind == "version":
        return 200, "application/json", json.dumps({"Version": "0.hostile"}).encode()
    if kind == "stat":
        if not known:
            return _kubo_error("blockservice: key not found")
        assert cid is not None
        return 200, "application/json", json.dumps({"Key": arg, "Size": len(hostile.blocks[cid])}).encode()
    if kind == "pin":
        return _kubo_error(f"path '{arg}' is not pinned")
    if kind == "import":
        return 200, "application/json", b'{"Stats": {"BlockCount": 1, "BlockBytesCount": 1}}\n'
    return _kubo_error(f"unknown command {kind}")


def _kubo_error(message: str) -> tuple[int, str, bytes]:
    return 500, "application/json", json.dumps({"Message": message, "Code": 0, "Type": "error"}).encode()


def _parse(arg: str) -> bytes | None:
    try:
        return cids.parse_cid(arg) if arg else None
    except ValueError:
        return None


def _wrong_car(root: bytes) -> bytes:
    """A well-formed CAR whose one section holds bytes that do not hash to its CID."""
    return car_header([root]) + section_head(root, 4) + b"lies"


def _bad_json(kind: str) -> bytes:
    shapes: Mapping[str, object] = {
        "pin": {"Keys": [1, 2, 3]},
        "stat": {"Key": 5, "Size": "big"},
        "version": ["not", "a", "map"],
        "import": {"Root": {"Cid": [1], "PinErrorMsg": ""}},
        "put": {"Key": {"/": 1}},
    }
    return json.dumps(shapes.get(kind, [1, 2, 3])).encode() + b"\n"
