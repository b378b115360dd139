"""DAG-CBOR encoding and decoding, fast enough for directories of a million names.

The reference ``dag-cbor`` package is correct but slow (a 10k-entry map takes
about a second to decode), so nodes go through ``cbor2``'s C codec instead.
``cbor2`` alone is not DAG-CBOR: its canonical mode shrinks floats, and it knows
nothing of links. :func:`encode` therefore validates and orders the value itself
(map keys by length, then bytes; floats always 64-bit; only tag 42) and hands
``cbor2`` a tree it encodes byte for byte as DAG-CBOR. The test suite checks the
output against ``dag_cbor.encode``.

Links are :class:`Link` objects that keep the binary CID as bytes, so no
``multiformats`` object is built for each entry.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Mapping
from typing import Any, TypeAlias

import cbor2

from ipldmount.errors import CorruptBlockError
from ipldmount.ipld import cid as cids

LINK_TAG = 42
_MAX_UINT64 = 2**64 - 1


class Link:
    """An IPLD link: a binary CID that DAG-CBOR encodes as tag 42."""

    __slots__ = ("cid",)

    def __init__(self, cid: bytes) -> None:
        self.cid = cid

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Link) and other.cid == self.cid

    def __hash__(self) -> int:
        return hash(self.cid)

    def __repr__(self) -> str:
        return f"Link({cids.cid_to_str(self.cid)})"


# A decoded IPLD value: None, bool, int, float, str, bytes, Link, list, dict.
Value: TypeAlias = Any


def _link_tag(link: Link) -> cbor2.CBORTag:
    return cbor2.CBORTag(LINK_TAG, b"\x00" + link.cid)


def _map_key_order(key: str) -> tuple[int, bytes]:
    raw = key.encode("utf-8")
    return (len(raw), raw)


def _prepare(value: Value) -> Value:
    """Return *value* with maps in DAG-CBOR key order and links as tag 42.

    Raises ValueError for anything DAG-CBOR cannot hold.
    """
    kind = type(value)
    if kind is str or kind is bytes or kind is bool or value is None:
        if kind is str:
            value.encode("utf-8")  # rejects lone surrogates now, not mid-encode
        return value
    if kind is int:
        if not -_MAX_UINT64 - 1 <= value <= _MAX_UINT64:
            raise ValueError(f"integer out of DAG-CBOR range: {value}")
        return value
    if kind is float:
        if not math.isfinite(value):
            raise ValueError(f"DAG-CBOR has no {value}")
        return value
    if kind is Link:
        return _link_tag(value)
    if kind is dict:
        for key in value:
            if type(key) is not str:
                raise ValueError(f"DAG-CBOR map keys must be strings, not {type(key).__name__}")
        return {key: _prepare(value[key]) for key in sorted(value, key=_map_key_order)}
    if kind is list or kind is tuple:
        return [_prepare(item) for item in value]
    raise ValueError(f"DAG-CBOR cannot hold a {kind.__name__}")


def encode(value: Value) -> bytes:
    """Encode *value* as DAG-CBOR (exactly the bytes ``dag_cbor.encode`` gives)."""
    return cbor2.dumps(_prepare(value))


def _decode_link(raw: object, *_: object) -> Link:
    """Tag 42's content as a Link (called by cbor2 with the decoded content: no CBORTag made)."""
    if type(raw) is not bytes or not raw.startswith(b"\x00"):
        raise ValueError("malformed link (tag 42 must wrap 0x00 + binary CID)")
    return Link(raw[1:])


def _reject_tag(*_: object) -> None:
    raise ValueError("only tag 42 is allowed in DAG-CBOR")


class _OnlyLinkTag(Mapping[int, Any]):
    """Semantic decoders that refuse every tag but 42, which becomes a Link.

    ``cbor2`` would decode some tags itself (datetimes, bignums, sets, shared values): it asks
    this mapping first for every tag, and no lookup fails, so no tag reaches anything else. A
    semantic decoder is called with the tag's decoded content: a link costs no CBORTag and no
    KeyError (a HAMT node holds dozens).
    """

    def __getitem__(self, tag: int) -> Any:
        return _decode_link if tag == LINK_TAG else _reject_tag

    def __iter__(self) -> Iterator[int]:
        return iter(())

    def __len__(self) -> int:
        return 0


_ONLY_LINK_TAG = _OnlyLinkTag()


_PLAIN = frozenset({str, bytes, int, bool, type(None), Link})
_STR = frozenset({str})


