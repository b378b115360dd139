"""Unsigned LEB128 varints: multiformats' (CIDs, CAR sections) and protobuf's (DAG-PB)."""

from __future__ import annotations

MULTIFORMATS_MAX_BYTES = 9  # the multiformats unsigned-varint spec's limit (63 bits)


class TruncatedVarint(ValueError):
    """The data ends inside a varint."""


def encode_varint(value: int, max_bytes: int = MULTIFORMATS_MAX_BYTES) -> bytes:
    """The unsigned LEB128 encoding of *value*."""
    if not 0 <= value < 1 << (7 * max_bytes):
        raise ValueError(f"varint out of range: {value}")
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(
    data: bytes | bytearray | memoryview,
    pos: int = 0,
    *,
    max_bytes: int = MULTIFORMATS_MAX_BYTES,
    minimal: bool = True,
) -> tuple[int, int]:
    """Decode the varint at *pos*; return ``(value, position after it)``.

    Raises TruncatedVarint when it runs past the data, ValueError when it is longer than
    *max_bytes* or (with *minimal*, as multiformats requires) not minimally encoded.
    """
    value = 0
    for index in range(max_bytes):
        if pos + index >= len(data):
            raise TruncatedVarint("truncated varint")
        byte = data[pos + index]
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            if minimal and byte == 0 and index > 0:
                raise ValueError("varint is not minimally encoded")
            return value, pos + index + 1
    raise ValueError(f"varint longer than {max_bytes} bytes")
