"""Real mounts: growing a file makes a hole, never zeros in memory; holes keep the CID of the zeros."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from fuse_helpers import Mount, Mounts, expect_errno, read_file, write_file

from ipldmount import cid as cids
from ipldmount.blockstore import MemoryBlockstore
from ipldmount.files import MAX_FILE_SIZE, MAX_WHOLE_FILE_SIZE, store_bytes

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


def test_posix_fallocate_extends_with_a_hole(mounts: Mounts) -> None:
    """fallocate(2) itself is answered by the kernel (pyfuse3 has no handler): glibc's
    posix_fallocate then writes a zero byte per 4 KiB, which costs no memory here."""
    mnt = mounts().mount()
    fd = os.open(mnt / "alloc", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.posix_fallocate(fd, 0, 8 * MIB)
        assert os.fstat(fd).st_size == 8 * MIB
        assert os.pread(fd, 10, 4 * MIB) == bytes(10)
    finally:
        os.close(fd)


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
