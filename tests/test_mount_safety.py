"""Real mounts: nothing written is lost however the daemon ends; mounts share a store; missing blocks."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuse_helpers import (
    SEED_CAR,
    SEED_ROOT,
    Mount,
    Mounts,
    assert_one_line_error,
    check,
    cli,
    expect_errno,
    is_mounted,
    last_line,
    pid_alive,
    read_file,
    tmpfs,
    wait_for,
    write_file,
)

from ipldmount.adapters.fuse.control import STALE_ERRNOS
from ipldmount.blocks import DirectoryBlockstore

pytest_plugins = ("fuse_helpers",)
pytestmark = pytest.mark.fuse

BIG = random.Random(11).randbytes(3 * 1024 * 1024 + 17)  # chunked into several blocks


def _write_sample(root: Path) -> dict[str, bytes]:
    """A small zarr-like tree, written with plain file operations and closed. Returns path -> bytes."""
    files = {
        ".zgroup": b'{"zarr_format": 2}',
        ".zattrs": b"{}",
        "arr/.zarray": b'{"chunks": [2], "dtype": "<i8", "shape": [4], "zarr_format": 2}',
        "arr/0": bytes(range(16)),
        "arr/1": b"\xff" * 16,
        "big/data.bin": BIG,
        "empty": b"",
    }
    for name in ("arr", "big", "gone/deeper"):
        os.makedirs(root / name, exist_ok=True)
    for name, data in files.items():
        write_file(root / name, data)
    return files


def _more_changes(root: Path, files: dict[str, bytes]) -> dict[str, bytes]:
    """Renames, unlinks, a hard link, a truncate, an overwrite, an rmdir: the journal must replay them all."""
    os.rename(root / "arr/1", root / "arr/2")
    files["arr/2"] = files.pop("arr/1")
    os.unlink(root / "empty")
    del files["empty"]
    os.link(root / "arr/0", root / "arr/0.link")
    files["arr/0.link"] = files["arr/0"]
    os.truncate(root / "big/data.bin", 1_500_000)
    files["big/data.bin"] = BIG[:1_500_000]
    with open(root / "arr/0", "r+b") as stream:
        stream.write(b"XY")
    files["arr/0"] = files["arr/0.link"] = b"XY" + files["arr/0"][2:]
    os.rmdir(root / "gone/deeper")
    os.rename(root / "gone", root / "moved")
    os.mkdir(root / "moved/new")
    write_file(root / "moved/new/.zattrs", b'{"a": 1}')
    files["moved/new/.zattrs"] = b'{"a": 1}'
    return files


def _read_tree(root: Path) -> dict[str, bytes]:
    found = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            found[str(path.relative_to(root))] = read_file(path)
    return found


def _roots_log_root(mnt: Mount) -> str:
    entries = mnt.roots_log()
    assert entries, "roots.log is empty"
    return str(entries[-1]["root"])


# --- 6a/6b: signals and fusermount3 -u sync before exit ---------------------------------------


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "fusermount3"])
def test_daemon_syncs_before_exit(mounts: Mounts, how: str) -> None:
    mnt = mounts().mount("empty")
    files = _write_sample(mnt.path)
    pid = mnt.daemon_pid()
    assert pid is not None
    if how == "fusermount3":
        subprocess.run(["fusermount3", "-u", str(mnt.path)], check=True, timeout=60)
    else:
        mnt.kill(getattr(signal, how))
    mnt.wait_daemon_gone(pid)
    assert not is_mounted(mnt.path)
    root = _roots_log_root(mnt)
    assert not (mnt.state_dir() / "daemon.pid").exists()
    assert not (mnt.state_dir() / "journal").exists(), "a clean exit leaves no journal"
    assert (mnt.store / "cars" / f"{root}.car").exists()

    again = mounts().mount(root)
    assert _read_tree(again.path) == files
    assert again.status()["unsynced_changes"] == 0


def test_sigterm_with_a_file_still_open(mounts: Mounts) -> None:
    """Written but never closed: SIGTERM still stores it (the daemon syncs open files too)."""
    mnt = mounts().mount("empty")
    fd = os.open(mnt / "open.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"not closed yet")
        pid = mnt.kill(signal.SIGTERM)
        mnt.wait_daemon_gone(pid)
    finally:
        with contextlib.suppress(OSError):  # ENOTCONN: the connection is gone, close just drops the fd
            os.close(fd)
    wait_for(lambda: not is_mounted(mnt.path), 30, "the mount to go away")
    again = mounts().mount(_roots_log_root(mnt))
    assert read_file(again / "open.bin") == b"not closed yet"


# --- 6c/6d: kill -9 and the journal -------------------------------------------------------------


def test_kill_9_recovers_every_closed_file(mounts: Mounts, tmp_path: Path) -> None:
    mnt = mounts().mount("empty")
    files = _more_changes(mnt.path, _write_sample(mnt.path))
    pid = mnt.kill(signal.SIGKILL)
    mnt.wait_daemon_gone(pid)
    assert is_mounted(mnt.path)  # a dead daemon leaves its mount behind

    # 6d: the CLI names the stale mount in one line instead of a traceback
    with pytest.raises(OSError) as stale:
        os.statvfs(mnt.path)
    assert stale.value.errno in STALE_ERRNOS  # ENOTCONN, or ECONNABORTED if the kernel aborted it
    for command in ("sync", "status"):
        assert_one_line_error(mnt.cli(command, mnt.path), "stale")

    # mounting the same root again at the same place clears the stale mount and replays the journal
    result = mnt.cli("mount", "empty", mnt.path)
    assert result.returncode == 0, result.stderr
    assert "died" in result.stderr
    assert is_mounted(mnt.path)
    assert _read_tree(mnt.path) == files
    status = mnt.status()
    assert int(status["unsynced_changes"]) > 0  # type: ignore[call-overload]
    assert status["sync_changes_root"] is True
    recovered_root = mnt.sync()
    assert mnt.status()["unsynced_changes"] == 0
    assert mnt.status()["sync_changes_root"] is False

    # determinism: a fresh mount (other store, other mountpoint) with the same writes gives the same root
    fresh = mounts("fresh", store=tmp_path / "store2").mount("empty")
    assert _more_changes(fresh.path, _write_sample(fresh.path)) == files
    assert fresh.sync() == recovered_root
    assert _read_tree(mnt.path) == files
    assert mnt.unmount() == recovered_root


def test_kill_9_then_unmount_clears_the_stale_mount(mounts: Mounts) -> None:
    mnt = mounts().mount("empty")
    write_file(mnt / "kept", b"journaled")
    mnt.wait_daemon_gone(mnt.kill(signal.SIGKILL))
    result = mnt.cli("unmount", mnt.path)
    assert result.returncode == 0, result.stderr
    assert not is_mounted(mnt.path)
    mnt.mount("empty")
    assert read_file(mnt / "kept") == b"journaled"


def test_kill_9_with_a_different_root_refuses_to_drop_changes(mounts: Mounts) -> None:
    mnt = mounts().mount("empty")
    write_file(mnt / "kept", b"journaled")
    mnt.wait_daemon_gone(mnt.kill(signal.SIGKILL))
    check(mnt.cli("unmount", mnt.path))
    check(mnt.cli("import", SEED_CAR))
    line = assert_one_line_error(mnt.cli("mount", SEED_ROOT, mnt.path), "unsynced")
    assert "journal" in line
    assert not is_mounted(mnt.path)
    mnt.mount("empty")  # the right root gets them back
    assert read_file(mnt / "kept") == b"journaled"


# --- 7: two mounts over one store ------------------------------------------------------------------


def test_two_mounts_share_one_store(mounts: Mounts, tmp_path: Path) -> None:
    first = mounts("one").mount(SEED_CAR)
    second = mounts("two").mount("empty")
    write_file(first / "from-one", b"1" * 5000)
    write_file(second / "from-two", b"2" * 5000)
    os.mkdir(second / "sub")
    write_file(second / "sub/big", BIG)
    write_file(first / "a/1", b"second chunk")
    root1, root2 = first.sync(), second.sync()
    assert root1 != root2 != SEED_ROOT
    assert "from-two" not in os.listdir(first.path)
    assert "from-one" not in os.listdir(second.path)
    # each keeps working after the other synced
    write_file(second / "later", b"later")
    root2b = second.sync()
    root1b = first.unmount()
    assert root1b == root1
    assert second.unmount() == root2b

    fresh = tmp_path / "fresh-store"
    check(cli("import", SEED_CAR, "--store", fresh))  # the CARs of the syncs hold the changes only
    for root in (root1, root2, root2b):
        car = first.store / "cars" / f"{root}.car"
        assert last_line(check(cli("import", car, "--store", fresh)).stdout) == root
    check_one = mounts("check1", store=fresh).mount(root1, "--read-only")
    assert read_file(check_one / "from-one") == b"1" * 5000
    assert read_file(check_one / "a/1") == b"second chunk"
    check_two = mounts("check2", store=fresh).mount(root2b, "--read-only")
    assert read_file(check_two / "sub/big") == BIG
    assert read_file(check_two / "later") == b"later"
    assert sorted(os.listdir(check_two.path)) == ["from-two", "later", "sub"]


# --- 8: a missing block ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["raw", "chunked"])
def test_missing_block_gives_eio_and_the_daemon_lives(mounts: Mounts, kind: str) -> None:
    from ipldmount.blocks import DirectoryBlockstore
    from ipldmount.format.files import decode_fbl
    from ipldmount.ipld import cid as cids

    mnt = mounts().mount("empty")
    os.mkdir(mnt / "d")
    victim_data = b"victim " * 1000 if kind == "raw" else BIG
    write_file(mnt / "d/victim", victim_data)
    write_file(mnt / "d/fine", b"fine " * 1000)
    mnt.sync()
    victim_cid = os.getxattr(mnt / "d/victim", "user.ipld.cid").decode()
    root = mnt.unmount()

    store = DirectoryBlockstore(mnt.store)
    missing = cids.parse_cid(victim_cid)
    if kind == "chunked":  # lose the second leaf: the file opens, reading that range fails
        missing = decode_fbl(store.get(missing))[1][0]
    store.block_path(missing).unlink()
    missing_text = cids.cid_to_str(missing)

    again = mounts().mount(root)
    assert read_file(again / "d/fine") == b"fine " * 1000
    assert sorted(os.listdir(again / "d")) == ["fine", "victim"]
    if kind == "raw":
        expect_errno(errno.EIO, read_file, again / "d/victim")
    else:
        with open(again / "d/victim", "rb", buffering=0) as stream:
            assert stream.read(1000) == BIG[:1000]  # the first leaf is still there
            expect_errno(errno.EIO, os.pread, stream.fileno(), 1000, (1 << 20) + 10)
        expect_errno(errno.EIO, read_file, again / "d/victim")
    # the daemon is alive and keeps serving
    pid = again.daemon_pid()
    assert pid is not None and pid_alive(pid)
    write_file(again / "new", b"still writable")
    assert read_file(again / "new") == b"still writable"
    assert read_file(again / "d/fine") == b"fine " * 1000
    assert missing_text in again.daemon_log()
    # a sync commits and writes the CAR of the change: it needs no block the change did not touch
    committed = again.sync()
    assert committed != root and committed == again.status()["root"]
    # the whole DAG cannot be written: one line says so and names the missing block
    result = again.cli("sync", again.path, "--full-car")
    assert_one_line_error(result, missing_text, "no CAR was written")
    assert last_line(result.stdout) == committed
    assert again.status()["unsynced_changes"] == 0
    assert pid_alive(pid)
    assert read_file(again / "new") == b"still writable"
    # the broken file can be removed like any other; then sync works again
    os.unlink(again / "d/victim")
    root2 = again.sync()
    assert root2 != root
    assert again.unmount() == root2
    third = mounts().mount(root2, "--read-only")
    assert sorted(os.listdir(third / "d")) == ["fine"]
    assert read_file(third / "new") == b"still writable"


def test_a_missing_block_never_blocks_an_unmount(mounts: Mounts) -> None:
    """fusermount3 -u and `ipldmount unmount` with a block missing: the root is committed, a full CAR
    reported incomplete in one clear line, and the mount is gone either way."""
    from ipldmount.blocks import DirectoryBlockstore
    from ipldmount.ipld import cid as cids

    mnt = mounts().mount("empty")
    write_file(mnt / "victim", b"soon missing")
    root = mnt.unmount()
    missing = cids.cid_to_str(cids.block_cid(cids.RAW, b"soon missing"))
    DirectoryBlockstore(mnt.store).block_path(cids.parse_cid(missing)).unlink()

    mnt.mount(root)
    write_file(mnt / "precious", b"must not be lost")
    pid = mnt.daemon_pid()
    subprocess.run(["fusermount3", "-u", str(mnt.path)], check=True, timeout=60)
    mnt.wait_daemon_gone(pid)
    log = mnt.daemon_log()
    assert "Traceback" not in log and "Exception Group" not in log, log
    assert "final sync" in log  # its CAR of the change needs no block the change did not touch
    assert not (mnt.state_dir() / "journal").exists(), "the root holds everything: nothing is pending"

    mnt.mount("resume")  # the root the final sync committed
    assert read_file(mnt / "precious") == b"must not be lost"
    write_file(mnt / "more", b"after resume")
    result = mnt.cli("unmount", mnt.path, "--full-car")
    assert_one_line_error(result, "unmounted", missing)
    assert not is_mounted(mnt.path)
    final = last_line(result.stdout)
    again = mounts("again").mount(final, "--read-only")
    assert sorted(os.listdir(again.path)) == ["more", "precious", "victim"]
    assert read_file(again / "more") == b"after resume"


def test_kill_9_during_a_stream_of_writes(mounts: Mounts) -> None:
    """SIGKILL while a program keeps writing files: every file whose close() returned comes back."""
    import threading

    mnt = mounts().mount("empty")
    os.mkdir(mnt / "stream")
    closed: dict[str, bytes] = {}
    started = threading.Event()

    def writer() -> None:
        for i in range(100_000):
            name, data = f"stream/{i}", (f"file {i} " * (1 + i % 50)).encode()
            try:
                fd = os.open(mnt / name, os.O_WRONLY | os.O_CREAT, 0o644)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
            except OSError:
                return  # the daemon is gone
            closed[name] = data
            if i == 200:
                started.set()

    thread = threading.Thread(target=writer)
    thread.start()
    assert started.wait(120), "the writer did not get going"
    pid = mnt.kill(signal.SIGKILL)
    thread.join(120)
    assert not thread.is_alive()
    mnt.wait_daemon_gone(pid)
    assert len(closed) > 200

    mnt.mount("empty")  # clears the stale mount, replays the journal
    on_mount = set(os.listdir(mnt / "stream"))
    assert {name.partition("/")[2] for name in closed} <= on_mount
    assert len(on_mount) - len(closed) <= 1  # at most the one being written when the daemon died
    for name, data in closed.items():
        assert read_file(mnt / name) == data, name


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, so the blockstore on it fills up."""
    with tmpfs(tmp_path / "small-disk", "4m") as path:
        yield path


