"""history: diff and CAR of two roots that differ in one chunk, beside a full export (same run).

A zarr v2-like array of N chunk keys in one (sharded) directory, each chunk a small real block,
in a DirectoryBlockstore; one chunk is overwritten and committed. The diff and the sync's CAR of
the change must cost the change (the HAMT nodes on one path), the export costs the tree: their
ratio is the point. The CAR's row also counts the blocks it read against those on the changed path.
"""

from __future__ import annotations

import statistics

from common import Context, Row, Timer, log

from ipldmount.blocks import DirectoryBlockstore, car, dag
from ipldmount.format.diff import Change, diff_roots
from ipldmount.tree.model import Tree


class _Discard:
    def write(self, data: bytes | bytearray | memoryview) -> int:
        return len(data)


class _CountingStore(DirectoryBlockstore):
    """Notes every block read, to show what the CAR of the change touches."""

    reads: set[bytes]

    def get(self, cid: bytes) -> bytes:
        self.reads.add(cid)
        return super().get(cid)

    def read(self, cid: bytes, offset: int = 0, size: int = -1) -> bytes:
        self.reads.add(cid)
        return super().read(cid, offset, size)


def run(ctx: Context) -> None:
    side = 150 if ctx.quick else 317  # 22,500 or 100,489 chunk keys
    store = _CountingStore(ctx.path("history", "store"), durable=False)
    store.reads = set()
    tree = Tree(store)
    log(f"history: writing {side * side} chunks")
    with store.batch():
        for i in range(side):
            for j in range(side):
                tree.write_file(f"arr/{i}.{j}", b"chunk %d.%d" % (i, j))
        before = tree.commit()
    tree.write_file("arr/7.7", b"overwritten")
    after = tree.commit()
    rounds = max(ctx.repeats, 5)
    diffs, changes_cars, exports = [], [], []
    for _ in range(rounds):
        with Timer() as timer:
            changes = list(diff_roots(store, before, after))
        diffs.append(timer.seconds)
        store.reads.clear()
        with Timer() as timer:
            change_bytes = car.export_car(store, after, _Discard(), since=before)  # type: ignore[arg-type]
        changes_cars.append(timer.seconds)
        change_reads = set(store.reads)
        with Timer() as timer:
            full_bytes = car.export_car(store, after, _Discard())  # type: ignore[arg-type]
        exports.append(timer.seconds)
    assert changes == [Change("modified", "arr/7.7")], changes
    sent = {cid for cid, _ in dag.iter_new_blocks(store, after, before)}
    old = {cid for cid, _ in dag.iter_closure(store, before)}
    new = {cid for cid, _ in dag.iter_closure(store, after)}
    touched = sent | (old - new)  # the new path and the old path it replaces
    untouched_reads = len(change_reads - touched)
    assert sent == new - old, "the CAR of the change is not exactly the new blocks"
    ctx.add(
        Row(
            "history",
            f"CAR of a 1-chunk change among {side * side}: {change_bytes:,} B, {len(sent)} blocks",
            statistics.median(changes_cars) * 1e3,
            "ms",
            statistics.median(exports) * 1e3,
            f"full export ({full_bytes:,} B)",
            f"median of {rounds}; read {len(change_reads)} blocks, {untouched_reads} off the changed path",
        )
    )
    ctx.add(
        Row(
            "history",
            f"diff of two roots, 1 chunk changed among {side * side}",
            statistics.median(diffs) * 1e3,
            "ms",
            statistics.median(exports) * 1e3,
            "export of the whole tree",
            f"median of {rounds}, interleaved",
        )
    )
