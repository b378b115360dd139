"""records: what keeping the history whole costs, beside what it cost before (same run, interleaved).

- Appending a root record: a sealed line (checksum) under the store's lock, then the history's
  head file, against the plain fsynced append of one JSON line it replaced.
- Reading a long history whole (every line's checksum checked, the head compared), against
  parsing the same JSON lines without checks (the old reader).
- ``IPLDStore.freeze()`` after a one-chunk write on a store on disk, which now also publishes the
  root it uses in STORE/live/, against a freeze of an in-memory store of the same tree (the
  floor of committing a change, with no disk at all).
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics

import zarr
from common import Context, Row, Timer, log

from ipldmount.adapters.zarr_store import IPLDStore
from ipldmount.blocks import DirectoryBlockstore, MemoryBlockstore
from ipldmount.ipld import cid as cids
from ipldmount.repo.home import StoreHome
from ipldmount.repo.registry import RootRecord, _append_line, _sealed


def _record(index: int) -> RootRecord:
    root = cids.cid_to_str(cids.digest_cid(cids.DAG_CBOR, hashlib.sha256(b"%d" % index).digest()))
    return RootRecord(root, RootRecord.now(), "mount", "/mnt/data", root, None, None)


def _plain_read(data: bytes) -> int:
    """The reader before checksums: each line parsed, made a record."""
    return sum(1 for line in data.splitlines() if line.strip() and RootRecord(**json.loads(line)))


def run(ctx: Context) -> None:
    _appends(ctx)
    _reading(ctx)
    _freezes(ctx)


def _appends(ctx: Context) -> None:
    home = StoreHome(DirectoryBlockstore(ctx.path("records", "store")))
    plain = ctx.path("records", "plain") / "plain.log"
    rounds, count = max(ctx.repeats, 5), 20 if ctx.quick else 50
    sealed_times, plain_times = [], []
    for _ in range(rounds):
        with Timer() as timer:
            for index in range(count):
                home.registry.record(_record(index))
        sealed_times.append(timer.seconds / count)
        with Timer() as timer:
            for index in range(count):
                _append_line(plain, home.open_private, _record(index).as_json())
        plain_times.append(timer.seconds / count)
    ctx.add(
        Row(
            "records",
            "append a root record (sealed line + head file, fsynced)",
            statistics.median(sealed_times) * 1e3,
            "ms",
            statistics.median(plain_times) * 1e3,
            "a plain fsynced JSON line",
            f"median of {rounds} rounds of {count}, interleaved",
        )
    )


def _reading(ctx: Context) -> None:
    lines = 20_000 if ctx.quick else 100_000
    home = StoreHome(DirectoryBlockstore(ctx.path("records", "long")))
    log(f"records: a history of {lines} lines")
    home.registry.path.write_bytes(b"".join(_sealed(_record(index).as_json()) for index in range(lines)))
    plain = b"".join(
        (json.dumps(_record(index).as_json(), sort_keys=True) + "\n").encode() for index in range(lines)
    )
    rounds = max(ctx.repeats, 3)
    ours, theirs = [], []
    for _ in range(rounds):
        with Timer() as timer:
            history = home.registry.read_whole()
        ours.append(timer.seconds)
        assert not history.damaged and len(history.records) == lines
        with Timer() as timer:
            assert _plain_read(plain) == lines
        theirs.append(timer.seconds)
    ctx.add(
        Row(
            "records",
            f"read a history of {lines:,} lines whole (checksums, head)",
            statistics.median(ours),
            "s",
            statistics.median(theirs),
            "parse the same lines unchecked",
            f"median of {rounds}, interleaved",
        )
    )


def _freezes(ctx: Context) -> None:
    buffer = zarr.core.buffer.default_buffer_prototype().buffer.from_bytes
    disk = IPLDStore(DirectoryBlockstore(ctx.path("records", "freeze")))
    memory = IPLDStore(MemoryBlockstore())
    for store in (disk, memory):
        for index in range(1_000):
            store.set_sync(f"a/c/{index}", buffer(b"%d" % index * 100))
        store.freeze()
    rounds = 40 if ctx.quick else 100
    on_disk, in_memory = [], []
    for index in range(rounds):
        for store, times in ((disk, on_disk), (memory, in_memory)):
            store.set_sync(f"a/c/{index}", buffer(os.urandom(1024)))
            with Timer() as timer:
                store.freeze()
            times.append(timer.seconds)
    disk.close()
    ctx.add(
        Row(
            "records",
            "IPLDStore(DirectoryBlockstore).freeze() after a 1-chunk write (records, publishes its root)",
            statistics.median(on_disk) * 1e3,
            "ms",
            statistics.median(in_memory) * 1e3,
            "IPLDStore(MemoryBlockstore).freeze()",
            f"median of {rounds}, interleaved",
        )
    )
