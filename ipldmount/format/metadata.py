"""Which zarr metadata files are stored inline as IPLD data, and how they render back.

A metadata file is kept as its decoded JSON value inside the directory node (so
IPLD tools can traverse it, as ipldstore did) only when rendering that value
with its name's rule gives back exactly the bytes that were written. Anything
else is stored as a raw block, so every file always reads back byte for byte.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from ipldmount.ipld import codec

Render = Callable[[Any], str]


def _render_zarr_v2(value: Any) -> str:
    # Exactly how zarr-python 2 (and so ipldstore) writes .zarray/.zattrs/.zgroup/.zmetadata.
    return json.dumps(
        value, indent=4, sort_keys=True, ensure_ascii=True, separators=(",", ": "), allow_nan=False
    )


def _render_zarr_v3(value: Any) -> str:
    # DAG-CBOR maps cannot keep key order, so only sorted-key JSON can be exact;
    # two-space indentation is what zarr v3 writers use.
    return json.dumps(
        value, indent=2, sort_keys=True, ensure_ascii=True, separators=(",", ": "), allow_nan=False
    )


RULES: dict[str, Render] = {
    ".zarray": _render_zarr_v2,
    ".zattrs": _render_zarr_v2,
    ".zgroup": _render_zarr_v2,
    ".zmetadata": _render_zarr_v2,
    "zarr.json": _render_zarr_v3,
}

# Inline values larger than this are never worth parsing: they could not fit a node anyway.
MAX_INLINE_SOURCE = 1 << 20
# Deeper JSON stays raw: a fixed limit keeps the decision independent of Python's stack.
MAX_INLINE_DEPTH = 32


def is_metadata_name(name: str) -> bool:
    return name in RULES


def render(name: str, value: Any) -> bytes:
    """The file bytes an inline value under *name* stands for."""
    return RULES[name](value).encode("ascii")


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _DuplicateKey("duplicate key")
    return result


def _reject_constant(name: str) -> float:
    raise ValueError(f"JSON constant {name} cannot be stored in DAG-CBOR")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("float out of range")
    return value


def parse(data: bytes) -> Any:
    """The JSON value of *data*, read strictly: ASCII, no duplicate keys, no NaN, no infinities
    (what DAG-CBOR and the render functions can hold). Raises ValueError or UnicodeError, and
    RecursionError for JSON nested deeper than the interpreter's stack."""
    return json.loads(
        data.decode("ascii"),
        object_pairs_hook=_no_duplicates,
        parse_constant=_reject_constant,
        parse_float=_finite_float,
    )


def try_inline(name: str, data: bytes) -> tuple[Any, bytes] | None:
    """The value to inline for a file *name* holding *data*, with its DAG-CBOR encoding.

    None when the file must stay a raw block: not a metadata name, not JSON,
    JSON that DAG-CBOR cannot hold, or JSON that would not render back exactly.
    """
    rule = RULES.get(name)
    if rule is None or len(data) > MAX_INLINE_SOURCE:
        return None
    try:
        value = parse(data)
        if codec.depth(value) > MAX_INLINE_DEPTH or rule(value).encode("ascii") != data:
            return None
        return value, codec.encode(value)
    except (ValueError, UnicodeError, RecursionError):
        return None
