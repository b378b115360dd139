"""history: diff of two roots that differ in one chunk, beside a full export of the tree (same run).

A zarr v2-like array of N chunk keys in one (sharded) directory, each chunk a small real block,
in a DirectoryBlockstore; one chunk is overwritten and committed. The diff must cost the change
(the HAMT nodes on one path), the export costs the tree: their ratio is the point.
"""

from __future__ import annotations

import statistics

from common import Context, Row, Timer, log

from ipldmount.blocks import DirectoryBlockstore, car
from ipldmount.format.diff import Change, diff_roots
from ipldmount.tree import Tree


class _Discard:
    def write(self, data: bytes | bytearray | memoryview) -> int:
        return len(data)


def run(ctx: Context) -> None:
    side = 150 if ctx.quick else 317  # 22,500 or 100,489 chunk keys
    store = DirectoryBlockstore(ctx.path("history", "store"), durable=False)
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
    diffs, exports = [], []
    for _ in range(rounds):
        with Timer() as timer:
            changes = list(diff_roots(store, before, after))
        diffs.append(timer.seconds)
        with Timer() as timer:
            car.export_car(store, after, _Discard())  # type: ignore[arg-type]
        exports.append(timer.seconds)
    assert changes == [Change("modified", "arr/7.7")], changes
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
