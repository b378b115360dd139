"""What a gateway request asks for, and how the answer is framed: pure functions, no I/O.

The response's kind from ``format`` and ``Accept``, a CAR's options, ``entity-bytes`` and
``Range`` as byte spans, path segments as names, Etags, ``Content-Location``,
``Content-Disposition`` and content types. Kept apart from the handler and the event loop so
that each rule can be tested on its own, from a string to a value (or a :class:`BadRequest`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import SplitResult, quote, unquote, urlencode

from ipldmount.format import metadata
from ipldmount.ipld import cid as cids

RAW_TYPE = "application/vnd.ipld.raw"
CAR_TYPE = "application/vnd.ipld.car"
SCOPES = ("all", "entity", "block")
ENTITY_BYTES = re.compile(r"(-?[0-9]+):(\*|-?[0-9]+)")
BYTE_RANGE = re.compile(r"([0-9]*)-([0-9]*)")
SEND_CHUNK = 64 * 1024  # smaller writes are gathered into one send


class BadRequest(Exception):
    """A request answered with an error status: *message* is the plain-text body."""

    def __init__(self, status: HTTPStatus, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


@dataclass
class Ask:
    """One request, parsed: what it names, and in which form it wants it."""

    root: bytes
    names: list[str]  # the path below the root, percent-decoded
    kind: str  # "raw", "car", or "content" (a file's bytes, a directory's listing)
    negotiated: bool  # raw or car chosen by Accept, not by ?format=
    query: dict[str, str]
    scope: str = "all"
    entity_bytes: tuple[int, int | None] | None = None  # from, to (None: "*"), as asked
    dups: bool = False


# --- what a request asks for -----------------------------------------------------------------


NOT_SERVED = {  # IPLD and archive types the path gateway defines and this one does not make
    "application/vnd.ipld.dag-json",
    "application/vnd.ipld.dag-cbor",
    "application/json",
    "application/cbor",
    "application/x-tar",
    "application/vnd.ipfs.ipns-record",
}


def response_kind(format_: str | None, accept: str) -> tuple[str, bool, dict[str, str]]:
    """("raw", "car" or "content", whether Accept chose it, the CAR parameters Accept gave): the
    format parameter first (the Accept header's CAR parameters still count), then Accept."""
    offered = _accepted(accept)
    cars = (params for media, params in offered if media == CAR_TYPE and _acceptable_car(params))
    car_params = next(cars, {})
    if format_ is not None:
        if format_ not in ("raw", "car"):
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"format={format_} is not served (raw or car)")
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
    raise BadRequest(
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


def car_options(ask: Ask, params: dict[str, str]) -> None:
    """dag-scope, entity-bytes and the CAR's version, order and dups (query parameters first, then
    the Accept header's) into *ask*, or BadRequest."""
    query = ask.query
    ask.scope = query.get("dag-scope", "all")
    if ask.scope not in SCOPES:
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"dag-scope must be one of {', '.join(SCOPES)}")
    if query.get("car-version", params.get("version", "1")) != "1":
        raise BadRequest(HTTPStatus.BAD_REQUEST, "only car-version=1 is served")
    if query.get("car-order", params.get("order", "dfs")) not in ("dfs", "unk"):
        raise BadRequest(HTTPStatus.BAD_REQUEST, "only car-order=dfs is served")
    dups = query.get("car-dups", params.get("dups", "n"))
    if dups not in ("y", "n"):
        raise BadRequest(HTTPStatus.BAD_REQUEST, "car-dups must be y or n")
    ask.dups = dups == "y"
    text = query.get("entity-bytes")
    if text is not None:
        found = ENTITY_BYTES.fullmatch(text)
        if found is None:
            raise BadRequest(HTTPStatus.BAD_REQUEST, "entity-bytes must be from:to (integers, or * for to)")
        first, last = int(found[1]), None if found[2] == "*" else int(found[2])
        if first >= 0 and last is not None and 0 <= last < first:
            raise BadRequest(HTTPStatus.BAD_REQUEST, "entity-bytes ends before it starts")
        if "dag-scope" in query and ask.scope != "entity":
            raise BadRequest(HTTPStatus.BAD_REQUEST, "entity-bytes goes with dag-scope=entity")
        ask.scope, ask.entity_bytes = "entity", (first, last)


def entity_range(asked: tuple[int, int | None], size: int) -> tuple[int, int]:
    """``entity-bytes`` from:to (inclusive; negative counts from the end, None is the end) as
    ``[start, end)`` within *size*: clipped to the file, empty when nothing of it is left."""
    first, last = asked
    start = max(0, size + first) if first < 0 else first
    stop = size if last is None else (size + last + 1 if last < 0 else min(last + 1, size))
    return start, max(start, stop)


def byte_range(header: str, size: int) -> tuple[int, int] | None:
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


def segment_name(segment: str) -> str:
    """A path segment, percent-decoded; 400 for what can name no entry."""
    try:
        name = unquote(segment, errors="strict")
    except UnicodeDecodeError:
        raise BadRequest(HTTPStatus.BAD_REQUEST, "a path segment is not UTF-8") from None
    if name in (".", "..") or "/" in name or "\0" in name:
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"{segment!r} names no entry (no ., .., / or NUL)")
    return name


def car_etag(ask: Ask) -> str:
    """A CAR's Etag: the root's CID and a digest of all that shapes the CAR (path, scope, byte
    range, dups; the order is always dfs), so two different CARs never share one."""
    asked = ask.entity_bytes
    shape = "\0".join(
        ("/".join(ask.names), ask.scope, "" if asked is None else f"{asked[0]}:{asked[1]}", str(ask.dups))
    )
    digest = hashlib.sha256(shape.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return f'"{cids.cid_to_str(ask.root)}.car.{digest}"'


def content_location(parts: SplitResult, ask: Ask) -> str:
    """The URL of this answer with the format Accept chose spelled out in the query."""
    extra = {"format": ask.kind}
    if ask.kind == "car" and ask.dups and "car-dups" not in ask.query:
        extra["car-dups"] = "y"
    query = "&".join(part for part in (parts.query, urlencode(extra)) if part)
    return f"{parts.path}?{query}"


def content_disposition(kind: str, filename: str | None) -> str:
    """A Content-Disposition: ASCII in ``filename`` (others as ``_``), the exact name in
    ``filename*`` when they differ (RFC 8187)."""
    if filename is None:
        return kind
    ascii_name = "".join(char if " " <= char < "\x7f" and char not in '"\\' else "_" for char in filename)
    value = f'{kind}; filename="{ascii_name}"'
    if ascii_name != filename:
        value += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return value


def content_type_for(name: str) -> str:
    """A file's type by its name: zarr metadata and JSON as JSON, text as text, else bytes."""
    if metadata.is_metadata_name(name) or name.endswith(".json"):
        return "application/json"
    if name.endswith((".txt", ".md")):
        return "text/plain; charset=utf-8"
    return "application/octet-stream"


def read_ahead(blocks: Iterator[tuple[bytes, bytes]], limit: int) -> list[tuple[bytes, bytes]]:
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


def declares_body(headers: Any) -> bool:
    length = headers.get("Content-Length", "0").strip()
    return length not in ("", "0") or "Transfer-Encoding" in headers


# --- the connection's bytes ----------------------------------------------------------------


def coalesce(chunks: Iterable[bytes]) -> Iterator[bytes]:
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
