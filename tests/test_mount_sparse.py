"""Real mounts: growing a file makes a hole, never zeros in memory; holes keep the CID of the zeros."""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
from pathlib import Path

import pytest
from fuse_helpers import Mount, Mounts, expect_errno, read_file, write_file

from ipldmount.blocks import MemoryBlockstore
from ipldmount.format.files import MAX_FILE_SIZE, MAX_WHOLE_FILE_SIZE, store_bytes
from ipldmount.ipld import cid as cids

pytest_plugins = ("fuse_helpers",)
pytestmark = pytest.mark.fuse

MIB = 1 << 20
GIB = 1 << 30


def _rss_kib(mount: Mount) -> int:
    pid = mount.daemon_pid()
    assert pid is not None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _cid_of(path: Path) -> str:
    return os.getxattr(path, "user.ipld.cid").decode()


def test_truncate_to_2_gib_costs_no_memory_and_reads_zeros(mounts: Mounts) -> None:
    mnt = mounts().mount()
    write_file(mnt / "warm", os.urandom(3 * MIB))  # the daemon's buffers and pools exist now
    os.truncate(mnt / "warm", 10)
    before = _rss_kib(mnt)
    write_file(mnt / "g", b"")
    os.truncate(mnt / "g", 2 * GIB)
    with open(mnt / "g", "ab") as stream:  # appending one byte afterwards
        stream.write(b"!")
    assert os.stat(mnt / "g").st_size == 2 * GIB + 1
    assert _rss_kib(mnt) - before < 50 * 1024, "the daemon's memory grew by the hole"
    with open(mnt / "g", "rb") as stream:
        stream.seek(GIB + 12345)
        assert stream.read(4096) == bytes(4096)
        stream.seek(2 * GIB - 2)
        assert stream.read() == b"\0\0!"


