"""DAG-PB (the codec of UnixFS, what ``ipfs add`` makes) and the UnixFS ``Data`` message, decoded.

Read-only, and strict where the DAG-PB specification is: a ``PBNode`` is ``Links`` (field 2,
repeated) and ``Data`` (field 1), each a contiguous group in either order; a ``PBLink`` is
``Hash`` (1, required), ``Name`` (2), ``Tsize`` (3), in that order; no other fields, no wrong
wire types, nothing past the end. A block that breaks a rule raises CorruptBlockError saying
which. The UnixFS message inside ``Data`` is decoded by :func:`unixfs_data` (its fields may
come in any order, as protobuf allows; unknown ones are refused).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from ipldmount.errors import CorruptBlockError
from ipldmount.ipld.cid import normalize
from ipldmount.ipld.varint import decode_varint

_MAX_VARINT_BYTES = 10  # a protobuf uint64
_VARINT, _LENGTH = 0, 2  # the two wire types DAG-PB and UnixFS use


@dataclass(frozen=True, slots=True)
class PBLink:
    cid: bytes  # binary CIDv1 (a CIDv0 in the block, a bare sha2-256 multihash, comes back as v1)
    name: str | None
    tsize: int | None


@dataclass(frozen=True, slots=True)
class PBNode:
    links: tuple[PBLink, ...]
    data: bytes | None


class UnixFSType(IntEnum):
    RAW = 0
    DIRECTORY = 1
    FILE = 2
    METADATA = 3
    SYMLINK = 4
    HAMT_SHARD = 5


@dataclass(frozen=True, slots=True)
class UnixFSData:
    type: UnixFSType
    data: bytes | None = None
    filesize: int | None = None
    blocksizes: tuple[int, ...] = ()
    hash_type: int | None = None
    fanout: int | None = None
    mode: int | None = None
    mtime: tuple[int, int | None] | None = None  # seconds, nanoseconds


def decode(block: bytes) -> PBNode:
    """The PBNode in *block*; CorruptBlockError if it is not strict DAG-PB."""
    links: list[PBLink] = []
    data: bytes | None = None
    seen: list[int] = []  # field numbers in the order their groups began
    pos = 0
    while pos < len(block):
        field, wire, pos = _key(block, pos)
        if wire != _LENGTH or field not in (1, 2):
            raise _bad(f"PBNode has field {field} (wire type {wire}); only Links (2) and Data (1)")
        value, pos = _bytes(block, pos)
        if not seen or seen[-1] != field:
            if field in seen:
                raise _bad("PBNode's Links and Data are interleaved")
            seen.append(field)
        if field == 1:
            if data is not None:
                raise _bad("PBNode holds Data twice")
            data = value
        else:
            links.append(_link(value))
    return PBNode(tuple(links), data)


def _link(raw: bytes) -> PBLink:
    cid: bytes | None = None
    name: str | None = None
    tsize: int | None = None
    last = 0
    pos = 0
    while pos < len(raw):
        field, wire, pos = _key(raw, pos)
        if field <= last or field > 3:
            raise _bad(f"PBLink field {field} out of order or unknown (Hash 1, Name 2, Tsize 3)")
        last = field
        if field == 3:
            if wire != _VARINT:
                raise _bad("PBLink Tsize is not a varint")
            tsize, pos = _varint(raw, pos)
            continue
        if wire != _LENGTH:
            raise _bad(f"PBLink field {field} is not length-delimited")
        value, pos = _bytes(raw, pos)
        if field == 1:
            cid = normalize(check_cid(value))
        else:
            try:
                name = value.decode("utf-8")
            except UnicodeDecodeError:
                raise _bad("PBLink Name is not UTF-8") from None
    if cid is None:
        raise _bad("PBLink has no Hash")
    return PBLink(cid, name, tsize)


def unixfs_data(data: bytes | None) -> UnixFSData:
    """The UnixFS message in a PBNode's Data; CorruptBlockError if it is missing or malformed."""
    if data is None:
        raise _bad("a UnixFS node without Data")
    fields: dict[int, object] = {}
    blocksizes: list[int] = []
    pos = 0
    while pos < len(data):
        field, wire, pos = _key(data, pos)
        value: object
        if field in (1, 3, 5, 6, 7) and wire == _VARINT:
            value, pos = _varint(data, pos)
        elif field == 4 and wire == _VARINT:
            size, pos = _varint(data, pos)
            blocksizes.append(size)
            continue
        elif field == 4 and wire == _LENGTH:  # packed blocksizes
            packed, pos = _bytes(data, pos)
            blocksizes.extend(_packed(packed))
            continue
        elif field in (2, 8) and wire == _LENGTH:
            value, pos = _bytes(data, pos)
        else:
            raise _bad(f"UnixFS Data has field {field} with wire type {wire}")
        fields[field] = value
    kind = fields.get(1)
    if not isinstance(kind, int) or kind not in UnixFSType._value2member_map_:
        raise _bad(f"UnixFS Data has no known Type ({kind!r})")
    return UnixFSData(
        UnixFSType(kind),
        _optional_bytes(fields.get(2)),
        _optional_int(fields.get(3)),
        tuple(blocksizes),
        _optional_int(fields.get(5)),
        _optional_int(fields.get(6)),
        _optional_int(fields.get(7)),
        _mtime(fields.get(8)),
    )


