"""HTTP for the remote transports (an IPFS node's RPC API, trustless gateways).

One :class:`Endpoint` per server: a thread-safe connection pool, and every failure raised
as one :class:`~ipldmount.errors.RemoteError` that names the server and what was asked,
never a library's exception or a hang. Nothing a server sends is let grow without bound:

* every request has a :class:`Deadline`, enforced by a watchdog thread that cuts its
  connection (socket timeouts measure only silence: a trickle of a byte a second is never
  silent). Answers of bounded size get a fixed total (``IPLDMOUNT_TIMEOUT``, 30 s);
  big transfers (CAR streams) that total plus the time their bytes take at MIN_RATE;
* bodies are read as they come, and refused as soon as they pass the caller's limit
  (:meth:`Reply.body`); an error's body is read only up to ERROR_LIMIT.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import urlencode, urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection

from ipldmount.errors import IpldmountError, RemoteError, RemoteTimeoutError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0  # seconds to open a connection: a loopback or LAN node answers in milliseconds
READ_TIMEOUT = 30.0  # seconds without a byte from the server, per wait, unless the caller gives another
TIMEOUT = 30.0  # seconds a request may take in all (a big transfer: to begin with)
TIMEOUT_VARIABLE = "IPLDMOUNT_TIMEOUT"  # overrides TIMEOUT (seconds)
MIN_RATE = 16 << 10  # bytes per second a big transfer must average once its first TIMEOUT is spent
STREAM_PIECE = 1 << 20  # bytes per read of a streamed response, at most
ERROR_LIMIT = 16 << 10  # bytes of an error answer read for its message; the rest is dropped

Params = Mapping[str, str] | Iterable[tuple[str, str]]


def total_timeout(environ: Mapping[str, str] | None = None) -> float:
    """Seconds a request may take in all: ``$IPLDMOUNT_TIMEOUT``, else TIMEOUT."""
    text = (os.environ if environ is None else environ).get(TIMEOUT_VARIABLE, "").strip()
    if not text:
        return TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise IpldmountError(f"{TIMEOUT_VARIABLE}={text!r}: not a number of seconds above 0")
    return seconds


@dataclass(frozen=True)
class Timeouts:
    """How long to wait to connect, for each read (silence), and for a whole request."""

    connect: float = CONNECT_TIMEOUT
    read: float = READ_TIMEOUT
    total: float = field(default_factory=total_timeout)
    min_rate: float = MIN_RATE


class Deadline:
    """When a request must be over: *seconds* from now, and with *min_rate* (big transfers) as much
    longer as the bytes moved so far take at that rate, so a healthy stream of any length goes on
    and a trickle is cut. Past it, the watchdog cuts the request's connection."""

    def __init__(self, seconds: float, min_rate: float | None = None) -> None:
        self.seconds = seconds
        self.min_rate = min_rate
        self.started = time.monotonic()
        self.at = self.started + seconds
        self.moved_bytes = 0
        self.expired = False
        self.uploaded = False  # what is left is the answer
        self.connection: HTTPConnection | None = None  # set once the request is being sent

    def moved(self, nbytes: int) -> None:
        """*nbytes* more went either way: a rated deadline moves on."""
        self.moved_bytes += nbytes
        if self.min_rate:
            self.at += nbytes / self.min_rate

    def sent(self) -> None:
        """The upload is over: the answer is due within the first *seconds* again (a node stores
        what it is sent as it reads it, so its answer does not wait on the upload's size)."""
        self.at = time.monotonic() + self.seconds
        self.uploaded = True

    def why(self) -> str:
        """What the request failed to do in time, for the message."""
        if self.uploaded:
            return f"no complete answer within {self.seconds:g} s of the upload's end"
        if not self.min_rate:
            return f"no complete answer within {self.seconds:g} s"
        took = time.monotonic() - self.started
        return (
            f"slower than {self.min_rate / 1024:g} KiB/s after its first {self.seconds:g} s "
            f"({self.moved_bytes:,} bytes in {took:.0f} s)"
        )

    def cut(self) -> None:
        """Time is up: mark it, and shut the connection's socket so any read or write ends now."""
        self.expired = True
        sock = getattr(self.connection, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):  # socket.socket's own: a TLS one would unwrap under a reader
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Watchdog:
    """One thread that cuts every request whose deadline has passed (a timer thread per request
    would cost a thread per block fetched). It runs while requests are watched and ends when none
    is (after a short idle wait, so a burst of requests does not start a thread each)."""

    IDLE = 5.0  # seconds with nothing to watch before the thread ends

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)  # a child has no thread, and maybe a held lock

    def reset(self) -> None:
        self._changed = threading.Condition()
        self._watched: set[Deadline] = set()
        self._pid = 0  # the process whose thread runs: a forked child starts its own

    def watch(self, deadline: Deadline) -> None:
        with self._changed:
            self._watched.add(deadline)
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="ipldmount-http-deadlines", daemon=True).start()
            self._changed.notify()

    def forget(self, deadline: Deadline) -> None:
        """Stop watching; once this returns, *deadline* is either cut already or never will be."""
        with self._changed:
            self._watched.discard(deadline)

    def _run(self) -> None:
        with self._changed:
            while True:
                now = time.monotonic()
                for deadline in [deadline for deadline in self._watched if deadline.at <= now]:
                    self._watched.discard(deadline)
                    deadline.cut()
                soonest = min((deadline.at for deadline in self._watched), default=None)
                if soonest is None and not self._changed.wait(self.IDLE) and not self._watched:
                    self._pid = 0  # the next watch starts a thread again
                    return
                if soonest is not None:
                    self._changed.wait(soonest - now)


