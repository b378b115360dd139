"""CIDs as plain bytes.

Building a ``multiformats.CID`` object costs tens of microseconds, which adds up
over directories of a million entries; so inside the project a CID is its binary
form (``bytes``) and only becomes text at the edges (CLI, logs, file names).
``multiformats`` still parses whatever a user types, so every textual form it
knows is accepted.
"""

from __future__ import annotations

import base64
import hashlib

from multiformats import CID as _MultiformatsCID

from ipldmount.errors import InvalidCIDError

RAW = 0x55
DAG_CBOR = 0x71
SHA2_256 = 0x12

_PREFIX = {RAW: bytes([0x01, RAW, SHA2_256, 0x20]), DAG_CBOR: bytes([0x01, DAG_CBOR, SHA2_256, 0x20])}
CID_LENGTH = 36  # version + codec + multihash header (2) + sha2-256 digest (32)


def digest_cid(codec: int, digest: bytes) -> bytes:
    """The binary CIDv1 of a sha2-256 *digest* under *codec*."""
    return _PREFIX[codec] + digest


def block_cid(codec: int, data: bytes | bytearray | memoryview) -> bytes:
    """The binary CIDv1 (sha2-256) of a block's bytes."""
    return _PREFIX[codec] + hashlib.sha256(data).digest()


def codec_of(cid: bytes) -> int:
    """The codec of a binary CID made by this project."""
    return cid[1]


def is_supported(cid: bytes) -> bool:
    """True for the CIDs this project stores: v1, raw or dag-cbor, sha2-256."""
    return len(cid) == CID_LENGTH and cid[:4] in (_PREFIX[RAW], _PREFIX[DAG_CBOR])


def cid_to_str(cid: bytes) -> str:
    """Base32 multibase text (``bafy...``/``bafk...``), as IPFS prints CIDv1.

    RFC 4648 base32, lower case, unpadded: ten bits at a time through a table (a block's
    path in the store is made of it, for every block a listing or a read touches; the
    standard library's encoder loops in Python five bytes at a time).
    """
    padding = -len(cid) % 5
    number = int.from_bytes(cid + bytes(padding), "big")
    pairs = (len(cid) + padding) * 4 // 5  # two characters for every ten bits
    text = "".join([_BASE32_PAIRS[(number >> shift) & 1023] for shift in range(10 * pairs - 10, -10, -10)])
    return "b" + text[: (len(cid) * 8 + 4) // 5]


_BASE32 = "abcdefghijklmnopqrstuvwxyz234567"
_BASE32_PAIRS = [first + second for first in _BASE32 for second in _BASE32]


def verify(cid: bytes, data: bytes | memoryview) -> bool:
    """True when *data* hashes to *cid*."""
    return is_supported(cid) and hashlib.sha256(data).digest() == cid[4:]


def parse_cid(text: str | bytes) -> bytes:
    """Parse a CID given by a user or a foreign block into its binary CIDv1 form.

    Raises :class:`InvalidCIDError` with a message that says what is wrong, for
    malformed input and for CIDs this project cannot store (another hash or codec).
    """
    if isinstance(text, str) and len(text) == 59 and text.startswith("b") and text.islower():
        try:  # fast path: our own base32 form
            raw = base64.b32decode(text[1:].upper() + "=" * 6)
        except ValueError:
            raw = b""
        if is_supported(raw):
            return raw
    try:
        parsed = _MultiformatsCID.decode(text)
    except Exception as exc:  # multiformats raises a zoo of error types
        shown = text if isinstance(text, str) else text.hex()
        raise InvalidCIDError(f"not a valid CID: {shown!r} ({exc})") from None
    if parsed.hashfun.name != "sha2-256":
        raise InvalidCIDError(f"unsupported hash {parsed.hashfun.name} in CID {parsed} (only sha2-256)")
    if parsed.codec.code not in (RAW, DAG_CBOR):
        raise InvalidCIDError(
            f"unsupported codec {parsed.codec.name} in CID {parsed} (only raw and dag-cbor)"
        )
    binary = digest_cid(parsed.codec.code, bytes(parsed.raw_digest))
    return binary
