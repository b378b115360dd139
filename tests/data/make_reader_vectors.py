"""Write reader_vectors.json: what a reader does with blocks no writer makes (FORMAT.md 2.1, 3.5, 5, 6.4, 8).

Independent of ipldmount: blocks are encoded with cbor2 and hashlib, and every expected
outcome below is written from FORMAT.md's text, not from running ipldmount's reader.
Run it from anywhere: ``python tests/data/make_reader_vectors.py``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import cbor2

RAW, DAG_CBOR = 0x55, 0x71
OUT = Path(__file__).with_name("reader_vectors.json")


def cid(codec: int, data: bytes) -> bytes:
    return bytes([1, codec, 0x12, 0x20]) + hashlib.sha256(data).digest()


def text(binary: bytes) -> str:
    return "b" + base64.b32encode(binary).decode().lower().rstrip("=")


def link(binary: bytes) -> cbor2.CBORTag:
    return cbor2.CBORTag(42, b"\0" + binary)


class Blocks(dict[str, str]):
    """CID text -> block hex, as the vectors hold them."""

    def raw(self, data: bytes) -> bytes:
        binary = cid(RAW, data)
        self[text(binary)] = data.hex()
        return binary

    def cbor(self, value: Any, canonical: bool = True) -> bytes:
        data = cbor2.dumps(value, canonical=canonical)
        binary = cid(DAG_CBOR, data)
        self[text(binary)] = data.hex()
        return binary


def tree_vector(name: str, description: str, build: Any, expect: list[dict[str, Any]]) -> dict[str, Any]:
    blocks = Blocks()
    root = build(blocks)
    return {
        "name": name,
        "description": description,
        "blocks": dict(blocks),
        "root": text(root),
        "expect": expect,
    }


def fbl(blocks: Blocks, parts: list[tuple[int, bytes]]) -> bytes:
    return blocks.cbor([[length, link(part)] for length, part in parts])


def _excess(b: Blocks) -> bytes:
    inner = fbl(b, [(10, b.raw(b"a" * 10)), (10, b.raw(b"b" * 10))])  # holds 20 bytes
    top = fbl(b, [(15, inner), (5, b.raw(b"c" * 5))])  # says 15
    return b.cbor({"f": link(top)})


def _shortfall(b: Blocks) -> bytes:
    inner = fbl(b, [(10, b.raw(b"a" * 10))])  # holds 10 bytes
    top = fbl(b, [(15, inner), (5, b.raw(b"c" * 5))])  # says 15
    return b.cbor({"f": link(top), "ok": link(b.raw(b"fine"))})


def _longer_leaf(b: Blocks) -> bytes:
    top = fbl(b, [(5, b.raw(b"a" * 10)), (10, b.raw(b"b" * 10))])
    return b.cbor({"f": link(top)})


def _part_is_a_map(b: Blocks) -> bytes:
    top = fbl(b, [(10, b.raw(b"a" * 10)), (2, b.cbor({}))])
    return b.cbor({"f": link(top), "ok": link(b.raw(b"fine"))})


def _part_is_dag_pb(b: Blocks) -> bytes:
    cidv0 = bytes([0x12, 0x20]) + hashlib.sha256(b"a dag-pb node").digest()
    top = fbl(b, [(10, b.raw(b"a" * 10)), (2, cidv0)])
    return b.cbor({"f": link(top), "ok": link(b.raw(b"fine"))})


def slot(name: bytes) -> int:
    """A name's slot in a HAMT root: the first byte of its sha2-256 digest (FORMAT.md 6.4)."""
    return hashlib.sha256(name).digest()[0]


def bitmap(slots: list[int], order: str = "spec") -> bytes:
    """The spec's order: slot i is bit i % 8 of byte i // 8; the old one: a big-endian integer."""
    number = sum(1 << i for i in slots)
    return number.to_bytes(32, "little" if order == "spec" else "big")


def _hamt_duplicate(b: Blocks) -> bytes:
    value = link(b.raw(b"x"))
    buckets = [[[b"a", value], [b"a", value]]]  # the same name twice in its bucket
    hamt = b.cbor({"hamt": [bitmap([slot(b"a")]), buckets], "hashAlg": 18, "bucketSize": 3})
    return b.cbor({"d": link(hamt), "ok": link(b.raw(b"fine"))})


