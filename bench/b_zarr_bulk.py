"""zarr_bulk: 1 GiB of 4 MiB chunks written through zarr and read back, IPLDStore vs zarr's own stores."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import statistics
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from common import MB, Context, MiB, Row, Timer, log
from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import LocalStore, MemoryStore

from ipldmount.adapters.zarr_store import IPLDStore
from ipldmount.blocks import DirectoryBlockstore, MemoryBlockstore

CHUNK = 4 * MiB  # one zarr chunk: four 1 MiB leaves under an FBL node in the blockstore
LEAF = MiB


@dataclass(frozen=True)
class Layout:
    """An uncompressed array of 4 MiB chunks over the same bytes."""

    name: str
    dtype: str
    row: int  # elements per row (1: a 1-d array)

    def array(self, data: np.ndarray) -> np.ndarray:
        values = data.view(self.dtype)
        return values if self.row == 1 else values.reshape(-1, self.row)

    def chunks(self) -> tuple[int, ...]:
        items = CHUNK // np.dtype(self.dtype).itemsize
        return (items,) if self.row == 1 else (items // self.row, self.row)


# zarr's own cost differs a lot between the two: with uint8 it does more per byte than with float32.
LAYOUTS = (Layout("uint8", "uint8", 1), Layout("float32 1024x1024", "float32", 1024))


def hash_leaves(value: Buffer) -> None:
    """sha256 of every 1 MiB of *value*, as a content-addressed store hashes its leaves."""
    view = memoryview(value.as_numpy_array()).cast("B")
    for start in range(0, len(view), LEAF):
        hashlib.sha256(view[start : start + LEAF]).digest()


class HashingMemoryStore(MemoryStore):
    """zarr's MemoryStore that also hashes what it is given (off the event loop, as IPLDStore does):
    what any store in memory that names its blocks by their hash spends at least."""

    async def set(self, key: str, value: Buffer) -> None:
        await asyncio.to_thread(hash_leaves, value)
        await super().set(key, value)


def hash_and_copy(value: Buffer) -> Buffer:
    """*value* hashed as :func:`hash_leaves` does, and copied into bytes the store owns."""
    hash_leaves(value)
    return value.__class__.from_bytes(memoryview(value.as_numpy_array()).cast("B").tobytes())


class OwningMemoryStore(MemoryStore):
    """zarr's MemoryStore that hashes what it is given and keeps a copy of its own: the floor of a
    store in memory whose blocks are named by their hash. Such a store must own its bytes, since a
    block must never change after it is named; MemoryStore keeps the caller's buffer instead."""

    async def set(self, key: str, value: Buffer) -> None:
        await super().set(key, await asyncio.to_thread(hash_and_copy, value))