def test_full_disk_answers_enospc_and_loses_nothing(mounts: Mounts, small_disk: Path, tmp_path: Path) -> None:
    ballast = small_disk / "ballast"  # stands for whatever the user can delete to make room
    ballast.write_bytes(bytes(1536 * 1024))
    mnt = mounts(store=small_disk / "store").mount("empty", "--car-dir", str(tmp_path / "cars"))
    write_file(mnt / "kept", b"closed before the disk filled up")
    with pytest.raises(OSError) as caught, open(mnt / "big", "wb") as stream:
        for _ in range(16):  # 16 MiB onto a 4 MiB disk
            stream.write(os.urandom(1 << 20))
            stream.flush()
    assert caught.value.errno == errno.ENOSPC, caught.value
    assert "full" in mnt.daemon_log()  # the daemon says why
    assert read_file(mnt / "kept") == b"closed before the disk filled up"
    assert mnt.daemon_answers(), "the daemon keeps serving after ENOSPC"
    os.unlink(mnt / "big")

    # The leaves of the write that failed were staged, never stored: they go once the kernel
    # releases the file (FUSE sends RELEASE and FORGET after close and unlink return, so this
    # waits for them), and the disk has room again without the user freeing anything.
    store = DirectoryBlockstore(mnt.store)
    wait_for(lambda: os.listdir(store.tmp_dir) == [], 30, "the failed file's staged leaves to go")
    assert sum(os.path.getsize(store.block_path(cid)) for cid in store) < 1 << 20
    root = mnt.sync()
    assert check(mnt.cli("ls", root)).stdout.split() == ["kept"]
    ballast.unlink()
