"""Real mounts: POSIX file behaviour through the kernel."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest
from fuse_helpers import (
    Mount,
    Mounts,
    check,
    expect_errno,
    read_file,
    write_file,
)

pytest_plugins = ("fuse_helpers",)
pytestmark = pytest.mark.fuse


@pytest.fixture
def mnt(mounts: Mounts) -> Mount:
    return mounts().mount("empty")


def _remount(mounts: Mounts, mnt: Mount) -> Mount:
    """Unmount (which syncs) and mount the resulting root again at the same place."""
    root = mnt.unmount()
    return mounts().mount(root)


def test_sequential_and_random_writes(mnt: Mount, mounts: Mounts) -> None:
    path = mnt / "f"
    expected = bytearray()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for i in range(50):
            piece = bytes([i]) * (1000 + i)
            assert os.write(fd, piece) == len(piece)
            expected += piece
        rng = random.Random(1)
        for _ in range(100):
            offset = rng.randrange(0, len(expected))
            piece = rng.randbytes(rng.randrange(1, 5000))
            os.pwrite(fd, piece, offset)
            end = offset + len(piece)
            expected[offset:end] = piece
        # a write past the end leaves a hole of zeros
        hole_at = len(expected) + 100_000
        os.pwrite(fd, b"tail", hole_at)
        expected += bytes(hole_at - len(expected)) + b"tail"
        assert os.fstat(fd).st_size == len(expected)
        assert os.pread(fd, len(expected) + 10, 0) == bytes(expected)
    finally:
        os.close(fd)
    assert read_file(path) == bytes(expected)
    assert path.stat().st_size == len(expected)
    again = _remount(mounts, mnt)
    assert read_file(again / "f") == bytes(expected)


def test_truncate_up_and_down(mnt: Mount) -> None:
    path = mnt / "t"
    write_file(path, b"0123456789")
    os.truncate(path, 4)
    assert read_file(path) == b"0123"
    os.truncate(path, 8)
    assert read_file(path) == b"0123\0\0\0\0"
    assert path.stat().st_size == 8
    with open(path, "r+b") as stream:
        stream.truncate(2)
        stream.seek(0, os.SEEK_END)
        stream.write(b"xy")
    assert read_file(path) == b"01xy"
    os.truncate(path, 0)
    assert read_file(path) == b""
    assert path.stat().st_size == 0


def test_o_trunc_and_o_append(mnt: Mount) -> None:
    path = mnt / "log"
    write_file(path, b"first line\n")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"second\n")
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b"third\n")  # O_APPEND: still at the end
    finally:
        os.close(fd)
    assert read_file(path) == b"first line\nsecond\nthird\n"
    with open(path, "ab") as stream:
        stream.write(b"fourth\n")
    assert read_file(path).endswith(b"third\nfourth\n")
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        assert os.fstat(fd).st_size == 0
        os.write(fd, b"new")
    finally:
        os.close(fd)
    assert read_file(path) == b"new"
    # O_TRUNC without writing anything still empties the file
    os.close(os.open(path, os.O_WRONLY | os.O_TRUNC))
    assert read_file(path) == b""


def test_five_mib_file(mnt: Mount, mounts: Mounts) -> None:
    data = random.Random(5).randbytes(5 * 1024 * 1024 + 12345)
    write_file(mnt / "big", data)
    assert (mnt / "big").stat().st_size == len(data)
    assert read_file(mnt / "big") == data
    root = mnt.sync()
    assert root.startswith("bafy")
    cid = os.getxattr(mnt / "big", "user.ipld.cid").decode()
    assert cid.startswith("bafyrei")  # chunked: a DAG-CBOR byte layout, not one raw block

    again = _remount(mounts, mnt)
    path = again / "big"
    assert read_file(path) == data
    rng = random.Random(7)
    with open(path, "rb", buffering=0) as stream:
        fd = stream.fileno()
        boundaries = [1 << 20, 2 << 20, 5 << 20, len(data) - 1]
        for boundary in boundaries:
            assert os.pread(fd, 100, boundary - 50) == data[boundary - 50 : boundary + 50]
        for _ in range(200):
            offset = rng.randrange(0, len(data))
            size = rng.randrange(1, 300_000)
            assert os.pread(fd, size, offset) == data[offset : offset + size]
        assert os.pread(fd, 10, len(data)) == b""
    # partial rewrite of a chunked file
    with open(path, "r+b") as stream:
        stream.seek(3 << 20)
        stream.write(b"PATCH")
    patched = data[: 3 << 20] + b"PATCH" + data[(3 << 20) + 5 :]
    assert read_file(path) == patched
    assert os.getxattr(path, "user.ipld.dirty") == b"1"  # no CID until a sync stores it
    again.sync()
    assert os.getxattr(path, "user.ipld.cid").decode() != cid


def test_rename_over_an_existing_file(mnt: Mount) -> None:
    write_file(mnt / "a", b"AAA")
    write_file(mnt / "b", b"BBB")
    os.rename(mnt / "a", mnt / "b")
    assert read_file(mnt / "b") == b"AAA"
    expect_errno(errno.ENOENT, os.stat, mnt / "a")
    assert sorted(os.listdir(mnt.path)) == ["b"]
    # the atomic-replace idiom every editor and zarr use
    write_file(mnt / ".b.tmp", b"CCC")
    os.replace(mnt / ".b.tmp", mnt / "b")
    assert read_file(mnt / "b") == b"CCC"
    assert sorted(os.listdir(mnt.path)) == ["b"]


def test_rename_directories(mnt: Mount, mounts: Mounts) -> None:
    (mnt / "old/sub").mkdir(parents=True)
    write_file(mnt / "old/sub/f", b"deep")
    write_file(mnt / "old/g", b"g")
    (mnt / "other").mkdir()
    os.rename(mnt / "old", mnt / "other/new")
    expect_errno(errno.ENOENT, os.stat, mnt / "old")
    expect_errno(errno.ENOENT, os.stat, mnt / "old/g")
    assert read_file(mnt / "other/new/sub/f") == b"deep"
    assert read_file(mnt / "other/new/g") == b"g"
    write_file(mnt / "other/new/sub/h", b"after the move")
    assert sorted(os.listdir(mnt / "other/new/sub")) == ["f", "h"]
    again = _remount(mounts, mnt)
    assert sorted(os.listdir(again.path)) == ["other"]
    assert read_file(again / "other/new/sub/f") == b"deep"
    assert read_file(again / "other/new/sub/h") == b"after the move"
    assert read_file(again / "other/new/g") == b"g"
    expect_errno(errno.ENOENT, os.stat, again / "old")


def test_unlink_while_open(mnt: Mount, mounts: Mounts) -> None:
    write_file(mnt / "doomed", b"still here")
    write_file(mnt / "keep", b"k")
    fd = os.open(mnt / "doomed", os.O_RDONLY)
    try:
        os.unlink(mnt / "doomed")
        expect_errno(errno.ENOENT, os.stat, mnt / "doomed")
        assert "doomed" not in os.listdir(mnt.path)
        assert os.pread(fd, 100, 0) == b"still here"
        assert os.fstat(fd).st_size == len(b"still here")
    finally:
        os.close(fd)
    # written through an fd whose name is gone: readable until closed, then gone without a trace
    fd = os.open(mnt / "scratch", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.unlink(mnt / "scratch")
        os.write(fd, b"anonymous")
        assert os.pread(fd, 100, 0) == b"anonymous"
    finally:
        os.close(fd)
    expect_errno(errno.ENOENT, os.stat, mnt / "scratch")
    again = _remount(mounts, mnt)
    assert sorted(os.listdir(again.path)) == ["keep"]


def test_hard_links(mnt: Mount, mounts: Mounts) -> None:
    write_file(mnt / "one", b"shared")
    (mnt / "d").mkdir()
    os.link(mnt / "one", mnt / "d/two")
    assert read_file(mnt / "d/two") == b"shared"
    assert (mnt / "one").stat().st_nlink == 2
    assert (mnt / "one").stat().st_ino == (mnt / "d/two").stat().st_ino
    with open(mnt / "d/two", "r+b") as stream:
        stream.write(b"SH")
    assert read_file(mnt / "one") == b"SHared"
    write_file(mnt / "one", b"rewritten")
    assert read_file(mnt / "d/two") == b"rewritten"
    again = _remount(mounts, mnt)
    assert read_file(again / "one") == b"rewritten"
    assert read_file(again / "d/two") == b"rewritten"
    assert (again / "one").is_file() and (again / "d/two").is_file()
    os.unlink(again / "one")
    assert read_file(again / "d/two") == b"rewritten"


def test_link_of_a_file_being_written(mnt: Mount) -> None:
    fd = os.open(mnt / "w", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"written before the link")
        os.link(mnt / "w", mnt / "w2")
        assert read_file(mnt / "w2") == b"written before the link"
        os.write(fd, b"; and after")
    finally:
        os.close(fd)
    assert read_file(mnt / "w2") == b"written before the link; and after"


def test_readdir_of_a_big_directory(mnt: Mount) -> None:
    names = {f"entry-{i:05d}" for i in range(2000)}
    directory = mnt / "big"
    directory.mkdir()
    for name in names:
        os.close(os.open(directory / name, os.O_WRONLY | os.O_CREAT, 0o644))
    listed = os.listdir(directory)
    assert len(listed) == len(names)
    assert set(listed) == names
    with os.scandir(directory) as scan:
        seen = [entry.name for entry in scan]
    assert sorted(seen) == sorted(names)

    # removing entries while iterating: no duplicates, no crash, never a removed-before-start name
    removed: set[str] = set()
    seen = []
    with os.scandir(directory) as scan:
        for entry in scan:
            seen.append(entry.name)
            if len(seen) % 3 == 0:
                victim = f"entry-{(len(seen) * 7) % 2000:05d}"
                if victim not in removed:
                    os.unlink(directory / victim)
                    removed.add(victim)
    assert len(seen) == len(set(seen)), "a name came twice"
    assert set(seen) <= names
    assert names - removed <= set(seen) | removed
    assert set(os.listdir(directory)) == names - removed
    assert not [name for name in removed if os.path.lexists(directory / name)], "a removed name came back"


def test_fsync_chmod_utime(mnt: Mount, mounts: Mounts) -> None:
    path = mnt / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"synced")
        os.fsync(fd)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    dfd = os.open(mnt.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    os.chmod(path, 0o600)
    assert path.stat().st_mode & 0o777 == 0o600
    os.utime(path, ns=(1_000_000_000, 2_000_000_000))
    assert path.stat().st_mtime_ns == 2_000_000_000
    assert path.stat().st_atime_ns == 1_000_000_000
    (mnt / "d").mkdir(mode=0o700)
    os.chmod(mnt / "d", 0o750)
    assert (mnt / "d").stat().st_mode & 0o777 == 0o750
    assert read_file(path) == b"synced"


def test_cid_xattr_on_files_after_sync(mnt: Mount) -> None:
    write_file(mnt / "x", b"hello")
    (mnt / "sub").mkdir()
    write_file(mnt / "sub/y", b"world")
    root = mnt.sync()
    assert os.getxattr(mnt.path, "user.ipld.cid").decode() == root
    # raw-block CIDs of the contents
    assert os.getxattr(mnt / "x", "user.ipld.cid").decode().startswith("bafkrei")
    assert os.getxattr(mnt / "x", "user.ipld.cid") != os.getxattr(mnt / "sub/y", "user.ipld.cid")
    # same bytes, same CID (once synced: until then it is dirty, with no CID)
    write_file(mnt / "x2", b"hello")
    assert os.getxattr(mnt / "x2", "user.ipld.dirty") == b"1"
    mnt.sync()
    assert os.getxattr(mnt / "x2", "user.ipld.cid") == os.getxattr(mnt / "x", "user.ipld.cid")
    # a small directory is inline in its parent's block: it has no block, so no CID, and says so
    assert "user.ipld.cid" not in os.listxattr(mnt / "sub")
    assert os.getxattr(mnt / "sub", "user.ipld.inline") == b"1"
    # a directory changed since the last sync has no CID until the next one
    write_file(mnt / "sub/z", b"new")
    expect_errno(errno.ENODATA, os.getxattr, mnt / "sub", "user.ipld.cid")
    assert os.getxattr(mnt / "sub", "user.ipld.dirty") == b"1"
    assert os.getxattr(mnt.path, "user.ipld.dirty") == b"1"
    assert "user.ipld.cid" not in os.listxattr(mnt.path), "the root's new block does not exist yet"
    # a directory that is its own block shows the CID of that block
    (mnt / "sub/.zattrs").mkdir()  # a directory under a metadata name is always linked
    new_root = mnt.sync()
    linked = os.getxattr(mnt / "sub/.zattrs", "user.ipld.cid").decode()
    assert linked.startswith("bafy")
    assert "user.ipld.dirty" not in os.listxattr(mnt.path)
    assert check(mnt.cli("ls", f"{linked}")).stdout == ""  # fetchable: an empty directory
    assert check(mnt.cli("ls", new_root)).stdout.split() == ["sub/", "x", "x2"]


def test_mixed_tree_survives_remount(mnt: Mount, mounts: Mounts) -> None:
    expected: dict[str, bytes] = {}
    rng = random.Random(3)
    for i in range(30):
        directory = f"d{i % 4}/e{i % 3}"
        (mnt / directory).mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(rng.choice([0, 1, 100, 70_000]))
        write_file(mnt / f"{directory}/f{i}", data)
        expected[f"{directory}/f{i}"] = data
    again = _remount(mounts, mnt)
    found = {}
    for dirpath, _, files in os.walk(again.path):
        for name in files:
            path = Path(dirpath) / name
            found[str(path.relative_to(again.path))] = read_file(path)
    assert found == expected


def test_concurrent_writers_and_truncates_on_the_same_files(mnt: Mount, mounts: Mounts) -> None:
    """Opens, writes, closes and truncate(2) by path racing on three files: every call succeeds,
    the daemon never fails a request unexpectedly, and what the mount shows is what gets committed."""
    import collections
    import threading

    failures: collections.Counter[str] = collections.Counter()

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(150):
            try:
                fd = os.open(mnt / f"f{rng.randrange(3)}", os.O_WRONLY | os.O_CREAT, 0o644)
                try:
                    os.pwrite(fd, bytes([65 + seed]) * rng.randrange(1, 150_000), rng.randrange(0, 1000))
                finally:
                    os.close(fd)
            except OSError as exc:
                failures[f"write {errno.errorcode.get(exc.errno or 0)}"] += 1

    def truncater() -> None:
        rng = random.Random(99)
        for _ in range(300):
            try:
                os.truncate(mnt / f"f{rng.randrange(3)}", rng.randrange(0, 200_000))
            except FileNotFoundError:
                pass
            except OSError as exc:
                failures[f"truncate {errno.errorcode.get(exc.errno or 0)}"] += 1

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    threads.append(threading.Thread(target=truncater))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, dict(failures)
    assert "unexpectedly" not in mnt.daemon_log(), mnt.daemon_log()
    shown = {name: read_file(mnt / name) for name in os.listdir(mnt.path)}
    assert {name: (mnt / name).stat().st_size for name in shown} == {k: len(v) for k, v in shown.items()}
    again = _remount(mounts, mnt)
    assert {name: read_file(again / name) for name in os.listdir(again.path)} == shown


def test_shared_mmap_writes_reach_the_tree(mnt: Mount, mounts: Mounts) -> None:
    import mmap

    write_file(mnt / "m", bytes(10_000))
    with open(mnt / "m", "r+b") as stream:
        mapped = mmap.mmap(stream.fileno(), 0)
        mapped[100:105] = b"HELLO"
        mapped.flush()
        mapped.close()
    expected = bytes(100) + b"HELLO" + bytes(10_000 - 105)
    assert read_file(mnt / "m") == expected
    assert read_file(_remount(mounts, mnt) / "m") == expected


def test_renameat2_flags_and_mknod_of_a_regular_file(mnt: Mount) -> None:
    import ctypes
    import stat

    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "renameat2"):
        pytest.skip("libc has no renameat2")
    at_fdcwd, noreplace, exchange = -100, 1, 2

    def renameat2(old: Path, new: Path, flags: int) -> int:
        result = libc.renameat2(at_fdcwd, bytes(old), at_fdcwd, bytes(new), flags)
        return 0 if result == 0 else ctypes.get_errno()

    write_file(mnt / "a", b"A")
    write_file(mnt / "b", b"B")
    assert renameat2(mnt / "a", mnt / "b", noreplace) == errno.EEXIST
    assert renameat2(mnt / "a", mnt / "b", exchange) == errno.EINVAL  # not supported: nothing happens
    assert read_file(mnt / "a") == b"A" and read_file(mnt / "b") == b"B"
    assert renameat2(mnt / "a", mnt / "c", noreplace) == 0
    assert sorted(os.listdir(mnt.path)) == ["b", "c"]
    os.mknod(mnt / "reg", stat.S_IFREG | 0o640)
    assert stat.S_ISREG((mnt / "reg").stat().st_mode)
    assert read_file(mnt / "reg") == b""


def test_whole_files_keeps_one_raw_block(mounts: Mounts) -> None:
    import hashlib

    from ipldmount.ipld import cid as cids

    mnt = mounts().mount("empty", "--whole-files")
    data = random.Random(2).randbytes(3 * 1024 * 1024)
    write_file(mnt / "big", data)
    mnt.sync()
    cid = os.getxattr(mnt / "big", "user.ipld.cid").decode()
    assert cid == cids.cid_to_str(cids.block_cid(cids.RAW, data))
    assert hashlib.sha256(read_file(mnt / "big")).digest() == hashlib.sha256(data).digest()


def test_car_dir(mounts: Mounts, tmp_path: Path) -> None:
    cars = tmp_path / "cars-here"
    mnt = mounts().mount("empty", "--car-dir", str(cars))
    write_file(mnt / "f", b"f")
    root = mnt.sync()
    assert (cars / f"{root}.car").exists()
    assert not (mnt.store / "cars").exists()
