"""Growing files: truncate up, a write far past the end, fallocate. Holes must cost nothing.

Each case runs on a fresh file through the mount and in a plain directory on the same disk,
interleaved (the order alternates each round); the medians are compared. The daemon's peak
RSS (VmHWM) over all rounds shows that no hole is ever filled in memory.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from pathlib import Path

from common import Context, Mount, Row, Timer, log

GIB = 1 << 30


def _grow(path: Path) -> None:
    """truncate -s 2G, then append one byte (the append used to rewrite the 2 GiB of zeros)."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.ftruncate(fd, 2 * GIB)
        os.pwrite(fd, b"x", 2 * GIB)
    finally:
        os.close(fd)


def _pwrite_far(path: Path) -> None:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.pwrite(fd, b"x", GIB)
    finally:
        os.close(fd)


def _fallocate(path: Path) -> None:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.posix_fallocate(fd, 0, GIB)  # glibc calls fallocate(2) first
    finally:
        os.close(fd)


CASES: dict[str, Callable[[Path], None]] = {
    "truncate -s 2G + append 1 byte + close": _grow,
    "pwrite 1 byte at 1 GiB + close": _pwrite_far,
    "posix_fallocate 1 GiB + close": _fallocate,
}


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


def run(ctx: Context) -> None:
    plain = ctx.path("sparse", "ext4")
    rounds = max(ctx.repeats, 5)
    with Mount(store=ctx.path("sparse", "store"), mountpoint=ctx.path("sparse", "mnt")) as mount:
        assert mount.pid is not None
        rss_before = _status_kib(mount.pid, "VmRSS")
        seconds: dict[tuple[str, str], list[float]] = {}
        for round_ in range(rounds):
            places = [("ext4", plain), ("fuse", mount.mountpoint)]
            for case, action in CASES.items():
                for where, root in places if round_ % 2 else reversed(places):
                    path = root / f"{len(seconds)}-{round_}"
                    with Timer() as timer:
                        action(path)
                    seconds.setdefault((case, where), []).append(timer.seconds)
                    os.unlink(path)
            log(f"sparse: round {round_ + 1}/{rounds} done")
        peak = _status_kib(mount.pid, "VmHWM")
    for case in CASES:
        ctx.add(
            Row(
                "sparse",
                case,
                statistics.median(seconds[case, "fuse"]) * 1000,
                "ms",
                statistics.median(seconds[case, "ext4"]) * 1000,
                "ext4",
                f"median of {rounds}, interleaved",
            )
        )
    ctx.add(Row("sparse", "daemon peak RSS above its start, all rounds", (peak - rss_before) / 1024, "MB"))
