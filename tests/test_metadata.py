"""Which zarr metadata files inline as JSON values: only those that render back byte for byte."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipldmount.format import metadata
from ipldmount.ipld import codec

SEED_METADATA = [".zattrs", ".zgroup", "a/.zarray", "a/.zattrs"]

ZARRAY = {
    "chunks": [3],
    "compressor": None,
    "dtype": "<i8",
    "fill_value": None,
    "filters": None,
    "order": "C",
    "shape": [3],
    "zarr_format": 2,
}


def v2(value: Any) -> bytes:
    """What zarr-python 2 writes."""
    return json.dumps(value, indent=4, sort_keys=True, ensure_ascii=True, separators=(",", ": ")).encode()


def v3(value: Any) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=True, separators=(",", ": ")).encode()


def assert_inlines(name: str, data: bytes) -> Any:
    result = metadata.try_inline(name, data)
    assert result is not None, f"{name} should inline: {data!r}"
    value, encoded = result
    assert encoded == codec.encode(value)
    assert metadata.render(name, value) == data
    # What the directory node holds comes back through DAG-CBOR and must still render exactly.
    assert metadata.render(name, codec.decode(encoded)) == data
    return value


# --- the seed example -------------------------------------------------------------


@pytest.mark.parametrize("relative", SEED_METADATA)
def test_seed_metadata_inlines(seed_tree_dir: Path, relative: str) -> None:
    data = (seed_tree_dir / relative).read_bytes()
    value = assert_inlines(Path(relative).name, data)
    assert value == json.loads(data)


def test_seed_zarray_value(seed_tree_dir: Path) -> None:
    assert assert_inlines(".zarray", (seed_tree_dir / "a/.zarray").read_bytes()) == ZARRAY


def test_seed_chunk_is_not_metadata(seed_tree_dir: Path) -> None:
    assert metadata.try_inline("0", (seed_tree_dir / "a/0").read_bytes()) is None


# --- what must not inline -----------------------------------------------------------

NOT_INLINE: list[tuple[str, bytes]] = [
    (".zarray", v2(ZARRAY) + b"\n"),
    (".zgroup", b'{\n    "zarr_format": 2\n}\n'),
    (".zarray", json.dumps(ZARRAY, indent=2, sort_keys=True).encode()),
    (".zattrs", b'{\n  "a": 1\n}'),
    (".zarray", json.dumps(dict(reversed(ZARRAY.items())), indent=4).encode()),  # keys not sorted
    (".zattrs", b'{\n    "b": 1,\n    "a": 2\n}'),
    (".zattrs", json.dumps({"a": 1}, indent=4, separators=(", ", ": ")).encode() + b" "),
    (".zarray", b'{\n    "fill_value": NaN\n}'),
    (".zarray", b'{\n    "fill_value": Infinity\n}'),
    (".zarray", b'{\n    "fill_value": -Infinity\n}'),
    (".zattrs", b"NaN"),
    (".zattrs", b"1e400"),  # parses to inf
    (".zattrs", b'{\n    "x": 18446744073709551616\n}'),  # 2**64
    (".zattrs", b'{\n    "x": -18446744073709551617\n}'),  # -2**64 - 1
    (".zattrs", b'{\n    "a": 1,\n    "a": 1\n}'),
    (".zattrs", b'{\n    "a": 1,\n    "a": 2\n}'),
    (".zattrs", b'{\n    "a": "\xff"\n}'),  # invalid UTF-8
    (".zattrs", '{\n    "a": "é"\n}'.encode()),  # valid UTF-8, but zarr writes ASCII escapes
    (".zattrs", b"not json"),
    (".zattrs", b""),
    (".zattrs", b"{"),
    (".zattrs", b"\x00\x01\x02"),
    (".zattrs", b'{\n    "a": "\\ud800"\n}'),  # lone surrogate: renders back, but DAG-CBOR refuses it
    (".zattrs", b'"\\udc00"'),
    (".zattrs", b'{\n    "x": 1e5\n}'),
    (".zattrs", b'{\n    "x": 1.10\n}'),
    (".zattrs", b'{\n    "x": 1E+16\n}'),
    (".zattrs", b'{\n    "x": -0\n}'),
    (".zattrs", b'{\n    "x": 01\n}'),
    (".zattrs", b'{\n    "\\u0061": 1\n}'),  # a needless escape
    (".zattrs", b'{\n    "a": "\\/"\n}'),
    (".zattrs", b'{\n    "a": "\\u00E9"\n}'),  # upper-case hex escape
    ("zarr.json", v2({"zarr_format": 3, "node_type": "group"})),
    ("zarr.json", v3({"zarr_format": 3, "node_type": "group"}) + b"\n"),
    ("zarr.json", json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}, indent=2).encode()),
]


@pytest.mark.parametrize(("name", "data"), NOT_INLINE, ids=lambda item: repr(item)[:60])
def test_does_not_inline(name: str, data: bytes) -> None:
    assert metadata.try_inline(name, data) is None


def zarr3_metadata() -> dict[str, bytes]:
    """The zarr.json files zarr-python 3 itself writes for a group holding one array."""
    import zarr
    from zarr.core.buffer import default_buffer_prototype
    from zarr.storage import MemoryStore

    store = MemoryStore()
    group = zarr.open_group(store, mode="w", zarr_format=3)
    group.attrs["title"] = "test"
    group.create_array("a", shape=(3,), dtype="i8", chunks=(3,))

    async def read(key: str) -> bytes:
        buffer = await store.get(key, default_buffer_prototype())
        assert buffer is not None
        return buffer.to_bytes()

    return {key: asyncio.run(read(key)) for key in ("zarr.json", "a/zarr.json")}


def test_zarr_python_3_output_does_not_inline() -> None:
    for data in zarr3_metadata().values():
        assert list(json.loads(data)) != sorted(json.loads(data))  # zarr 3 does not sort keys
        assert metadata.try_inline("zarr.json", data) is None
        # the same value, written with sorted keys, does inline
        assert_inlines("zarr.json", v3(json.loads(data)))


def test_zarr_json_sorted_indent_two_inlines() -> None:
    value = {
        "attributes": {"_ARRAY_DIMENSIONS": ["a"], "scale": 0.5},
        "chunk_grid": {"configuration": {"chunk_shape": [3]}, "name": "regular"},
        "data_type": "int64",
        "fill_value": 0,
        "node_type": "array",
        "shape": [3],
        "zarr_format": 3,
    }
    assert assert_inlines("zarr.json", v3(value)) == value


# --- what inlines -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data", "value"),
    [
        (".zattrs", b"{}", {}),
        (".zattrs", b"[]", []),
        (".zattrs", b"true", True),
        (".zattrs", b"0", 0),
        (".zattrs", b"-0.0", -0.0),
        (".zattrs", b"1.0", 1.0),
        (".zattrs", b"100000.0", 100000.0),
        (".zattrs", b"1e+16", 1e16),
        (".zattrs", b"18446744073709551615", 2**64 - 1),
        (".zattrs", b"-18446744073709551616", -(2**64)),
        (".zattrs", b'"NaN"', "NaN"),  # how zarr v2 writes a NaN fill value
        (".zattrs", b'"\\u00e9"', "é"),
        (".zattrs", b'"\\ud83d\\ude00"', "\U0001f600"),  # a valid surrogate pair escape
        (".zattrs", b'"\\n\\t\\"\\\\"', '\n\t"\\'),
        (
            ".zmetadata",
            v2({"metadata": {".zgroup": {"zarr_format": 2}}, "zarr_consolidated_format": 1}),
            None,
        ),
        ("zarr.json", b"{}", {}),
    ],
)
def test_inlines(name: str, data: bytes, value: Any) -> None:
    got = assert_inlines(name, data)
    if value is not None:
        assert got == value and type(got) is type(value)


def test_negative_zero_keeps_its_sign() -> None:
    value, encoded = metadata.try_inline(".zattrs", b"-0.0") or (None, b"")
    assert str(value) == "-0.0"
    assert str(codec.decode(encoded)) == "-0.0"


def test_oversized_source_never_inlines() -> None:
    data = v2({"blob": "x" * metadata.MAX_INLINE_SOURCE})
    assert len(data) > metadata.MAX_INLINE_SOURCE
    assert metadata.try_inline(".zattrs", data) is None


def test_deep_nesting_does_not_crash() -> None:
    data = b"[" * 100_000 + b"]" * 100_000
    assert metadata.try_inline(".zattrs", data) is None


@pytest.mark.parametrize(
    "name",
    [
        "0",
        "0.0",
        "c/0",
        "zarr.jsonx",
        ".zarray.bak",
        "ZARR.JSON",
        ".ZATTRS",
        "zattrs",
        ".zarr",
        " .zattrs",
        "",
    ],
)
def test_other_names_never_inline(name: str) -> None:
    assert not metadata.is_metadata_name(name)
    assert metadata.try_inline(name, b"{}") is None
    assert metadata.try_inline(name, v2(ZARRAY)) is None


def test_metadata_names() -> None:
    assert {name for name in metadata.RULES} == {".zarray", ".zattrs", ".zgroup", ".zmetadata", "zarr.json"}
    assert all(metadata.is_metadata_name(name) for name in metadata.RULES)


# --- render round trip ------------------------------------------------------------

json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**64), max_value=2**64 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=6), st.dictionaries(st.text(), children, max_size=6)
    ),
    max_leaves=30,
)


@settings(max_examples=300)
@given(st.sampled_from(sorted(metadata.RULES)), json_values)
def test_render_round_trip(name: str, value: Any) -> None:
    data = metadata.render(name, value)
    inline = metadata.try_inline(name, data)
    assert inline is not None
    parsed, encoded = inline
    assert parsed == value
    assert metadata.render(name, parsed) == data
    assert metadata.render(name, codec.decode(encoded)) == data


@given(json_values)
def test_render_is_zarr_v2_json(value: Any) -> None:
    assert metadata.render(".zarray", value) == v2(value)
    assert metadata.render("zarr.json", value) == v3(value)


def test_render_refuses_what_json_cannot_hold() -> None:
    with pytest.raises(ValueError):
        metadata.render(".zattrs", float("nan"))
    with pytest.raises(KeyError):
        metadata.render("0", {})
