"""The answer to one gateway request: the block, CAR, file bytes or listing it asks for.

:class:`Handler` works out a request's status, headers and body from the head the event loop
has read (``ipldmount.adapters.serve.server`` sends them); it reads the store, never the socket.
What the request means is decided by ``negotiation``.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
from collections.abc import Iterable, Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ipldmount.adapters.serve.negotiation import (
    CAR_TYPE,
    RAW_TYPE,
    Ask,
    BadRequest,
    byte_range,
    car_etag,
    car_options,
    content_disposition,
    content_location,
    content_type_for,
    declares_body,
    entity_range,
    read_ahead,
    response_kind,
    segment_name,
)
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
from ipldmount.format import paths
from ipldmount.format.files import BytesReader, FileReader
from ipldmount.format.paths import Kind
from ipldmount.ipld import cid as cids

log = logging.getLogger(__package__)  # the gateway's one logger, named for the package

IMMUTABLE = "public, max-age=29030400, immutable"
FILE_CHUNK = 1 << 20  # bytes of a file read (and sent) at a time
CAR_READ_AHEAD = 1 << 20  # bytes of a CAR read (and verified) before its 200 is sent


class CutShort(Exception):
    """An answer whose status is sent cannot be finished (a block unreadable midway): its
    connection is closed, which the client sees as a short body. Logged where it is raised."""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ipldmount-gateway"

    def __init__(self, store: Blockstore, address: tuple[str, int], head: bytes) -> None:
        """Work out the answer to the one request whose *head* the event loop has read (from a
        client at *address*): its status and headers into *written*, its body into *body*. No
        socket I/O here (the base class's ``__init__`` would read and write the socket, for as
        long as it takes)."""
        self.store = store
        self.client_address = address
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
        if declares_body(self.headers):
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
        except BadRequest as refusal:
            self._send_error(refusal.status, str(refusal), refusal.headers)

    # --- the request -----------------------------------------------------------------

    def _parse(self) -> Ask:
        """What the request asks for, or BadRequest. Empty path segments (``//``, a trailing
        ``/``) are skipped; the others are percent-decoded, and ``.`` and ``..`` refused."""
        parts = urlsplit(self.path)
        segments = [segment for segment in parts.path.split("/") if segment]
        if len(segments) < 2 or segments[0] != "ipfs":
            raise BadRequest(HTTPStatus.NOT_FOUND, "only /ipfs/{cid}[/{path}] is served here")
        query = {key: values[-1] for key, values in parse_qs(parts.query, keep_blank_values=True).items()}
        accept = self.headers.get("Accept", "")
        kind, negotiated, params = response_kind(query.get("format"), accept)
        try:
            root = cids.parse_cid(segments[1])
        except InvalidCIDError as exc:
            raise BadRequest(HTTPStatus.BAD_REQUEST, str(exc)) from None
        ask = Ask(root, [segment_name(segment) for segment in segments[2:]], kind, negotiated, query)
        if kind == "car":
            car_options(ask, params)
        return ask

    def _resolve(self, ask: Ask) -> paths.Resolved:
        with self._reading(cids.cid_to_str(ask.root)):
            try:
                return paths.resolve(self.store, ask.root, ask.names)
            except (NotFoundError, NotDirectoryError) as exc:
                message = f"no such path below {cids.cid_to_str(ask.root)}: {exc}"
                raise BadRequest(HTTPStatus.NOT_FOUND, message) from None

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
            raise BadRequest(HTTPStatus.NOT_FOUND, f"{what} cannot be read: {exc}") from None
        except CorruptBlockError as exc:
            log.error("serving %s: %s", what, exc)
            raise BadRequest(HTTPStatus.INTERNAL_SERVER_ERROR, f"a stored block is corrupt: {exc}") from None
        except OSError as exc:  # unreadable (permissions, I/O error): the server's fault, said so
            log.error("serving %s: the store could not be read: %s", what, exc)
            raise BadRequest(HTTPStatus.INTERNAL_SERVER_ERROR, "the store could not be read") from None

    def _unavailable(self, message: str) -> BadRequest:
        """Data not held here: 404, or 412 when the client asked for nothing but what is cached."""
        directives = {part.strip().lower() for part in self.headers.get("Cache-Control", "").split(",")}
        if "only-if-cached" in directives:
            return BadRequest(HTTPStatus.PRECONDITION_FAILED, "")
        return BadRequest(HTTPStatus.NOT_FOUND, message)

    # --- the answers -----------------------------------------------------------------

    def _send_raw(self, ask: Ask, resolved: paths.Resolved, body: bool) -> None:
        """The block the path ends at (for an inline entry, the block it sits in)."""
        cid = resolved.entity.block
        data = self._block(cid)
        name = cids.cid_to_str(cid)
        etag = f'"{name}.raw"'
        if self._not_modified(etag):
            return
        disposition = content_disposition("attachment", ask.query.get("filename", f"{name}.bin"))
        self._send_span(ask, resolved, BytesReader(data), RAW_TYPE, etag, disposition, body)

    def _send_file(self, ask: Ask, resolved: paths.Resolved, body: bool) -> None:
        """A file's bytes, whole or one range of them."""
        entity = resolved.entity
        if entity.kind is not Kind.FILE:
            message = "neither a file nor a directory: ask for ?format=raw or ?format=car"
            raise BadRequest(HTTPStatus.NOT_IMPLEMENTED, message)
        with self._reading(resolved.key):
            reader = entity.content(self.store).reader(self.store)
        etag = f'"{resolved.key}"'
        if self._not_modified(etag):
            return
        filename = ask.query.get("filename")
        kind = "attachment" if ask.query.get("download") == "true" else "inline"
        disposition = content_disposition(kind, filename) if filename or kind == "attachment" else None
        content_type = content_type_for(filename or entity.name)
        self._send_span(ask, resolved, reader, content_type, etag, disposition, body)

    def _send_span(
        self,
        ask: Ask,
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
        span = byte_range(header, size)
        if span is not None and span[0] >= size:
            headers = {"Content-Range": f"bytes */{size}"}
            raise BadRequest(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, "range past the end", headers)
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
                raise CutShort from None
            if not chunk:
                log.error("%s cut short at byte %d: its blocks hold less than it says", what, offset)
                raise CutShort
            offset += len(chunk)
            yield chunk

    def _send_listing(self, ask: Ask, resolved: paths.Resolved, body: bool) -> None:
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
                raise CutShort from None
        yield b"\n]}\n"

    def _send_car(self, ask: Ask, resolved: paths.Resolved, body: bool) -> None:
        entity = resolved.entity
        name = cids.cid_to_str(ask.root)
        self._block(entity.block)  # 404 before any byte is sent
        etag = car_etag(ask)
        if self._not_modified(etag):
            return
        span = self._entity_span(ask, resolved) if ask.entity_bytes is not None else None
        missing: list[bytes] = []
        blocks = self._car_blocks(ask, resolved, span, missing) if body else iter(())
        ahead = read_ahead(blocks, CAR_READ_AHEAD)
        if missing and self._stored(missing[0]):  # corrupt, and found before the status is sent
            shown = cids.cid_to_str(missing[0])
            log.error("CAR of %s: stored block %s is corrupt: answered 500", name, shown)
            raise BadRequest(HTTPStatus.INTERNAL_SERVER_ERROR, _corrupt(missing[0]))
        self.send_response(HTTPStatus.OK)
        content_type = f"{CAR_TYPE}; version=1; order=dfs; dups={'y' if ask.dups else 'n'}"
        disposition = content_disposition("attachment", ask.query.get("filename", f"{name}.car"))
        self._headers(ask, resolved, content_type, etag, disposition)
        self.send_header("Accept-Ranges", "none")
        self.send_header("Connection", "close")  # the end of the stream is the end of the CAR
        self.end_headers()
        self.close_connection = True
        if body:  # an identity CID's CAR is its header alone: identity blocks are never sent
            self.body = self._car_bytes(ask.root, name, itertools.chain(ahead, blocks), missing)

    def _entity_span(self, ask: Ask, resolved: paths.Resolved) -> tuple[int, int] | None:
        """The bytes ``entity-bytes`` asks for, as ``[start, end)`` of the file (None: not a file,
        whose entity is then sent whole); 400 for a range wholly past its end."""
        entity = resolved.entity
        if entity.kind is not Kind.FILE or ask.entity_bytes is None:
            return None
        with self._reading(resolved.key):
            size = entity.content(self.store).size_in(self.store)
        start, end = entity_range(ask.entity_bytes, size)
        if start >= size > 0 or (size == 0 and start > 0):
            message = f"entity-bytes starts past the end of the file ({size} bytes)"
            raise BadRequest(HTTPStatus.BAD_REQUEST, message)
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
        self, ask: Ask, resolved: paths.Resolved, span: tuple[int, int] | None, missing: list[bytes]
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
            raise BadRequest(HTTPStatus.INTERNAL_SERVER_ERROR, _corrupt(cid)) from None
        except OSError as exc:  # unreadable (permissions, I/O error): the server's fault, said so
            log.error("serving %s: the store could not be read: %s", cids.cid_to_str(cid), exc)
            raise BadRequest(HTTPStatus.INTERNAL_SERVER_ERROR, "the stored block could not be read") from None

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
        self, ask: Ask, resolved: paths.Resolved, content_type: str, etag: str, disposition: str | None
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
            self.send_header("Content-Location", content_location(urlsplit(self.path), ask))

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


def _corrupt(cid: bytes) -> str:
    return f"the stored block {cids.cid_to_str(cid)} is corrupt (its bytes do not hash to its CID)"
