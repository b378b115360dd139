"""``ipldmount serve``: a trustless HTTP gateway over a local blockstore (read-only).

What the trustless gateway specification asks of a server that holds blocks and does no
UnixFS deserialization: ``GET``/``HEAD /ipfs/{cid}`` answered with the raw block
(``application/vnd.ipld.raw``) or a CARv1 stream of the DAG under it
(``application/vnd.ipld.car; version=1; order=dfs; dups=n``, with ``dag-scope`` block, entity
or all), chosen by the ``format`` query parameter or else the ``Accept`` header; 404 when
the block is not here; the ``bafkqaaa`` probe. Any IPFS client that speaks trustless
gateways (another ipldmount, Helia, Kubo's HTTP retrieval) can read a store through it,
checking every block it gets. Paths below a CID are refused (400): the blocks here are
DAG-CBOR, whose pathing this gateway does not implement; ask for a file's own CID.

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
import io
import itertools
import logging
import queue
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
from urllib.parse import parse_qs, urlsplit

from ipldmount.blocks import Blockstore
from ipldmount.blocks.car import car_header, section_head
from ipldmount.blocks.dag import iter_closure
from ipldmount.errors import BlockNotFoundError, CorruptBlockError, InvalidCIDError
from ipldmount.ipld import cid as cids

log = logging.getLogger(__name__)

RAW_TYPE = "application/vnd.ipld.raw"
CAR_TYPE = "application/vnd.ipld.car"
CAR_RESPONSE_TYPE = f"{CAR_TYPE}; version=1; order=dfs; dups=n"
PROBE = "bafkqaaa"  # the empty identity CID: "are you a trustless gateway?"
PROBE_CID = bytes([0x01, 0x55, 0x00, 0x00])  # CIDv1, raw, identity multihash of zero bytes
IMMUTABLE = "public, max-age=29030400, immutable"
SCOPES = ("all", "entity", "block")

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
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ipldmount-gateway"

    def __init__(self, gateway: GatewayServer, conn: _Connection, head: bytes) -> None:
        """Work out the answer to the one request whose *head* the event loop has read: its
        status and headers into *written*, its body into *body*. No socket I/O here (the
        base class's ``__init__`` would read and write the socket, for as long as it takes)."""
        self.gateway = gateway
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
            cid, kind, scope = self._parse()
            if kind == "raw":
                self._send_raw(cid, body)
            else:
                self._send_car(cid, scope, body)
        except _BadRequest as refusal:
            self._send_error(refusal.status, str(refusal))

    # --- the request -----------------------------------------------------------------

    def _parse(self) -> tuple[bytes, str, str]:
        """(CID, "raw" or "car", dag-scope) of the request, or _BadRequest."""
        parts = urlsplit(self.path)
        segments = [segment for segment in parts.path.split("/") if segment]
        if len(segments) < 2 or segments[0] != "ipfs":
            raise _BadRequest(HTTPStatus.NOT_FOUND, "only /ipfs/{cid} is served here")
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        kind = self._response_kind(query.get("format"), self.headers.get("Accept", ""))
        if len(segments) > 2:
            raise _BadRequest(
                HTTPStatus.BAD_REQUEST, "paths below a CID are not served (DAG-CBOR pathing): ask for its CID"
            )
        scope = query.get("dag-scope", "all")
        if scope not in SCOPES:
            raise _BadRequest(HTTPStatus.BAD_REQUEST, f"dag-scope must be one of {', '.join(SCOPES)}")
        if query.get("car-version", "1") != "1":
            raise _BadRequest(HTTPStatus.BAD_REQUEST, "only car-version=1 is served")
        if segments[1] == PROBE:
            return PROBE_CID, kind, scope
        try:
            return cids.parse_cid(segments[1]), kind, scope
        except InvalidCIDError as exc:
            raise _BadRequest(HTTPStatus.BAD_REQUEST, str(exc)) from None

    @staticmethod
    def _response_kind(format_: str | None, accept: str) -> str:
        """ "raw" or "car": the format parameter first, then the first acceptable type in Accept."""
        if format_ is not None:
            if format_ in ("raw", "car"):
                return format_
            raise _BadRequest(HTTPStatus.BAD_REQUEST, f"format={format_} is not served (raw or car)")
        for item in accept.split(","):
            media, *params = (part.strip() for part in item.split(";"))
            if media == RAW_TYPE:
                return "raw"
            if media == CAR_TYPE and _acceptable_car(params):
                return "car"
        raise _BadRequest(
            HTTPStatus.BAD_REQUEST if not accept else HTTPStatus.NOT_ACCEPTABLE,
            f"a trustless gateway: ask for {RAW_TYPE} or {CAR_TYPE} (Accept or ?format=)",
        )

    # --- the answers -----------------------------------------------------------------

    def _send_raw(self, cid: bytes, body: bool) -> None:
        data = b"" if cid == PROBE_CID else self._block(cid)
        name = PROBE if cid == PROBE_CID else cids.cid_to_str(cid)
        self.send_response(HTTPStatus.OK)
        self._common_headers(RAW_TYPE, f"{name}.bin", f'"{name}.raw"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.body = (data,)

    def _send_car(self, root: bytes, scope: str, body: bool) -> None:
        name = PROBE if root == PROBE_CID else cids.cid_to_str(root)
        first = None if root == PROBE_CID else self._block(root)  # 404 before any byte is sent
        missing: list[bytes] = []
        blocks = self._car_blocks(root, first, scope, missing) if body and first is not None else iter(())
        ahead = _read_ahead(blocks, CAR_READ_AHEAD)
        if missing and self._stored(missing[0]):  # corrupt, and found before the status is sent
            shown = cids.cid_to_str(missing[0])
            log.error("CAR of %s: stored block %s is corrupt: answered 500", name, shown)
            raise _BadRequest(HTTPStatus.INTERNAL_SERVER_ERROR, _corrupt(missing[0]))
        self.send_response(HTTPStatus.OK)
        self._common_headers(CAR_RESPONSE_TYPE, f"{name}.car", f'"{name}.car.{scope}"')
        self.send_header("Connection", "close")  # the end of the stream is the end of the CAR
        self.end_headers()
        self.close_connection = True
        if body:  # the probe's CAR is its header alone: identity blocks are never sent
            self.body = self._car_bytes(root, name, itertools.chain(ahead, blocks), missing)

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
        self, root: bytes, first: bytes, scope: str, missing: list[bytes]
    ) -> Iterator[tuple[bytes, bytes]]:
        """The blocks of the CAR, depth first; one missing or corrupt (noted in *missing*) ends
        the stream there (the CAR is then incomplete, which the client detects, as the
        specification says)."""
        if scope != "all":  # entity = block for data that is not UnixFS
            yield root, first
            return
        for cid, data in iter_closure(self.gateway.store, root, missing):
            if missing:
                return
            yield cid, data

    def _stored(self, cid: bytes) -> bool:
        """Whether a block the walk could not read is here all the same: then it is corrupt."""
        try:
            return self.gateway.store.has(cid)
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
            return self.gateway.store.get(cid)
        except BlockNotFoundError:
            raise _BadRequest(HTTPStatus.NOT_FOUND, f"{cids.cid_to_str(cid)} is not in this store") from None
        except CorruptBlockError as exc:
            log.error("serving %s: %s", cids.cid_to_str(cid), exc)
            raise _BadRequest(HTTPStatus.INTERNAL_SERVER_ERROR, _corrupt(cid)) from None
        except OSError as exc:  # unreadable (permissions, I/O error): the server's fault, said so
            log.error("serving %s: the store could not be read: %s", cids.cid_to_str(cid), exc)
            raise _BadRequest(
                HTTPStatus.INTERNAL_SERVER_ERROR, "the stored block could not be read"
            ) from None

    def _common_headers(self, content_type: str, filename: str, etag: str) -> None:
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Disposition", f'attachment; filename="{filename}"')
        self.send_header("Etag", etag)
        self.send_header("Cache-Control", IMMUTABLE)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Vary", "Accept")

    def _send_error(self, status: HTTPStatus, message: str) -> None:
        data = (message + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def _acceptable_car(params: list[str]) -> bool:
    """Whether CAR parameters in Accept can be met: version 1, order dfs (or unk), any dups."""
    values = dict(param.partition("=")[::2] for param in params)
    return values.get("version", "1") == "1" and values.get("order", "dfs") in ("dfs", "unk")


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
