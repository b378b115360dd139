"""codec: ipldmount.ipld.codec against the reference ``dag_cbor`` package on a directory-sized map."""

from __future__ import annotations

import dag_cbor
import numpy as np
from common import Context, Row, best_of, log

from ipldmount.ipld import cid as cids
from ipldmount.ipld import codec


def chunk_map(entries: int, seed: int) -> dict[str, codec.Link]:
    """``{"12.34": Link(raw sha2-256 CID), ...}``: what a zarr v2 array directory holds."""
    rng = np.random.default_rng(seed)
    digests = rng.bytes(32 * entries)
    width = 100
    return {
        f"{i // width}.{i % width}": codec.Link(cids.digest_cid(cids.RAW, digests[32 * i : 32 * i + 32]))
        for i in range(entries)
    }


def run(ctx: Context) -> None:
    for entries in [10_000] if ctx.quick else [10_000, 100_000]:
        measure(ctx, entries)


def measure(ctx: Context, entries: int) -> None:
    label = f"{entries // 1000}k-entry name->Link map"
    value = chunk_map(entries, seed=entries)
    ours_bytes = codec.encode(value)
    big = entries >= 100_000
    ours_encode = best_of(lambda: codec.encode(value), repeats=5 if big else 20)
    ours_decode = best_of(lambda: codec.decode(ours_bytes), repeats=5 if big else 20)

    # The reference gets multiformats CID objects: its decode makes them (that cost is
    # the reason ipldmount has its own codec), and its encode is given them.
    log(f"dag_cbor reference on {entries} entries (slow: ~{entries / 9000:.0f} s per decode)")
    reference: dict[str, object] = {}

    def reference_decode() -> None:
        nonlocal reference
        reference = dag_cbor.decode(ours_bytes)

    ref_decode = best_of(reference_decode, repeats=1 if big else 3, budget=5.0)
    ref_bytes = dag_cbor.encode(reference)
    ref_encode = best_of(lambda: dag_cbor.encode(reference), repeats=3 if big else 10, budget=5.0)

    decoded = codec.decode(ours_bytes)
    same_values = decoded.keys() == reference.keys() and all(
        bytes(reference[name]) == link.cid  # type: ignore[call-overload]
        for name, link in decoded.items()
    )
    check = "bytes identical" if ref_bytes == ours_bytes else "BYTES DIFFER from dag_cbor!"
    if not same_values:
        check += "; DECODED VALUES DIFFER!"
    size = f"{len(ours_bytes) / 1e6:.1f} MB node"
    ctx.add(
        Row(
            "codec",
            f"encode {label}",
            ours_encode * 1e3,
            "ms",
            ref_encode * 1e3,
            "dag_cbor.encode",
            f"{check}; {size}",
        )
    )
    ctx.add(
        Row(
            "codec",
            f"decode {label}",
            ours_decode * 1e3,
            "ms",
            ref_decode * 1e3,
            "dag_cbor.decode",
            "reference: one run" if big else "",
        )
    )
