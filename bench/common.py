"""Shared pieces of the benchmark suite: result rows, timing, cache dropping, mounts.

Nothing here asserts on timings: a benchmark measures ipldmount and its
baseline in the same run and reports the ratio.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MB = 1_000_000  # throughput is reported in MB/s with MB = 10^6 bytes (as dd and fio do)
MiB = 1 << 20

# Units where a larger figure is better; for every other unit (ms, s) smaller is better.
HIGHER_IS_BETTER = {"MB/s", "ops/s", "entries/s", "files/s", "blocks/s", "chunks/s"}

IPLDMOUNT = [sys.executable, "-m", "ipldmount"]


# --- results ------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the results table: an ipldmount figure against a baseline from this run."""

    bench: str
    case: str
    value: float | None
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    note: str = ""

    @property
    def speed(self) -> float | None:
        """ipldmount's speed relative to the baseline: >1 faster, <1 slower (whatever the unit)."""
        if self.value is None or self.baseline is None or self.value <= 0 or self.baseline <= 0:
            return None
        if self.unit in HIGHER_IS_BETTER:
            return self.value / self.baseline
        return self.baseline / self.value

    def as_dict(self) -> dict[str, Any]:
        return {
            "bench": self.bench,
            "case": self.case,
            "value": self.value,
            "unit": self.unit,
            "baseline": self.baseline,
            "baseline_name": self.baseline_name,
            "speed": self.speed,
            "note": self.note,
        }


def fmt_number(value: float | None) -> str:
    if value is None:
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def fmt_speed(speed: float | None) -> str:
    if speed is None:
        return "-"
    if speed >= 100:
        return f"{speed:.0f}x"
    if speed >= 10:
        return f"{speed:.1f}x"
    return f"{speed:.2f}x"


def format_table(rows: list[Row]) -> str:
    header = ["benchmark", "case", "ipldmount", "baseline", "unit", "speed", "baseline is", "note"]
    lines = [
        [
            row.bench,
            row.case,
            fmt_number(row.value),
            fmt_number(row.baseline),
            row.unit,
            fmt_speed(row.speed),
            row.baseline_name,
            row.note,
        ]
        for row in rows
    ]
    widths = [
        max(len(header[i]), *(len(line[i]) for line in lines)) if lines else len(header[i]) for i in range(8)
    ]
    right = {2, 3, 5}

    def render(cells: list[str]) -> str:
        parts = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(cells)
        ]
        return "  ".join(parts).rstrip()

    out = [render(header), render(["-" * width for width in widths])]
    previous = None
    for row, line in zip(rows, lines, strict=True):
        if previous is not None and row.bench != previous:
            out.append("")
        previous = row.bench
        out.append(render(line))
    return "\n".join(out)


# --- timing -------------------------------------------------------------------------


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def best_of(function: Callable[[], object], repeats: int, budget: float = 10.0) -> float:
    """The fastest of *repeats* runs (seconds); stops early once *budget* seconds are spent."""
    best = float("inf")
    spent = 0.0
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        function()
        elapsed = time.perf_counter() - start
        best = min(best, elapsed)
        spent += elapsed
        if spent > budget:
            break
    return best


