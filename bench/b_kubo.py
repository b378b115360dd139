"""kubo: the mount against Kubo's own FUSE mounts (writable /mfs, read-only /ipfs/CID) and
ipldmount's import, export and remote reads against Kubo's command line.

One Kubo daemon (tests/ipfs_node.py, the node the tests run; started with ``--mount``, its
mounts in the scratch directory, its repo on the same disk as ipldmount's stores) and the
ipldmount mounts run side by side. Every workload runs in rounds; in each, the sides take turns
going first (the order rotates by round), each round writes fresh bytes (a counter stamped in
every file), and the **medians** are compared. Every step on Kubo's side is bounded by a timeout:
a failure or a hang of its mount becomes a row note (the daemon is killed, which aborts its FUSE
connections, and started again), not the end of the run.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from b_fuse import chunk_paths, read_tree, write_sequential, write_tree
from common import IPLDMOUNT, MB, Context, MiB, Mount, Row, Timer, log, read_file_into

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import ipfs_node  # the test suite's node runner

BENCH = "kubo"
T = TypeVar("T")

MFS = "Kubo /mfs"
RO = "Kubo /ipfs/CID"
FLUSHED = "Kubo /mfs + files flush"
EXT4 = "ext4"
STEP_TIMEOUT = 600.0  # seconds for any one step on Kubo's side
READ_TIMEOUT = 120.0  # seconds for two passes over files already there (ext4 needs well under 1 s)


class KuboFailed(Exception):
    """A step on Kubo's side failed or hung; the message says which and how."""


