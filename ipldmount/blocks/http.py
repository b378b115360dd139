"""HTTP for the remote transports (an IPFS node's RPC API, trustless gateways).

One :class:`Endpoint` per server: a thread-safe connection pool, a timeout on every
request (connecting, and each wait for bytes), and every failure raised as one
:class:`~ipldmount.errors.RemoteError` that names the server and what was asked,
never a library's exception or a hang.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

import urllib3

from ipldmount.errors import RemoteError, RemoteTimeoutError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0  # seconds to open a connection: a loopback or LAN node answers in milliseconds
READ_TIMEOUT = 30.0  # seconds without a byte from the server, per wait, unless the caller gives another
STREAM_PIECE = 1 << 20  # bytes per read of a streamed response

Params = Mapping[str, str] | Iterable[tuple[str, str]]


@dataclass(frozen=True)
class Timeouts:
    """How long to wait to connect, and for each read of a response."""

    connect: float = CONNECT_TIMEOUT
    read: float = READ_TIMEOUT

    def for_urllib3(self) -> urllib3.Timeout:
        return urllib3.Timeout(connect=self.connect, read=self.read)


def check_url(url: str, what: str) -> str:
    """*url* without a trailing slash, if it is an http(s) URL with a host; else RemoteError."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RemoteError(f"{what} {url!r} is not an http:// or https:// URL")
    return url.rstrip("/")


class Endpoint:
    """A server at *url*: requests with timeouts, failures as RemoteError."""

    def __init__(self, url: str, what: str, timeouts: Timeouts | None = None) -> None:
        self.url = check_url(url, what)
        self.what = what  # "IPFS node", "gateway": for messages
        self.timeouts = timeouts or Timeouts()
        self._pool = urllib3.PoolManager(
            num_pools=4, maxsize=16, retries=False, timeout=self.timeouts.for_urllib3()
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def close(self) -> None:
        self._pool.clear()

    def request(
        self,
        method: str,
        path: str,
        params: Params = (),
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | Iterable[bytes] | None = None,
        read_timeout: float | None = None,
        stream: bool = False,
    ) -> urllib3.BaseHTTPResponse:
        """Send one request; the response, whatever its status (the caller judges it).

        With *stream*, the body is left to read (:func:`read_pieces`) and the caller must
        release the response; otherwise it is read in full within the timeouts.
        """
        query = urlencode(list(params.items()) if isinstance(params, Mapping) else list(params))
        url = f"{self.url}{path}" + (f"?{query}" if query else "")
        timeout = urllib3.Timeout(connect=self.timeouts.connect, read=read_timeout or self.timeouts.read)
        chunked = body is not None and not isinstance(body, bytes)
        try:
            return self._pool.request(
                method,
                url,
                headers=dict(headers or {}),
                body=body,
                timeout=timeout,
                preload_content=not stream,
                chunked=chunked,
                redirect=False,
            )
        except urllib3.exceptions.HTTPError as exc:
            raise self.failure(f"{method} {path}", exc) from exc

    def failure(self, asked: str, exc: BaseException) -> RemoteError:
        """The RemoteError for a transport failure of *asked* (a timeout says so)."""
        reason = getattr(exc, "reason", None) or exc
        if isinstance(exc, urllib3.exceptions.TimeoutError) or isinstance(reason, TimeoutError):
            return RemoteTimeoutError(f"{self.what} {self.url}: {asked}: no answer in time ({reason})")
        return RemoteError(f"{self.what} {self.url}: {asked}: {reason}")

    def read_pieces(self, response: urllib3.BaseHTTPResponse, asked: str) -> Iterator[bytes]:
        """The body of a streamed *response*, piece by piece; released at the end or on error."""
        try:
            while True:
                try:
                    piece = response.read(STREAM_PIECE)
                except (urllib3.exceptions.HTTPError, OSError) as exc:
                    raise self.failure(asked, exc) from exc
                if not piece:
                    return
                yield piece
        finally:
            response.release_conn()


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