def _two_names(b: Blocks, slots: list[int], order: str) -> bytes:
    """A sharded directory of the files a and b, one bucket each, under a bitmap of *slots*."""
    buckets = sorted([(slot(b"a"), [[b"a", link(b.raw(b"A"))]]), (slot(b"b"), [[b"b", link(b.raw(b"B"))]])])
    hamt = b.cbor(
        {"hamt": [bitmap(slots, order), [bucket for _, bucket in buckets]], "hashAlg": 18, "bucketSize": 3}
    )
    return b.cbor({"d": link(hamt), "ok": link(b.raw(b"fine"))})


def _hamt_old_order(b: Blocks) -> bytes:
    assert bitmap([slot(b"a"), slot(b"b")], "old") != bitmap([slot(b"a"), slot(b"b")], "old")[::-1]
    return _two_names(b, [slot(b"a"), slot(b"b")], "old")


def _hamt_neither_order(b: Blocks) -> bytes:
    wrong = [(slot(b"a") + 1) % 256, (slot(b"b") + 1) % 256]  # fits neither order
    assert sorted(wrong) != sorted([slot(b"a"), slot(b"b")])
    return _two_names(b, wrong, "spec")


def _bytes_key(b: Blocks) -> bytes:
    return b.cbor({"d": link(b.cbor({b"k": {}})), "ok": link(b.raw(b"fine"))})


def _nan(b: Blocks) -> bytes:
    return b.cbor({"d": link(b.cbor({".zattrs": {"x": float("nan")}})), "ok": link(b.raw(b"fine"))})


def _invalid_name(b: Blocks) -> bytes:
    return b.cbor(
        {
            "d": link(b.cbor({"a/b": link(b.raw(b"?")), "ok": link(b.raw(b"kept"))})),
            "ok": link(b.raw(b"fine")),
        }
    )


def _unsorted(b: Blocks) -> bytes:
    # Keys in insertion order (not length-first): read as they are; CBOR order is not checked.
    inner = b.cbor({"zz": link(b.raw(b"2")), "a": link(b.raw(b"1"))}, canonical=False)
    return b.cbor({"d": link(inner)})


def ok(path: str, data: bytes) -> dict[str, Any]:
    return {"path": path, "hex": data.hex()}


def fails(path: str) -> dict[str, Any]:
    return {"path": path, "error": True}


TREES = [
    tree_vector(
        "fbl-nested-excess",
        "a nested node holds more bytes than its parent's entry says: "
        "the parent's length counts, the excess is not read",
        _excess,
        [ok("f", b"a" * 10 + b"b" * 5 + b"c" * 5)],
    ),
    tree_vector(
        "fbl-nested-shortfall",
        "a nested node holds fewer bytes than its parent's entry says: "
        "reading the file fails (its size is still 20); other entries are fine",
        _shortfall,
        [fails("f"), ok("ok", b"fine")],
    ),
    tree_vector(
        "fbl-leaf-longer",
        "a leaf longer than its entry says is read up to that length",
        _longer_leaf,
        [ok("f", b"a" * 5 + b"b" * 10)],
    ),
    tree_vector(
        "fbl-part-is-a-map",
        "a chunked-file entry links to a DAG-CBOR map: the file is malformed",
        _part_is_a_map,
        [fails("f"), ok("ok", b"fine")],
    ),
    tree_vector(
        "fbl-part-is-dag-pb",
        "a chunked-file entry links to a CIDv0 (dag-pb): the file is malformed",
        _part_is_dag_pb,
        [fails("f"), ok("ok", b"fine")],
    ),
    tree_vector(
        "hamt-duplicate-name",
        "a sharded directory holds one name twice: the whole directory is malformed; its parent is fine",
        _hamt_duplicate,
        [fails("d"), ok("ok", b"fine")],
    ),
    tree_vector(
        "hamt-old-order",
        "a sharded directory whose bitmap is in the pre-spec order (a big-endian integer): "
        "its buckets tell, and it is listed and read",
        _hamt_old_order,
        [ok("d", b""), ok("d/a", b"A"), ok("d/b", b"B"), ok("ok", b"fine")],
    ),
    tree_vector(
        "hamt-neither-order",
        "a sharded directory whose buckets fit neither bitmap order: malformed; its parent is fine",
        _hamt_neither_order,
        [fails("d"), fails("d/a"), ok("ok", b"fine")],
    ),
    tree_vector(
        "plain-bytes-key",
        "a directory block with a byte-string map key is not DAG-CBOR: malformed",
        _bytes_key,
        [fails("d"), ok("ok", b"fine")],
    ),
    tree_vector(
        "nan-in-metadata",
        "a directory block holding NaN (inline metadata) is not DAG-CBOR: malformed",
        _nan,
        [fails("d"), ok("ok", b"fine")],
    ),
    tree_vector(
        "invalid-name",
        "a directory holding the name 'a/b' is malformed as a whole, 'ok' in it included",
        _invalid_name,
        [fails("d"), fails("d/ok"), ok("ok", b"fine")],
    ),
    tree_vector(
        "unsorted-keys",
        "map keys out of DAG-CBOR order are read (canonical form is not checked)",
        _unsorted,
        [ok("d/a", b"1"), ok("d/zz", b"2")],
    ),
]

