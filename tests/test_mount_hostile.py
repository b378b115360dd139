"""Real mounts of trees nobody should have made, and the link counts POSIX tools rely on.

Hostile blocks are put into the store directly (the encoder would refuse them); the mount must
answer EIO where it cannot read, keep every entry it cannot read, and keep syncing and unmounting.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import cbor2
import pytest
from fuse_helpers import (
    Mount,
    Mounts,
    assert_one_line_error,
    check,
    expect_errno,
    is_mounted,
    read_file,
    wait_for,
    write_file,
)

from ipldmount.blocks import DirectoryBlockstore
from ipldmount.format import hamt
from ipldmount.ipld import cid as cids
from ipldmount.ipld import codec

pytest_plugins = ("fuse_helpers",)
pytestmark = pytest.mark.fuse


def _put_directory(store: DirectoryBlockstore, entries: dict[Any, Any]) -> bytes:
    """A directory node exactly as given (links as tag 42), bypassing the encoder's checks."""
    prepared = {
        key: cbor2.CBORTag(42, b"\0" + value.cid) if isinstance(value, codec.Link) else value
        for key, value in entries.items()
    }
    return store.put(cbor2.dumps(prepared, canonical=True), cids.DAG_CBOR)


def _raw(store: DirectoryBlockstore, data: bytes) -> codec.Link:
    return codec.Link(store.put(data, cids.RAW))


def _mounted(mounts: Mounts, build: Any) -> tuple[Mount, bytes]:
    mnt = mounts()
    root = build(DirectoryBlockstore(mnt.store))
    mnt.mount(cids.cid_to_str(root))
    return mnt, root


# --- a directory that holds an invalid name ----------------------------------------------------


@pytest.mark.parametrize("bad", ["a\0b", ".", "..", "", "a/b", "../../x"])
def test_an_invalid_name_makes_the_directory_unchangeable_not_emptied(mounts: Mounts, bad: str) -> None:
    mnt, root = _mounted(
        mounts, lambda store: _put_directory(store, {bad: _raw(store, b"?"), "ok": _raw(store, b"kept")})
    )
    expect_errno(errno.EIO, os.listdir, mnt.path)
    expect_errno(errno.EIO, write_file, mnt / "newfile", b"x")
    expect_errno(errno.EIO, os.mkdir, mnt / "newdir")
    assert mnt.unmount() == cids.cid_to_str(root), "nothing changed, so the root is the same"
    assert "ok" in codec.decode(DirectoryBlockstore(mnt.store).get(root))


def test_an_invalid_name_below_the_root(mounts: Mounts) -> None:
    """Only the invalid directory refuses; its parent changes, and the sync keeps its link."""

    def build(store: DirectoryBlockstore) -> bytes:
        bad = _put_directory(store, {"a/b": _raw(store, b"?"), "ok": _raw(store, b"kept")})
        return _put_directory(store, {"sub": codec.Link(bad), "f": _raw(store, b"f")})

    mnt, root = _mounted(mounts, build)
    expect_errno(errno.EIO, os.listdir, mnt / "sub")
    expect_errno(errno.EIO, write_file, mnt / "sub/new", b"x")
    write_file(mnt / "new", b"beside it")
    new_root = cids.parse_cid(mnt.sync())
    entries = codec.decode(DirectoryBlockstore(mnt.store).get(new_root))
    assert entries["sub"] == codec.decode(DirectoryBlockstore(mnt.store).get(root))["sub"]
    assert sorted(entries) == ["f", "new", "sub"]
    mnt.unmount()


# --- a directory block that is not DAG-CBOR ------------------------------------------------------


