"""The fast DAG-CBOR codec must give exactly the bytes of the reference ``dag_cbor`` package."""

from __future__ import annotations

import base64
import math
import random
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import dag_cbor
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multiformats import CID

from ipldmount.errors import CorruptBlockError, InvalidCIDError
from ipldmount.ipld import cid as cids
from ipldmount.ipld import codec
from ipldmount.ipld.codec import Link

# --- strategies -----------------------------------------------------------------

links = st.builds(
    lambda codec_code, digest: Link(cids.digest_cid(codec_code, digest)),
    st.sampled_from([cids.RAW, cids.DAG_CBOR]),
    st.binary(min_size=32, max_size=32),
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64 - 1),
    st.sampled_from([0, -1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1, -(2**64)]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1.5, 5e-324, 1.7976931348623157e308]),
    st.text(),  # hypothesis leaves out lone surrogates, which DAG-CBOR cannot hold
    st.text(alphabet=st.characters(min_codepoint=0x80, codec="utf-8")),  # no lone surrogates
    st.binary(),
    links,
)

ipld_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=8), st.dictionaries(st.text(), children, max_size=8)
    ),
    max_leaves=40,
)


def to_reference(value: Any) -> Any:
    """The same value with links as ``multiformats.CID``, as the reference codec wants them."""
    if isinstance(value, Link):
        return CID.decode(value.cid)
    if isinstance(value, dict):
        return {key: to_reference(item) for key, item in value.items()}
    if isinstance(value, list):
        return [to_reference(item) for item in value]
    return value


def same_value(left: Any, right: Any) -> bool:
    """Equality that also tells bool from int and -0.0 from 0.0."""
    if type(left) is not type(right):
        return False
    if isinstance(left, float):
        return left == right and math.copysign(1.0, left) == math.copysign(1.0, right)
    if isinstance(left, list):
        return len(left) == len(right) and all(same_value(a, b) for a, b in zip(left, right, strict=True))
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(same_value(left[key], right[key]) for key in left)
    return bool(left == right)


# --- encoding -------------------------------------------------------------------


@settings(max_examples=400)
@given(ipld_values)
def test_encode_matches_reference(value: Any) -> None:
    assert codec.encode(value) == dag_cbor.encode(to_reference(value))


@settings(max_examples=400)
@given(ipld_values)
def test_decode_round_trip(value: Any) -> None:
    encoded = codec.encode(value)
    decoded = codec.decode(encoded)
    assert same_value(decoded, value)
    assert codec.decode(memoryview(encoded)) == decoded


@settings(max_examples=200)
@given(ipld_values)
def test_decode_reads_reference_encoding(value: Any) -> None:
    assert same_value(codec.decode(dag_cbor.encode(to_reference(value))), value)


def test_tuple_encodes_as_list() -> None:
    assert codec.encode((1, "a", None)) == dag_cbor.encode([1, "a", None])


def test_map_keys_in_dag_cbor_order() -> None:
    value: Any = {"bb": 1, "a": 2, "c": 3, "é": 4, "aaa": 5, "": 6}
    encoded = codec.encode(value)
    assert encoded == dag_cbor.encode(value)
    assert list(codec.decode(encoded)) == ["", "a", "c", "bb", "é", "aaa"]


def test_floats_are_always_64_bit() -> None:
    for number in (0.0, -0.0, 1.0, 1.5, 65504.0):
        encoded = codec.encode(number)
        assert encoded[0] == 0xFB and len(encoded) == 9
        assert encoded == dag_cbor.encode(number)


def test_large_directory_map_matches_reference() -> None:
    rng = random.Random(10_000)
    entries = {
        f"{i // 100}.{i % 100}": Link(
            cids.digest_cid(rng.choice([cids.RAW, cids.DAG_CBOR]), rng.randbytes(32))
        )
        for i in range(10_000)
    }
    encoded = codec.encode(entries)
    assert encoded == dag_cbor.encode(to_reference(entries))
    assert codec.decode(encoded) == entries


@given(st.text(max_size=300), links)
def test_size_helpers_match_encoding(name: str, link: Link) -> None:
    """dirnode.layout sums these helpers instead of encoding; they must agree with real bytes."""
    encoded = codec.encode({name: link})
    assert len(encoded) == codec.map_head_size(1) + codec.encoded_str_size(name) + codec.encoded_link_size(
        link.cid
    )


@pytest.mark.parametrize("entries", [0, 1, 23, 24, 255, 256, 65535, 65536])
def test_map_head_size(entries: int) -> None:
    encoded = codec.encode({str(i): None for i in range(entries)})
    body = sum(codec.encoded_str_size(str(i)) + 1 for i in range(entries))
    assert codec.map_head_size(entries) == len(encoded) - body


def test_link_repr_and_equality() -> None:
    cid = cids.block_cid(cids.RAW, b"x")
    assert Link(cid) == Link(bytes(cid))
    assert Link(cid) != cid
    assert hash(Link(cid)) == hash(Link(bytes(cid)))
    assert cids.cid_to_str(cid) in repr(Link(cid))


