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
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ipldmount.blocks import Blockstore
from ipldmount.blocks.car import write_car
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


class GatewayServer(ThreadingHTTPServer):
    """The HTTP server: one thread per connection, every request read-only against *store*."""

    daemon_threads = True

    def __init__(self, store: Blockstore, address: tuple[str, int]) -> None:
        self.store = store
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host if isinstance(host, str) else host.decode()}:{port}"

    def start_in_thread(self) -> threading.Thread:
        """Serve from a daemon thread (for tests and embedding); :meth:`shutdown` stops it."""
        thread = threading.Thread(target=self.serve_forever, name="ipldmount-gateway", daemon=True)
        thread.start()
        return thread


class _BadRequest(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Handler(BaseHTTPRequestHandler):
    server: GatewayServer
    protocol_version = "HTTP/1.1"
    server_version = "ipldmount-gateway"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
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
            self.wfile.write(data)

    def _send_car(self, root: bytes, scope: str, body: bool) -> None:
        name = PROBE if root == PROBE_CID else cids.cid_to_str(root)
        first = None if root == PROBE_CID else self._block(root)  # 404 before any byte is sent
        self.send_response(HTTPStatus.OK)
        self._common_headers(CAR_RESPONSE_TYPE, f"{name}.car", f'"{name}.car.{scope}"')
        self.send_header("Connection", "close")  # the end of the stream is the end of the CAR
        self.end_headers()
        self.close_connection = True
        if body:  # the probe's CAR is its header alone: identity blocks are never sent
            write_car(self.wfile, [root], () if first is None else self._car_blocks(root, first, scope))

    def _car_blocks(self, root: bytes, first: bytes, scope: str) -> Iterator[tuple[bytes, bytes]]:
        """The blocks of the CAR, depth first; a missing one ends the stream (the CAR is then
        incomplete, which the client detects, as the specification says)."""
        if scope != "all":  # entity = block for data that is not UnixFS
            yield root, first
            return
        missing: list[bytes] = []
        for cid, data in iter_closure(self.server.store, root, missing):
            if missing:
                break
            yield cid, data
        if missing:
            shown = cids.cid_to_str(missing[0])
            log.warning("CAR of %s cut short: block %s is missing", cids.cid_to_str(root), shown)

    def _block(self, cid: bytes) -> bytes:
        try:
            return self.server.store.get(cid)
        except BlockNotFoundError:
            raise _BadRequest(HTTPStatus.NOT_FOUND, f"{cids.cid_to_str(cid)} is not in this store") from None
        except CorruptBlockError as exc:
            log.error("serving %s: %s", cids.cid_to_str(cid), exc)
            raise _BadRequest(HTTPStatus.INTERNAL_SERVER_ERROR, "the stored block is corrupt") from None

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
