"""scale: a zarr v2 array of N chunks (shape (side, side), chunks (1, 1)) in one directory.

Built in-process with the tree over a DirectoryBlockstore, mounted, then driven through the
mount beside the same files written to a plain directory (ext4) and served by a bare pyfuse3 file
system that does no work (floorfs.py: the floor of any Python FUSE daemon): mount live, `ls -f`
(first and again), `ls -l`, 1,000 random chunk open+read, 100,000 files created into one
directory, overwrite one chunk and `ipldmount sync`, and the daemon's peak RSS. Listing and reads
alternate between the three, medians of the rounds. Then `ipldmount gc --dry-run` of that store
beside listing and stat'ing its block files, and gc's peak RSS.
`run.py --scale N` sets N (default 100,000, 10,000 with --quick; 1,000,000 is the issue's size).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import IPLDMOUNT, Context, Floor, Mount, Row, Timer, log
from zarr.core.buffer import default_buffer_prototype

from ipldmount.adapters.zarr_store import IPLDStore
from ipldmount.blocks import DirectoryBlockstore
from ipldmount.ipld.cid import cid_to_str
from ipldmount.tree.model import Tree

READS = 1000
CREATES = 100_000  # files created through the mount into one directory (--quick: a tenth)


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


def _set_and_freeze(ctx: Context, root: str, rounds: int) -> float:
    """Median seconds of one IPLDStore.set_sync + freeze() in the array, in-process, on its store."""
    store = IPLDStore(DirectoryBlockstore(ctx.path("scale", "store"), durable=False), root)
    buffer = default_buffer_prototype().buffer
    times = []
    for index in range(rounds):
        with Timer() as timer:
            store.set_sync(f"arr/{index}.{index}", buffer.from_bytes(b"in-proc%d" % index))
            store.freeze()
        times.append(timer.seconds)
    return statistics.median(times)


def _ls(path: Path, *flags: str) -> float:
    with Timer() as timer:
        subprocess.run(["ls", *flags, str(path)], check=True, stdout=subprocess.DEVNULL)
    return timer.seconds


def _creates(folders: dict[str, Path], count: int, slices: int = 10) -> dict[str, list[float]]:
    """Create+write+close *count* 8-byte files in each folder, a slice at a time for each in turn;
    returns the total seconds of each (as a one-element list)."""
    for folder in folders.values():
        folder.mkdir(exist_ok=True)
    seconds = dict.fromkeys(folders, 0.0)
    for part in range(slices):
        names = range(part * count // slices, (part + 1) * count // slices)
        for place, folder in folders.items():
            with Timer() as timer:
                for index in names:
                    fd = os.open(folder / f"{index}.0", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    try:
                        os.write(fd, index.to_bytes(8, "little"))
                    finally:
                        os.close(fd)
            seconds[place] += timer.seconds
    return {place: [total] for place, total in seconds.items()}


def _name(rng: random.Random, side: int) -> str:
    return f"{rng.randrange(side)}.{rng.randrange(side)}"


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
    ctx.add(
        Row(
            "scale",
            "in-process: one set + freeze",
            _set_and_freeze(ctx, root, 2 * rounds + 1),
            "s",
            note="median",
        )
    )
    mount = Mount(ctx.workdir / "scale" / "store", ctx.workdir / "scale" / "mnt", root=root)
    with Timer() as timer:
        mount.start()
    floor: Floor | None = None
    try:
        ctx.add(Row("scale", f"mount live ({n:,} chunks)", timer.seconds, "s", note="one run"))
        floor = Floor(ctx.workdir / "scale" / "floor", side)
        places = {"ext4": plain, "floor": floor.mountpoint / "arr", "mount": mount.mountpoint / "arr"}
        first = {}
        for name, path in places.items():
            ctx.caches.drop()
            first[name] = _ls(path, "-f")
        cold = ctx.caches.cold_note or "cold"
        _add_rates(ctx, "ls -f, first (entries/s)", n, {k: [v] for k, v in first.items()}, f"one run, {cold}")
        _add_rates(
            ctx, "ls -f, again (entries/s)", n, _interleaved(places, rounds, lambda p, _: _ls(p, "-f"))
        )
        _add_rates(ctx, "ls -l (entries/s)", n, _interleaved(places, rounds, lambda p, _: _ls(p, "-l")))
        ctx.caches.drop()  # after the listings above: it would empty the kernel's caches of them
        stats, seconds = _stat_all(ctx.workdir / "scale" / "store" / "blocks")
        ctx.add(
            Row(
                "scale",
                "ls -f, first (entries/s)",
                n / first["mount"],
                "entries/s",
                stats / seconds,
                "ext4: stat its block files",
                f"the floor on disk: a size is a stat ({STAT_THREADS} threads), {cold}",
            )
        )
        rng = random.Random(11)
        picks = [
            [f"{rng.randrange(side)}.{rng.randrange(side)}" for _ in range(READS)] for _ in range(rounds)
        ]
        reads = _interleaved(places, rounds, lambda p, index: _reads(p, picks[index]))  # same names for all
        _add_rates(ctx, f"{READS:,} random chunk open+read (/s)", READS, reads)
        creates = min(n, CREATES // 10 if ctx.quick else CREATES)
        folders = {name: path.parent / "new" for name, path in places.items()}
        made = _creates(folders, creates)
        _add_rates(
            ctx,
            f"{creates:,} files created into one directory (/s)",
            creates,
            made,
            "10 slices each, interleaved",
        )
        floor.stop()
        floor = None
        ctx.add(Row("scale", f"ipldmount sync of those {creates:,} files", mount.sync(), "s", note="one run"))
        arr = mount.mountpoint / "arr"
        (arr / "7.7").write_bytes(b"overwrit")
        syncs = [mount.sync()]
        for value in range(rounds - 1):
            (arr / "7.7").write_bytes(value.to_bytes(8, "little"))
            syncs.append(mount.sync())
        note = f"median of {len(syncs)}"
        ctx.add(Row("scale", "overwrite one chunk, ipldmount sync", statistics.median(syncs), "s", note=note))
        rss = _peak_rss_mb(mount.pid)
        ctx.add(Row("scale", "daemon peak RSS (VmHWM)", rss, "MB", note="the whole session"))
    finally:
        if floor is not None:
            floor.stop()
        mount.stop()
    _collect(ctx, ctx.workdir / "scale" / "store", rounds)


def _collect(ctx: Context, store: Path, rounds: int) -> None:
    """`gc --dry-run` (mark every kept root, sweep every block) against its floor on disk: list
    every block file and stat it, as marking and sweeping do. Interleaved, warm caches."""
    command = [*IPLDMOUNT, "gc", "--dry-run", "--grace", "0", "--json", "--store", str(store)]
    gc_runs: list[float] = []
    peaks: list[float] = []
    floors: list[float] = []
    for _ in range(rounds):
        seconds, peak, report = _measured(command)
        gc_runs.append(seconds)
        peaks.append(peak)
        with Timer() as timer:
            files = _list_and_stat(store / "blocks")
        floors.append(timer.seconds)
    note = f"median of {rounds}; kept {report['kept_blocks']:,}, of {files:,} blocks"
    ctx.add(
        Row(
            "scale",
            "gc --dry-run (blocks/s)",
            files / statistics.median(gc_runs),
            "blocks/s",
            files / statistics.median(floors),
            "ext4: list and stat every block file",
            note,
        )
    )
    ctx.add(Row("scale", "gc peak RSS (ru_maxrss)", max(peaks), "MB", note=f"of {rounds} runs"))


# Runs a command as a child of a small process and prints the child's own peak RSS (KiB) last on
# stderr: a child forked by the bench itself would count the bench's pages until it execs.
_PEAK_RSS = (
    "import os, sys\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os.execv(sys.argv[1], sys.argv[1:])\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    "print(usage.ru_maxrss, file=sys.stderr)\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def _measured(command: list[str]) -> tuple[float, float, dict[str, Any]]:
    """(seconds, peak RSS in MB, its JSON output) of a command that must succeed."""
    with Timer() as timer:
        done = subprocess.run([sys.executable, "-S", "-c", _PEAK_RSS, *command], capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr[-500:]!r}")
    return timer.seconds, int(done.stderr.split()[-1]) / 1024, json.loads(done.stdout)


def _list_and_stat(folder: Path) -> int:
    """Every file under *folder*, listed and stat'ed in one thread (gc's floor); how many."""
    count = 0
    for shard in os.scandir(folder):
        with os.scandir(shard.path) as entries:
            for entry in entries:
                entry.stat()
                count += 1
    return count


STAT_THREADS = 16  # as many as the daemon looks sizes up with


def _stat_all(folder: Path) -> tuple[int, float]:
    """(files, seconds) to stat every file under *folder* over STAT_THREADS threads (the walk untimed)."""
    paths = [os.path.join(where, name) for where, _, names in os.walk(folder) for name in names]
    with ThreadPoolExecutor(STAT_THREADS) as pool, Timer() as timer:
        for _ in pool.map(os.stat, paths, chunksize=256):
            pass
    return len(paths), timer.seconds


def _interleaved(
    places: dict[str, Path], rounds: int, measure: Callable[[Path, int], float]
) -> dict[str, list[float]]:
    """``measure(place, round)`` for each place in turn, *rounds* times: every round visits all."""
    times: dict[str, list[float]] = {name: [] for name in places}
    for index in range(rounds):
        for name, path in places.items():
            times[name].append(measure(path, index))
    return times


def _add_rates(ctx: Context, case: str, amount: int, times: dict[str, list[float]], note: str = "") -> None:
    """Two rows: the mount against ext4, and against the bare pyfuse3 floor."""
    note = note or f"median of {len(times['mount'])}, interleaved"
    mounted = amount / statistics.median(times["mount"])
    unit = "entries/s" if "ls" in case else "files/s"
    ctx.add(Row("scale", case, mounted, unit, amount / statistics.median(times["ext4"]), "ext4", note))
    floor = amount / statistics.median(times["floor"])
    ctx.add(Row("scale", case, mounted, unit, floor, "bare pyfuse3", "the floor of any Python daemon"))
