"""Real mounts: which FUSE requests the kernel sends, read off the daemon's /dev/fuse with strace.

The daemon asks the kernel to keep directory listings cached and to send no FLUSH
when a read-only file is closed (flags pyfuse3 does not pass on: see
``ipldmount/adapters/fuse/libfuse_hooks.py``). These tests count the requests that really
arrive, and check that the cached listings still follow every change.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuse_helpers import Mount, Mounts, read_file, wait_for, write_file

pytest_plugins = ("fuse_helpers",)
pytestmark = pytest.mark.fuse

# FUSE opcodes (linux/fuse.h)
READDIR, READDIRPLUS, FLUSH, OPEN, RELEASE, OPENDIR = 28, 44, 25, 14, 18, 27

_READ = re.compile(r'read\((\d+), "((?:\\x[0-9a-f]{2}){8})')


def _fuse_fd(pid: int) -> int:
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/fuse":
                return int(fd)
    raise AssertionError(f"daemon {pid} has no /dev/fuse open")


def _traced(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as status:
        return any(line.startswith("TracerPid:") and line.split()[1] != "0" for line in status)


@contextlib.contextmanager
def kernel_requests(mount: Mount, tmp_path: Path) -> Iterator[Counter[int]]:
    """Count, by opcode, the requests the daemon reads from /dev/fuse inside the block."""
    pid = mount.daemon_pid()
    assert pid is not None
    fd = _fuse_fd(pid)
    out = tmp_path / f"requests.{pid}.strace"
    command = ["strace", "-f", "-xx", "-s", "8", "-e", "trace=read", "-o", str(out), "-p", str(pid)]
    tracer = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    counts: Counter[int] = Counter()
    try:
        wait_for(lambda: _traced(pid), 10, "strace to attach")
        yield counts
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=30)
    for line in out.read_text().splitlines():
        found = _READ.search(line)
        if found and int(found.group(1)) == fd:
            header = bytes.fromhex(found.group(2).replace("\\x", ""))
            counts[int.from_bytes(header[4:8], "little")] += 1


def test_a_second_listing_comes_from_the_kernel_cache(mounts: Mounts, tmp_path: Path) -> None:
    mnt = mounts().mount("empty")
    folder = mnt / "many"
    folder.mkdir()
    for i in range(200):
        write_file(folder / f"{i}.0", b"x")
    assert len(os.listdir(folder)) == 200
    with kernel_requests(mnt, tmp_path) as asked:
        for _ in range(3):
            assert len(os.listdir(folder)) == 200
    assert asked[OPENDIR] == 3, asked  # the kernel still opens the directory...
    assert asked[READDIR] + asked[READDIRPLUS] == 0, asked  # ...but lists it from its cache


def test_cached_listings_follow_every_change(mounts: Mounts) -> None:
    mnt = mounts().mount("empty")
    folder, other = mnt / "d", mnt / "e"
    folder.mkdir()
    other.mkdir()
    for name in ("a", "b", "c"):
        write_file(folder / name, name.encode())
    write_file(other / "x", b"x")
    expected = {"a", "b", "c"}
    assert set(os.listdir(folder)) == expected
    changes = [
        (lambda: write_file(folder / "new", b"n"), {"new"}, set()),
        (lambda: (folder / "a").unlink(), set(), {"a"}),
        (lambda: (folder / "b").rename(folder / "b2"), {"b2"}, {"b"}),
        (lambda: (other / "x").rename(folder / "x"), {"x"}, set()),
        (lambda: (folder / "sub").mkdir(), {"sub"}, set()),
        (lambda: (folder / "sub").rmdir(), set(), {"sub"}),
        (lambda: (folder / "c").rename(other / "c"), set(), {"c"}),
    ]
    for change, added, removed in changes:
        change()
        expected = (expected | added) - removed
        assert set(os.listdir(folder)) == expected
    assert set(os.listdir(other)) == {"c"}
    mnt.sync()
    assert set(os.listdir(folder)) == expected  # a sync changes no names
    root = mnt.unmount()
    again = mounts().mount(root)
    assert set(os.listdir(again / "d")) == expected


def test_read_only_closes_send_no_flush_and_writers_still_do(mounts: Mounts, tmp_path: Path) -> None:
    mnt = mounts().mount("empty")
    for i in range(20):
        write_file(mnt / f"f{i}", b"data %d" % i)
    with kernel_requests(mnt, tmp_path) as reading:
        for i in range(20):
            assert read_file(mnt / f"f{i}") == b"data %d" % i
    assert reading[OPEN] == 20 and reading[FLUSH] == 0, reading
    with kernel_requests(mnt, tmp_path) as writing:
        for i in range(5):
            write_file(mnt / f"f{i}", b"new %d" % i)
    assert writing[FLUSH] >= 5, writing  # close(2) of a writer stores its content before returning
    root = mnt.unmount()
    again = mounts().mount(root)
    assert read_file(again / "f0") == b"new 0" and read_file(again / "f19") == b"data 19"
