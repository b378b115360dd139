"""Where ``export -o PATH`` and ``sync --car PATH`` put a CAR: devices and pipes are written into as
they are (never replaced by a file), directories and sockets are refused, regular files are
replaced atomically, and the temporaries of killed writers are cleaned up.

None of this touches the real /dev/null: the character device is a node of our own (major 1,
minor 3, what /dev/null is) in the test's temporary directory.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuse_helpers import (
    SEED_CAR,
    SEED_ROOT,
    Mounts,
    assert_one_line_error,
    check,
    cli,
    copy_seed,
    start_cli,
    wait_for,
    waiting_in,
)

from ipldmount.blocks import DirectoryBlockstore
from ipldmount.blocks.car import read_car, remove_stale_temporaries, temporary_name, temporary_owner
from ipldmount.ipld.cid import cid_to_str

pytest_plugins = ("fuse_helpers",)

NULL_DEVICE = os.makedev(1, 3)


def null_device(path: Path) -> Path:
    """A character device node like /dev/null (writes vanish) at *path*; needs root."""
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    os.mknod(path, 0o666 | stat.S_IFCHR, NULL_DEVICE)
    return path


def assert_still_the_device(path: Path) -> None:
    status = path.lstat()
    assert stat.S_ISCHR(status.st_mode), f"{path} is no longer a character device: {status}"
    assert status.st_rdev == NULL_DEVICE


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


class FifoReader:
    """A FIFO at *path* and a thread that reads everything written into it."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = path
        self.data = b""
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with open(self.path, "rb") as fifo:  # waits for the writer; then reads to its close
            self.data = fifo.read()

    def wait(self) -> bytes:
        self.thread.join(60)
        assert not self.thread.is_alive(), "the FIFO's reader is still waiting"
        return self.data


@pytest.fixture
def fifo_reader(tmp_path: Path) -> Iterator[FifoReader]:
    reader = FifoReader(tmp_path / "pipe.car")
    yield reader
    if reader.thread.is_alive():  # nobody wrote: open it for writing so the reader ends
        os.close(os.open(reader.path, os.O_WRONLY | os.O_NONBLOCK))
        reader.thread.join(10)


def assert_valid_car(data: bytes, root: str) -> None:
    roots, blocks = read_car(io.BytesIO(data))
    assert [cid_to_str(cid) for cid in roots] == [root]
    assert list(blocks), "a CAR without blocks"


@pytest.fixture
def seeded(tmp_path: Path) -> Path:
    store = tmp_path / "store"
    check(cli("import", SEED_CAR, "--store", store))
    return store


def export(store: Path, output: Path | str) -> subprocess.CompletedProcess[str]:
    return cli("export", SEED_ROOT, "-o", output, "--store", store)


# --- export -o ----------------------------------------------------------------------


def test_export_into_a_character_device_writes_into_it(seeded: Path, tmp_path: Path) -> None:
    folder = tmp_path / "dev"
    folder.mkdir()
    node = null_device(folder / "null")
    result = check(export(seeded, node))
    assert result.stderr == f"wrote 356 bytes to {node}\n"
    assert_still_the_device(node)
    assert listing(folder) == ["null"], "no temporary file beside it"


def test_export_into_a_fifo_streams_to_its_reader(seeded: Path, fifo_reader: FifoReader) -> None:
    check(export(seeded, fifo_reader.path))
    data = fifo_reader.wait()
    assert_valid_car(data, SEED_ROOT)
    assert data == SEED_CAR.read_bytes()
    assert stat.S_ISFIFO(fifo_reader.path.lstat().st_mode)
    assert listing(fifo_reader.path.parent) == ["pipe.car", "store"]


def test_export_through_a_symlink_writes_what_it_points_to(seeded: Path, tmp_path: Path) -> None:
    """``-o /dev/stdout`` is a symlink: replacing it by a file would break it for everyone."""
    node = null_device(tmp_path / "null")
    (tmp_path / "to-device").symlink_to(node)
    check(export(seeded, tmp_path / "to-device"))
    assert_still_the_device(node)
    target = tmp_path / "file.car"
    target.write_bytes(b"old")
    (tmp_path / "to-file").symlink_to(target)
    check(export(seeded, tmp_path / "to-file"))
    assert (tmp_path / "to-file").is_symlink(), "the link itself was replaced"
    assert target.read_bytes() == SEED_CAR.read_bytes()
    assert listing(tmp_path) == ["file.car", "null", "store", "to-device", "to-file"]


def test_export_onto_a_socket_or_directory_is_refused(seeded: Path, tmp_path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(tmp_path / "socket.car"))
    (tmp_path / "dir.car").mkdir()
    try:
        for name, kind in (("socket.car", "socket"), ("dir.car", "directory")):
            line = assert_one_line_error(export(seeded, tmp_path / name), name, kind)
            assert "cannot write a CAR" in line
        assert stat.S_ISSOCK((tmp_path / "socket.car").lstat().st_mode)
        assert listing(tmp_path / "dir.car") == []
        assert listing(tmp_path) == ["dir.car", "socket.car", "store"], "no temporary left"
    finally:
        sock.close()