_WATCHDOG = _Watchdog()
_SENDING: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar("ipldmount_http", default=None)


def _attach(connection: HTTPConnection) -> None:
    """The connection a request is sent on is the one its deadline cuts."""
    deadline = _SENDING.get()
    if deadline is not None:
        deadline.connection = connection
        if deadline.expired:
            raise TimeoutError("the request's time was up before it was sent")


class _WatchedConnection(HTTPConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        _attach(self)
        super().request(*args, **kwargs)


class _WatchedTLSConnection(HTTPSConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        _attach(self)
        super().request(*args, **kwargs)


class _Pool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedConnection


class _TLSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedTLSConnection


def check_url(url: str, what: str) -> str:
    """*url* without a trailing slash, if it is an http(s) URL with a host; else RemoteError."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RemoteError(f"{what} {url!r} is not an http:// or https:// URL")
    return url.rstrip("/")


class Endpoint:
    """A server at *url*: requests within deadlines, failures as RemoteError."""

    def __init__(self, url: str, what: str, timeouts: Timeouts | None = None) -> None:
        self.url = check_url(url, what)
        self.what = what  # "IPFS node", "gateway": for messages
        self.timeouts = timeouts or Timeouts()
        self._pool = urllib3.PoolManager(num_pools=4, maxsize=16, retries=False)
        self._pool.pool_classes_by_scheme = {"http": _Pool, "https": _TLSPool}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def close(self) -> None:
        self._pool.clear()

    def deadline(self, seconds: float | None = None, *, rated: bool = False) -> Deadline:
        """A deadline of *seconds* (default: the total timeout); *rated*: for a big transfer."""
        return Deadline(
            self.timeouts.total if seconds is None else seconds, self.timeouts.min_rate if rated else None
        )

    def request(
        self,
        method: str,
        path: str,
        params: Params = (),
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | Iterable[bytes] | None = None,
        read_timeout: float | None = None,
        deadline: Deadline | None = None,
        asked: str | None = None,
    ) -> Reply:
        """Send one request; its :class:`Reply`, whatever the status (the caller judges it and
        closes it). *deadline* defaults to the total timeout; *read_timeout* is the longest
        silence between bytes; *asked* names the request in messages."""
        deadline = deadline or self.deadline()
        query = urlencode(list(params.items()) if isinstance(params, Mapping) else list(params))
        url = f"{self.url}{path}" + (f"?{query}" if query else "")
        asked = asked or f"{method} {path}"
        silence = read_timeout or self.timeouts.read
        if not deadline.min_rate:  # a rated deadline's first seconds are not all it allows
            silence = min(silence, deadline.seconds)
        timeout = urllib3.Timeout(connect=min(self.timeouts.connect, deadline.seconds), read=silence)
        if body is not None and not isinstance(body, bytes):
            body = _counted(body, deadline)
        _WATCHDOG.watch(deadline)
        sending = _SENDING.set(deadline)
        try:
            response = self._pool.request(
                method,
                url,
                headers=dict(headers or {}),
                body=body,
                timeout=timeout,
                preload_content=False,
                chunked=body is not None and not isinstance(body, bytes),
                redirect=False,
            )
        except BaseException as exc:  # also what an upload's own pieces raise
            _WATCHDOG.forget(deadline)
            if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
                raise self.failure(asked, exc, deadline) from exc
            raise
        finally:
            _SENDING.reset(sending)
        return Reply(self, response, deadline, asked)

    def failure(self, asked: str, exc: BaseException, deadline: Deadline | None = None) -> RemoteError:
        """The RemoteError for a transport failure of *asked* (a timeout says so)."""
        if deadline is not None and deadline.expired:
            return RemoteTimeoutError(f"{self.what} {self.url}: {asked}: {deadline.why()}")
        reason = getattr(exc, "reason", None) or exc
        if isinstance(exc, urllib3.exceptions.TimeoutError) or isinstance(reason, TimeoutError):
            return RemoteTimeoutError(f"{self.what} {self.url}: {asked}: no answer in time ({reason})")
        return RemoteError(f"{self.what} {self.url}: {asked}: {_described(reason)}")


def _described(reason: object) -> str:
    """A transport failure in words: urllib3's ``('Connection aborted.', RemoteDisconnected(...))``
    as ``connection aborted: Remote end closed connection without response``."""
    args: tuple[object, ...] = getattr(reason, "args", ())
    if isinstance(reason, urllib3.exceptions.ProtocolError) and len(args) == 2 and isinstance(args[0], str):
        return f"{args[0].rstrip('.').lower()}: {args[1]}"
    return str(reason)


def _counted(pieces: Iterable[bytes], deadline: Deadline) -> Iterator[bytes]:
    """An upload's pieces, each moving its (rated) deadline on; at its end, the answer's is set."""
    for piece in pieces:
        deadline.moved(len(piece))
        yield piece
    deadline.sent()


class Reply:
    """A response, its body read as it comes within the request's deadline; close it (or use
    ``with``): a body not read to its end costs the connection, never a wait for the rest."""

    def __init__(
        self, endpoint: Endpoint, response: urllib3.BaseHTTPResponse, deadline: Deadline, asked: str
    ):
        self.endpoint, self.response, self.deadline, self.asked = endpoint, response, deadline, asked
        self._ended = False  # the body was read to its end

    @property
    def status(self) -> int:
        return self.response.status

    @property
    def reason(self) -> str:
        return self.response.reason or ""

    def header(self, name: str) -> str:
        return str(self.response.headers.get(name, ""))

    def __enter__(self) -> Reply:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        _WATCHDOG.forget(self.deadline)
        if not self._ended or self.deadline.expired:
            self.response.close()  # the rest of the body is never read: the connection goes
        self.response.release_conn()

    def pieces(self) -> Iterator[bytes]:
        """The body, piece by piece as it arrives; closed at its end or on error."""
        try:
            while True:
                try:
                    piece = self.response.read1(STREAM_PIECE)
                except (urllib3.exceptions.HTTPError, OSError) as exc:
                    raise self.endpoint.failure(self.asked, exc, self.deadline) from exc
                if self.deadline.expired:
                    raise self.endpoint.failure(self.asked, TimeoutError(), self.deadline)
                if not piece:
                    self._ended = True
                    return
                self.deadline.moved(len(piece))
                yield piece
        finally:
            self.close()

    def body(self, limit: int, what: str = "answer") -> bytes:
        """The whole body, if it is at most *limit* bytes: RemoteError as soon as it is more (a
        stated length over it is refused before a byte is read)."""
        stated = self.header("Content-Length")
        if stated.isdigit() and int(stated) > limit:
            self.close()
            raise self._too_long(what, limit, f"{int(stated):,} bytes stated")
        parts, total = [], 0
        for piece in self.pieces():
            total += len(piece)
            if total > limit:
                self.close()
                raise self._too_long(what, limit, "more sent")
            parts.append(piece)
        return b"".join(parts)

    def start(self, limit: int = ERROR_LIMIT) -> bytes:
        """At most the first *limit* bytes of the body (an error's message), the rest dropped;
        what arrived before a transport failure."""
        parts, total = [], 0
        try:
            for piece in self.pieces():
                parts.append(piece[: limit - total])
                total += len(parts[-1])
                if total >= limit:
                    break
        except RemoteError:
            pass
        finally:
            self.close()
        return b"".join(parts)

    def _too_long(self, what: str, limit: int, seen: str) -> RemoteError:
        return RemoteError(
            f"{self.endpoint.what} {self.endpoint.url}: {self.asked}: {what} over {limit:,} bytes "
            f"({seen}): refused"
        )


def multipart_file(name: str, pieces: Iterable[bytes]) -> tuple[str, Iterator[bytes]]:
    """A multipart/form-data body holding one file part, streamed: (content type, body pieces).

    The IPFS RPC API takes uploads (``block/put``, ``dag/import``) only in this form.
    """
    boundary = secrets.token_hex(16)

    def body() -> Iterator[bytes]:
        yield (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        yield from pieces
        yield f"\r\n--{boundary}--\r\n".encode()

    return f"multipart/form-data; boundary={boundary}", body()
