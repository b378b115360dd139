"""layout: the blockstore's file per block against one append-only pack file, on the same disk.

The pack side is a sketch of a design ipldmount does not have (blocks appended to a large file
that is a CAR, found through an index of offsets and sizes), written here in a few lines so
that its gain is measured, not guessed: it appends each block's bytes to one file and keeps
(CID, offset, size) records in a second, both flushed with one fdatasync each; a read is one
``pread`` on the open pack; a listing reads the index. The file side is the real
:class:`DirectoryBlockstore`. Both sides hash-check what they read.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from common import Context, Row, Timer, log, remove_tree

from ipldmount.blocks import DirectoryBlockstore
from ipldmount.ipld import cid as cids

RECORD = struct.Struct(">36sQI")  # CID (raw, sha2-256: 36 bytes), offset, size


def blocks(count: int, size: int, round_: int) -> list[tuple[bytes, bytes]]:
    """*count* distinct blocks of *size* bytes (a counter stamped in each: no free rides)."""
    body = os.urandom(size)
    out = []
    for index in range(count):
        data = struct.pack(">II", round_, index) + body[8:]
        out.append((cids.block_cid(cids.RAW, data), data))
    return out


def files_write(where: Path, items: list[tuple[bytes, bytes]]) -> float:
    store = DirectoryBlockstore(where, durable=False)
    with Timer() as timer:
        for cid, data in items:
            store.put_block(cid, data)
        store.sync()
    return timer.seconds


def pack_write(where: Path, items: list[tuple[bytes, bytes]]) -> float:
    where.mkdir(parents=True, exist_ok=True)
    with Timer() as timer, open(where / "pack", "wb") as pack, open(where / "index", "wb") as index:
        offset = 0
        for cid, data in items:
            pack.write(data)
            index.write(RECORD.pack(cid, offset, len(data)))
            offset += len(data)
        for handle in (pack, index):
            handle.flush()
            os.fdatasync(handle.fileno())
    return timer.seconds


def files_read(where: Path, items: list[tuple[bytes, bytes]]) -> float:
    store = DirectoryBlockstore(where, durable=False)
    with Timer() as timer:
        for cid, _ in items:
            store.get(cid)
    return timer.seconds


def pack_read(where: Path, items: list[tuple[bytes, bytes]]) -> float:
    with Timer() as timer:
        index = _index(where)
        fd = os.open(where / "pack", os.O_RDONLY)
        try:
            for cid, _ in items:
                offset, size = index[cid]
                if not cids.verify(cid, os.pread(fd, size, offset)):
                    raise RuntimeError("pack read back wrong bytes")
        finally:
            os.close(fd)
    return timer.seconds


def files_list(where: Path) -> float:
    """What a first listing of the store costs: every block file named and sized."""
    store = DirectoryBlockstore(where, durable=False)
    with Timer() as timer:
        total = sum(store.size(cid) for cid in store)
    if total <= 0:
        raise RuntimeError("listed nothing")
    return timer.seconds


def pack_list(where: Path) -> float:
    with Timer() as timer:
        total = sum(size for _, size in _index(where).values())
    if total <= 0:
        raise RuntimeError("listed nothing")
    return timer.seconds


def _index(where: Path) -> dict[bytes, tuple[int, int]]:
    data = (where / "index").read_bytes()
    return {cid: (offset, size) for cid, offset, size in RECORD.iter_unpack(data)}


def run(ctx: Context) -> None:
    small = 20_000 if ctx.quick else 100_000
    for count, size, label in ((small, 1024, "1 KiB"), (256 if ctx.quick else 1024, 1 << 20, "1 MiB")):
        measure(ctx, count, size, label)


def measure(ctx: Context, count: int, size: int, label: str) -> None:
    log(f"layout: {count:,} blocks of {label}, file per block vs one pack")
    best: dict[str, float] = {}
    for round_ in range(ctx.repeats):
        items = blocks(count, size, round_)
        files, pack = ctx.workdir / "layout" / "files", ctx.workdir / "layout" / "pack"
        order = ["files", "pack"] if round_ % 2 == 0 else ["pack", "files"]
        for side in order:
            took = files_write(files, items) if side == "files" else pack_write(pack, items)
            best[f"{side}_write"] = min(best.get(f"{side}_write", float("inf")), took)
        cold = ctx.caches.drop()
        best["files_read"] = min(best.get("files_read", float("inf")), files_read(files, items))
        ctx.caches.drop()
        best["pack_read"] = min(best.get("pack_read", float("inf")), pack_read(pack, items))
        ctx.caches.drop()
        best["files_list"] = min(best.get("files_list", float("inf")), files_list(files))
        ctx.caches.drop()
        best["pack_list"] = min(best.get("pack_list", float("inf")), pack_list(pack))
        remove_tree(ctx.workdir / "layout")
    note = "" if cold else ctx.caches.cold_note
    what = f"{count:,} x {label}"
    rows = [
        (f"store {what} + make durable", "write", "blocks/s"),
        (f"cold read {what}, in the order written", "read", "blocks/s"),
        (f"cold listing of {what} with sizes", "list", "blocks/s"),
    ]
    for case, step, unit in rows:
        ours, theirs = best[f"files_{step}"], best[f"pack_{step}"]
        ctx.add(Row("layout", case, count / ours, unit, count / theirs, "one pack + index (sketch)", note))
