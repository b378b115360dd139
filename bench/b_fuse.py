"""fuse_seq_write, fuse_seq_read, fuse_small_files: file I/O through a mount vs a plain ext4 directory.

Beside both runs the floor (bench/floorfs.py): a Python FUSE file system with the daemon's kernel
settings that does no work, so each case also shows what a FUSE request alone costs in Python.
The plain directory and the mount's blockstore live side by side in the same
scratch directory, so both land on the same disk. Every repetition writes new
content (a counter is stamped into each chunk): a content-addressed store would
otherwise skip blocks it already has, and look faster than it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    MB,
    Context,
    Floor,
    MiB,
    Mount,
    Row,
    Timer,
    log,
    random_block,
    read_file_into,
    sha256_seconds,
    stamp,
    write_all,
)

from ipldmount.blocks import DirectoryBlockstore
from ipldmount.ipld.cid import RAW, block_cid

OPEN_WRITE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


@dataclass
class WriteTiming:
    write: float
    fsync: float
    close: float

    @property
    def total(self) -> float:
        return self.write + self.fsync + self.close


def best_timing(timings: list[WriteTiming]) -> WriteTiming:
    """Each phase at its best; ``total`` of the result is at most the best total."""
    return WriteTiming(
        min(t.write for t in timings), min(t.fsync for t in timings), min(t.close for t in timings)
    )


def write_sequential(path: Path, size: int, chunk: bytearray, first: int, fsync: bool = False) -> WriteTiming:
    """*size* bytes in ``len(chunk)`` writes (chunk k stamped ``first + k``); times each phase."""
    fd = os.open(path, OPEN_WRITE, 0o644)
    closed = False
    try:
        with Timer() as writing:
            for index in range(size // len(chunk)):
                write_all(fd, stamp(chunk, first + index))
        with Timer() as syncing:
            if fsync:
                os.fsync(fd)
        with Timer() as closing:
            closed = True
            os.close(fd)
    finally:
        if not closed:
            os.close(fd)
    return WriteTiming(writing.seconds, syncing.seconds, closing.seconds)


def same_samples(a: Path, b: Path, size: int, samples: int = 16) -> bool:
    """Spot-check that two files hold the same bytes at a few offsets (untimed)."""
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for k in range(samples):
            offset = (size - 4096) * k // max(samples - 1, 1)
            fa.seek(offset)
            fb.seek(offset)
            if fa.read(4096) != fb.read(4096):
                return False
    return True


# --- one big file ---------------------------------------------------------------------


@dataclass
class SeqFixture:
    """A mount and a plain directory, each getting the same big file(s) once."""

    size: int
    repeats: int
    plain: Path
    mount: Mount
    floor: Floor
    ext4: list[WriteTiming] = field(default_factory=list)
    fuse: list[WriteTiming] = field(default_factory=list)
    bare: list[WriteTiming] = field(default_factory=list)

    @classmethod
    def make(cls, ctx: Context) -> SeqFixture:
        size = (256 if ctx.quick else 1024) * MiB
        mount = Mount(ctx.workdir / "seq" / "store", ctx.workdir / "seq" / "mnt")
        mount.start()
        floor = Floor(ctx.workdir / "seq" / "floor", 2, big=size)
        return cls(size, min(ctx.repeats, 2), ctx.path("seq", "plain"), mount, floor)

    @property
    def label(self) -> str:
        return f"{self.size // MiB} MiB" if self.size < 1 << 30 else f"{self.size / (1 << 30):g} GiB"

    def write(self) -> None:
        if self.fuse:
            return
        chunk = random_block(MiB, seed=1)
        chunks = self.size // MiB
        for rep in range(self.repeats):
            os.sync()
            log(f"writing {self.label} to ext4 ({rep + 1}/{self.repeats})")
            self.ext4.append(
                write_sequential(self.plain / f"big{rep}", self.size, chunk, rep * chunks, fsync=True)
            )
            os.sync()
            log(f"writing {self.label} through the mount ({rep + 1}/{self.repeats})")
            self.fuse.append(
                write_sequential(self.mount.mountpoint / f"big{rep}", self.size, chunk, rep * chunks)
            )
            self.bare.append(
                write_sequential(self.floor.mountpoint / "new" / f"big{rep}", self.size, chunk, rep * chunks)
            )
        os.sync()

    def close(self, ctx: Context) -> None:
        self.floor.stop()
        self.mount.stop()
        if self.fuse and self.mount.unmount_seconds is not None:
            total = self.repeats * self.size
            label = f"{total // MiB} MiB" if total < 1 << 30 else f"{total / (1 << 30):g} GiB"
            ctx.add(
                Row(
                    "unmount",
                    f"seq mount: ipldmount unmount (its sync: commit + {label} CAR)",
                    self.mount.unmount_seconds,
                    "s",
                    note="informational",
                )
            )


def seq_write(ctx: Context) -> None:
    fixture: SeqFixture = ctx.fixture("seq", lambda: SeqFixture.make(ctx))
    fixture.write()
    ext4, fuse, size = best_timing(fixture.ext4), best_timing(fixture.fuse), fixture.size
    ext4_cached = min(t.write + t.close for t in fixture.ext4)
    ext4_durable = min(t.total for t in fixture.ext4)
    fuse_total = min(t.total for t in fixture.fuse)
    what = f"{fixture.label}, 1 MiB writes"
    ctx.add(
        Row(
            "fuse_seq_write",
            f"write() {what} (excl. close)",
            size / fuse.write / MB,
            "MB/s",
            size / ext4.write / MB,
            "ext4 write()",
        )
    )
    ctx.add(
        Row(
            "fuse_seq_write",
            "close(): hash + store blocks",
            fuse.close * 1e3,
            "ms",
            (ext4.fsync + ext4.close) * 1e3,
            "ext4 fsync()+close()",
            f"ext4 close() alone: {ext4.close * 1e3:.2f} ms",
        )
    )
    bare = min(t.total for t in fixture.bare)
    totals = (
        (ext4_cached, "ext4 write+close (page cache)", ""),
        (ext4_durable, "ext4 write+fsync+close", ""),
        (bare, "bare pyfuse3 write+close", "the floor: a daemon that drops the data"),
    )
    for seconds, baseline, note in totals:
        ctx.add(
            Row(
                "fuse_seq_write",
                "write+close",
                size / fuse_total / MB,
                "MB/s",
                size / seconds / MB,
                baseline,
                note,
            )
        )


def seq_read(ctx: Context) -> None:
    fixture: SeqFixture = ctx.fixture("seq", lambda: SeqFixture.make(ctx))
    fixture.write()
    size = fixture.size
    plain, mounted = fixture.plain / "big0", fixture.mount.mountpoint / "big0"
    if not same_samples(plain, mounted, size):
        log("WARNING: the file read through the mount differs from the one on ext4")
    fixture.mount.sync()  # untimed: every leaf in its own block file, where blocks_of finds it
    leaves = blocks_of(fixture.mount.store, size)
    buffer = bytearray(MiB)
    best: dict[tuple[str, str], float] = {}
    for rep in range(ctx.repeats):
        readers = (
            ("ext4", lambda: read_file_into(plain, buffer)),
            ("fuse", lambda: read_file_into(mounted, buffer)),
            ("bare", lambda: read_file_into(fixture.floor.mountpoint / "big", buffer)),
            ("blocks", lambda: sum(read_file_into(leaf, buffer) for leaf in leaves)),
        )
        for name, read in readers:
            ctx.caches.drop()
            with Timer() as cold:
                got = read()
            with Timer() as warm:
                read()
            if got != size:
                raise RuntimeError(f"read {got} bytes for {name}, expected {size}")
            for kind, seconds in (("cold", cold.seconds), ("warm", warm.seconds)):
                best[name, kind] = min(best.get((name, kind), seconds), seconds)
        log(f"read pass {rep + 1}/{ctx.repeats} done")
    what = f"{fixture.label}, 1 MiB reads"
    hashing = size / sha256_seconds(random_block(size, seed=3)) / MB
    rows = (
        (
            f"cold read {what}",
            best["fuse", "cold"],
            best["ext4", "cold"],
            "ext4 cold read",
            ctx.caches.cold_note,
        ),
        (f"cold read {what}", best["fuse", "cold"], best["bare", "cold"], "bare pyfuse3 read", FLOOR_READ),
        (f"cold read {what}", best["fuse", "cold"], best["blocks", "cold"], "ext4: its block files", BLOCKS),
        (f"warm read {what}", best["fuse", "warm"], best["ext4", "warm"], "ext4 warm read", WARM),
    )
    for case, ours, theirs, baseline, note in rows:
        ctx.add(Row("fuse_seq_read", case, size / ours / MB, "MB/s", size / theirs / MB, baseline, note))
    case = f"sha256 of {fixture.label} in 1 MiB leaves, 2 threads"
    ctx.add(
        Row(
            "fuse_seq_read", case, hashing, "MB/s", size / best["ext4", "cold"] / MB, "ext4 cold read", HASHED
        )
    )


FLOOR_READ = "the floor: a daemon that sends zeros it holds"
BLOCKS = "the floor on disk: one open + read per 1 MiB block file"
WARM = "second read: page cache (keep_cache)"
HASHED = "every block read is verified: the floor beside FUSE's"


def blocks_of(store: Path, size: int) -> list[Path]:
    """The block files of big0's leaves, in order: written by write_sequential (chunk k stamped k)."""
    blockstore = DirectoryBlockstore(store)
    chunk = random_block(MiB, seed=1)
    return [blockstore.block_path(block_cid(RAW, stamp(chunk, index))) for index in range(size // MiB)]


# --- many small files -----------------------------------------------------------------


def chunk_paths(count: int, prefix: str) -> list[str]:
    """``PREFIX/a/c/I/J`` keys of a 2-d zarr v3 array, 100 chunks per row."""
    return [f"{prefix}/a/c/{i // 100}/{i % 100}" for i in range(count)]


def write_tree(root: Path, keys: list[str], size: int, first: int, fsync: bool = False) -> float:
    """Create every key as a file of *size* bytes (directories included); returns seconds."""
    data = random_block(size, seed=2)
    directories = sorted({key.rpartition("/")[0] for key in keys})
    with Timer() as timer:
        for directory in directories:
            os.makedirs(root / directory, exist_ok=True)
        for index, key in enumerate(keys):
            fd = os.open(root / key, OPEN_WRITE, 0o644)
            try:
                write_all(fd, stamp(data, first + index))
                if fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
    return timer.seconds


def read_tree(root: Path, keys: list[str], size: int) -> float:
    buffer = bytearray(size + 1)
    with Timer() as timer:
        for key in keys:
            if read_file_into(root / key, buffer) != size:
                raise RuntimeError(f"{root / key}: short read")
    return timer.seconds


def stat_tree(root: Path) -> tuple[float, int]:
    """Walk the tree and stat every file (like ``find -ls``); returns (seconds, files)."""
    count = 0
    with Timer() as timer:
        for directory, _, names in os.walk(root):
            for name in names:
                os.stat(os.path.join(directory, name))
                count += 1
    return timer.seconds, count


@dataclass
class SmallFixture:
    """A mount and a plain directory, each getting the same chunk-like files.

    Repetition *r* writes ``r<r>/a/c/I/J``; the trees keep every repetition.
    """

    count: int
    size: int
    repeats: int
    plain: Path
    mount: Mount
    floor: Floor  # its new/ takes the same files (flat, and dropped); its arr/ has 8-byte files to read
    seconds: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def make(cls, ctx: Context) -> SmallFixture:
        mount = Mount(ctx.workdir / "small" / "store", ctx.workdir / "small" / "mnt")
        count = 1000 if ctx.quick else 5000
        mount.start()
        floor = Floor(ctx.workdir / "small" / "floor", FLOOR_SIDE)
        return cls(count, 64 * 1024, min(ctx.repeats, 2), ctx.path("small", "plain"), mount, floor)

    def keys(self, rep: int) -> list[str]:
        return chunk_paths(self.count, f"r{rep}")

    @property
    def all_keys(self) -> list[str]:
        return [key for rep in range(self.repeats) for key in self.keys(rep)]

    def write(self, durable_dir: Path | None = None) -> None:
        """Write every repetition to ext4 and the mount (and to *durable_dir* with fsyncs)."""
        if self.seconds:
            return
        for name in ("ext4", "fuse", "ext4+fsync", "bare"):
            self.seconds[name] = []
        for rep in range(self.repeats):
            keys, first = self.keys(rep), rep * self.count
            log(f"writing {self.count} x {self.size // 1024} KiB: ext4, mount ({rep + 1}/{self.repeats})")
            os.sync()
            self.seconds["ext4"].append(write_tree(self.plain, keys, self.size, first))
            os.sync()
            self.seconds["fuse"].append(write_tree(self.mount.mountpoint, keys, self.size, first))
            flat = [key.replace("/", "-") for key in keys]
            self.seconds["bare"].append(write_tree(self.floor.mountpoint / "new", flat, self.size, first))
            os.sync()
            if durable_dir is not None:
                self.seconds["ext4+fsync"].append(write_tree(durable_dir, keys, self.size, first, fsync=True))
                os.sync()

    def best(self, name: str) -> float:
        return min(self.seconds[name])

    def close(self, ctx: Context) -> None:
        self.floor.stop()
        self.mount.stop()


FLOOR_SIDE = 100  # the floor's arr/ holds FLOOR_SIDE**2 files


def read_floor(root: Path, count: int) -> float:
    """Open, read and close *count* of the floor's 8-byte files (a warm read: no request but open)."""
    buffer = bytearray(64)
    with Timer() as timer:
        for index in range(count):
            read_file_into(root / f"{index // FLOOR_SIDE}.{index % FLOOR_SIDE}", buffer)
    return timer.seconds


def small_files(ctx: Context) -> None:
    fixture: SmallFixture = ctx.fixture("small", lambda: SmallFixture.make(ctx))
    durable_dir = ctx.path("small", "plain-fsync")
    fixture.write(durable_dir)
    if not fixture.seconds[
        "ext4+fsync"
    ]:  # the tree came from an earlier benchmark: time the durable baseline
        for rep in range(fixture.repeats):
            os.sync()
            fixture.seconds["ext4+fsync"].append(
                write_tree(durable_dir, fixture.keys(rep), fixture.size, rep * fixture.count, fsync=True)
            )
    count, size = fixture.count, fixture.size
    what = f"{count} x {size // 1024} KiB files (a/c/i/j)"
    writes = (
        (f"create+write+close {what}", "ext4", "ext4", ""),
        ("create+write+close (same)", "bare", "bare pyfuse3", "the floor: a daemon that drops the data"),
        ("create+write+close (same)", "ext4+fsync", "ext4 + fsync per file", ""),
    )
    for case, key, baseline, note in writes:
        ours, theirs = count / fixture.best("fuse"), count / fixture.best(key)
        ctx.add(Row("fuse_small_files", case, ours, "ops/s", theirs, baseline, note))

    keys = fixture.keys(0)
    if not same_samples(fixture.plain / keys[-1], fixture.mount.mountpoint / keys[-1], size, 4):
        log("WARNING: a file read through the mount differs from the one on ext4")
    best: dict[tuple[str, str], float] = {}
    files = 0
    for rep in range(ctx.repeats):
        for name, root in (("ext4", fixture.plain), ("fuse", fixture.mount.mountpoint)):
            ctx.caches.drop()
            figures = {"cold": read_tree(root, keys, size), "warm": read_tree(root, keys, size)}
            ctx.caches.drop()
            figures["stat"], files = stat_tree(root)
            for kind, value in figures.items():
                best[name, kind] = min(best.get((name, kind), value), value)
        read_floor(fixture.floor.mountpoint / "arr", count)
        best["bare", "warm"] = min(
            best.get(("bare", "warm"), 1e9), read_floor(fixture.floor.mountpoint / "arr", count)
        )
        log(f"read pass {rep + 1}/{ctx.repeats} done")
    ctx.add(
        Row(
            "fuse_small_files",
            "open+read+close, warm",
            count / best["fuse", "warm"],
            "ops/s",
            count / best["bare", "warm"],
            "bare pyfuse3 warm",
            "the floor: its 8-byte files, read a second time",
        )
    )
    for kind, label in (("cold", f"open+read+close {count} files, cold"), ("warm", "open+read+close, warm")):
        ctx.add(
            Row(
                "fuse_small_files",
                label,
                count / best["fuse", kind],
                "ops/s",
                count / best["ext4", kind],
                f"ext4 {kind}",
                ctx.caches.cold_note if kind == "cold" else "",
            )
        )
    ctx.add(
        Row(
            "fuse_small_files",
            f"walk + stat all {files} files, cold",
            files / best["fuse", "stat"],
            "ops/s",
            files / best["ext4", "stat"],
            "ext4 cold",
            ctx.caches.cold_note,
        )
    )