class Kubo:
    """The Kubo daemon with its mounts, and bounded steps against it."""

    def __init__(self, home: Path) -> None:
        self.node = ipfs_node.IpfsNode(home, mounts=home / "mnt", swarm=True)

    @property
    def mfs(self) -> Path:
        return self.node.mountpoint("mfs")

    def ro(self, cid: str) -> Path:
        return self.node.mountpoint("ipfs") / cid

    def start(self) -> None:
        self.node.start()

    def stop(self) -> None:
        self.node.stop()

    def restart(self) -> None:
        self.node.stop()
        try:
            self.node.start()
        except RuntimeError as exc:
            raise KuboFailed(f"restarting the node: {exc}") from exc

    def ipfs(self, *args: str, timeout: float = STEP_TIMEOUT) -> str:
        try:
            return self.node.ipfs(*args, timeout=timeout)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            raise KuboFailed(f"ipfs {args[0]} {args[1] if len(args) > 1 else ''}: {exc}") from exc

    def flush(self) -> float:
        """``ipfs files flush /``: MFS's root is persisted; seconds."""
        with Timer() as timer:
            self.ipfs("files", "flush", "/")
        return timer.seconds

    def cid(self, mfs_path: str) -> str:
        """The CID of what MFS holds at *mfs_path* (``ipfs files stat --hash``)."""
        return self.ipfs("files", "stat", "--hash", mfs_path).strip()

    def bounded(self, what: str, function: Callable[[], T], timeout: float = STEP_TIMEOUT) -> T:
        """*function* (file I/O on Kubo's mounts) in a thread; on a hang, the daemon is killed
        (its FUSE connections abort, so the stuck call returns) and started again."""
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["value"] = function()
            except BaseException as exc:  # handed to the caller
                box["error"] = exc

        thread = threading.Thread(target=target, name=f"kubo {what}", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            log(f"kubo: {what}: no answer within {timeout:g} s: killing and restarting the node")
            process = self.node.process
            if process is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            thread.join(60)
            self.restart()
            raise KuboFailed(f"{what}: hung (no answer within {timeout:g} s)")
        error = box.get("error")
        if isinstance(error, KuboFailed):
            raise error
        if isinstance(error, (OSError, RuntimeError, ValueError, subprocess.SubprocessError)):
            raise KuboFailed(f"{what}: {type(error).__name__}: {error}") from error
        if error is not None:
            raise error
        return box["value"]  # type: ignore[no-any-return]


@dataclass
class Samples:
    """Seconds by side, one per round; the medians are compared."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # side -> why it stopped

    def add(self, side: str, seconds: float) -> None:
        self.seconds.setdefault(side, []).append(seconds)

    def median(self, side: str) -> float | None:
        values = self.seconds.get(side)
        return statistics.median(values) if values and side not in self.failed else None

    def rate(self, side: str, amount: float) -> float | None:
        median = self.median(side)
        return amount / median if median else None


def rotated(sides: list[str], round_: int) -> list[str]:
    """The sides in this round's order: the first goes first in round 0, the next in round 1..."""
    shift = round_ % len(sides)
    return sides[shift:] + sides[:shift]


def run_round(samples: Samples, order: list[str], steps: dict[str, Callable[[], float]]) -> None:
    """Run each side's step (seconds) in *order*; a Kubo failure is recorded, not raised."""
    for side in order:
        if side in samples.failed:
            continue
        try:
            samples.add(side, steps[side]())
        except KuboFailed as exc:
            log(f"kubo: {side}: {exc}")
            samples.failed[side] = str(exc)


def row(
    ctx: Context,
    case: str,
    samples: Samples,
    ours: str,
    theirs: str,
    baseline_name: str,
    unit: str,
    amount: float,
    note: str = "",
) -> None:
    """A row of *ours* against *theirs*: a rate (amount per second) or seconds (amount is 1)."""
    rounds = len(samples.seconds.get(ours, []))
    if unit == "s":
        value, baseline = samples.median(ours), samples.median(theirs)
    else:
        value, baseline = samples.rate(ours, amount), samples.rate(theirs, amount)
    parts = [f"median of {rounds}"] + ([note] if note else [])
    if theirs in samples.failed:
        parts.append(f"Kubo FAILED: {samples.failed[theirs]}")
    ctx.add(Row(BENCH, case, value, unit, baseline, baseline_name, "; ".join(parts)))


# --- the workloads ------------------------------------------------------------------------

Steps = dict[str, Callable[[], float]]


@dataclass
class Setup:
    ctx: Context
    kubo: Kubo
    mount: Mount  # ipldmount: workloads 1, 2, 3 and 5
    rounds: int
    plain: Path  # ext4

    def rounds_of(self, what: str, samples: Samples, sides: list[str], steps: Callable[[int], Steps]) -> None:
        """Every round: *steps(round)*, run in the round's order."""
        for round_ in range(self.rounds):
            run_round(samples, rotated(sides, round_), steps(round_))
            log(f"kubo: {what}: round {round_ + 1}/{self.rounds}")

    def on_kubo(self, what: str, function: Callable[[], float]) -> Callable[[], float]:
        """*function* as a bounded step on Kubo's mounts."""
        return lambda: self.kubo.bounded(what, function, timeout=READ_TIMEOUT)


def small_writes(s: Setup) -> None:
    """1: create+write+close of 64 KiB files in a fresh directory per round."""
    count = 200 if s.ctx.quick else 2000
    size = 64 * 1024
    samples = Samples()
    flushes: list[float] = []

    def steps(round_: int) -> Steps:
        keys = chunk_paths(count, f"w1-{round_}")
        first = (round_ + 1) * 10_000_000

        def kubo() -> float:
            seconds = s.kubo.bounded(
                "64 KiB files into /mfs", lambda: write_tree(s.kubo.mfs, keys, size, first)
            )
            flushes.append(s.kubo.flush())
            return seconds + flushes[-1]

        return {
            "ipldmount": lambda: write_tree(s.mount.mountpoint, keys, size, first),
            "kubo": kubo,
            "ext4": lambda: write_tree(s.plain, keys, size, first),
        }

    s.rounds_of("small writes", samples, ["ipldmount", "kubo", "ext4"], steps)
    case = f"create+write+close {count:,} x 64 KiB files"
    flush = f"; files flush {statistics.median(flushes) * 1e3:.0f} ms" if flushes else ""
    note = f"a/c/I/J, 100 a directory, fresh each round{flush}"
    row(s.ctx, case, samples, "ipldmount", "kubo", FLUSHED, "files/s", count, note)
    row(s.ctx, case, samples, "ipldmount", "ext4", "ext4 (page cache)", "files/s", count)


def kubo_roots(
    s: Setup, samples: Samples, what: str, make: Callable[[Path], object], name: str
) -> dict[str, Path]:
    """Have *make* fill /mfs/NAME; the sides reading it: /ipfs/CID (its CID) and /mfs/NAME."""
    try:
        with Timer() as making:
            s.kubo.bounded(what, lambda: make(s.kubo.mfs / name))
        s.kubo.flush()
        log(f"kubo: {what}: {making.seconds:.1f} s through /mfs")
        return {"kubo_ro": s.kubo.ro(s.kubo.cid(f"/{name}")), "kubo_mfs": s.kubo.mfs / name}
    except KuboFailed as exc:
        samples.failed["kubo_ro"] = samples.failed["kubo_mfs"] = str(exc)
        return {}


def second_pass(s: Setup, roots: dict[str, Path], read: Callable[[Path], float]) -> Callable[[int], Steps]:
    """Steps reading each root twice, timing the second pass (bounded on Kubo's side by
    READ_TIMEOUT)."""

    def twice(root: Path) -> float:
        read(root)
        return read(root)

    def steps(round_: int) -> Steps:
        result: Steps = {}
        for side, root in roots.items():
            step = functools.partial(twice, root)
            what = f"two passes over {root.relative_to(s.ctx.workdir)}"
            result[side] = s.on_kubo(what, step) if side.startswith("kubo") else step
        return result

    return steps


def warm_reads(s: Setup) -> None:
    """2: open+read+close of 4 KiB files, the second of two passes."""
    count = 500 if s.ctx.quick else 5000
    size = 4096
    keys = chunk_paths(count, "w2")
    below = [key.partition("/")[2] for key in keys]  # a/c/I/J
    samples = Samples()
    log(f"kubo: {count} x 4 KiB files on the mount, /mfs and ext4")
    for root in (s.mount.mountpoint, s.plain):
        write_tree(root, keys, size, 1)
    roots = kubo_roots(
        s, samples, f"{count} x 4 KiB files", lambda mfs: write_tree(mfs.parent, keys, size, 1), "w2"
    )
    roots.update(ipldmount=s.mount.mountpoint / "w2", ext4=s.plain / "w2")
    read = functools.partial(read_tree, keys=below, size=size)
    s.rounds_of(
        "warm reads", samples, ["ipldmount", "kubo_ro", "kubo_mfs", "ext4"], second_pass(s, roots, read)
    )
    case = f"open+read+close {count:,} x 4 KiB files, warm"
    note = "the second of two passes"
    row(s.ctx, case, samples, "ipldmount", "kubo_ro", RO, "files/s", count, note)
    row(s.ctx, case, samples, "ipldmount", "kubo_mfs", MFS, "files/s", count, note)
    row(s.ctx, case, samples, "ipldmount", "ext4", "ext4 warm", "files/s", count, note)


def listing(s: Setup) -> None:
    """3: ``ls -l`` (scandir + lstat of each entry) of one big directory, the second pass."""
    count = 2000 if s.ctx.quick else 10_000
    names = [str(index) for index in range(count)]
    samples = Samples()
    log(f"kubo: a directory of {count:,} files on the mount, /mfs and ext4")
    for root in (s.mount.mountpoint, s.plain):
        make_flat(root / "w3", names)
    # Kubo gets them by `ipfs add -r` and `ipfs files cp` into MFS: created one by one through
    # /mfs, 10,000 files in one directory take minutes (each create rewrites the directory).
    roots: dict[str, Path] = {}
    try:
        cid = s.kubo.ipfs("add", "-r", "-Q", "--cid-version=1", "--raw-leaves", str(s.plain / "w3")).strip()
        s.kubo.ipfs("files", "cp", f"/ipfs/{cid}", "/w3")
        s.kubo.flush()
        roots = {"kubo_ro": s.kubo.ro(cid), "kubo_mfs": s.kubo.mfs / "w3"}
    except KuboFailed as exc:
        samples.failed["kubo_ro"] = samples.failed["kubo_mfs"] = str(exc)
    roots.update(ipldmount=s.mount.mountpoint / "w3", ext4=s.plain / "w3")

    def read(root: Path) -> float:
        seconds, found = ls_l(root)
        if found != count:
            raise RuntimeError(f"{root}: {found} entries, not {count}")
        return seconds

    s.rounds_of("ls -l", samples, ["ipldmount", "kubo_ro", "kubo_mfs", "ext4"], second_pass(s, roots, read))
    case = f"ls -l of a {count:,}-entry directory, warm"
    note = "scandir + lstat each; second pass; Kubo's copy: ipfs add -r + ipfs files cp"
    row(s.ctx, case, samples, "ipldmount", "kubo_ro", RO, "entries/s", count, note)
    row(s.ctx, case, samples, "ipldmount", "kubo_mfs", MFS, "entries/s", count, note)
    row(s.ctx, case, samples, "ipldmount", "ext4", "ext4 warm", "entries/s", count, note)


def make_flat(folder: Path, names: list[str]) -> None:
    folder.mkdir()
    for name in names:
        fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, name.encode())
        finally:
            os.close(fd)