def _check_data_model(value: Value) -> None:
    """Raise ValueError for what DAG-CBOR's data model has no place for, whatever the encoding.

    A block holding a map key that is not a string, a NaN or an infinity, or
    ``undefined`` could never be written again: refusing it here makes it a
    malformed block when it is read, not a failure later when a commit re-encodes it.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            if not _STR.issuperset(map(type, item)):  # type() of each key, in C
                key = next(key for key in item if type(key) is not str)
                raise ValueError(f"map key {key!r} is not a string")
            if not _PLAIN.issuperset(map(type, item.values())):
                stack.extend([child for child in item.values() if type(child) not in _PLAIN])
        elif kind is list:
            if not _PLAIN.issuperset(map(type, item)):  # a HAMT bucket's pairs: all plain
                stack.extend([child for child in item if type(child) not in _PLAIN])
        elif kind is float:
            if not math.isfinite(item):
                raise ValueError(f"DAG-CBOR has no {item}")
        elif kind not in _PLAIN:
            raise ValueError(f"DAG-CBOR has no {item!r}")


def decode(data: bytes | memoryview) -> Value:
    """Decode a DAG-CBOR block. Links come back as :class:`Link`.

    Raises :class:`CorruptBlockError` when the bytes are not one CBOR item, use
    CBOR features DAG-CBOR forbids (other tags, indefinite lengths, duplicate
    keys), or hold what its data model cannot (non-string map keys, NaN,
    infinities, ``undefined`` and other simple values).
    """
    try:
        decoder = cbor2.CBORDecoder(
            io.BytesIO(data),
            semantic_decoders=_ONLY_LINK_TAG,
            read_size=max(len(data), 1),
            allow_indefinite=False,
            allow_duplicate_keys=False,
            strict_hashable_types=True,
        )
        value = decoder.decode()
        _check_data_model(value)
    except (cbor2.CBORDecodeError, ValueError, TypeError) as exc:
        raise CorruptBlockError(f"not a DAG-CBOR block: {exc}") from None
    try:
        decoder.read(1)
    except cbor2.CBORDecodeEOF:
        return value
    raise CorruptBlockError("not a DAG-CBOR block: bytes after the first item")


def depth(value: Value) -> int:
    """How deeply lists and maps nest in *value* (a scalar is 0), without recursion."""
    deepest = 0
    stack = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            stack.extend((child, level + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, level + 1) for child in item)
        else:
            deepest = max(deepest, level)
            continue
        deepest = max(deepest, level + 1)
    return deepest


def encoded_link_size(cid: bytes) -> int:
    """How many bytes a link takes inside a DAG-CBOR node."""
    return 2 + _head_size(len(cid) + 1) + len(cid) + 1


def encoded_str_size(text: str) -> int:
    size = len(text.encode("utf-8"))
    return _head_size(size) + size


def map_head_size(entries: int) -> int:
    return _head_size(entries)


def _head_size(argument: int) -> int:
    """Bytes a CBOR major-type head with this argument takes."""
    if argument < 24:
        return 1
    if argument < 0x100:
        return 2
    if argument < 0x10000:
        return 3
    if argument < 0x100000000:
        return 5
    return 9


# --- heads, for encoders of fixed shapes --------------------------------------------------------
# A shape known in advance (a HAMT node, written thousands of times by one commit) can be written
# from these pieces without the general walk; its tests compare it with encode() byte for byte.

ARRAY = 4  # CBOR major types
BYTES = 2


def head(major: int, argument: int) -> bytes:
    """The CBOR head of major type *major* with *argument* (a length), in its shortest form."""
    if argument < 24:
        return bytes((major << 5 | argument,))
    if argument < 0x100:
        return bytes((major << 5 | 24, argument))
    if argument < 0x10000:
        return bytes((major << 5 | 25,)) + argument.to_bytes(2, "big")
    if argument < 0x100000000:
        return bytes((major << 5 | 26,)) + argument.to_bytes(4, "big")
    return bytes((major << 5 | 27,)) + argument.to_bytes(8, "big")


_LINK_HEADS = {size: b"\xd8\x2a" + head(BYTES, size + 1) + b"\x00" for size in range(34, 40)}


def encoded_link(cid: bytes) -> bytes:
    """A link as DAG-CBOR: tag 42 around the bytes 0x00 + CID."""
    prefix = _LINK_HEADS.get(len(cid))
    if prefix is None:
        prefix = b"\xd8\x2a" + head(BYTES, len(cid) + 1) + b"\x00"
    return prefix + cid