def test_a_byte_string_key_is_a_broken_entry_and_the_daemon_lives(mounts: Mounts) -> None:
    def build(store: DirectoryBlockstore) -> bytes:
        bad = store.put(cbor2.dumps({b"bytes-key": {}, "ok": {}}, canonical=True), cids.DAG_CBOR)
        return _put_directory(store, {"sub": codec.Link(bad), "f": _raw(store, b"f")})

    mnt, root = _mounted(mounts, build)
    assert sorted(os.listdir(mnt.path)) == ["f", "sub"]
    expect_errno(errno.EIO, os.listdir, mnt / "sub")
    expect_errno(errno.EIO, os.stat, mnt / "sub/ok")
    broken = subprocess.run(
        ["getfattr", "-n", "user.ipld.broken", "--only-values", mnt / "sub"], capture_output=True
    )
    assert broken.returncode == 0 and b"not a dag-cbor block" in broken.stdout.lower(), broken
    write_file(mnt / "g", b"g")
    # The root is committed; its CAR of the change needs no block the change did not touch, but
    # a full CAR cannot be complete (the block's links cannot be read): said so in one line.
    synced = mnt.sync()
    assert synced != cids.cid_to_str(root) and mnt.status()["root"] == synced
    result = mnt.cli("sync", mnt.path, "--full-car")
    assert_one_line_error(result, "synced: 1 block", "no CAR was written")
    assert result.stdout.strip() == synced
    pid = mnt.daemon_pid()
    assert pid is not None
    assert mnt.cli("unmount", mnt.path).stdout.strip().splitlines()[-1] == synced
    assert not is_mounted(mnt.path)
    mnt.wait_daemon_gone(pid)
    assert "Traceback" not in mnt.daemon_log()
    entries = codec.decode(DirectoryBlockstore(mnt.store).get(cids.parse_cid(synced)))
    assert sorted(entries) == ["f", "g", "sub"], "the unreadable entry keeps its link"


def test_a_subdirectory_whose_block_is_missing_answers_eio(mounts: Mounts) -> None:
    def build(store: DirectoryBlockstore) -> bytes:
        gone = cids.block_cid(cids.DAG_CBOR, codec.encode({"never": "stored"}))
        return _put_directory(store, {"sub": codec.Link(gone), "f": _raw(store, b"f")})

    mnt, root = _mounted(mounts, build)
    assert stat.S_ISDIR(os.stat(mnt / "sub").st_mode)
    expect_errno(errno.EIO, os.listdir, mnt / "sub")
    expect_errno(errno.EIO, os.stat, mnt / "sub/x")
    expect_errno(errno.EIO, os.mkdir, mnt / "sub/x")
    assert read_file(mnt / "f") == b"f"
    # it unmounts, and says the full CAR of a tree with a hole cannot be written
    unmount = mnt.cli("unmount", mnt.path, "--full-car")
    error = assert_one_line_error(unmount, "cannot be read", "no CAR was written")
    assert not is_mounted(mnt.path)
    assert cids.cid_to_str(root) in error


# --- link counts and listings -------------------------------------------------------------------


@pytest.fixture
def mnt(mounts: Mounts) -> Mount:
    return mounts().mount("empty")


def test_directory_link_counts(mnt: Mount) -> None:
    """2 + subdirectories, as find's leaf optimisation and pjdfstest rename/24 expect."""
    for name in ("src/d", "src/e", "dst"):
        os.makedirs(mnt / name)
    write_file(mnt / "src/file", b"a file is not a link")
    assert os.stat(mnt.path).st_nlink == 4
    assert os.stat(mnt / "src").st_nlink == 4
    assert os.stat(mnt / "dst").st_nlink == 2
    os.rename(mnt / "src/d", mnt / "dst/d")
    assert os.stat(mnt / "src").st_nlink == 3
    assert os.stat(mnt / "dst").st_nlink == 3
    os.rmdir(mnt / "dst/d")
    assert os.stat(mnt / "dst").st_nlink == 2
    root = mnt.sync()
    again = check(mnt.cli("ls", "-l", root)).stdout
    assert "src" in again
    found = subprocess.run(["find", mnt.path, "-type", "d"], capture_output=True, text=True, check=True)
    assert sorted(Path(line).relative_to(mnt.path).as_posix() for line in found.stdout.split()) == [
        ".",
        "dst",
        "src",
        "src/e",
    ]


def test_link_counts_survive_a_remount(mounts: Mounts) -> None:
    mnt = mounts().mount("empty")
    for name in ("a/b", "a/c", "a/d"):
        os.makedirs(mnt / name)
    root = mnt.unmount()
    mnt.mount(root)
    assert os.stat(mnt / "a").st_nlink == 5
    mnt.unmount()