def ls_l(folder: Path) -> tuple[float, int]:
    with Timer() as timer:
        count = 0
        with os.scandir(folder) as entries:
            for entry in entries:
                os.lstat(entry.path)
                count += 1
    return timer.seconds, count


def big_file(s: Setup) -> None:
    """4: one big file written with 1 MiB writes, then read back cold."""
    size = (128 if s.ctx.quick else 1024) * MiB
    label = f"{size // MiB} MiB" if size < 1 << 30 else f"{size / (1 << 30):g} GiB"
    chunk = bytearray(np.random.default_rng(41).bytes(MiB))
    buffer = bytearray(MiB)
    work = s.ctx.workdir / "kubo"
    mounts = [Mount(work / "big-store", work / "big-mnt").start()]  # the one mounted now is last
    samples = Samples()

    def writes(round_: int) -> Steps:
        first, name = (round_ + 1) * 1_000_000, f"big-{round_}"

        def ours() -> float:
            written = write_sequential(mounts[-1].mountpoint / name, size, chunk, first)
            samples.add("ipldmount_sync", written.total + mounts[-1].sync())
            return written.total

        def kubo() -> float:
            what = f"{label} into /mfs"
            written = s.kubo.bounded(what, lambda: write_sequential(s.kubo.mfs / name, size, chunk, first))
            return written.total + s.kubo.flush()

        def ext4() -> float:
            return write_sequential(s.plain / name, size, chunk, first, fsync=True).total

        return {"ipldmount": ours, "kubo": kubo, "ext4": ext4}

    def reads(round_: int) -> Steps:
        """Cold: ipldmount remounted, Kubo restarted, the page cache dropped before each."""
        name = f"big-{round_}"

        def ours() -> float:
            mounts[-1].stop()
            mounts.append(Mount(mounts[-1].store, mounts[-1].mountpoint, root="main").start())
            s.ctx.caches.drop()
            return timed_read(mounts[-1].mountpoint / name, size, buffer)

        def kubo() -> float:
            if "kubo" in samples.failed:
                raise KuboFailed(samples.failed["kubo"])
            cid = s.kubo.cid(f"/{name}")
            s.kubo.restart()
            s.ctx.caches.drop()
            return s.kubo.bounded(
                f"cold read of /ipfs/{cid}", lambda: timed_read(s.kubo.ro(cid), size, buffer)
            )

        def ext4() -> float:
            s.ctx.caches.drop()
            seconds = timed_read(s.plain / name, size, buffer)
            (s.plain / name).unlink()
            return seconds

        return {"ipldmount_read": ours, "kubo_read": kubo, "ext4_read": ext4}

    def both(round_: int) -> Steps:
        run_round(samples, rotated(["ipldmount", "kubo", "ext4"], round_), writes(round_))
        return reads(round_)

    try:
        s.rounds_of(f"{label} file", samples, ["ipldmount_read", "kubo_read", "ext4_read"], both)
    finally:
        mounts[-1].stop()
    case = f"write+close {label}, 1 MiB writes"
    flushed = "Kubo's time includes `ipfs files flush` (/mfs writes are not persisted before)"
    row(s.ctx, case, samples, "ipldmount", "kubo", FLUSHED, "MB/s", size / MB, flushed)
    row(s.ctx, case, samples, "ipldmount", "ext4", "ext4 write+fsync+close", "MB/s", size / MB)
    note = "both committed: ipldmount sync = a commit + the CAR of the change"
    case = f"write+close+ipldmount sync {label}"
    row(s.ctx, case, samples, "ipldmount_sync", "kubo", FLUSHED, "MB/s", size / MB, note)
    cold = s.ctx.caches.cold_note or "caches dropped"
    case = f"cold read {label}, 1 MiB reads"
    note = f"ipldmount remounted, Kubo restarted, {cold}"
    row(s.ctx, case, samples, "ipldmount_read", "kubo_read", RO, "MB/s", size / MB, note)
    row(s.ctx, case, samples, "ipldmount_read", "ext4_read", "ext4 cold", "MB/s", size / MB, cold)


