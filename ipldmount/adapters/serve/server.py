"""The gateway's server: one event loop for the connections, a fixed pool of threads to answer.

Apart from the handler so that what bounds a client (below) is read in one place, with no HTTP
semantics in the way. Hostile or broken clients cannot starve it. One thread
(:meth:`GatewayServer.serve_forever`) accepts connections and reads each request's head without
blocking; only a complete head is handed to one of a fixed pool of worker threads, so idle and
half-sent connections hold no thread. A worker sends an answer as far as the client takes it,
then leaves the rest to the loop until the socket is writable again, so a client that reads
slowly, or not at all, holds no thread either. A connection must start a request within
*idle_timeout*, and send the whole head within *request_timeout* of its first byte (a slowloris
sender is cut off then); a client that takes no byte of its answer for *send_timeout* is cut
off. At most *max_connections* are open (fewer when the file descriptor limit is lower): a new
one past the cap closes the connection that has waited longest for a request (else the answer
stalled longest), or, when every open one is being worked on, gets a fast 503. Each failure
(timeout, abort, reset, refusal) is one logged line, never a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import queue
import resource
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from ipldmount.adapters.serve.handler import CutShort, Handler
from ipldmount.adapters.serve.negotiation import coalesce
from ipldmount.blocks import Blockstore

log = logging.getLogger(__package__)  # the gateway's one logger, named for the package

MAX_CONNECTIONS = 512  # open connections, idle ones included (each costs a descriptor, no thread)
WORKERS = 16  # threads answering requests whose head has arrived (disk reads, sends that do not wait)
IDLE_TIMEOUT = 60.0  # seconds a connection may stay open without starting a request
REQUEST_TIMEOUT = 10.0  # seconds from a request's first byte to the end of its head
SEND_TIMEOUT = 30.0  # seconds a client may go without taking any byte of its answer
MAX_HEAD = 64 * 1024  # bytes of request line and headers; more is answered 431
FD_RESERVE = 64  # descriptors kept free of connections: block files, logs, the server's own
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
            handler = Handler(self.store, conn.address, head)
        except Exception:
            log.exception("%s: answering %r failed", conn.peer, head.split(b"\r\n", 1)[0][:200])
            self._release(conn)
            return None
        chunks = coalesce(itertools.chain((handler.written.getvalue(),), handler.body))
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
        except CutShort:
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
