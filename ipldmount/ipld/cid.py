"""CIDs as plain bytes.

Building a ``multiformats.CID`` object costs tens of microseconds, which adds up
over directories of a million entries; so inside the project a CID is its binary
form (``bytes``) and only becomes text at the edges (CLI, logs, file names).
``multiformats`` still parses whatever a user types, so every textual form it
knows is accepted.
"""

from __future__ import annotations

import functools
import hashlib
import re

from multiformats import CID as _MultiformatsCID
from multiformats import multibase as _multibase

from ipldmount.errors import InvalidCIDError
from ipldmount.ipld.varint import decode_varint

RAW = 0x55
DAG_CBOR = 0x71
DAG_PB = 0x70  # UnixFS, what ``ipfs add`` makes: read, never written
SHA2_256 = 0x12
IDENTITY = 0x00  # a multihash that holds the bytes themselves: nothing to store or fetch
MAX_IDENTITY = 4096  # longest inline block accepted (Kubo makes them of at most 32 bytes)

_PREFIX = {codec: bytes([0x01, codec, SHA2_256, 0x20]) for codec in (RAW, DAG_CBOR, DAG_PB)}
_STORED_PREFIXES = frozenset(_PREFIX.values())
_CIDV0_PREFIX = bytes([SHA2_256, 0x20])  # a CIDv0 is a bare sha2-256 multihash, the codec dag-pb
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
    """True for the CIDs this project stores: v1, raw, dag-cbor or dag-pb, sha2-256."""
    return len(cid) == CID_LENGTH and cid[:4] in _STORED_PREFIXES


def may_link(cid: bytes) -> bool:
    """True when the block's codec can hold links (dag-cbor, dag-pb); a raw block never does."""
    return cid[1] in (DAG_CBOR, DAG_PB)


def normalize(cid: bytes) -> bytes:
    """A binary CID as this project keeps it: a CIDv0 becomes the CIDv1 (dag-pb) of the same
    block, which names the same bytes; anything else is returned as it is."""
    if len(cid) == 34 and cid[:2] == _CIDV0_PREFIX:
        return _PREFIX[DAG_PB] + cid[2:]
    return cid


def inline_data(cid: bytes) -> bytes | None:
    """The bytes an identity CID (v1, a one-byte codec, identity multihash) holds, else None."""
    if len(cid) < 4 or cid[0] != 1 or cid[1] not in (RAW, DAG_CBOR, DAG_PB) or cid[2] != IDENTITY:
        return None
    try:
        length, start = decode_varint(cid, 3)
    except ValueError:
        return None
    return cid[start:] if start + length == len(cid) and length <= MAX_IDENTITY else None


@functools.lru_cache(maxsize=4096)
def cid_to_str(cid: bytes) -> str:
    """Base32 multibase text (``bafy...``/``bafk...``), as IPFS prints CIDv1.

    RFC 4648 base32, lower case, unpadded: ten bits at a time through a table (a block's
    path in the store is made of it, for every block a listing or a read touches; the
    standard library's encoder loops in Python five bytes at a time). The last few thousand
    are kept: a block written is named when it is claimed and again when it is installed
    (4 us each time, 0.3 us from the cache).
    """
    padding = -len(cid) % 5
    number = int.from_bytes(cid + bytes(padding), "big")
    pairs = (len(cid) + padding) * 4 // 5  # two characters for every ten bits
    text = "".join([_BASE32_PAIRS[(number >> shift) & 1023] for shift in range(10 * pairs - 10, -10, -10)])
    return "b" + text[: (len(cid) * 8 + 4) // 5]


_BASE32 = "abcdefghijklmnopqrstuvwxyz234567"
_BASE32_PAIRS = [first + second for first in _BASE32 for second in _BASE32]
# Reading our own form is int() in base 32 (digits 0-9a-v) after a translation: three times as
# fast as base64.b32decode, for every block name a listing of the store (gc's sweep) parses.
_OUR_FORM = re.compile(f"b[{_BASE32}]{{58}}")
_BASE32_AS_DIGITS = str.maketrans(_BASE32, "0123456789abcdefghijklmnopqrstuv")


def verify(cid: bytes, data: bytes | memoryview) -> bool:
    """True when *data* hashes to *cid* (for an identity CID: is the bytes it holds)."""
    if is_supported(cid):
        return hashlib.sha256(data).digest() == cid[4:]
    inline = inline_data(cid)
    return inline is not None and inline == data


def parse_cid(text: str | bytes) -> bytes:
    """Parse a CID given by a user or a foreign block into its binary CIDv1 form.

    Raises :class:`InvalidCIDError` with a message that says what is wrong, for
    malformed input and for CIDs this project cannot read (another hash or codec). A CIDv0
    (``Qm...``) comes back as the CIDv1 of the same block; an identity CID as it is.
    """
    if isinstance(text, str) and _OUR_FORM.fullmatch(text):  # fast path: our own base32 form
        number = int(text[1:].translate(_BASE32_AS_DIGITS), 32)  # 58 digits: 288 bits and 2 zeros
        if not number & 3:
            raw = (number >> 2).to_bytes(36, "big")
            if is_supported(raw):
                return raw
    try:
        parsed = _MultiformatsCID.decode(text)
    except Exception as exc:  # multiformats raises a zoo of error types
        shown = text if isinstance(text, str) else text.hex()
        raise InvalidCIDError(f"not a valid CID: {shown!r} ({exc})") from None
    if parsed.codec.code not in (RAW, DAG_CBOR, DAG_PB):
        raise InvalidCIDError(
            f"unsupported codec {parsed.codec.name} in CID {parsed} (only raw, dag-cbor and dag-pb)"
        )
    if parsed.hashfun.name == "identity":
        binary = normalize(bytes(parsed.set(version=1)))
        if inline_data(binary) is None:
            raise InvalidCIDError(f"identity CID {parsed} holds more than {MAX_IDENTITY} bytes")
        return binary
    if parsed.hashfun.name != "sha2-256":
        raise InvalidCIDError(f"unsupported hash {parsed.hashfun.name} in CID {parsed} (only sha2-256)")
    return digest_cid(parsed.codec.code, bytes(parsed.raw_digest))


def _register_bases() -> None:
    """multiformats registers a multibase encoding the first time it decodes with it, and keeps
    the errors its checks raised on the way, with every frame then on the stack and what those
    frames hold (a store, a whole tree), until Python's cycle collector runs. Register them all
    now, at import, when nothing of ours is on the stack."""
    for encoding in _multibase.table():
        try:
            encoding.raw_decoder  # noqa: B018 - the property registers it
        except Exception:  # an encoding this build cannot use is never used
            continue


_register_bases()