def timed_read(path: Path, size: int, buffer: bytearray) -> float:
    with Timer() as timer:
        got = read_file_into(path, buffer)
    if got != size:
        raise RuntimeError(f"read {got} bytes of {path}, not {size}")
    return timer.seconds


def xarray_dataset(quick: bool) -> tuple[Any, int]:
    import xarray as xr

    steps = 29 if quick else 286  # chunks of 512 x 512 float32: 1 MiB each
    data = np.random.default_rng(5).standard_normal((steps, 512, 512), dtype=np.float32)
    dataset = xr.Dataset(
        {"temperature": (("time", "y", "x"), data)}, coords={"time": np.arange(steps, dtype=np.int64)}
    )
    return dataset, data.nbytes


def to_zarr(dataset: Any, target: Path) -> float:
    encoding = {"temperature": {"chunks": (1, 512, 512), "compressors": None}}
    with Timer() as timer:
        dataset.to_zarr(str(target), mode="w", zarr_format=3, consolidated=False, encoding=encoding)
    return timer.seconds


def load_zarr(source: Path, expected: np.ndarray) -> float:
    import xarray as xr

    with Timer() as timer:
        loaded = xr.open_zarr(str(source), consolidated=False, zarr_format=3, chunks=None).load()
    if not np.array_equal(loaded["temperature"].values, expected):
        raise RuntimeError(f"read back different values from {source}")
    return timer.seconds