def test_pwrite_far_past_the_end(mounts: Mounts) -> None:
    mnt = mounts().mount()
    before = _rss_kib(mnt)
    fd = os.open(mnt / "p", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        assert os.pwrite(fd, b"z", GIB) == 1
    finally:
        os.close(fd)
    assert os.stat(mnt / "p").st_size == GIB + 1
    assert _rss_kib(mnt) - before < 50 * 1024
    fd = os.open(mnt / "p", os.O_RDONLY)
    try:
        assert os.pread(fd, 8, GIB - 7) == b"\0" * 7 + b"z"
    finally:
        os.close(fd)


def test_a_petabyte_and_the_largest_size(mounts: Mounts) -> None:
    """pjdfstest truncate/12 and ftruncate/12: either EFBIG with the size unchanged, or the size."""
    mnt = mounts().mount()
    write_file(mnt / "f", b"")
    os.truncate(mnt / "f", 999_999_999_999_999)
    assert os.stat(mnt / "f").st_size == 999_999_999_999_999
    os.truncate(mnt / "f", 999_999_999_999_999_999)  # the length pjdfstest uses
    assert os.stat(mnt / "f").st_size == 999_999_999_999_999_999
    fd = os.open(mnt / "f", os.O_RDWR)
    try:
        os.ftruncate(fd, MAX_FILE_SIZE)
        assert os.fstat(fd).st_size == MAX_FILE_SIZE
        assert os.pwrite(fd, b"x", MAX_FILE_SIZE - 1) == 1
        with pytest.raises(OSError) as caught:  # the kernel's own check: pos + count overflows off_t
            os.pwrite(fd, b"x", MAX_FILE_SIZE)
        assert caught.value.errno in (errno.EFBIG, errno.EINVAL)
        assert os.pread(fd, 16, MAX_FILE_SIZE - 16) == bytes(15) + b"x"
    finally:
        os.close(fd)
    root = mnt.unmount()
    again = mounts("again").mount(root, "--read-only")
    assert os.stat(again / "f").st_size == MAX_FILE_SIZE


def test_a_hole_has_the_cid_of_the_same_zeros_written(mounts: Mounts) -> None:
    mnt = mounts().mount()
    size = 70 * MIB + 3
    write_file(mnt / "sparse", b"head")
    os.truncate(mnt / "sparse", size)
    fd = os.open(mnt / "sparse", os.O_WRONLY)
    try:
        os.pwrite(fd, b"tail", size - 4)
    finally:
        os.close(fd)
    expected_bytes = b"head" + bytes(size - 8) + b"tail"
    expected = cids.cid_to_str(store_bytes(MemoryBlockstore(), expected_bytes).cid)
    mnt.sync()
    assert _cid_of(mnt / "sparse") == expected
    root = mnt.unmount()
    again = mounts("again").mount(root, "--read-only")
    assert _cid_of(again / "sparse") == expected
    assert read_file(again / "sparse") == expected_bytes


def test_growing_then_shrinking_then_growing_reads_zeros(mounts: Mounts) -> None:
    mnt = mounts().mount()
    data = os.urandom(3 * MIB)
    write_file(mnt / "f", data)
    with open(mnt / "f", "r+b") as stream:
        stream.truncate(MIB + 10)
        stream.truncate(5 * MIB)
        stream.seek(0)
        assert stream.read() == data[: MIB + 10] + bytes(5 * MIB - MIB - 10)
    assert read_file(mnt / "f") == data[: MIB + 10] + bytes(5 * MIB - MIB - 10)


_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) itself (os.posix_fallocate would fall back to writing zeros)."""
    if _LIBC.fallocate(fd, mode, offset, length) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def test_fallocate_extends_with_a_hole_and_keep_size_is_a_no_op(mounts: Mounts) -> None:
    mnt = mounts().mount()
    write_file(mnt / "alloc", b"start")
    before = _rss_kib(mnt)
    fd = os.open(mnt / "alloc", os.O_RDWR)
    try:
        _fallocate(fd, 0, 0, GIB)  # mode 0: the size grows, the new range is a hole
        assert os.fstat(fd).st_size == GIB
        assert os.pread(fd, 10, 0) == b"start" + bytes(5)
        assert os.pread(fd, 10, GIB - 10) == bytes(10)
        _fallocate(fd, 0, 10, 100)  # inside the file: nothing changes
        _fallocate(fd, FALLOC_FL_KEEP_SIZE, GIB, 2 * GIB)  # reserves nothing, changes nothing
        assert os.fstat(fd).st_size == GIB
        expect_errno(errno.EOPNOTSUPP, _fallocate, fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 10)
        expect_errno(errno.EFBIG, _fallocate, fd, 0, MAX_FILE_SIZE, 1)
        assert os.fstat(fd).st_size == GIB
    finally:
        os.close(fd)
    assert _rss_kib(mnt) - before < 50 * 1024
    assert os.stat(mnt / "alloc").st_size == GIB
    # a hole made by fallocate has the CID of the same bytes written out
    write_file(mnt / "small", b"start")
    fd = os.open(mnt / "small", os.O_RDWR)
    try:
        _fallocate(fd, 0, 3 * MIB, 2 * MIB + 3)
    finally:
        os.close(fd)
    expected = store_bytes(MemoryBlockstore(), b"start" + bytes(5 * MIB - 2)).content_cid()
    mnt.sync()
    assert _cid_of(mnt / "small") == cids.cid_to_str(expected)


def test_fallocate_the_command_and_posix_fallocate(mounts: Mounts) -> None:
    mnt = mounts().mount()
    subprocess.run(["fallocate", "-l", "3M", mnt / "made"], check=True, timeout=60)
    assert os.stat(mnt / "made").st_size == 3 * MIB
    assert read_file(mnt / "made") == bytes(3 * MIB)
    fd = os.open(mnt / "posix", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.posix_fallocate(fd, 0, 8 * MIB)
        assert os.fstat(fd).st_size == 8 * MIB
        assert os.pread(fd, 10, 4 * MIB) == bytes(10)
    finally:
        os.close(fd)
    root = mnt.unmount()
    again = mounts("again").mount(root)
    assert os.stat(again / "made").st_size == 3 * MIB and os.stat(again / "posix").st_size == 8 * MIB


def test_whole_files_mode_answers_efbig_past_its_limit(mounts: Mounts) -> None:
    mnt = mounts().mount("empty", "--whole-files")
    write_file(mnt / "f", b"abc")
    expect_errno(errno.EFBIG, os.truncate, mnt / "f", MAX_WHOLE_FILE_SIZE + 1)
    assert os.stat(mnt / "f").st_size == 3
    fd = os.open(mnt / "f", os.O_WRONLY)
    try:
        expect_errno(errno.EFBIG, os.pwrite, fd, b"x", MAX_WHOLE_FILE_SIZE)
    finally:
        os.close(fd)
    os.truncate(mnt / "f", 3 * MIB)  # a sparse temporary file in the daemon
    assert read_file(mnt / "f") == b"abc" + bytes(3 * MIB - 3)