SEED_ROOT = "bafyreidn66mk3fktszrfwayonvpq6y3agtnb5e5o22ivof5tgikbxt7k6u"
_SEED = base64.b32decode(SEED_ROOT[1:].upper() + "=" * 6)


def _base58(data: bytes) -> str:
    alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
    number, out = int.from_bytes(data, "big"), ""
    while number:
        number, digit = divmod(number, 58)
        out = alphabet[digit] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


CID_TEXTS = [
    {"text": SEED_ROOT, "cid": SEED_ROOT},
    {"text": "B" + SEED_ROOT[1:].upper(), "cid": SEED_ROOT},
    {"text": "z" + _base58(_SEED), "cid": SEED_ROOT},
    {"text": "f" + _SEED.hex(), "cid": SEED_ROOT},
    {"text": "F" + _SEED.hex().upper(), "cid": SEED_ROOT},
    {"text": "m" + base64.b64encode(_SEED).decode().rstrip("="), "cid": SEED_ROOT},
    {"text": "u" + base64.urlsafe_b64encode(_SEED).decode().rstrip("="), "cid": SEED_ROOT},
    # UnixFS's CIDs (FORMAT.md 12): a CIDv0 reads as the CIDv1 dag-pb of its digest; identity as is
    {
        "text": "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG",
        "cid": "bafybeie5nqv6kd3qnfjupgvz34woh3oksc3iau6abmyajn7qvtf6d2ho34",
    },
    {"text": "bafkqablimvwgy3y", "cid": "bafkqablimvwgy3y"},
    {
        "text": "baguqeeraaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "cid": None,
        "why": "codec dag-json",
    },
    {"text": " " + SEED_ROOT, "cid": None, "why": "no multibase prefix is a space"},
    {"text": SEED_ROOT[:-1], "cid": None, "why": "truncated"},
    {
        "text": "b" + base64.b32encode(bytes([1, 0x71, 0x1E, 0x20]) + bytes(32)).decode().lower().rstrip("="),
        "cid": None,
        "why": "blake3, not sha2-256",
    },
]


def car(roots: list[bytes], blocks: list[tuple[bytes, bytes]]) -> str:
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)

    header = cbor2.dumps({"roots": [link(r) for r in roots], "version": 1}, canonical=True)
    body = b"".join(varint(len(c) + len(d)) + c + d for c, d in blocks)
    return (varint(len(header)) + header + body).hex()


def _cars() -> list[dict[str, Any]]:
    one, two = cbor2.dumps({}, canonical=True), cbor2.dumps({"x": {}}, canonical=True)
    first, second = cid(DAG_CBOR, one), cid(DAG_CBOR, two)
    cidv0 = bytes([0x12, 0x20]) + hashlib.sha256(b"pb").digest()
    return [
        {
            "name": "two-roots",
            "hex": car([first, second], [(first, one), (second, two)]),
            "roots": [text(first), text(second)],
            "description": "both roots are imported and returned, in header order",
        },
        {
            "name": "cidv0-section",
            "hex": car([first], [(first, one), (cidv0, b"pb")]),
            "error": True,
            "description": "a section with a CIDv0 whose block is not DAG-PB: the whole CAR is refused",
        },
        {
            "name": "cidv0-root",
            "hex": car([cidv0], [(first, one)]),
            "error": True,
            "description": "a CIDv0 root (read as CIDv1 dag-pb) in neither the CAR nor the store: refused",
        },
    ]


def main() -> None:
    vectors = {"trees": TREES, "cid_texts": CID_TEXTS, "cars": _cars()}
    OUT.write_text(json.dumps(vectors, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