def zarr_workload(s: Setup, dataset: Any, nbytes: int) -> None:
    """5: the dataset written with to_zarr and read back with open_zarr().load()."""
    samples = Samples()

    def steps(round_: int) -> Steps:
        ds = dataset.assign(temperature=dataset["temperature"] + np.float32(round_ + 1))
        expected = ds["temperature"].values
        name = f"x-{round_}.zarr"

        def kubo_write() -> float:
            seconds = s.kubo.bounded(f"to_zarr on /mfs/{name}", lambda: to_zarr(ds, s.kubo.mfs / name))
            return seconds + s.kubo.flush()

        writes: Steps = {
            "ipldmount": lambda: to_zarr(ds, s.mount.mountpoint / name),
            "kubo": kubo_write,
            "ext4": lambda: to_zarr(ds, s.plain / name),
        }
        run_round(samples, rotated(list(writes), round_), writes)

        def kubo_read() -> float:
            if "kubo" in samples.failed:
                raise KuboFailed(samples.failed["kubo"])
            source = s.kubo.ro(s.kubo.cid(f"/{name}"))
            s.ctx.caches.drop()
            return s.kubo.bounded(f"open_zarr of {source}", lambda: load_zarr(source, expected))

        def local_read(root: Path) -> float:
            s.ctx.caches.drop()
            seconds = load_zarr(root / name, expected)
            if root == s.plain:
                shutil.rmtree(root / name)
            return seconds

        return {
            "ipldmount_read": lambda: local_read(s.mount.mountpoint),
            "kubo_read": kubo_read,
            "ext4_read": lambda: local_read(s.plain),
        }

    s.rounds_of("xarray", samples, ["ipldmount_read", "kubo_read", "ext4_read"], steps)
    what = f"{nbytes / MB:.0f} MB xarray, {nbytes // MiB} chunks of 1 MiB, zarr v3, no compression"
    note = "Kubo's time includes `ipfs files flush`"
    row(s.ctx, f"to_zarr {what}", samples, "ipldmount", "kubo", FLUSHED, "s", 1, note)
    row(s.ctx, "to_zarr (same)", samples, "ipldmount", "ext4", "ext4 (page cache)", "s", 1)
    cold = s.ctx.caches.cold_note or "caches dropped"
    note = f"Kubo: the CID `files stat --hash` gives; {cold}"
    row(s.ctx, "open_zarr().load() (same)", samples, "ipldmount_read", "kubo_read", RO, "s", 1, note)
    row(s.ctx, "open_zarr().load() (same)", samples, "ipldmount_read", "ext4_read", "ext4 cold", "s", 1, cold)


