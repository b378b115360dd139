"""``ipldmount serve``: an IPFS HTTP gateway over a local blockstore (read-only).

What it implements, of https://specs.ipfs.tech/http-gateways/:

- the **trustless gateway**: ``GET``/``HEAD /ipfs/{cid}[/{path}]`` as the raw block
  (``application/vnd.ipld.raw``, a single ``Range`` served) or a CARv1 stream
  (``application/vnd.ipld.car; version=1; order=dfs; dups=n`` or ``dups=y``, as asked): the blocks
  that prove the path, then the entity's as ``dag-scope`` says (``block``; ``entity``: a file's
  every block, a directory's own block and HAMT nodes; ``all``), or as ``entity-bytes=from:to``
  narrows a file. The form is chosen by ``format`` (then ``car-version``, ``car-order``,
  ``car-dups``) or else ``Accept``, and then said in ``Content-Location``; ``Etag`` (a CAR's
  digests its path, scope, range and dups), ``If-None-Match`` (304), ``Cache-Control:
  only-if-cached`` (412 for what is not here), 404 for a block not here, the ``bafkqaaa`` probe
  (any identity CID: never sent as a block);
- **paths below a CID** for UnixFS (plain and HAMT-sharded dag-pb directories) and ipldmount's
  own trees (FORMAT.md 3.2: plain and sharded directories, inline directories and metadata);
- **deserialized responses** when neither raw nor a CAR is asked for (no ``Accept``, ``*/*``,
  a browser's): a file's bytes (zarr metadata as JSON, rendered; one ``Range``, 206 or 416), a
  directory as a short JSON listing ``{"cid", "entries": [{"name", "cid" or null}]}``.

Not implemented: ``/ipns/`` and IPNS records, TAR, DAG-JSON/DAG-CBOR/JSON conversion (406 or
400), HTML directory listings (and their trailing-slash redirects), multi-range answers (the first
range is sent), subdomain and DNSLink gateways. A path's segments are percent-decoded, empty
ones skipped, ``.`` and ``..`` refused (400); a name not there is a 404.

A stored block whose bytes do not hash to its CID is never sent: asked for alone, or found
within the first MiB of a CAR, it is answered 500 (a plain-text line naming it corrupt); found
later in a CAR, whose 200 is already sent, it ends the CAR there (the client finds it
incomplete). Either way one line naming the CID is logged.

Hostile or broken clients cannot starve it. One thread (:meth:`GatewayServer.serve_forever`)
accepts connections and reads each request's head without blocking; only a complete head is
handed to one of a fixed pool of worker threads, so idle and half-sent connections hold no
thread. A worker sends an answer as far as the client takes it, then leaves the rest to the
loop until the socket is writable again, so a client that reads slowly, or not at all, holds
no thread either. A connection must start a request within *idle_timeout*, and send the
whole head within *request_timeout* of its first byte (a slowloris sender is cut off then);
a client that takes no byte of its answer for *send_timeout* is cut off. At most
*max_connections* are open (fewer when the file descriptor limit is lower): a new one past
the cap closes the connection that has waited longest for a request (else the answer stalled
longest), or, when every open one is being worked on, gets a fast 503. Each failure
(timeout, abort, reset, refusal) is one logged line, never a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import itertools
import json
import logging
import queue
import re
import resource
import selectors
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import SplitResult, parse_qs, quote, unquote, urlencode, urlsplit

from ipldmount.blocks import Blockstore
from ipldmount.blocks.car import car_header, section_head
from ipldmount.blocks.dag import iter_closure
from ipldmount.errors import (
    BlockNotFoundError,
    CorruptBlockError,
    FormatError,
    InvalidCIDError,
    IpldmountError,
    NotDirectoryError,
    NotFoundError,
)
from ipldmount.format import metadata, paths
from ipldmount.format.files import BytesReader, FileReader
from ipldmount.format.paths import Kind
from ipldmount.ipld import cid as cids

log = logging.getLogger(__name__)

RAW_TYPE = "application/vnd.ipld.raw"
CAR_TYPE = "application/vnd.ipld.car"
IMMUTABLE = "public, max-age=29030400, immutable"
SCOPES = ("all", "entity", "block")
ENTITY_BYTES = re.compile(r"(-?[0-9]+):(\*|-?[0-9]+)")
BYTE_RANGE = re.compile(r"([0-9]*)-([0-9]*)")
FILE_CHUNK = 1 << 20  # bytes of a file read (and sent) at a time

MAX_CONNECTIONS = 512  # open connections, idle ones included (each costs a descriptor, no thread)
WORKERS = 16  # threads answering requests whose head has arrived (disk reads, sends that do not wait)
IDLE_TIMEOUT = 60.0  # seconds a connection may stay open without starting a request
REQUEST_TIMEOUT = 10.0  # seconds from a request's first byte to the end of its head
SEND_TIMEOUT = 30.0  # seconds a client may go without taking any byte of its answer
MAX_HEAD = 64 * 1024  # bytes of request line and headers; more is answered 431
CAR_READ_AHEAD = 1 << 20  # bytes of a CAR read (and verified) before its 200 is sent
FD_RESERVE = 64  # descriptors kept free of connections: block files, logs, the server's own
SEND_CHUNK = 64 * 1024  # smaller writes are gathered into one send
SWEEP_INTERVAL = 0.1  # seconds between looks for connections past their deadline
ACCEPT_BATCH = 64  # connections accepted per wakeup, so reads are not starved by a flood
PAUSE_ON_EMFILE = 0.1  # seconds without accepting when no descriptor can be freed


@dataclass(eq=False)
class _Connection:
    """A client connection, and the bytes it sent that no request has taken yet."""

    sock: socket.socket
    address: tuple[str, int]
    buffer: bytearray = field(default_factory=bytearray)
    scanned: int = 0  # how much of buffer is known to hold no end of a head
    waiting_since: float = 0.0
    deadline: float = 0.0
    partial: bool = False  # a request has begun arriving
    served: int = 0

    @property
    def peer(self) -> str:
        host, port = self.address[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(eq=False)
class _Response:
    """An answer under way: the bytes the socket has not taken yet, and the rest to come."""

    conn: _Connection
    chunks: Iterator[bytes]
    keep_alive: bool
    deadline: float  # the client must have taken more by then
    pending: memoryview = field(default_factory=lambda: memoryview(b""))


class GatewayServer:
    """The HTTP server: an event loop reads requests, a fixed pool of threads answers them,
    each request read-only against *store* (the module docstring says what bounds it)."""

    def __init__(
        self,
        store: Blockstore,
        address: tuple[str, int],
        *,
        max_connections: int = MAX_CONNECTIONS,
        workers: int = WORKERS,
        idle_timeout: float = IDLE_TIMEOUT,
        request_timeout: float = REQUEST_TIMEOUT,
        send_timeout: float = SEND_TIMEOUT,
    ) -> None:
        self.store = store
        self.socket = _listen(address)
        self.server_address: tuple[Any, ...] = self.socket.getsockname()
        self.max_connections = _connection_cap(max_connections)
        self.workers = max(1, workers)
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        self.send_timeout = send_timeout
        self._selector = selectors.DefaultSelector()
        self._wake_in, self._wake_out = socket.socketpair()
        self._wake_in.setblocking(False)
        self._wake_out.setblocking(False)
        self._waiting: set[_Connection] = set()  # the loop's own (no lock): reading a head
        self._writing: set[_Response] = set()  # the loop's own: waiting for the client to read
        self._ready: queue.SimpleQueue[tuple[_Connection, bytes] | _Response | None] = queue.SimpleQueue()
        self._returned: queue.SimpleQueue[_Connection | _Response] = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards _open and _serving, shared with the workers
        self._open = 0
        self._serving = False
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        self._paused_until = 0.0
        self._next_sweep = 0.0

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start_in_thread(self) -> threading.Thread:
        """Serve from a daemon thread (for tests and embedding); :meth:`shutdown` stops it."""
        thread = threading.Thread(target=self.serve_forever, name="ipldmount-gateway", daemon=True)
        thread.start()
        return thread

    def serve_forever(self) -> None:
        """Serve until :meth:`shutdown`, or until an exception (the CLI's SIGTERM) ends it."""
        self._stopped.clear()
        with self._lock:
            self._serving = True
        for number in range(self.workers):
            name = f"ipldmount-gateway-{number}"
            threading.Thread(target=self._work, name=name, daemon=True).start()
        self._selector.register(self.socket, selectors.EVENT_READ)
        self._selector.register(self._wake_in, selectors.EVENT_READ)
        try:
            while not self._stop.is_set():
                self._step()
        finally:
            self._wind_down()

    def shutdown(self) -> None:
        """Stop :meth:`serve_forever` (from another thread) and wait until it has returned."""
        self._stop.set()
        self._wake()
        self._stopped.wait()

    def server_close(self) -> None:
        self.socket.close()
        self._selector.close()
        self._wake_in.close()
        self._wake_out.close()

    # --- the event loop: accepting, reading heads, deadlines ----------------------------

    def _step(self) -> None:
        timeout = SWEEP_INTERVAL if self._waiting or self._writing or self._paused_until else 1.0
        for key, _ in self._selector.select(timeout):
            if key.fileobj is self.socket:
                self._accept()
            elif key.fileobj is self._wake_in:
                _drain(self._wake_in)
            elif isinstance(key.data, _Response):
                self._resume(key.data)
            else:
                self._receive(key.data)
        now = time.monotonic()
        self._take_returned(now)
        if self._paused_until and now >= self._paused_until:
            self._paused_until = 0.0
            self._selector.register(self.socket, selectors.EVENT_READ)
        if now >= self._next_sweep:
            self._sweep(now)
            self._next_sweep = now + SWEEP_INTERVAL

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno == errno.ECONNABORTED:
                    continue
                out_of_descriptors = exc.errno in (errno.EMFILE, errno.ENFILE)
                if out_of_descriptors and self._evict_oldest("out of file descriptors"):
                    continue
                self._pause_accepting(exc)
                return
            self._admit(_Connection(sock, (address[0], address[1])))

    def _admit(self, conn: _Connection) -> None:
        with self._lock:
            full = self._open >= self.max_connections
        if full and not self._evict_oldest(f"{self.max_connections} connections are open (the cap)"):
            self._refuse(conn)
            return
        conn.sock.setblocking(False)
        with self._lock:
            self._open += 1
        self._wait(conn, time.monotonic())

    def _wait(self, conn: _Connection, now: float) -> None:
        """Let *conn* wait for its next request (which may already be in its buffer)."""
        conn.waiting_since = now
        conn.partial = bool(conn.buffer)
        conn.deadline = now + (self.request_timeout if conn.partial else self.idle_timeout)
        head = _take_head(conn)
        if head is not None:
            self._ready.put((conn, head))
            return
        self._waiting.add(conn)
        self._selector.register(conn.sock, selectors.EVENT_READ, conn)

    def _receive(self, conn: _Connection) -> None:
        if conn not in self._waiting:  # closed earlier in this round (its descriptor reused)
            return
        try:
            data = conn.sock.recv(MAX_HEAD)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._drop(conn, f"{_why(exc)} {_progress(conn)}")
            return
        if not data:
            self._drop(conn, f"closed by the client {_progress(conn)}")
            return
        if not conn.partial:
            conn.partial = True
            conn.deadline = time.monotonic() + self.request_timeout
        conn.buffer += data
        head = _take_head(conn)
        if head is not None:
            self._unwait(conn)
            self._ready.put((conn, head))
        elif len(conn.buffer) > MAX_HEAD:
            answer = _plain(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large")
            self._drop(conn, f"request head over {MAX_HEAD} bytes", answer)

    def _resume(self, response: _Response) -> None:
        """The client of a parked answer can take more: back to a worker with it."""
        if response in self._writing:  # else closed earlier in this round
            self._unpark(response)
            self._ready.put(response)

    def _sweep(self, now: float) -> None:
        """Close the connections past their deadline: idle too long, a head sent too slowly,
        an answer not read."""
        for response in [response for response in self._writing if now >= response.deadline]:
            self._unpark(response)
            self._release(response.conn, f"took no byte of its answer for {self.send_timeout:g} s")
        for conn in [conn for conn in self._waiting if now >= conn.deadline]:
            if conn.partial:
                why = f"no complete request within {self.request_timeout:g} s ({len(conn.buffer)} bytes came)"
                self._drop(conn, why, _plain(HTTPStatus.REQUEST_TIMEOUT, "request head sent too slowly"))
            else:
                after = f" after {conn.served} requests" if conn.served else ""
                self._drop(conn, f"no request within {self.idle_timeout:g} s{after}")

    def _evict_oldest(self, why: str) -> bool:
        """Close the connection that has waited longest for a request (else the one whose
        client has read nothing for longest), to let a new one in."""
        why = f"closed to make room for a new connection: {why}"
        if self._waiting:
            oldest = min(self._waiting, key=lambda conn: conn.waiting_since)
            self._unwait(oldest)
            self._release(oldest, why)
            return True
        if self._writing:
            stalled = min(self._writing, key=lambda response: response.deadline)
            self._unpark(stalled)
            self._release(stalled.conn, f"{why} (its answer unfinished)")
            return True
        return False

    def _refuse(self, conn: _Connection) -> None:
        """A fast 503 for a connection past the cap when every open one is being worked on."""
        busy = _plain(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections: retry", "Retry-After: 1\r\n")
        _send_quietly(conn.sock, busy)
        conn.sock.close()
        log.warning(
            "%s: refused (503): all %d connections are being worked on", conn.peer, self.max_connections
        )

    def _pause_accepting(self, exc: OSError) -> None:
        """Stop listening a moment: the queued connection keeps the socket readable, and
        retrying the failing accept() at once would spin the CPU."""
        log.warning("cannot accept connections: %s; pausing %g s", exc.strerror or exc, PAUSE_ON_EMFILE)
        self._selector.unregister(self.socket)
        self._paused_until = time.monotonic() + PAUSE_ON_EMFILE

    def _take_returned(self, now: float) -> None:
        """Connections back from the workers: to wait for a request, or for their client to
        read more of an answer."""
        while True:
            try:
                item = self._returned.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Response):
                self._writing.add(item)
                self._selector.register(item.conn.sock, selectors.EVENT_WRITE, item)
            else:
                self._wait(item, now)

    def _unwait(self, conn: _Connection) -> None:
        self._waiting.discard(conn)
        self._selector.unregister(conn.sock)

    def _unpark(self, response: _Response) -> None:
        self._writing.discard(response)
        self._selector.unregister(response.conn.sock)

    def _drop(self, conn: _Connection, why: str, answer: bytes = b"") -> None:
        """Close a waiting connection, in one logged line: a warning for a request under way,
        info for a connection that never sent one, debug for the end of a kept-alive one."""
        level = logging.WARNING if conn.buffer else logging.DEBUG if conn.served else logging.INFO
        self._unwait(conn)
        self._release(conn, why, level, answer)

    def _release(
        self, conn: _Connection, why: str = "", level: int = logging.WARNING, answer: bytes = b""
    ) -> None:
        """Close a connection no one else holds (not waiting), logging *why* if given."""
        if answer:
            _send_quietly(conn.sock, answer)
        conn.sock.close()
        with self._lock:
            self._open -= 1
        if why:
            log.log(level, "%s: %s", conn.peer, why)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (a wakeup is pending anyway) or closed
            self._wake_out.send(b"\0")

    def _wind_down(self) -> None:
        with self._lock:
            self._serving = False
        for conn in list(self._waiting):
            self._unwait(conn)
            self._release(conn)
        for response in list(self._writing):
            self._unpark(response)
            self._release(response.conn)
        while True:
            try:
                item = self._returned.get_nowait()
            except queue.Empty:
                break
            self._release(item.conn if isinstance(item, _Response) else item)
        for _ in range(self.workers):
            self._ready.put(None)
        for fileobj in (self.socket, self._wake_in):
            if fileobj in self._selector.get_map():
                self._selector.unregister(fileobj)
        self._paused_until = 0.0
        self._stop.clear()
        self._stopped.set()

    # --- the workers ---------------------------------------------------------------------

    def _work(self) -> None:
        while (job := self._ready.get()) is not None:
            response = self._respond(*job) if isinstance(job, tuple) else job
            if response is not None:
                self._pump(response)

    def _respond(self, conn: _Connection, head: bytes) -> _Response | None:
        """The answer to one request (worked out here; sent by :meth:`_pump`)."""
        try:
            handler = _Handler(self, conn, head)
        except Exception:
            log.exception("%s: answering %r failed", conn.peer, head.split(b"\r\n", 1)[0][:200])
            self._release(conn)
            return None
        chunks = _coalesce(itertools.chain((handler.written.getvalue(),), handler.body))
        deadline = time.monotonic() + self.send_timeout
        return _Response(conn, chunks, not handler.close_connection, deadline)

    def _pump(self, response: _Response) -> None:
        """Send what the socket takes now; when it takes no more, park the answer with the loop
        (which holds it, not a thread, until the client reads on); when all is sent, finish."""
        try:
            while True:
                if not response.pending:
                    chunk = next(response.chunks, None)
                    if chunk is None:
                        self._finish(response)
                        return
                    response.pending = memoryview(chunk)
                sent = response.conn.sock.send(response.pending)
                response.pending = response.pending[sent:]
                response.deadline = time.monotonic() + self.send_timeout
        except (BlockingIOError, InterruptedError):
            self._hand_back(response)
            return
        except ConnectionError as exc:
            why = f"{_why(exc)} during the answer"
        except _CutShort:
            why = ""  # said where it happened
        except Exception:
            log.exception("%s: answering failed", response.conn.peer)
            why = ""
        self._release(response.conn, why)

    def _finish(self, response: _Response) -> None:
        """All sent: wait for the next request, or close after a FIN (reading what the client
        sent first, as closing over unread bytes resets and may cut the answer's end off)."""
        conn = response.conn
        if response.keep_alive:
            conn.served += 1
            self._hand_back(conn)
            return
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_WR)
            _drain(conn.sock)
        self._release(conn)

    def _hand_back(self, item: _Connection | _Response) -> None:
        """Give the loop a connection to wait on (unless it is stopping: then close it)."""
        with self._lock:
            serving = self._serving
            if serving:
                self._returned.put(item)
        if serving:
            self._wake()
        else:
            self._release(item.conn if isinstance(item, _Response) else item)


class _BadRequest(Exception):
    def __init__(self, status: HTTPStatus, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


class _CutShort(Exception):
    """An answer whose status is sent cannot be finished (a block unreadable midway): its
    connection is closed, which the client sees as a short body. Logged where it is raised."""


@dataclass
class _Ask:
    """One request, parsed: what it names, and in which form it wants it."""

    root: bytes
    names: list[str]  # the path below the root, percent-decoded
    kind: str  # "raw", "car", or "content" (a file's bytes, a directory's listing)
    negotiated: bool  # raw or car chosen by Accept, not by ?format=
    query: dict[str, str]
    scope: str = "all"
    entity_bytes: tuple[int, int | None] | None = None  # from, to (None: "*"), as asked
    dups: bool = False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ipldmount-gateway"

    def __init__(self, gateway: GatewayServer, conn: _Connection, head: bytes) -> None:
        """Work out the answer to the one request whose *head* the event loop has read: its
        status and headers into *written*, its body into *body*. No socket I/O here (the
        base class's ``__init__`` would read and write the socket, for as long as it takes)."""
        self.gateway = gateway
        self.store = gateway.store
        self.client_address = conn.address
        self.rfile = io.BytesIO(head)
        self.written = io.BytesIO()
        self.wfile = self.written
        self.body: Iterable[bytes] = ()
        self.handle_one_request()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        if _declares_body(self.headers):
            self.close_connection = True  # its unread body would be taken for the next request
        try:
            ask = self._parse()
            resolved = self._resolve(ask)
            if ask.kind == "raw":
                self._send_raw(ask, resolved, body)
            elif ask.kind == "car":
                self._send_car(ask, resolved, body)
            elif resolved.entity.kind is Kind.DIRECTORY:
                self._send_listing(ask, resolved, body)
            else:
                self._send_file(ask, resolved, body)
        except _BadRequest as refusal:
            self._send_error(refusal.status, str(refusal), refusal.headers)

    # --- the request -----------------------------------------------------------------

    def _parse(self) -> _Ask:
        """What the request asks for, or _BadRequest. Empty path segments (``//``, a trailing
        ``/``) are skipped; the others are percent-decoded, and ``.`` and ``..`` refused."""
        parts = urlsplit(self.path)
        segments = [segment for segment in parts.path.split("/") if segment]
        if len(segments) < 2 or segments[0] != "ipfs":
            raise _BadRequest(HTTPStatus.NOT_FOUND, "only /ipfs/{cid}[/{path}] is served here")
        query = {key: values[-1] for key, values in parse_qs(parts.query, keep_blank_values=True).items()}
        accept = self.headers.get("Accept", "")
        kind, negotiated, params = _response_kind(query.get("format"), accept)
        try:
            root = cids.parse_cid(segments[1])
        except InvalidCIDError as exc:
            raise _BadRequest(HTTPStatus.BAD_REQUEST, str(exc)) from None
        ask = _Ask(root, [_name(segment) for segment in segments[2:]], kind, negotiated, query)
        if kind == "car":
            _car_options(ask, params)
        return ask

    def _resolve(self, ask: _Ask) -> paths.Resolved:
        with self._reading(cids.cid_to_str(ask.root)):
            try:
                return paths.resolve(self.store, ask.root, ask.names)
            except (NotFoundError, NotDirectoryError) as exc:
                message = f"no such path below {cids.cid_to_str(ask.root)}: {exc}"
                raise _BadRequest(HTTPStatus.NOT_FOUND, message) from None

    @contextlib.contextmanager
    def _reading(self, what: str) -> Iterator[None]:
        """Store and format failures while working out an answer, as the answer: a block not here
        is 404 (412 under only-if-cached), a malformed node 404 (the path gateway's "invalid DAG
        node"), a corrupt or unreadable block 500, each said in one line."""
        try:
            yield
        except BlockNotFoundError as exc:
            raise self._unavailable(str(exc)) from None
        except FormatError as exc:
            log.info("serving %s: %s", what, exc)
            raise _BadRequest(HTTPStatus.NOT_FOUND, f"{what} cannot be read: {exc}") from None
        except CorruptBlockError as exc:
            log.error("serving %s: %s", what, exc)
            raise _BadRequest(HTTPStatus.INTERNAL_SERVER_ERROR, f"a stored block is corrupt: {exc}") from None
        except OSError as exc:  # unreadable (permissions, I/O error): the server's fault, said so
            log.error("serving %s: the store could not be read: %s", what, exc)
            raise _BadRequest(HTTPStatus.INTERNAL_SERVER_ERROR, "the store could not be read") from None

    def _unavailable(self, message: str) -> _BadRequest:
        """Data not held here: 404, or 412 when the client asked for nothing but what is cached."""
        directives = {part.strip().lower() for part in self.headers.get("Cache-Control", "").split(",")}
        if "only-if-cached" in directives:
            return _BadRequest(HTTPStatus.PRECONDITION_FAILED, "")
        return _BadRequest(HTTPStatus.NOT_FOUND, message)

    # --- the answers -----------------------------------------------------------------

    def _send_raw(self, ask: _Ask, resolved: paths.Resolved, body: bool) -> None:
        """The block the path ends at (for an inline entry, the block it sits in)."""
        cid = resolved.entity.block
        data = self._block(cid)
        name = cids.cid_to_str(cid)
        etag = f'"{name}.raw"'
        if self._not_modified(etag):
            return
        disposition = _disposition("attachment", ask.query.get("filename", f"{name}.bin"))
        self._send_span(ask, resolved, BytesReader(data), RAW_TYPE, etag, disposition, body)

    def _send_file(self, ask: _Ask, resolved: paths.Resolved, body: bool) -> None:
        """A file's bytes, whole or one range of them."""
        entity = resolved.entity
        if entity.kind is not Kind.FILE:
            message = "neither a file nor a directory: ask for ?format=raw or ?format=car"
            raise _BadRequest(HTTPStatus.NOT_IMPLEMENTED, message)
        with self._reading(resolved.key):
            reader = entity.content(self.store).reader(self.store)
        etag = f'"{resolved.key}"'
        if self._not_modified(etag):
            return
        filename = ask.query.get("filename")
        kind = "attachment" if ask.query.get("download") == "true" else "inline"
        disposition = _disposition(kind, filename) if filename or kind == "attachment" else None
        content_type = _content_type(filename or entity.name)
        self._send_span(ask, resolved, reader, content_type, etag, disposition, body)

    def _send_span(
        self,
        ask: _Ask,
        resolved: paths.Resolved,
        reader: FileReader,
        content_type: str,
        etag: str,
        disposition: str | None,
        body: bool,
    ) -> None:
        """Bytes with a known length: all of them, or the one range asked for (206; 416 when it
        lies past the end). Every block of the span is checked present, and the first piece read,
        before the status goes out: what is not here is a 404, not a short answer."""
        size = reader.size
        span = self._requested_range(size, etag)
        start, end = span or (0, size)
        if ask.kind == "content":
            self._check_held(resolved.entity, start, end)
        first = b""
        if body and end > start:
            with self._reading(resolved.key):
                first = reader.read(start, min(FILE_CHUNK, end - start))
        self.send_response(HTTPStatus.PARTIAL_CONTENT if span else HTTPStatus.OK)
        self._headers(ask, resolved, content_type, etag, disposition)
        self.send_header("Accept-Ranges", "bytes")
        if span:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        if body:
            self.body = self._span_bytes(reader, first, start + len(first), end, resolved.key)

    def _requested_range(self, size: int, etag: str) -> tuple[int, int] | None:
        """The one range of a Range header (the first of several), or None for the whole."""
        header = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if header is None or (if_range is not None and if_range.strip() != etag):
            return None
        span = _byte_range(header, size)
        if span is not None and span[0] >= size:
            headers = {"Content-Range": f"bytes */{size}"}
            raise _BadRequest(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, "range past the end", headers)
        return span

    def _check_held(self, entity: paths.Entity, start: int, end: int) -> None:
        with self._reading(entity.name or cids.cid_to_str(entity.block)):
            for cid in set(paths.range_blocks(self.store, entity, start, end)):
                if not self.store.has(cid):
                    raise self._unavailable(f"{cids.cid_to_str(cid)}, of the file, is not in this store")

    def _span_bytes(
        self, reader: FileReader, first: bytes, offset: int, end: int, what: str
    ) -> Iterator[bytes]:
        yield first
        while offset < end:
            try:
                chunk = reader.read(offset, min(FILE_CHUNK, end - offset))
            except (IpldmountError, OSError) as exc:
                log.error("%s cut short at byte %d: %s", what, offset, exc)
                raise _CutShort from None
            if not chunk:
                log.error("%s cut short at byte %d: its blocks hold less than it says", what, offset)
                raise _CutShort
            offset += len(chunk)
            yield chunk

    def _send_listing(self, ask: _Ask, resolved: paths.Resolved, body: bool) -> None:
        """A directory as JSON: ``{"cid": ..., "entries": [{"name": ..., "cid": ... or null}]}``,
        in stored order (null: an entry inline in the directory's block), streamed."""
        etag = f'"DirIndex-json_CID-{resolved.key}"'
        if self._not_modified(etag):
            return
        listing = paths.entries(self.store, resolved.entity)
        with self._reading(resolved.key):
            first = next(listing, None)  # a directory unreadable from the start is a 404
        self.send_response(HTTPStatus.OK)
        self._headers(ask, resolved, "application/json", etag, None)
        self.send_header("Connection", "close")  # streamed: its end is the end of the connection
        self.end_headers()
        self.close_connection = True
        if body:
            self.body = self._listing_bytes(resolved.key, first, listing)

    def _listing_bytes(
        self, key: str, first: tuple[str, bytes | None] | None, rest: Iterator[tuple[str, bytes | None]]
    ) -> Iterator[bytes]:
        yield f'{{"cid": {json.dumps(key)}, "entries": ['.encode()
        entry, separator = first, ""
        while entry is not None:
            name, cid = entry
            shown = None if cid is None else cids.cid_to_str(cid)
            yield f"{separator}\n{json.dumps({'name': name, 'cid': shown})}".encode()
            separator = ","
            try:
                entry = next(rest, None)
            except (IpldmountError, OSError) as exc:
                log.error("listing of %s cut short: %s", key, exc)
                raise _CutShort from None
        yield b"\n]}\n"

    def _send_car(self, ask: _Ask, resolved: paths.Resolved, body: bool) -> None:
        entity = resolved.entity
        name = cids.cid_to_str(ask.root)
        self._block(entity.block)  # 404 before any byte is sent
        etag = _car_etag(ask)
        if self._not_modified(etag):
            return
        span = self._entity_span(ask, resolved) if ask.entity_bytes is not None else None
        missing: list[bytes] = []
        blocks = self._car_blocks(ask, resolved, span, missing) if body else iter(())
        ahead = _read_ahead(blocks, CAR_READ_AHEAD)
        if missing and self._stored(missing[0]):  # corrupt, and found before the status is sent
            shown = cids.cid_to_str(missing[0])
            log.error("CAR of %s: stored block %s is corrupt: answered 500", name, shown)
            raise _BadRequest(HTTPStatus.INTERNAL_SERVER_ERROR, _corrupt(missing[0]))
        self.send_response(HTTPStatus.OK)
        content_type = f"{CAR_TYPE}; version=1; order=dfs; dups={'y' if ask.dups else 'n'}"
        disposition = _disposition("attachment", ask.query.get("filename", f"{name}.car"))
        self._headers(ask, resolved, content_type, etag, disposition)
        self.send_header("Accept-Ranges", "none")
        self.send_header("Connection", "close")  # the end of the stream is the end of the CAR
        self.end_headers()
        self.close_connection = True
        if body:  # an identity CID's CAR is its header alone: identity blocks are never sent
            self.body = self._car_bytes(ask.root, name, itertools.chain(ahead, blocks), missing)

    def _entity_span(self, ask: _Ask, resolved: paths.Resolved) -> tuple[int, int] | None:
        """The bytes ``entity-bytes`` asks for, as ``[start, end)`` of the file (None: not a file,
        whose entity is then sent whole); 400 for a range wholly past its end."""
        entity = resolved.entity
        if entity.kind is not Kind.FILE or ask.entity_bytes is None:
            return None
        with self._reading(resolved.key):
            size = entity.content(self.store).size_in(self.store)
        start, end = _entity_range(ask.entity_bytes, size)
        if start >= size > 0 or (size == 0 and start > 0):
            message = f"entity-bytes starts past the end of the file ({size} bytes)"
            raise _BadRequest(HTTPStatus.BAD_REQUEST, message)
        return start, end

    def _car_bytes(
        self, root: bytes, name: str, blocks: Iterator[tuple[bytes, bytes]], missing: list[bytes]
    ) -> Iterator[bytes]:
        """The CAR, framed as write_car frames it, a block at a time as the client reads."""
        yield car_header([root])
        for cid, data in blocks:
            yield section_head(cid, len(data))
            yield data
        if missing:
            self._log_cut_short(name, missing[0])

    def _car_blocks(
        self, ask: _Ask, resolved: paths.Resolved, span: tuple[int, int] | None, missing: list[bytes]
    ) -> Iterator[tuple[bytes, bytes]]:
        """The blocks of the CAR, depth first: those of the path, then the entity's as the scope
        (or the byte range) says. One missing or corrupt (noted in *missing*) ends the stream
        there (the CAR is then incomplete, which the client detects, as the specification says)."""
        for cid in resolved.path:
            data = self._walk_get(cid, missing)
            if data is None:
                return
            yield cid, data
        entity = resolved.entity
        if cids.inline_data(entity.block) is not None:
            return
        if span is not None:
            yield from self._span_blocks(entity, span, ask.dups, missing)
            return
        follow = paths.follow(entity, ask.scope)
        for cid, data in iter_closure(self.store, entity.block, missing, follow=follow, dups=ask.dups):
            if missing:
                return
            yield cid, data

    def _span_blocks(
        self, entity: paths.Entity, span: tuple[int, int], dups: bool, missing: list[bytes]
    ) -> Iterator[tuple[bytes, bytes]]:
        seen: set[bytes] = set()
        found = paths.range_blocks(self.store, entity, *span)
        while True:
            try:
                cid = next(found, None)
            except IpldmountError as exc:  # a node below malformed: what came so far is the answer
                log.warning("CAR of %s cut short: %s", cids.cid_to_str(entity.block), exc)
                return
            if cid is None:
                return
            if not dups and cid in seen:
                continue
            seen.add(cid)
            data = self._walk_get(cid, missing)
            if data is None:
                return
            yield cid, data

    def _walk_get(self, cid: bytes, missing: list[bytes]) -> bytes | None:
        try:
            return self.store.get(cid)
        except (BlockNotFoundError, CorruptBlockError):
            missing.append(cid)
            return None

    def _stored(self, cid: bytes) -> bool:
        """Whether a block the walk could not read is here all the same: then it is corrupt."""
        try:
            return self.store.has(cid)
        except OSError:
            return False

    def _log_cut_short(self, name: str, cid: bytes) -> None:
        shown = cids.cid_to_str(cid)
        if self._stored(cid):
            log.error("CAR of %s cut short: stored block %s is corrupt", name, shown)
        else:
            log.warning("CAR of %s cut short: block %s is missing", name, shown)

    def _block(self, cid: bytes) -> bytes:
        try:
            return self.store.get(cid)
        except BlockNotFoundError:
            raise self._unavailable(f"{cids.cid_to_str(cid)} is not in this store") from None
        except CorruptBlockError as exc:
            log.error("serving %s: %s", cids.cid_to_str(cid), exc)
            raise _BadRequest(HTTPStatus.INTERNAL_SERVER_ERROR, _corrupt(cid)) from None
        except OSError as exc:  # unreadable (permissions, I/O error): the server's fault, said so
            log.error("serving %s: the store could not be read: %s", cids.cid_to_str(cid), exc)
            raise _BadRequest(
                HTTPStatus.INTERNAL_SERVER_ERROR, "the stored block could not be read"
            ) from None

    def _not_modified(self, etag: str) -> bool:
        """Answer 304 when If-None-Match names *etag* (weakly compared, as RFC 9110 says)."""
        wanted = self.headers.get("If-None-Match")
        if wanted is None:
            return False
        tags = {tag.strip().removeprefix("W/") for tag in wanted.split(",")}
        if "*" not in tags and etag.removeprefix("W/") not in tags:
            return False
        self.send_response(HTTPStatus.NOT_MODIFIED)
        self.send_header("Etag", etag)
        self.send_header("Cache-Control", IMMUTABLE)
        self.send_header("Vary", "Accept")
        self.end_headers()
        return True

    def _headers(
        self, ask: _Ask, resolved: paths.Resolved, content_type: str, etag: str, disposition: str | None
    ) -> None:
        self.send_header("Content-Type", content_type)
        if disposition is not None:
            self.send_header("Content-Disposition", disposition)
        self.send_header("Etag", etag)
        self.send_header("Cache-Control", IMMUTABLE)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Ipfs-Path", urlsplit(self.path).path)
        self.send_header("X-Ipfs-Roots", ",".join(cids.cid_to_str(cid) for cid in resolved.roots))
        self.send_header("Vary", "Accept")
        if ask.negotiated:  # the same answer under a URL of its own, for caches (path gateway spec)
            self.send_header("Content-Location", _location(urlsplit(self.path), ask))

    def _send_error(self, status: HTTPStatus, message: str, headers: dict[str, str]) -> None:
        data = (message + "\n").encode() if message else b""
        self.send_response(status)
        if data:
            self.send_header("Content-Type", "text/plain; charset=utf-8")
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


# --- what a request asks for -----------------------------------------------------------------


NOT_SERVED = {  # IPLD and archive types the path gateway defines and this one does not make
    "application/vnd.ipld.dag-json",
    "application/vnd.ipld.dag-cbor",
    "application/json",
    "application/cbor",
    "application/x-tar",
    "application/vnd.ipfs.ipns-record",
}


def _response_kind(format_: str | None, accept: str) -> tuple[str, bool, dict[str, str]]:
    """("raw", "car" or "content", whether Accept chose it, the CAR parameters Accept gave): the
    format parameter first (the Accept header's CAR parameters still count), then Accept."""
    offered = _accepted(accept)
    cars = (params for media, params in offered if media == CAR_TYPE and _acceptable_car(params))
    car_params = next(cars, {})
    if format_ is not None:
        if format_ not in ("raw", "car"):
            raise _BadRequest(HTTPStatus.BAD_REQUEST, f"format={format_} is not served (raw or car)")
        return format_, False, car_params
    if not offered:
        return "content", False, {}
    for media, params in offered:
        if media == RAW_TYPE:
            return "raw", True, {}
        if media == CAR_TYPE and _acceptable_car(params):
            return "car", True, params
        if media not in NOT_SERVED and media != CAR_TYPE:
            return "content", False, {}
    raise _BadRequest(
        HTTPStatus.NOT_ACCEPTABLE,
        f"none of the types asked for is served: {RAW_TYPE}, {CAR_TYPE} (version 1, order dfs,"
        " dups y or n) or a file's own bytes",
    )


def _accepted(accept: str) -> list[tuple[str, dict[str, str]]]:
    """The media types of an Accept header with their parameters, most wanted first (by q, then
    order); those with q=0 are left out."""
    ranked = []
    for index, item in enumerate(accept.split(",")):
        media, *rest = (part.strip() for part in item.split(";"))
        if not media:
            continue
        pairs = (part.partition("=") for part in rest)
        params = {key.strip().lower(): value.strip() for key, _, value in pairs}
        try:
            weight = float(params.pop("q", "1"))
        except ValueError:
            weight = 1.0
        if weight > 0:
            ranked.append((-weight, index, media.lower(), params))
    return [(media, params) for _, _, media, params in sorted(ranked, key=lambda item: item[:2])]


def _acceptable_car(params: dict[str, str]) -> bool:
    """Whether CAR parameters can be met: version 1, order dfs (or unk), dups y or n."""
    return (
        params.get("version", "1") == "1"
        and params.get("order", "dfs") in ("dfs", "unk")
        and params.get("dups", "n") in ("y", "n")
    )


def _car_options(ask: _Ask, params: dict[str, str]) -> None:
    """dag-scope, entity-bytes and the CAR's version, order and dups (query parameters first, then
    the Accept header's) into *ask*, or _BadRequest."""
    query = ask.query
    ask.scope = query.get("dag-scope", "all")
    if ask.scope not in SCOPES:
        raise _BadRequest(HTTPStatus.BAD_REQUEST, f"dag-scope must be one of {', '.join(SCOPES)}")
    if query.get("car-version", params.get("version", "1")) != "1":
        raise _BadRequest(HTTPStatus.BAD_REQUEST, "only car-version=1 is served")
    if query.get("car-order", params.get("order", "dfs")) not in ("dfs", "unk"):
        raise _BadRequest(HTTPStatus.BAD_REQUEST, "only car-order=dfs is served")
    dups = query.get("car-dups", params.get("dups", "n"))
    if dups not in ("y", "n"):
        raise _BadRequest(HTTPStatus.BAD_REQUEST, "car-dups must be y or n")
    ask.dups = dups == "y"
    text = query.get("entity-bytes")
    if text is not None:
        found = ENTITY_BYTES.fullmatch(text)
        if found is None:
            raise _BadRequest(HTTPStatus.BAD_REQUEST, "entity-bytes must be from:to (integers, or * for to)")
        first, last = int(found[1]), None if found[2] == "*" else int(found[2])
        if first >= 0 and last is not None and 0 <= last < first:
            raise _BadRequest(HTTPStatus.BAD_REQUEST, "entity-bytes ends before it starts")
        if "dag-scope" in query and ask.scope != "entity":
            raise _BadRequest(HTTPStatus.BAD_REQUEST, "entity-bytes goes with dag-scope=entity")
        ask.scope, ask.entity_bytes = "entity", (first, last)


def _entity_range(asked: tuple[int, int | None], size: int) -> tuple[int, int]:
    """``entity-bytes`` from:to (inclusive; negative counts from the end, None is the end) as
    ``[start, end)`` within *size*: clipped to the file, empty when nothing of it is left."""
    first, last = asked
    start = max(0, size + first) if first < 0 else first
    stop = size if last is None else (size + last + 1 if last < 0 else min(last + 1, size))
    return start, max(start, stop)


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """The first range of a ``Range: bytes=...`` header as ``[start, end)`` (*start* at or past
    *size* when it cannot be met); None when the header is not one: the whole is then sent
    (RFC 9110 14.2)."""
    unit, _, ranges = header.partition("=")
    found = BYTE_RANGE.fullmatch(ranges.split(",")[0].strip())
    if unit.strip().lower() != "bytes" or found is None or found[1] == found[2] == "":
        return None
    if found[1] == "":  # the last N bytes
        suffix = int(found[2])
        return (max(0, size - suffix), size) if suffix else (size, size)
    start = int(found[1])
    if found[2] != "" and int(found[2]) < start:
        return None
    return start, size if found[2] == "" else min(size, int(found[2]) + 1)


def _name(segment: str) -> str:
    """A path segment, percent-decoded; 400 for what can name no entry."""
    try:
        name = unquote(segment, errors="strict")
    except UnicodeDecodeError:
        raise _BadRequest(HTTPStatus.BAD_REQUEST, "a path segment is not UTF-8") from None
    if name in (".", "..") or "/" in name or "\0" in name:
        raise _BadRequest(HTTPStatus.BAD_REQUEST, f"{segment!r} names no entry (no ., .., / or NUL)")
    return name


def _car_etag(ask: _Ask) -> str:
    """A CAR's Etag: the root's CID and a digest of all that shapes the CAR (path, scope, byte
    range, dups; the order is always dfs), so two different CARs never share one."""
    asked = ask.entity_bytes
    shape = "\0".join(
        ("/".join(ask.names), ask.scope, "" if asked is None else f"{asked[0]}:{asked[1]}", str(ask.dups))
    )
    digest = hashlib.sha256(shape.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return f'"{cids.cid_to_str(ask.root)}.car.{digest}"'


def _location(parts: SplitResult, ask: _Ask) -> str:
    """The URL of this answer with the format Accept chose spelled out in the query."""
    extra = {"format": ask.kind}
    if ask.kind == "car" and ask.dups and "car-dups" not in ask.query:
        extra["car-dups"] = "y"
    query = "&".join(part for part in (parts.query, urlencode(extra)) if part)
    return f"{parts.path}?{query}"


def _disposition(kind: str, filename: str | None) -> str:
    """A Content-Disposition: ASCII in ``filename`` (others as ``_``), the exact name in
    ``filename*`` when they differ (RFC 8187)."""
    if filename is None:
        return kind
    ascii_name = "".join(char if " " <= char < "\x7f" and char not in '"\\' else "_" for char in filename)
    value = f'{kind}; filename="{ascii_name}"'
    if ascii_name != filename:
        value += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return value


def _content_type(name: str) -> str:
    """A file's type by its name: zarr metadata and JSON as JSON, text as text, else bytes."""
    if metadata.is_metadata_name(name) or name.endswith(".json"):
        return "application/json"
    if name.endswith((".txt", ".md")):
        return "text/plain; charset=utf-8"
    return "application/octet-stream"


def _corrupt(cid: bytes) -> str:
    return f"the stored block {cids.cid_to_str(cid)} is corrupt (its bytes do not hash to its CID)"


def _read_ahead(blocks: Iterator[tuple[bytes, bytes]], limit: int) -> list[tuple[bytes, bytes]]:
    """The first blocks of *blocks*, up to *limit* bytes: read (and so verified) before the
    answer's status goes out, so that a corrupt one among them can still be answered 500."""
    ahead: list[tuple[bytes, bytes]] = []
    size = 0
    for cid, data in blocks:  # breaking out leaves the generator open: the rest follows later
        ahead.append((cid, data))
        size += len(data)
        if size >= limit:
            break
    return ahead


def _declares_body(headers: Any) -> bool:
    length = headers.get("Content-Length", "0").strip()
    return length not in ("", "0") or "Transfer-Encoding" in headers


# --- the connection's bytes ----------------------------------------------------------------


def _coalesce(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """*chunks*, small neighbours joined up to SEND_CHUNK: headers and a short body go out in
    one send (two small sends in a row wait on the client's delayed ACK, 40 ms)."""
    gathered = bytearray()
    for chunk in chunks:
        if gathered and len(gathered) + len(chunk) > SEND_CHUNK:
            yield bytes(gathered)
            gathered.clear()
        if len(chunk) >= SEND_CHUNK:
            yield chunk
        else:
            gathered += chunk
    if gathered:
        yield bytes(gathered)


def _take_head(conn: _Connection) -> bytes | None:
    """The request line and headers at the start of *conn*'s buffer, taken out of it, or None
    while they are incomplete (blank lines before a request are dropped, as RFC 9112 allows)."""
    buffer = conn.buffer
    if buffer.startswith((b"\r", b"\n")):
        del buffer[: len(buffer) - len(buffer.lstrip(b"\r\n"))]
        conn.scanned = 0
    start = max(0, conn.scanned - 3)  # the end may straddle what was scanned and what is new
    ends = [found + len(mark) for mark in (b"\n\r\n", b"\n\n") if (found := buffer.find(mark, start)) >= 0]
    if not ends:
        conn.scanned = len(buffer)
        return None
    end = min(ends)
    head = bytes(buffer[:end])
    del buffer[:end]
    conn.scanned = 0
    return head


def _plain(status: HTTPStatus, text: str, headers: str = "") -> bytes:
    """A whole short answer that closes the connection, for the event loop to send as it is."""
    body = (text + "\n").encode()
    return (
        f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n{headers}Connection: close\r\n\r\n"
    ).encode() + body


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    """Best effort, never blocking: a client that does not take a short answer at once misses it.
    What it sent is read first: closing over unread bytes would reset, and lose, the answer."""
    with contextlib.suppress(OSError):
        sock.setblocking(False)
        _drain(sock)
        sock.send(data)


def _drain(sock: socket.socket) -> None:
    """Read and drop what a non-blocking socket holds (a bounded amount: the sender may not stop)."""
    with contextlib.suppress(OSError):  # BlockingIOError: nothing more
        for _ in range(16):
            if not sock.recv(65536):
                return


def _progress(conn: _Connection) -> str:
    if conn.buffer:
        return "before its request was complete"
    return f"after {conn.served} requests" if conn.served else "without sending a request"


def _why(exc: OSError) -> str:
    if isinstance(exc, ConnectionResetError):
        return "connection reset by the client"
    if isinstance(exc, BrokenPipeError):
        return "connection closed by the client (broken pipe)"
    if isinstance(exc, ConnectionAbortedError):
        return "connection aborted"
    return f"connection failed: {exc.strerror or exc}"


def _listen(address: tuple[str, int]) -> socket.socket:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.create_server(address, family=family, backlog=socket.SOMAXCONN)
    sock.setblocking(False)
    return sock


def _connection_cap(wanted: int) -> int:
    """*wanted*, lowered to what the descriptor limit leaves after FD_RESERVE: past that limit
    accept() fails (EMFILE) and the connection stays queued, answered by nobody."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max(1, wanted)
    return max(1, min(wanted, soft - FD_RESERVE))
