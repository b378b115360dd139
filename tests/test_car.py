"""CARv1: the seed vector, round trips, and every way a bad archive must be refused."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipldmount.blocks import Blockstore, DirectoryBlockstore, MemoryBlockstore
from ipldmount.blocks.car import (
    export_car,
    import_car,
    read_car,
    write_car,
)
from ipldmount.blocks.dag import block_links, iter_closure
from ipldmount.errors import BlockNotFoundError, CarError
from ipldmount.ipld import codec
from ipldmount.ipld.cid import DAG_CBOR, RAW, block_cid, cid_to_str, parse_cid
from ipldmount.ipld.codec import Link
from ipldmount.ipld.varint import decode_varint, encode_varint

SEED_CAR = Path(__file__).parent / "data/seed_example/seed_example.car"
SEED_ROOT = parse_cid("bafyreidn66mk3fktszrfwayonvpq6y3agtnb5e5o22ivof5tgikbxt7k6u")
SEED_CHUNK = parse_cid("bafkreihc4ibtvz7btvualgou5mfbgwncwshmlovmoudgyml7x6crlhcu54")


@pytest.fixture(scope="module")
def seed() -> bytes:
    data = SEED_CAR.read_bytes()
    assert len(data) == 356
    return data


def nothing_imported(store: Blockstore) -> bool:
    temps = list((store.root / "tmp").iterdir()) if isinstance(store, DirectoryBlockstore) else []
    return list(store) == [] and temps == []


def car_of(header: Any, sections: Sequence[bytes] = ()) -> bytes:
    """A CAR from a header value (or raw header bytes) and raw section bodies (cid + data)."""
    raw = header if isinstance(header, bytes) else codec.encode(header)
    out = encode_varint(len(raw)) + raw
    for body in sections:
        out += encode_varint(len(body)) + body
    return out


def raw_section(data: bytes) -> tuple[bytes, bytes]:
    cid = block_cid(RAW, data)
    return cid, cid + data


def put_node(store: Blockstore, value: Any) -> bytes:
    return store.put(codec.encode(value), DAG_CBOR)


# --- the seed vector ------------------------------------------------------------------


def test_seed_car_reads(seed: bytes) -> None:
    roots, blocks = read_car(io.BytesIO(seed))
    assert roots == [SEED_ROOT]
    listed = list(blocks)
    assert [cid for cid, _ in listed] == [SEED_ROOT, SEED_CHUNK]
    assert listed[1][1] == b"".join(n.to_bytes(8, "little") for n in (1, 2, 3))
    assert block_links(SEED_ROOT, listed[0][1]) == [SEED_CHUNK]


def test_seed_car_imports_and_exports_byte_identical(store: Blockstore, seed: bytes) -> None:
    progress: list[tuple[int, int]] = []
    assert import_car(store, io.BytesIO(seed), progress=lambda *p: progress.append(p)) == [SEED_ROOT]
    assert set(store) == {SEED_ROOT, SEED_CHUNK}
    assert progress == [(1, 295), (2, 356)]
    out = io.BytesIO()
    exported: list[tuple[int, int]] = []
    assert export_car(store, SEED_ROOT, out, progress=lambda *p: exported.append(p)) == 356
    assert out.getvalue() == seed
    assert exported == [(1, 295), (2, 356)]


def test_seed_car_reads_from_a_trickling_stream(seed: bytes) -> None:
    class Trickle(io.RawIOBase):
        """Returns at most 3 bytes a read, like a slow pipe."""

        def __init__(self, data: bytes) -> None:
            self.data, self.pos = data, 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            part = self.data[self.pos : self.pos + min(3, len(buffer))]
            buffer[: len(part)] = part
            self.pos += len(part)
            return len(part)

    roots, blocks = read_car(Trickle(seed))  # type: ignore[arg-type]
    assert roots == [SEED_ROOT]
    assert [cid for cid, _ in blocks] == [SEED_ROOT, SEED_CHUNK]


def test_importing_twice_is_harmless(store: Blockstore, seed: bytes) -> None:
    import_car(store, io.BytesIO(seed))
    import_car(store, io.BytesIO(seed))
    assert len(store) == 2


# --- closures and round trips ------------------------------------------------------------


def build_dag(store: Blockstore) -> tuple[bytes, list[bytes]]:
    """A DAG with shared children; returns the root and the expected depth-first order."""
    a, b, c = (store.put(data, RAW) for data in (b"leaf a", b"leaf b", b"leaf c"))
    n1 = put_node(store, {"x": Link(a), "y": [Link(b), Link(a)], "n": 7})
    n3 = put_node(store, {"deep": {"er": [[Link(c)]]}})
    n2 = put_node(store, {"z": Link(b), "w": Link(n3), "bytes": b"\x00"})
    # DAG-CBOR orders keys by length then bytes: "left", "again", "right".
    root = put_node(store, {"left": Link(n1), "right": Link(n2), "again": Link(n1), "s": "text"})
    return root, [root, n1, a, b, n2, n3, c]


def reference_closure(store: Blockstore, root: bytes) -> list[bytes]:
    """Recursive depth-first order, the obvious way (fine for small DAGs)."""
    order: list[bytes] = []

    def visit(cid: bytes) -> None:
        if cid in order:
            return
        order.append(cid)
        for link in block_links(cid, store.get(cid)):
            visit(link)

    visit(root)
    return order


def test_closure_order(store: Blockstore) -> None:
    root, expected = build_dag(store)
    order = [cid for cid, _ in iter_closure(store, root)]
    assert order == expected == reference_closure(store, root)
    store.put(b"unreachable", RAW)
    assert [cid for cid, _ in iter_closure(store, root)] == expected


def test_export_import_export_round_trip(store: Blockstore, tmp_path: Path) -> None:
    root, expected = build_dag(store)
    first = io.BytesIO()
    size = export_car(store, root, first)
    assert size == len(first.getvalue())

    roots, blocks = read_car(io.BytesIO(first.getvalue()))
    assert roots == [root]
    assert [cid for cid, _ in blocks] == expected  # each block exactly once

    copy = DirectoryBlockstore(tmp_path / "copy")
    assert import_car(copy, io.BytesIO(first.getvalue())) == [root]
    assert set(copy) == set(expected)
    second = io.BytesIO()
    export_car(copy, root, second)
    assert second.getvalue() == first.getvalue()


def test_closure_of_a_deep_chain() -> None:
    store = MemoryBlockstore()
    node = store.put(b"bottom", RAW)
    for depth in range(5000):
        node = put_node(store, {"next": Link(node), "depth": depth})
    assert sum(1 for _ in iter_closure(store, node)) == 5001


def test_closure_of_a_wide_node() -> None:
    store = MemoryBlockstore()
    leaves = [store.put(str(i).encode(), RAW) for i in range(3000)]
    root = put_node(store, {"all": [Link(leaf) for leaf in leaves]})
    assert [cid for cid, _ in iter_closure(store, root)] == [root, *leaves]


def test_links_inside_deeply_nested_values() -> None:
    leaf = block_cid(RAW, b"x")
    value: Any = Link(leaf)
    for _ in range(200):
        value = [value, {"k": Link(leaf)}]
    cid = block_cid(DAG_CBOR, codec.encode(value))
    links = block_links(cid, codec.encode(value))
    assert links == [leaf] * 201


def test_closure_with_a_missing_block(store: Blockstore) -> None:
    missing = block_cid(RAW, b"absent")
    root = put_node(store, {"gone": Link(missing)})
    with pytest.raises(BlockNotFoundError, match=cid_to_str(missing)):
        list(iter_closure(store, root))
    with pytest.raises(BlockNotFoundError):
        export_car(store, root, io.BytesIO())


def test_write_car_needs_a_root() -> None:
    with pytest.raises(ValueError):
        write_car(io.BytesIO(), [], [])


def test_several_roots(store: Blockstore) -> None:
    a_cid, a_body = raw_section(b"a")
    b_cid, b_body = raw_section(b"b")
    data = car_of({"version": 1, "roots": [Link(a_cid), Link(b_cid)]}, [a_body, b_body])
    assert import_car(store, io.BytesIO(data)) == [a_cid, b_cid]


def test_a_root_already_in_the_store_need_not_be_in_the_car(store: Blockstore) -> None:
    root = store.put(b"already here", RAW)
    _, body = raw_section(b"something else")
    assert import_car(store, io.BytesIO(car_of({"version": 1, "roots": [Link(root)]}, [body]))) == [root]


def test_links_into_the_store_complete_a_partial_car(store: Blockstore) -> None:
    old = store.put(b"old leaf", RAW)
    node = codec.encode({"old": Link(old)})
    cid = block_cid(DAG_CBOR, node)
    assert import_car(store, io.BytesIO(car_of({"version": 1, "roots": [Link(cid)]}, [cid + node]))) == [cid]


def test_children_may_come_before_parents(store: Blockstore) -> None:
    leaf_cid, leaf_body = raw_section(b"leaf")
    node = codec.encode([Link(leaf_cid)])
    cid = block_cid(DAG_CBOR, node)
    data = car_of({"version": 1, "roots": [Link(cid)]}, [leaf_body, cid + node])
    import_car(store, io.BytesIO(data))
    assert set(store) == {cid, leaf_cid}


# --- rejections: CarError, and nothing imported ------------------------------------------


def assert_refused(store: Blockstore, data: bytes, match: str | None = None) -> CarError:
    with pytest.raises(CarError, match=match) as caught:
        import_car(store, io.BytesIO(data))
    assert nothing_imported(store)
    return caught.value


def test_every_truncation_of_the_seed_is_refused(store: Blockstore, seed: bytes) -> None:
    for cut in range(len(seed)):
        assert_refused(store, seed[:cut])


def test_truncation_messages_say_where(store: Blockstore, seed: bytes) -> None:
    assert_refused(store, b"", "empty")
    assert_refused(store, seed[:30], "truncated CAR header at byte 1")
    assert_refused(store, seed[:59], "root")
    assert_refused(store, seed[:60], "truncated section length varint at byte 59")
    assert_refused(store, seed[:100], "truncated section at byte 59")
    assert_refused(store, seed[:295], "incomplete DAG.*" + cid_to_str(SEED_CHUNK))
    assert_refused(store, seed[:300], "truncated section at byte 295")


def test_every_flipped_block_byte_is_refused(store: Blockstore, seed: bytes) -> None:
    for position in range(59, len(seed)):
        damaged = bytearray(seed)
        damaged[position] ^= 0x01
        assert_refused(store, bytes(damaged))


def test_a_flipped_data_byte_names_the_block(store: Blockstore, seed: bytes) -> None:
    damaged = bytearray(seed)
    damaged[-1] ^= 0xFF
    assert_refused(store, bytes(damaged), f"block {cid_to_str(SEED_CHUNK)} .*byte 295.*does not hash")


def test_trailing_garbage_is_refused(store: Blockstore, seed: bytes) -> None:
    assert_refused(store, seed + b"\x00", "byte 356.*smaller than its CID")
    assert_refused(store, seed + b"\x05abcde", "byte 356")
    assert_refused(store, seed + b"\xff", "truncated section length varint at byte 356")
    assert_refused(store, seed + seed[:1], "truncated section at byte 356")


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"\xff\x00\x01", "not DAG-CBOR"),
        (b'{"roots": [], "version": 1}', "not DAG-CBOR"),
        (b"\xd8\x2b\x00", "not DAG-CBOR"),  # a tag other than 42
        ([1], "not a map"),
        ({"roots": [Link(SEED_ROOT)], "version": 2}, "CARv2"),
        ({"version": 2}, "CARv2"),
        ({"roots": [Link(SEED_ROOT)]}, "version None"),
        ({"roots": [Link(SEED_ROOT)], "version": "1"}, "version '1'"),
        ({"roots": [Link(SEED_ROOT)], "version": True}, "version True"),
        ({"version": 1}, "roots"),
        ({"roots": [], "version": 1}, "roots"),
        ({"roots": Link(SEED_ROOT), "version": 1}, "roots"),
        ({"roots": [SEED_ROOT], "version": 1}, "links"),
    ],
)
def test_bad_headers_are_refused(store: Blockstore, seed: bytes, header: Any, message: str) -> None:
    body = seed[59:]  # the seed's sections, after a replaced header
    assert_refused(store, car_of(header) + body, message)


def test_a_huge_header_length_is_refused(store: Blockstore) -> None:
    assert_refused(store, encode_varint(2 << 20) + b"\xa0", "header length")
    assert_refused(store, b"\x00", "header length 0")


@pytest.mark.parametrize(
    "varint",
    [
        b"\xff" * 10,  # longer than 9 bytes
        b"\xff" * 9 + b"\x01",
        b"\x80\x00",  # not minimal
    ],
)
def test_bad_length_varints_are_refused(store: Blockstore, seed: bytes, varint: bytes) -> None:
    assert_refused(store, varint + seed[1:], "bad header length varint at byte 0")
    assert_refused(store, seed[:59] + varint + seed[61:], "bad section length varint at byte 59")


def test_an_absurd_section_length_is_refused(store: Blockstore, seed: bytes) -> None:
    assert_refused(store, seed[:59] + encode_varint(2**62) + seed[61:], "section length")
    assert_refused(store, seed[:59] + encode_varint(2**35) + seed[61:], "truncated section at byte 59")


def test_a_cidv0_section_imports_as_the_cidv1_of_its_block(store: Blockstore) -> None:
    """What ``ipfs add`` made before CIDv1: a CIDv0 names the same bytes as the CIDv1 dag-pb."""
    empty_directory = b"\x0a\x02\x08\x01"  # a UnixFS directory without entries
    digest = hashlib.sha256(empty_directory).digest()
    cidv0 = bytes([0x12, 0x20]) + digest
    roots = import_car(
        store, io.BytesIO(car_of({"version": 1, "roots": [Link(cidv0)]}, [cidv0 + empty_directory]))
    )
    cidv1 = bytes([0x01, 0x70, 0x12, 0x20]) + digest
    assert roots == [cidv1]
    assert cid_to_str(cidv1) == "bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354"
    assert store.get(cidv1) == empty_directory


def test_a_cidv0_section_that_lies_is_refused(store: Blockstore) -> None:
    cidv0 = bytes([0x12, 0x20]) + bytes(32)
    header = {"version": 1, "roots": [Link(cidv0)]}
    at = len(car_of(header))
    assert_refused(store, car_of(header, [cidv0 + b"\x0a\x00"]), f"section at byte {at} does not hash")


def test_identity_sections_are_checked_and_not_stored(store: Blockstore) -> None:
    """An identity CID holds its own bytes (``ipfs add --inline``): kept by nobody, read by all."""
    inline = bytes([0x01, RAW, 0x00, 0x05]) + b"hello"
    root = block_cid(RAW, b"x")
    assert_refused(store, car_of({"version": 1, "roots": [Link(root)]}, [inline + b"world"]), "does not hash")
    car = car_of({"version": 1, "roots": [Link(root)]}, [inline + b"hello", root + b"x"])
    assert import_car(store, io.BytesIO(car)) == [root]
    assert list(store) == [root]
    assert store.has(inline) and store.get(inline) == b"hello" and store.size(inline) == 5


@pytest.mark.parametrize(
    ("prefix", "message"),
    [
        (b"\x01" + encode_varint(0x0200) + b"\x12\x20", "codec json"),
        (b"\x01" + encode_varint(0x0129) + b"\x12\x20", "codec dag-json"),
        (bytes([0x01, 0x55, 0x13, 0x20]), "hash sha2-512"),
        (bytes([0x01, 0x55, 0x12, 0x10]), "16-byte digest"),
        (bytes([0x02, 0x55, 0x12, 0x20]), "CID version 2"),
    ],
)
def test_unsupported_cids_are_refused(store: Blockstore, prefix: bytes, message: str) -> None:
    cid = prefix + bytes(32)
    header = {"version": 1, "roots": [Link(SEED_ROOT)]}
    assert_refused(store, car_of(header, [cid + b"data"]), message)


@pytest.mark.parametrize("size", [0, 1, 3, 20, 35])
def test_a_section_shorter_than_its_cid_is_refused(store: Blockstore, size: int) -> None:
    cid = block_cid(RAW, b"")
    assert_refused(store, car_of({"version": 1, "roots": [Link(cid)]}, [cid[:size]]), "smaller than its CID")


def test_a_dag_cbor_block_that_does_not_decode_is_refused(store: Blockstore) -> None:
    bad = b"\xff\xff"
    cid = block_cid(DAG_CBOR, bad)
    assert_refused(store, car_of({"version": 1, "roots": [Link(cid)]}, [cid + bad]), cid_to_str(cid))


def test_a_root_missing_everywhere_is_refused(store: Blockstore) -> None:
    _, body = raw_section(b"not the root")
    absent = block_cid(RAW, b"absent")
    assert_refused(store, car_of({"version": 1, "roots": [Link(absent)]}, [body]), cid_to_str(absent))


def test_a_dangling_link_is_refused(store: Blockstore) -> None:
    absent = block_cid(RAW, b"absent")
    node = codec.encode({"to": Link(absent)})
    cid = block_cid(DAG_CBOR, node)
    assert_refused(store, car_of({"version": 1, "roots": [Link(cid)]}, [cid + node]), "incomplete DAG")


def test_a_refused_import_keeps_what_was_there(store: Blockstore, seed: bytes) -> None:
    kept = store.put(b"kept", RAW)
    with pytest.raises(CarError):
        import_car(store, io.BytesIO(seed[:300]))
    assert list(store) == [kept]


# --- varints ------------------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_varint_round_trip(value: int) -> None:
    encoded = encode_varint(value)
    assert len(encoded) <= 9
    assert decode_varint(b"\x00" + encoded + b"\x00", 1) == (value, 1 + len(encoded))


def test_varint_rejections() -> None:
    with pytest.raises(ValueError):
        encode_varint(2**63)
    with pytest.raises(ValueError):
        encode_varint(-1)
    for bad in (b"", b"\x80", b"\xff" * 9, b"\x81\x00"):
        with pytest.raises(ValueError):
            decode_varint(bad)


# --- property: anything written reads back -------------------------------------------------

links = st.builds(
    lambda codec_code, digest: Link(bytes([1, codec_code, 0x12, 0x20]) + digest),
    st.sampled_from([RAW, DAG_CBOR]),
    st.binary(min_size=32, max_size=32),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.binary(max_size=20),
    links,
)
dag_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=15,
)
blocks_strategy = st.lists(
    st.one_of(
        st.binary(max_size=3000).map(lambda data: (block_cid(RAW, data), data)),
        dag_values.map(codec.encode).map(lambda data: (block_cid(DAG_CBOR, data), data)),
    ),
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(blocks=blocks_strategy, extra_roots=st.lists(st.binary(min_size=32, max_size=32), max_size=3))
def test_write_read_round_trip(blocks: list[tuple[bytes, bytes]], extra_roots: list[bytes]) -> None:
    roots = [cid for cid, _ in blocks[:1]] + [bytes([1, RAW, 0x12, 0x20]) + digest for digest in extra_roots]
    roots = roots or [block_cid(RAW, b"")]
    out = io.BytesIO()
    size = write_car(out, roots, iter(blocks))
    assert size == len(out.getvalue())
    read_roots, read_blocks = read_car(io.BytesIO(out.getvalue()))
    assert read_roots == roots
    assert list(read_blocks) == blocks