@dataclass
class Imported:
    """6: one round's copy of the dataset, imported by each side (their roots): ipldmount's into
    a fresh mount of its own (the mount's root is the dataset's directory)."""

    s: Setup
    mount: Mount
    work: Path
    source: Path
    roots: dict[str, str] = field(default_factory=dict)
    car_sizes: dict[str, int] = field(default_factory=dict)
    syncs: list[float] = field(default_factory=list)  # ipldmount sync's share of the import

    def add_kubo(self) -> float:
        with Timer() as timer:
            out = self.s.kubo.ipfs("add", "-r", "-Q", "--cid-version=1", "--raw-leaves", str(self.source))
        self.roots["kubo"] = out.strip()
        return timer.seconds

    def add_ours(self) -> float:
        copying = command("cp", "-r", f"{self.source}/.", str(self.mount.mountpoint))
        self.syncs.append(self.mount.sync())
        self.roots["ipldmount"] = os.getxattr(self.mount.mountpoint, "user.ipld.cid").decode()
        return copying + self.syncs[-1]

    def export_kubo(self) -> float:
        out = self.work / "kubo.car"
        self.s.ctx.caches.drop()
        with Timer() as timer:
            self.s.kubo.node.ipfs_to_file(out, "dag", "export", self.roots["kubo"], timeout=STEP_TIMEOUT)
        self.car_sizes["Kubo"] = out.stat().st_size
        out.unlink()
        return timer.seconds

    def export_ours(self) -> float:
        out = self.work / "ours.car"
        self.s.ctx.caches.drop()
        store = str(self.mount.store)
        seconds = command(*IPLDMOUNT, "export", self.roots["ipldmount"], "-o", str(out), "--store", store)
        self.car_sizes["ipldmount"] = out.stat().st_size
        out.unlink()
        return seconds

    def get_kubo(self) -> float:
        out = self.work / "get-kubo"
        self.s.ctx.caches.drop()
        seconds = time_ipfs(self.s.kubo.node, "get", self.roots["kubo"], "-o", str(out))
        return seconds + check_copy(self.source, out)

    def get_ours(self) -> float:
        out = self.work / "get-ours"
        self.s.ctx.caches.drop()
        seconds = command("cp", "-r", str(self.mount.mountpoint), str(out))
        return seconds + check_copy(self.source, out)

    def remote_ours(self) -> float:
        """A lazy mount of Kubo's root over an empty store, copied out whole (mount + cp -r)."""
        work = self.work / "remote-ours"
        mount = Mount(
            work / "store", work / "mnt", root=self.roots["kubo"], extra=("--ipfs", self.s.kubo.node.url)
        )
        out = work / "out"
        try:
            with Timer() as timer:
                mount.start()
                command("cp", "-r", str(mount.mountpoint), str(out))
        finally:
            mount.stop()  # not timed
        check_copy(self.source, out)
        shutil.rmtree(work)
        return timer.seconds

    def remote_kubo(self) -> float:
        """A fresh second Kubo, connected to the first, gets the root (bitswap on loopback)."""
        work = self.s.ctx.path("kubo", "w6", "remote-kubo")
        second = ipfs_node.IpfsNode(work, swarm=True)
        out = work / "out"
        try:
            second.start()
            second.connect(self.s.kubo.node)
            seconds = time_ipfs(second, "get", self.roots["kubo"], "-o", str(out))
        finally:
            second.stop()
        check_copy(self.source, out)
        shutil.rmtree(work)
        return seconds