class HashingLocalStore(LocalStore):
    """zarr's LocalStore that also hashes what it writes and verifies what it reads: the floor of
    any store on disk that names its blocks by their hash and checks them."""

    async def set(self, key: str, value: Buffer) -> None:
        await asyncio.to_thread(hash_leaves, value)
        await super().set(key, value)

    async def get(
        self, key: str, prototype: BufferPrototype | None = None, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        value = await super().get(key, prototype, byte_range)
        if value is not None:
            await asyncio.to_thread(hash_leaves, value)
        return value


@dataclass(frozen=True)
class Pair:
    """An IPLDStore and its baselines, measured in the same rounds."""

    name: str  # the row's case
    ipld: str  # key of the IPLDStore contender
    baseline: str  # key of zarr's own store
    baseline_name: str
    hashing: str  # key of zarr's store hashing as IPLDStore must (the floor)
    hashed_steps: tuple[str, ...]  # the steps where IPLDStore hashes
    owning: str | None = None  # key of zarr's store hashing and copying (the floor in memory)


PAIRS = (
    Pair(
        "IPLDStore(MemoryBlockstore)",
        "ipld_mem",
        "memory",
        "MemoryStore",
        "memory_sha",
        ("write",),
        owning="memory_own",
    ),
    Pair(
        "IPLDStore(DirectoryBlockstore)",
        "ipld_dir",
        "local",
        "LocalStore on disk",
        "local_sha",
        ("write", "read"),
    ),
)
ON_DISK = ("ipld_dir", "local", "local_sha")
MEMORY_STORES: dict[str, Callable[[], MemoryStore]] = {
    "memory": MemoryStore,
    "memory_sha": HashingMemoryStore,
    "memory_own": OwningMemoryStore,
}


def stamp(data: np.ndarray, round_: int) -> None:
    """Stamp every leaf of *data* with a number unique to it and the round: no block dedupes."""
    leaves = len(data) // LEAF
    data[: leaves * LEAF].view("<u8")[:: LEAF // 8] = np.arange(leaves, dtype="<u8") + np.uint64(
        round_ * leaves
    )


def write_array(store: Any, values: np.ndarray, layout: Layout) -> float:
    """Seconds for ``array[...] = values`` into a new uncompressed array (creating it not counted)."""
    array = zarr.create_array(
        store, shape=values.shape, chunks=layout.chunks(), dtype=layout.dtype, compressors=None, fill_value=0
    )
    with Timer() as timer:
        array[...] = values
    return timer.seconds


def read_array(store: Any, expected: np.ndarray) -> float:
    """Seconds to open the array and read all of it; the values are checked (not timed)."""
    with Timer() as timer:
        values = zarr.open_array(store, mode="r")[...]
    if not np.array_equal(values.view(np.uint8), expected.view(np.uint8)):  # random floats hold NaNs
        raise RuntimeError(f"read back different data from {store!r}")
    return timer.seconds


def one_store(ctx: Context, key: str, where: Path, values: np.ndarray, layout: Layout) -> dict[str, float]:
    """Write then read the array on a fresh store of kind *key*; seconds by step.

    ``durable`` is the write plus what makes it survive a crash: ``freeze()`` (which
    syncs the filesystem before it commits the root) for an IPLDStore on disk, a
    ``sync`` for LocalStore (which never fsyncs by itself).
    """
    result: dict[str, float] = {}
    if key in ON_DISK:
        ctx.caches.drop()  # the previous store's writeback must not land in this one's time
    if key in MEMORY_STORES:
        memory = MEMORY_STORES[key]()
        result["write"] = write_array(memory, values, layout)
        reopen: Callable[[], Any] = lambda: memory  # noqa: E731
    elif key in ("local", "local_sha"):
        kind = LocalStore if key == "local" else HashingLocalStore
        result["write"] = write_array(kind(where), values, layout)
        with Timer() as syncing:
            os.sync()
        result["durable"] = result["write"] + syncing.seconds
        reopen = lambda: kind(where, read_only=True)  # noqa: E731
    else:
        blockstore = DirectoryBlockstore(where) if key == "ipld_dir" else MemoryBlockstore()
        store = IPLDStore(blockstore)
        result["write"] = write_array(store, values, layout)
        with Timer() as freezing:
            root = store.freeze()
        result["freeze"] = freezing.seconds
        result["durable"] = result["write"] + freezing.seconds
        reopen = lambda: IPLDStore(blockstore, root, read_only=True)  # noqa: E731
    if key in ON_DISK:
        ctx.caches.drop()  # cold reads
    result["read"] = read_array(reopen(), values)
    return result


def run(ctx: Context) -> None:
    warnings.filterwarnings("ignore", category=UserWarning, module="zarr")
    total = (256 if ctx.quick else 1024) * MiB
    rounds = max(ctx.repeats, 3 if ctx.quick else 5)
    log(f"{total // MiB} MiB in {total // CHUNK} chunks of 4 MiB, {rounds} rounds, zarr {zarr.__version__}")
    data = np.frombuffer(np.random.default_rng(11).bytes(total), dtype=np.uint8).copy()
    keys = [key for pair in PAIRS for key in (pair.baseline, pair.hashing, pair.owning, pair.ipld) if key]
    for layout in LAYOUTS:
        seconds: dict[tuple[str, str], list[float]] = {}
        for round_ in range(rounds):
            stamp(data, round_)
            values = layout.array(data)
            for key in keys if round_ % 2 == 0 else keys[::-1]:  # who goes first alternates
                where = ctx.workdir / "zarr_bulk" / f"{key}-{round_}"
                try:
                    for step, value in one_store(ctx, key, where, values, layout).items():
                        seconds.setdefault((step, key), []).append(value)
                finally:
                    shutil.rmtree(where, ignore_errors=True)
            log(f"{layout.name}: round {round_ + 1}/{rounds} done")
        median = {key: statistics.median(values) for key, values in seconds.items()}
        add_rows(ctx, layout, total, rounds, median)


HASHING_FLOOR = "zarr's store hashing every 1 MiB, as IPLDStore must"
OWNING_FLOOR = "the floor: hashing, and owning bytes no caller can change"


def add_rows(
    ctx: Context, layout: Layout, total: int, rounds: int, median: dict[tuple[str, str], float]
) -> None:
    size = f"{total // MiB} MiB {layout.name}"
    cold = ctx.caches.cold_note or "cold"
    for pair in PAIRS:
        disk = pair.ipld in ON_DISK
        for step in ("write", "read"):
            baselines = [
                (
                    pair.baseline,
                    pair.baseline_name,
                    f"median of {rounds}" + (f", {cold}" if disk and step == "read" else ""),
                )
            ]
            if step in pair.hashed_steps:
                baselines.append((pair.hashing, f"{pair.baseline_name} + sha256", HASHING_FLOOR))
                if pair.owning:
                    baselines.append((pair.owning, f"{pair.baseline_name} + sha256 + copy", OWNING_FLOOR))
            for key, name, note in baselines:
                ours, theirs = total / MB / median[step, pair.ipld], total / MB / median[step, key]
                ctx.add(Row("zarr_bulk", f"{step} {size}: {pair.name}", ours, "MB/s", theirs, name, note))
        if disk:
            ctx.add(
                Row(
                    "zarr_bulk",
                    f"write+freeze {size}: {pair.name}",
                    total / MB / median["durable", pair.ipld],
                    "MB/s",
                    total / MB / median["durable", pair.baseline],
                    "LocalStore write+sync",
                    "durable: syncs the filesystem",
                )
            )
        ctx.add(
            Row(
                "zarr_bulk",
                f"{pair.name}.freeze() after writing {size}",
                median["freeze", pair.ipld],
                "s",
                note="informational",
            )
        )