# --- what the encoder refuses -----------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        math.nan,
        math.inf,
        -math.inf,
        {"a": [1, math.nan]},
        2**64,
        -(2**64) - 1,
        [2**100],
        {1: "a"},
        {b"a": 1},
        {None: 1},
        {("a",): 1},
        {"ok": {2.5: 1}},
        "\ud800",
        ["x", "\udfff"],
        {"\ud800": 1},
        {"a": "\ud800"},
        {1, 2},
        frozenset(),
        object(),
        1 + 2j,
        Decimal("1.5"),
        datetime(2020, 1, 1, tzinfo=UTC),
        [{"deep": [object()]}],
    ],
    ids=repr,
)
def test_encode_rejects(value: Any) -> None:
    with pytest.raises(ValueError):
        codec.encode(value)


# --- what the decoder refuses -----------------------------------------------------

_LINK_BYTES = b"\x00" + cids.block_cid(cids.RAW, b"x")


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xff", id="lone-break"),
        pytest.param(b"\x1c", id="reserved-additional-info"),
        pytest.param(b"\x82\x01", id="truncated-array"),
        pytest.param(b"\x62a", id="truncated-string"),
        pytest.param(b"\x61\xff", id="invalid-utf8-string"),
        pytest.param(b'{"a": 1}', id="json-text"),
        pytest.param(b"\x01\x02", id="trailing-item"),
        pytest.param(codec.encode({"a": 1}) + b"\x00", id="trailing-byte"),
        pytest.param(b"\xd8\x2b\x01", id="tag-43"),
        pytest.param(b"\xd8\x2b" + codec.encode(_LINK_BYTES), id="tag-43-with-cid"),
        pytest.param(b"\xc2\x41\x01", id="tag-2-bignum"),
        pytest.param(b"\xc1\x00", id="tag-1-epoch-datetime"),
        pytest.param(b"\xd9\x01\x02\x80", id="tag-258-set"),
        pytest.param(b"\xd8\x1c\x01", id="tag-28-shareable"),
        pytest.param(b"\xd9\xd9\xf7\x01", id="tag-55799-self-describe"),
        pytest.param(b"\xd8\x2a\x01", id="link-not-bytes"),
        pytest.param(b"\xd8\x2a" + codec.encode(_LINK_BYTES[1:]), id="link-without-multibase-prefix"),
        pytest.param(b"\x9f\x01\xff", id="indefinite-array"),
        pytest.param(b"\xbf\x61a\x01\xff", id="indefinite-map"),
        pytest.param(b"\x5f\x41a\xff", id="indefinite-bytes"),
        pytest.param(b"\x7f\x61a\xff", id="indefinite-string"),
        pytest.param(b"\xa2\x61a\x01\x61a\x02", id="duplicate-keys"),
        pytest.param(b"\xa1\x81\x01\x01", id="list-as-map-key"),
        pytest.param(b"\xa1\x41k\x01", id="bytes-map-key"),
        pytest.param(b"\xa1\x01\x01", id="integer-map-key"),
        pytest.param(b"\xa1\x61a\xa1\x41k\xf6", id="nested-bytes-map-key"),
        pytest.param(b"\xfb\x7f\xf8\x00\x00\x00\x00\x00\x00", id="nan"),
        pytest.param(b"\xf9\x7c\x00", id="half-infinity"),
        pytest.param(b"\x81\xfa\xff\x80\x00\x00", id="single-minus-infinity-in-list"),
        pytest.param(b"\xf7", id="undefined"),
        pytest.param(b"\xa1\x61a\xf0", id="simple-value-16"),
    ],
)
def test_decode_rejects(data: bytes) -> None:
    with pytest.raises(CorruptBlockError):
        codec.decode(data)


def test_decode_link() -> None:
    cid = cids.block_cid(cids.DAG_CBOR, b"{}")
    decoded = codec.decode(b"\xd8\x2a" + codec.encode(b"\x00" + cid))
    assert decoded == Link(cid)
    assert type(decoded.cid) is bytes


@given(st.binary(max_size=80))
def test_cid_text_is_rfc4648_base32_lower_case_unpadded(data: bytes) -> None:
    """cid_to_str has its own base32 encoder (a table, for speed): the standard one agrees."""
    assert cids.cid_to_str(data) == "b" + base64.b32encode(data).decode("ascii").rstrip("=").lower()


@given(st.binary(max_size=64), st.sampled_from([cids.RAW, cids.DAG_CBOR, cids.DAG_PB]))
def test_cid_text_reads_back_as_the_cid(data: bytes, codec_code: int) -> None:
    """parse_cid has its own reader of our base32 form (int() in base 32, for speed)."""
    cid = cids.block_cid(codec_code, data)
    assert cids.parse_cid(cids.cid_to_str(cid)) == cid


def test_cid_text_that_is_almost_ours_is_read_by_the_rules_or_refused() -> None:
    cid = cids.block_cid(cids.RAW, b"x")
    text = cids.cid_to_str(cid)
    assert cids.parse_cid(text.upper()) == cid  # base32upper, multibase prefix B
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    pad_bits_set = text[:-1] + alphabet[alphabet.index(text[-1]) | 1]
    for bad in (
        pad_bits_set,
        f" {text}",
        f"{text} ",
        text[:10] + "_" + text[11:],
        text[:10] + "0" + text[11:],
    ):
        with pytest.raises(InvalidCIDError):
            cids.parse_cid(bad)
