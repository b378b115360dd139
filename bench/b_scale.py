"""scale: a zarr v2 array of N chunks (shape (side, side), chunks (1, 1)) in one directory.

Built in-process with the tree over a DirectoryBlockstore, mounted, then driven through the
mount beside the same files written to a plain directory (ext4): mount live, `ls -f` (first and
again), `ls -l`, 1,000 random chunk open+read, overwrite one chunk and `ipldmount sync`, and the
daemon's peak RSS. Listing and reads alternate between the two, medians of the rounds.
`run.py --scale N` sets N (default 100,000; 1,000,000 is the issue's size).
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
from pathlib import Path

from common import Context, Mount, Row, Timer, log

from ipldmount.blocks import DirectoryBlockstore
from ipldmount.ipld.cid import cid_to_str
from ipldmount.tree import Tree

READS = 1000


def _zarray(side: int) -> bytes:
    meta = {
        "zarr_format": 2,
        "shape": [side, side],
        "chunks": [1, 1],
        "dtype": "<i8",
        "compressor": None,
        "fill_value": 0,
        "filters": None,
        "order": "C",
    }
    return json.dumps(meta, indent=4, sort_keys=True).encode()


def _chunk(i: int, j: int, side: int) -> bytes:
    return (i * side + j).to_bytes(8, "little")


def _build(ctx: Context, side: int) -> tuple[str, Path]:
    """The array in a store (returns its root) and in a plain directory."""
    store = DirectoryBlockstore(ctx.path("scale", "store"), durable=False)
    plain = ctx.path("scale", "plain", "arr")
    tree = Tree(store)
    log(f"scale: writing {side * side:,} chunks in-process and to {plain}")
    with store.batch():
        tree.write_file("arr/.zarray", _zarray(side))
        for i in range(side):
            for j in range(side):
                tree.write_file(f"arr/{i}.{j}", _chunk(i, j, side))
        root = tree.commit()
    (plain / ".zarray").write_bytes(_zarray(side))
    for i in range(side):
        for j in range(side):
            (plain / f"{i}.{j}").write_bytes(_chunk(i, j, side))
    store.sync()
    return cid_to_str(root), plain


def _ls(path: Path, *flags: str) -> float:
    with Timer() as timer:
        subprocess.run(["ls", *flags, str(path)], check=True, stdout=subprocess.DEVNULL)
    return timer.seconds


def _reads(folder: Path, names: list[str]) -> float:
    with Timer() as timer:
        for name in names:
            with open(folder / name, "rb") as stream:
                stream.read()
    return timer.seconds


def _peak_rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run(ctx: Context) -> None:
    count = ctx.scale
    side = max(2, int(count**0.5))
    root, plain = _build(ctx, side)
    n = side * side
    rounds = max(ctx.repeats, 3)
    mount = Mount(ctx.workdir / "scale" / "store", ctx.workdir / "scale" / "mnt", root=root)
    with Timer() as timer:
        mount.start()
    try:
        ctx.add(Row("scale", f"mount live ({n:,} chunks)", timer.seconds, "s", note="one run"))
        arr = mount.mountpoint / "arr"
        first = _ls(arr, "-f")
        ctx.add(
            Row("scale", "ls -f, first (entries/s)", n / first, "entries/s", n / _ls(plain, "-f"), "ext4")
        )
        mounted, ext4 = [], []
        for _ in range(rounds):
            ext4.append(_ls(plain, "-f"))
            mounted.append(_ls(arr, "-f"))
        ctx.add(_rate("ls -f, again (entries/s)", n, mounted, ext4, rounds))
        mounted, ext4 = [], []
        for _ in range(rounds):
            ext4.append(_ls(plain, "-l"))
            mounted.append(_ls(arr, "-l"))
        ctx.add(_rate("ls -l (entries/s)", n, mounted, ext4, rounds))
        rng = random.Random(11)
        mounted, ext4 = [], []
        for _ in range(rounds):
            names = [f"{rng.randrange(side)}.{rng.randrange(side)}" for _ in range(READS)]
            ext4.append(_reads(plain, names))
            mounted.append(_reads(arr, names))
        ctx.add(_rate(f"{READS:,} random chunk open+read (/s)", READS, mounted, ext4, rounds))
        (arr / "7.7").write_bytes(b"overwrit")
        syncs = [mount.sync()]
        for value in range(rounds - 1):
            (arr / "7.7").write_bytes(value.to_bytes(8, "little"))
            syncs.append(mount.sync())
        ctx.add(
            Row(
                "scale",
                "overwrite one chunk, ipldmount sync",
                statistics.median(syncs),
                "s",
                note=f"median of {len(syncs)}",
            )
        )
        rss = _peak_rss_mb(mount.pid)
        ctx.add(Row("scale", "daemon peak RSS (VmHWM)", rss, "MB", note="the whole session"))
    finally:
        mount.stop()


def _rate(case: str, amount: int, mounted: list[float], ext4: list[float], rounds: int) -> Row:
    return Row(
        "scale",
        case,
        amount / statistics.median(mounted),
        "entries/s" if "ls" in case else "files/s",
        amount / statistics.median(ext4),
        "ext4",
        f"median of {rounds}, interleaved",
    )