def test_export_over_a_regular_file_still_replaces_it(seeded: Path, tmp_path: Path) -> None:
    target = tmp_path / "out.car"
    target.write_bytes(b"x" * 100_000)
    inode = target.stat().st_ino
    check(export(seeded, target))
    assert target.read_bytes() == SEED_CAR.read_bytes()
    assert target.stat().st_ino != inode, "a new file renamed into place, not rewritten"


# --- temporaries of killed writers ----------------------------------------------------


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_temporary_names_say_whose_they_are() -> None:
    name = temporary_name("out.car")
    assert name.startswith(".out.car.ipldmount-") and name.endswith(".tmp")
    assert temporary_owner(name) == os.getpid()
    assert temporary_owner(temporary_name("x" * 255, pid=4242)) == 4242
    assert len(os.fsencode(temporary_name("é" * 200))) <= 255, "within NAME_MAX however long the name"
    for other in (
        ".out.car.a8Xk2_9q",  # what tempfile.mkstemp made before
        ".out.car.1234-0123456789abcdef.tmp",  # the blockstore's pattern
        "out.car",
        ".x.ipldmount-12-zz.tmp",
        ".x.ipldmount-123456789012-0123456789abcdef.tmp",  # no pid is that large (pid_max <= 2**22)
    ):
        assert temporary_owner(other) is None, other


def test_only_the_temporaries_of_dead_writers_are_removed(tmp_path: Path) -> None:
    dead, alive = dead_pid(), os.getppid()
    stale = tmp_path / temporary_name("a.car", pid=dead)
    ours = tmp_path / temporary_name("b.car")
    living = tmp_path / temporary_name("c.car", pid=alive)
    # Someone else's files, however close to our names: never touched.
    others = [
        tmp_path / f".a.car.{dead}-0123456789abcdef.tmp",  # the blockstore's pattern, not ours
        tmp_path / ".a.car.k3j2h1g0",  # what tempfile.mkstemp made before
        tmp_path / f".a.car.ipldmount-{dead}-0123456789abcdef.tmp.bak",
        tmp_path / "a.car",
    ]
    for path in [stale, ours, living, *others]:
        path.write_bytes(b"partial")
    folder = tmp_path / temporary_name("dir", pid=dead)
    folder.mkdir()  # a directory named like one: not ours to remove

    assert remove_stale_temporaries(tmp_path) == [stale]
    assert not stale.exists()
    assert all(path.exists() for path in [ours, living, *others, folder])


def test_a_killed_exports_temporary_goes_with_the_next_car(seeded: Path, tmp_path: Path) -> None:
    """kill -9 leaves ``.F.ipldmount-PID-HEX.tmp``; the next CAR written into that folder removes it."""
    blocks = DirectoryBlockstore(seeded)
    chunk = next(cid for cid in blocks if cid[1] == 0x55)
    block, saved = blocks.block_path(chunk), blocks.block_path(chunk).read_bytes()
    block.unlink()
    os.mkfifo(block)  # reading this block waits forever: the export stops mid-archive
    out = tmp_path / "out"
    out.mkdir()
    process = start_cli("export", SEED_ROOT, "-o", out / "seed.car", "--store", seeded)
    wait_for(lambda: waiting_in(process.pid, "wait_for_partner"), 60, "the export to wait on the FIFO block")
    (left,) = os.listdir(out)
    assert temporary_owner(left) == process.pid
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert os.listdir(out) == [left], "kill -9 leaves the temporary"

    block.unlink()
    block.write_bytes(saved)
    check(export(seeded, out / "other.car"))
    assert listing(out) == ["other.car"]


# --- sync --car, written by the daemon -------------------------------------------------


@pytest.mark.fuse
def test_sync_into_a_device_or_fifo(mounts: Mounts, tmp_path: Path, fifo_reader: FifoReader) -> None:
    mnt = mounts().mount("empty")
    copy_seed(mnt.path)
    node = null_device(tmp_path / "null")
    assert mnt.sync(node) == SEED_ROOT
    assert_still_the_device(node)
    assert mnt.sync(fifo_reader.path, "--full-car") == SEED_ROOT
    data = fifo_reader.wait()
    assert_valid_car(data, SEED_ROOT)
    assert data == SEED_CAR.read_bytes()
    assert stat.S_ISFIFO(fifo_reader.path.lstat().st_mode)
    assert listing(tmp_path) == ["mnt", "null", "pipe.car", "store"]
    assert mnt.unmount() == SEED_ROOT


@pytest.mark.fuse
def test_sync_onto_a_directory_is_refused_before_committing(mounts: Mounts, tmp_path: Path) -> None:
    mnt = mounts().mount("empty")
    copy_seed(mnt.path)
    (tmp_path / "dir.car").mkdir()
    result = mnt.cli("sync", mnt.path, "--car", tmp_path / "dir.car")
    assert_one_line_error(result, "dir.car", "directory")
    assert result.stdout == "", "no root: nothing was committed"
    assert mnt.roots_log() == []
    assert listing(tmp_path / "dir.car") == []
    assert mnt.sync() == SEED_ROOT  # the changes are all still there
