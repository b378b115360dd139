"""zarr_xarray: an xarray dataset written to and read from zarr v3 on every kind of store."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr
from common import MB, Context, Mount, Row, Timer, log
from zarr.storage import LocalStore, MemoryStore

from ipldmount.adapters.zarr_store import IPLDStore
from ipldmount.blocks import DirectoryBlockstore, MemoryBlockstore

ON_DISK = ("ext4", "mount", "ipld_dir")  # cold reads for these: caches dropped first

# Each chunk is one 500 x 500 float32 slab: 1,000,000 bytes (~1 MiB, under the 1 MiB block limit).
NY = NX = 500


def dataset(steps: int) -> xr.Dataset:
    """A temperature-like float32 field: smooth structure plus noise (compresses a little)."""
    rng = np.random.default_rng(4)
    y = np.linspace(0, 3 * np.pi, NY, dtype=np.float32)
    x = np.linspace(0, 4 * np.pi, NX, dtype=np.float32)
    base = 15 + 10 * np.sin(y)[:, None] * np.cos(x)[None, :]
    data = np.empty((steps, NY, NX), dtype=np.float32)
    for t in range(steps):
        data[t] = base + np.float32(t * 0.01) + rng.standard_normal((NY, NX), dtype=np.float32)
    return xr.Dataset(
        {"temperature": (("time", "y", "x"), data, {"units": "degC"})},
        coords={"time": np.arange(steps, dtype=np.int64), "y": y, "x": x},
        attrs={"title": "ipldmount benchmark"},
    )


def encoding(compressed: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {"chunks": (1, NY, NX)}
    if not compressed:
        spec["compressors"] = None
    return {"temperature": spec}


def write(ds: xr.Dataset, target: Any, compressed: bool) -> float:
    with Timer() as timer:
        ds.to_zarr(target, mode="w", zarr_format=3, consolidated=False, encoding=encoding(compressed))
    return timer.seconds


def read(target: Any, expected: np.ndarray) -> float:
    with Timer() as timer:
        opened = xr.open_zarr(target, consolidated=False, chunks=None, zarr_format=3)
        values = opened["temperature"].values
    if not np.array_equal(values, expected):
        raise RuntimeError(f"read back different data from {target!r}")
    return timer.seconds


def run(ctx: Context) -> None:
    warnings.filterwarnings("ignore", category=UserWarning, module="zarr")
    warnings.filterwarnings("ignore", category=RuntimeWarning, module="zarr")
    steps = 50 if ctx.quick else 200
    base = dataset(steps)
    megabytes = base["temperature"].nbytes / MB
    log(
        f"dataset: {megabytes:.0f} MB float32, {steps} chunks of {NY * NX * 4 / MB:.1f} MB, "
        f"zarr {zarr.__version__}"
    )
    mount = Mount(ctx.workdir / "zarr" / "store", ctx.workdir / "zarr" / "mnt")
    try:
        mount.start()
        for compressed in (False, True):
            label = "zstd (default)" if compressed else "no compression"
            kind = "zstd" if compressed else "raw"
            blockstore = DirectoryBlockstore(ctx.path("zarr", f"ipldstore-{kind}"))
            runs = [
                repetition(ctx, base, rep, compressed, mount.mountpoint / f"{kind}-{rep}.zarr", blockstore)
                for rep in range(ctx.repeats)
            ]
            best = {key: min(run[key] for run in runs) for key in runs[0]}
            stored = runs[-1]["stored"]
            size = f"{megabytes:.0f} MB, {label}"
            cold = ctx.caches.cold_note or "cold"
            for op, note in (("write", f"{stored:.0f} MB stored"), ("read", cold)):
                ctx.add(
                    Row(
                        "zarr_xarray",
                        f"{op} {size}: mount",
                        best[op, "mount"],
                        "s",
                        best[op, "ext4"],
                        "LocalStore on ext4",
                        note,
                    )
                )
                ctx.add(
                    Row(
                        "zarr_xarray",
                        f"{op} {size}: IPLDStore(DirectoryBlockstore)",
                        best[op, "ipld_dir"],
                        "s",
                        best[op, "ext4"],
                        "LocalStore on ext4",
                        note,
                    )
                )
                ctx.add(
                    Row(
                        "zarr_xarray",
                        f"{op} {size}: IPLDStore(MemoryBlockstore)",
                        best[op, "ipld_mem"],
                        "s",
                        best[op, "memory"],
                        "MemoryStore",
                    )
                )
            ctx.add(
                Row(
                    "zarr_xarray",
                    f"IPLDStore(DirectoryBlockstore).freeze() after the write, {label}",
                    best["freeze"],
                    "s",
                    note="informational",
                )
            )
    finally:
        mount.stop()


def repetition(
    ctx: Context, base: xr.Dataset, rep: int, compressed: bool, mounted: Path, blockstore: DirectoryBlockstore
) -> dict[Any, float]:
    """Write then read one copy of the dataset on every store; seconds by (op, store), and more."""
    # New values every repetition, so no store can skip blocks it already holds.
    ds = base.assign(temperature=base["temperature"] + np.float32(rep))
    expected = ds["temperature"].values
    plain = ctx.path("zarr", "plain") / mounted.name
    ipld_dir = IPLDStore(blockstore)
    ipld_mem = IPLDStore(MemoryBlockstore())
    memory = MemoryStore()
    result: dict[Any, float] = {}
    targets: dict[str, Any] = {
        "ext4": LocalStore(plain),
        "mount": str(mounted),
        "ipld_dir": ipld_dir,
        "memory": memory,
        "ipld_mem": ipld_mem,
    }
    for key, target in targets.items():
        if key in ON_DISK:
            ctx.caches.drop()
        result["write", key] = write(ds, target, compressed)
    with Timer() as freezing:
        root_dir = ipld_dir.freeze()
    result["freeze"] = freezing.seconds
    root_mem = ipld_mem.freeze()
    result["stored"] = sum(f.stat().st_size for f in plain.rglob("*") if f.is_file()) / MB

    targets = {
        "ext4": LocalStore(plain, read_only=True),
        "mount": str(mounted),
        "ipld_dir": IPLDStore(blockstore, root_dir, read_only=True),  # reopened from the root CID
        "memory": memory,
        "ipld_mem": IPLDStore(ipld_mem.blockstore, root_mem, read_only=True),
    }
    for key, target in targets.items():
        if key in ON_DISK:
            ctx.caches.drop()
        result["read", key] = read(target, expected)
    log(f"{'zstd' if compressed else 'raw'}: repetition {rep + 1}/{ctx.repeats} done")
    return result