def import_export(s: Setup, dataset: Any, nbytes: int) -> None:
    """6: the dataset's files imported, exported as a CAR, copied out, and read remotely."""
    work = s.ctx.path("kubo", "w6")
    samples = Samples()
    car_sizes: dict[str, int] = {}
    syncs: list[float] = []
    files = 0
    mount: Mount | None = None
    try:
        for round_ in range(s.rounds):
            source = work / f"imp-{round_}.zarr"  # fresh values: neither side has these blocks
            to_zarr(dataset.assign(temperature=dataset["temperature"] + np.float32(1000 + round_)), source)
            files = sum(1 for path in source.rglob("*") if path.is_file())
            mount = Mount(work / f"store-{round_}", work / f"mnt-{round_}").start()
            one = Imported(s, mount, work, source, car_sizes=car_sizes, syncs=syncs)
            adds = {"ipldmount": one.add_ours, "kubo": one.add_kubo}
            run_round(samples, rotated(list(adds), round_), adds)
            if "kubo" not in samples.failed:
                pairs = (
                    ("export_ours", one.export_ours, "export_kubo", one.export_kubo),
                    ("get_ours", one.get_ours, "get_kubo", one.get_kubo),
                    ("remote_ours", one.remote_ours, "remote_kubo", one.remote_kubo),
                )
                for ours, our_step, theirs, their_step in pairs:
                    pair = {ours: our_step, theirs: kubo_step(their_step)}
                    run_round(samples, rotated([ours, theirs], round_), pair)
            mount.stop()
            shutil.rmtree(source)
            log(f"kubo: import/export: round {round_ + 1}/{s.rounds}")
    finally:
        if mount is not None:
            mount.stop()
    what = f"{nbytes / MB:.0f} MB zarr directory ({files} files)"
    sync = f" ({statistics.median(syncs):.2f} s of it)" if syncs else ""
    note = (
        f"ipfs add -r --cid-version=1 --raw-leaves (256 KiB leaves; pins) vs cp -r in + ipldmount sync{sync}"
    )
    row(s.ctx, f"import {what}", samples, "ipldmount", "kubo", "ipfs add -r", "MB/s", nbytes / MB, note)
    sizes = ", ".join(f"{side} {size / MB:.0f} MB" for side, size in sorted(car_sizes.items()))
    note = f"the CAR into a file, caches dropped; CARs: {sizes}"
    case = "export (same) as a CAR"
    row(
        s.ctx,
        case,
        samples,
        "export_ours",
        "export_kubo",
        "ipfs dag export > file",
        "MB/s",
        nbytes / MB,
        note,
    )
    note = "ipldmount: cp -r out of the mount (one process, like ipfs get); caches dropped"
    case = "get (same) into a directory"
    row(s.ctx, case, samples, "get_ours", "get_kubo", "ipfs get -o DIR", "MB/s", nbytes / MB, note)
    note = (
        "Kubo's root, only Kubo has it: ipldmount lazy mount (empty store, --ipfs: the node's RPC API) "
        "+ cp -r, vs a fresh second Kubo connected to the first (bitswap on loopback)"
    )
    case = "remote read (same) into a directory"
    row(s.ctx, case, samples, "remote_ours", "remote_kubo", "ipfs get, 2nd node", "MB/s", nbytes / MB, note)


def kubo_step(function: Callable[[], float]) -> Callable[[], float]:
    """*function* (Kubo's command line: each bounded by its own timeout), failures as KuboFailed."""

    def step() -> float:
        try:
            return function()
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            raise KuboFailed(f"{type(exc).__name__}: {exc}") from exc

    return step


def command(*args: str, timeout: float = STEP_TIMEOUT) -> float:
    """Run a command line; its seconds."""
    with Timer() as timer:
        subprocess.run(list(args), check=True, capture_output=True, timeout=timeout)
    return timer.seconds


def time_ipfs(node: ipfs_node.IpfsNode, *args: str) -> float:
    with Timer() as timer:
        node.ipfs(*args, timeout=STEP_TIMEOUT)
    return timer.seconds


def check_copy(source: Path, copy: Path) -> float:
    """The copy holds the source's files with their sizes and bytes, then goes (untimed): 0."""
    files = sorted(path.relative_to(source) for path in source.rglob("*") if path.is_file())
    copied = sorted(path.relative_to(copy) for path in copy.rglob("*") if path.is_file())
    if files != copied:
        raise RuntimeError(f"{copy}: {len(copied)} files, not the {len(files)} of {source}")
    for name in (files[0], files[-1]):
        if (source / name).read_bytes() != (copy / name).read_bytes():
            raise RuntimeError(f"{copy / name} differs from {source / name}")
    shutil.rmtree(copy)
    return 0.0


# --- the run ------------------------------------------------------------------------------


def run(ctx: Context) -> None:
    reason = ipfs_node.node_missing()
    if reason is not None:
        log(f"kubo: skipped: {reason}")
        return
    warnings.filterwarnings("ignore", category=UserWarning, module="zarr")
    warnings.filterwarnings("ignore", category=RuntimeWarning, module="zarr")
    rounds = 2 if ctx.quick else max(ctx.repeats, 3)
    kubo = Kubo(ctx.path("kubo", "node"))
    mount = Mount(ctx.workdir / "kubo" / "store", ctx.workdir / "kubo" / "mnt")
    try:
        kubo.start()
        mount.start()
        setup = Setup(ctx, kubo, mount, rounds, ctx.path("kubo", "plain"))
        small_writes(setup)
        warm_reads(setup)
        listing(setup)
        big_file(setup)
        dataset, nbytes = xarray_dataset(ctx.quick)
        zarr_workload(setup, dataset, nbytes)
        import_export(setup, dataset, nbytes)
    finally:
        try:
            mount.stop()
        finally:
            kubo.stop()