def check_cid(raw: bytes) -> bytes:
    """*raw* if it is a well-formed binary CID (v0, or v1 of any codec and hash), else refused."""
    if len(raw) == 34 and raw[:2] == b"\x12\x20":
        return raw  # CIDv0: a sha2-256 multihash, the codec implied (dag-pb)
    try:
        version, pos = _varint(raw, 0)
        _, pos = _varint(raw, pos)  # codec
        _, pos = _varint(raw, pos)  # multihash function
        length, pos = _varint(raw, pos)
    except CorruptBlockError:
        raise _bad(f"link to a malformed CID ({raw[:8].hex()}...)") from None
    if version != 1 or pos + length != len(raw):
        raise _bad(f"link to a malformed CID (version {version}, {len(raw)} bytes)")
    return raw


def _key(data: bytes, pos: int) -> tuple[int, int, int]:
    key, pos = _varint(data, pos)
    return key >> 3, key & 7, pos


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    try:
        return decode_varint(data, pos, max_bytes=_MAX_VARINT_BYTES, minimal=False)
    except ValueError as exc:
        raise _bad(str(exc)) from None


def _bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    length, pos = _varint(data, pos)
    end = pos + length
    if end > len(data):
        raise _bad(f"a field of {length} bytes runs past the end of its message")
    return bytes(data[pos:end]), end


def _packed(data: bytes) -> list[int]:
    values, pos = [], 0
    while pos < len(data):
        value, pos = _varint(data, pos)
        values.append(value)
    return values


def _mtime(raw: object) -> tuple[int, int | None] | None:
    """UnixTime {Seconds int64 = 1, FractionalNanoseconds fixed32 = 2}."""
    if raw is None:
        return None
    assert isinstance(raw, bytes)
    seconds: int | None = None
    nanos: int | None = None
    pos = 0
    while pos < len(raw):
        field, wire, pos = _key(raw, pos)
        if field == 1 and wire == _VARINT:
            value, pos = _varint(raw, pos)
            seconds = value - (1 << 64) if value >= 1 << 63 else value  # int64, two's complement
        elif field == 2 and wire == 5 and pos + 4 <= len(raw):  # fixed32
            nanos, pos = int.from_bytes(raw[pos : pos + 4], "little"), pos + 4
        else:
            raise _bad(f"UnixFS mtime has field {field} with wire type {wire}")
    if seconds is None:
        raise _bad("UnixFS mtime without seconds")
    return seconds, nanos


def _optional_int(value: object) -> int | None:
    return value if isinstance(value, int) else None


def _optional_bytes(value: object) -> bytes | None:
    return value if isinstance(value, bytes) else None


def _bad(message: str) -> CorruptBlockError:
    return CorruptBlockError(f"not DAG-PB/UnixFS: {message}")