def test_an_open_file_unlinked_has_no_links(mnt: Mount) -> None:
    """pjdfstest unlink/14: fstat of an open file whose last name is gone says st_nlink 0."""
    write_file(mnt / "f", b"data")
    os.link(mnt / "f", mnt / "g")
    fd = os.open(mnt / "f", os.O_RDONLY)
    try:
        assert os.fstat(fd).st_nlink == 2
        os.unlink(mnt / "f")
        assert os.fstat(fd).st_nlink == 1
        os.unlink(mnt / "g")
        assert os.fstat(fd).st_nlink == 0
        assert os.pread(fd, 10, 0) == b"data"
    finally:
        os.close(fd)


def test_listings_carry_dot_and_dot_dot(mnt: Mount) -> None:
    os.makedirs(mnt / "d/e")
    write_file(mnt / "d/f", b"")
    for folder, expected in ((mnt.path, [".", "..", "d"]), (mnt / "d", [".", "..", "e", "f"])):
        listing = subprocess.run(["ls", "-a1", folder], capture_output=True, text=True, check=True)
        assert listing.stdout.split() == expected
    inode = subprocess.run(["ls", "-ai1", mnt / "d"], capture_output=True, text=True, check=True)
    numbers = {line.split()[1]: int(line.split()[0]) for line in inode.stdout.splitlines()}
    assert numbers["."] == os.stat(mnt / "d").st_ino and numbers[".."] == os.stat(mnt.path).st_ino


# --- an acked unlink stays done ------------------------------------------------------------------


HOLD_OPEN = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, b"the dead writer's content")
print("written", flush=True)
sys.stdin.readline()
os.close(fd)
"""


def test_an_unlink_acked_while_a_writer_held_the_file_stays_done(mounts: Mounts) -> None:
    """Open for write, write, unlink from another process, fsync the directory, close; kill -9: gone."""
    mnt = mounts().mount("empty")
    os.makedirs(mnt / "d")
    write_file(mnt / "d/other", b"kept")
    writer = subprocess.Popen(
        [sys.executable, "-c", HOLD_OPEN, mnt / "d/f6"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline() == b"written\n"
        os.unlink(mnt / "d/f6")
        directory = os.open(mnt / "d", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    finally:
        writer.communicate(b"close\n", timeout=60)
    assert writer.returncode == 0
    pid = mnt.kill(signal.SIGKILL)
    mnt.wait_daemon_gone(pid)
    check(mnt.cli("mount", "resume", mnt.path))
    wait_for(lambda: (mnt / "d").exists(), 30, "the resumed mount")
    assert sorted(os.listdir(mnt / "d")) == ["other"]
    root = mnt.unmount()
    listing = check(mnt.cli("ls", f"{root}/d")).stdout.split()
    assert listing == ["other"]


def test_a_sharded_directory_holding_a_name_twice_answers_eio_and_the_daemon_lives(mounts: Mounts) -> None:
    def build(store: DirectoryBlockstore) -> bytes:
        key = b"a"
        bitmap = hamt.bitmap_of([hashlib.sha256(key).digest()[0]])
        first, second = _raw(store, b"one"), _raw(store, b"two")
        bucket = [[key, cbor2.CBORTag(42, b"\0" + first.cid)], [key, cbor2.CBORTag(42, b"\0" + second.cid)]]
        node = {"hashAlg": cids.SHA2_256, "bucketSize": 3, "hamt": [bitmap, [bucket]]}
        sharded = store.put(cbor2.dumps(node, canonical=True), cids.DAG_CBOR)
        return _put_directory(store, {"d": codec.Link(sharded), "f": _raw(store, b"f")})

    mnt, root = _mounted(mounts, build)
    expect_errno(errno.EIO, os.listdir, mnt / "d")
    assert sorted(os.listdir(mnt.path)) == ["d", "f"] and read_file(mnt / "f") == b"f"
    assert mnt.unmount() == cids.cid_to_str(root)