def log(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


# --- the page cache -----------------------------------------------------------------


class Caches:
    """Flushing and dropping the kernel's caches, so that "cold" reads go to the disk."""

    def __init__(self) -> None:
        self.can_drop = os.geteuid() == 0 and os.access("/proc/sys/vm/drop_caches", os.W_OK)
        self.warned = False

    def drop(self) -> bool:
        """``sync`` then ``echo 3 > /proc/sys/vm/drop_caches``; False if not allowed (not root)."""
        os.sync()
        if not self.can_drop:
            if not self.warned:
                log("cannot drop caches (needs root): 'cold' reads are warm")
                self.warned = True
            return False
        try:
            with open("/proc/sys/vm/drop_caches", "w") as handle:
                handle.write("3\n")
        except OSError as exc:
            self.can_drop = False
            log(f"dropping caches failed ({exc}): 'cold' reads are warm")
            return False
        return True

    @property
    def cold_note(self) -> str:
        return "" if self.can_drop else "caches NOT dropped"


# --- data ---------------------------------------------------------------------------


def random_block(size: int, seed: int) -> bytearray:
    import numpy as np

    return bytearray(np.random.default_rng(seed).bytes(size))


def stamp(buffer: bytearray, counter: int) -> bytearray:
    """Make *buffer* unique for *counter* (so content addressing cannot deduplicate it)."""
    buffer[0:8] = counter.to_bytes(8, "little")
    return buffer


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def read_file_into(path: Path, buffer: bytearray) -> int:
    """Read *path* sequentially with reads of ``len(buffer)``; returns the byte count."""
    fd = os.open(path, os.O_RDONLY)
    total = 0
    try:
        while True:
            count = os.readv(fd, [buffer])
            if count == 0:
                return total
            total += count
    finally:
        os.close(fd)


def fs_description(path: Path) -> str:
    """``ext4 on /dev/vda`` for the filesystem holding *path* (best effort)."""
    path = path.resolve()
    best: tuple[int, str, str] = (-1, "?", "?")
    with contextlib.suppress(OSError), open("/proc/self/mounts") as mounts:
        for line in mounts:
            device, mountpoint, fstype, *_ = line.split()
            mountpoint = mountpoint.replace("\\040", " ")
            if (str(path) == mountpoint or str(path).startswith(mountpoint.rstrip("/") + "/")) and len(
                mountpoint
            ) > best[0]:
                best = (len(mountpoint), fstype, device)
    return f"{best[1]} on {best[2]}"


def mounts_under(directory: Path) -> list[str]:
    prefix = str(directory.resolve()).rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            if len(fields) > 4 and (fields[4] + "/").startswith(prefix):
                found.append(fields[4])
    return found


def remove_tree(directory: Path) -> None:
    """Delete a work directory, but never through a mount that is still there."""
    leftover = mounts_under(directory)
    if leftover:
        log(f"NOT deleting {directory}: still mounted: {', '.join(leftover)}")
        return
    shutil.rmtree(directory, ignore_errors=True)


# --- mounts -------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            return stat_file.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False


def _is_mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mountinfo") as mountinfo:
        return any(len(f := line.split()) > 4 and f[4] == target for line in mountinfo)


@dataclass
class Mount:
    """An ``ipldmount`` daemon serving *mountpoint* from the blockstore *store*.

    Use as a context manager, or call :meth:`start` and make sure :meth:`stop`
    runs in a ``finally``. :meth:`stop` tries ``ipldmount unmount`` (which syncs),
    then ``fusermount3 -u``, then ``umount -l``, and finally ends the daemon it
    started (by its pid) if it has not exited on its own.
    """

    store: Path
    mountpoint: Path
    root: str = "empty"
    extra: tuple[str, ...] = ()
    pid: int | None = None
    mounted: bool = False
    unmount_seconds: float | None = field(default=None)

    def start(self) -> Mount:
        self.store.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.mountpoint = self.mountpoint.resolve()
        result = subprocess.run(
            [*IPLDMOUNT, self.root, str(self.mountpoint), "--store", str(self.store), *self.extra],
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.mounted = _is_mounted(self.mountpoint)
        found = re.search(r"daemon pid (\d+)", result.stdout)
        self.pid = int(found.group(1)) if found else None
        if result.returncode != 0 or not self.mounted:
            self.stop()
            raise RuntimeError(
                f"mounting {self.mountpoint} failed: {result.stderr.strip() or result.stdout.strip()}"
            )
        return self

    def sync(self, *extra: str) -> float:
        """``ipldmount sync MOUNTPOINT``; returns the wall-clock seconds it took."""
        start = time.perf_counter()
        subprocess.run(
            [*IPLDMOUNT, "sync", str(self.mountpoint), *extra], check=True, capture_output=True, timeout=900
        )
        return time.perf_counter() - start

    def stop(self) -> None:
        start = time.perf_counter()
        try:
            if _is_mounted(self.mountpoint):
                result = subprocess.run(
                    [*IPLDMOUNT, "unmount", str(self.mountpoint), "--timeout", "600"],
                    capture_output=True,
                    text=True,
                    timeout=900,
                )
                if result.returncode != 0:
                    log(f"ipldmount unmount {self.mountpoint} failed: {result.stderr.strip()}")
        except (subprocess.SubprocessError, OSError) as exc:
            log(f"ipldmount unmount {self.mountpoint} failed: {exc}")
        finally:
            self._force_unmount()
            self._end_daemon()
            self.mounted = False
            self.unmount_seconds = time.perf_counter() - start

    def _force_unmount(self) -> None:
        for command in (["fusermount3", "-u", str(self.mountpoint)], ["umount", "-l", str(self.mountpoint)]):
            if not _is_mounted(self.mountpoint):
                return
            log(f"still mounted: {' '.join(command)}")
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(command, capture_output=True, timeout=60)

    def _end_daemon(self) -> None:
        """Wait for the daemon we started (it syncs on exit); SIGTERM then SIGKILL if it hangs."""
        if self.pid is None:
            return
        for sig, wait in ((None, 600.0), (signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
            if sig is not None and _alive(self.pid):
                log(f"daemon {self.pid} still running: sending {sig.name}")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, sig)
            deadline = time.monotonic() + wait
            while _alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not _alive(self.pid):
                return

    def __enter__(self) -> Mount:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def sha256_seconds(data: bytes | bytearray | memoryview, leaf: int = MiB, threads: int = 2) -> float:
    """Seconds to sha256 every *leaf* of *data* over *threads* threads (best of 3): what any store
    that hashes each block it stores or reads spends at least (hashlib lets go of the GIL)."""
    view = memoryview(data).cast("B")
    leaves = [view[start : start + leaf] for start in range(0, len(view), leaf)]
    best = float("inf")
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in range(3):
            with Timer() as timer:
                list(pool.map(lambda part: hashlib.sha256(part).digest(), leaves))
            best = min(best, timer.seconds)
    return best


class Floor:
    """bench/floorfs.py mounted at *mountpoint*: an array of side x side 8-byte files and a file of
    *big* zeros, from a file system doing no work (the floor under any Python FUSE daemon)."""

    def __init__(self, mountpoint: Path, side: int, big: int = 0) -> None:
        self.mountpoint = mountpoint
        mountpoint.mkdir(parents=True, exist_ok=True)
        script = Path(__file__).with_name("floorfs.py")
        self.process = subprocess.Popen([sys.executable, str(script), str(mountpoint), str(side), str(big)])
        deadline = time.monotonic() + 60
        while not os.path.ismount(mountpoint):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the bare pyfuse3 file system did not mount")
            time.sleep(0.05)

    def stop(self) -> None:
        if os.path.ismount(self.mountpoint):
            subprocess.run(["fusermount3", "-u", str(self.mountpoint)], check=False, capture_output=True)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Let SIGTERM unwind the stack like Ctrl-C, so every ``finally`` (unmounts) runs."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- the run ------------------------------------------------------------------------


class Context:
    """What every benchmark gets: sizes, a work directory, the caches, and the result rows.

    Fixtures (a mount with a tree already written, say) are shared between the
    benchmarks of one run: :meth:`fixture` makes one on first use, and the
    runner closes it (unmounting) once the last benchmark that needs it is done.
    """

    def __init__(self, workdir: Path, quick: bool, repeats: int | None = None, scale: int = 100_000) -> None:
        self.workdir = workdir
        self.quick = quick
        self.scale = scale  # chunks in the scale benchmark's array
        # How often each measurement is repeated; the best (fastest) repetition counts, which
        # filters out interference from whatever else the machine is doing.
        self.repeats = max(repeats if repeats is not None else 1 if quick else 3, 1)
        self.caches = Caches()
        self.rows: list[Row] = []
        self._fixtures: dict[str, Any] = {}

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        speed = fmt_speed(row.speed)
        base = f" vs {fmt_number(row.baseline)} {row.baseline_name}" if row.baseline is not None else ""
        print(
            f"  {row.bench}: {row.case}: {fmt_number(row.value)} {row.unit}{base} [{speed}]", file=sys.stderr
        )
        return row

    def path(self, *parts: str) -> Path:
        path = self.workdir.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def fixture(self, name: str, factory: Callable[[], Any]) -> Any:
        if name not in self._fixtures:
            self._fixtures[name] = factory()
        return self._fixtures[name]

    def release(self, name: str) -> None:
        fixture = self._fixtures.pop(name, None)
        if fixture is not None:
            fixture.close(self)

    def release_all(self) -> None:
        for name in list(self._fixtures):
            try:
                self.release(name)
            except BaseException as exc:  # keep unmounting the others
                log(f"closing fixture {name} failed: {exc!r}")
