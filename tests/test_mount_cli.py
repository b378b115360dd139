"""Mounting as users and mount(8) do it: the mountpoint rules, options, the helper, fstab, status.

Every test drives a real mount through the installed commands and checks what a user would see.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
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
    read_file,
    wait_for,
    write_file,
)

from ipldmount import __version__
from ipldmount.ipld.cid import cid_to_str
from ipldmount.tree.model import EMPTY_ROOT

pytest_plugins = ("fuse_helpers",)
pytestmark = pytest.mark.fuse

BIN = Path(sys.executable).parent  # the venv's console scripts: ipldmount, mount.ipldmount
SEED_FILE = ".zgroup"
WRITE_AND_WAIT = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
os.write(fd, b"x")
print("written", flush=True)
sys.stdin.readline()
os.close(fd)
"""


def _seeded(mount: Mount) -> Mount:
    check(mount.cli("import", SEED_CAR))
    return mount


def _mount_options(mountpoint: Path) -> set[str]:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if fields[1] == str(mountpoint):
            return set(fields[3].split(","))
    raise AssertionError(f"{mountpoint} is not in /proc/self/mounts")


# --- the mountpoint -------------------------------------------------------------------


def test_a_mountpoint_that_holds_files_is_refused(mounts: Mounts) -> None:
    mnt = mounts()
    write_file(mnt / "precious", b"mine")
    error = assert_one_line_error(mnt.cli("mount", "empty", mnt.path), "not empty", "precious", "--nonempty")
    assert "Traceback" not in error
    assert not is_mounted(mnt.path)
    assert read_file(mnt / "precious") == b"mine"


def test_nonempty_mounts_over_files_and_hides_them(mounts: Mounts) -> None:
    mnt = mounts()
    write_file(mnt / "precious", b"mine")
    mnt.mount("empty", "--nonempty")
    assert os.listdir(mnt.path) == []
    mnt.unmount()
    assert read_file(mnt / "precious") == b"mine"


def test_store_option_before_the_root(mounts: Mounts) -> None:
    """`ipldmount --store S ROOT MNT`, as `ipldmount ROOT MNT --store S`."""
    mnt = _seeded(mounts())
    check(cli("--store", mnt.store, SEED_ROOT, mnt.path))
    assert is_mounted(mnt.path) and (mnt / SEED_FILE).exists()
    assert mnt.unmount() == SEED_ROOT


def test_version() -> None:
    result = check(cli("--version"))
    assert result.stdout.strip() == f"ipldmount {__version__}"


# --- status and discard ------------------------------------------------------------------


def test_status_of_a_fresh_empty_mount(mounts: Mounts) -> None:
    mnt = mounts().mount("empty")
    status = mnt.status()
    empty = cid_to_str(EMPTY_ROOT)
    assert status["root"] == empty
    assert status["unsynced_changes"] == 0 and status["open_unsaved_files"] == 0
    assert status["sync_changes_root"] is False
    assert check(mnt.cli("ls", empty)).stdout == ""  # the root shown is a stored, readable tree
    # A writer in its own process: a file open in ours would be flushed by every child we spawn
    # (closing its inherited copy on exec sends FLUSH), status included.
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITE_AND_WAIT, mnt / "new"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline() == b"written\n"
        assert mnt.status()["open_unsaved_files"] == 1
        assert mnt.status()["sync_changes_root"] is True
    finally:
        writer.communicate(b"close\n", timeout=60)
    assert writer.returncode == 0
    status = mnt.status()
    assert status["open_unsaved_files"] == 0
    assert status["unsynced_changes"] >= 1 and status["sync_changes_root"] is True
    new_root = mnt.sync()
    status = mnt.status()
    assert status["root"] == new_root != empty
    assert status["unsynced_changes"] == 0 and status["sync_changes_root"] is False
    text = check(mnt.cli("status", mnt.path)).stdout
    assert (
        f"(started from, or last synced): {new_root}" in text and "a sync would change the root: no" in text
    )


def test_discard_drops_what_a_dead_session_left(mounts: Mounts) -> None:
    mnt = mounts().mount("empty")
    write_file(mnt / "kept", b"synced")
    root = mnt.sync()
    write_file(mnt / "unsynced", b"in the journal only")
    os.mkdir(mnt / "dir")
    pid = mnt.kill(signal.SIGKILL)
    mnt.wait_daemon_gone(pid)
    result = check(mnt.cli("mount", "resume", mnt.path, "--discard"))
    assert "discarded 3 unsynced changes" in result.stderr, result.stderr
    assert sorted(os.listdir(mnt.path)) == ["kept"]
    assert mnt.status()["root"] == root
    assert mnt.unmount() == root


def test_discard_with_nothing_to_discard_says_so(mounts: Mounts) -> None:
    mnt = mounts()
    result = check(mnt.cli("mount", "empty", mnt.path, "--discard"))
    assert "no unsynced changes to discard" in result.stderr
    mnt.unmount()


# --- mount(8) options, the helper, fstab ------------------------------------------------------


def test_mount_options_as_mount8_passes_them(mounts: Mounts) -> None:
    mnt = _seeded(mounts())
    options = f"rw,dev,suid,nofail,_netdev,x-systemd.automount,allow_other,store={mnt.store}"
    check(cli(SEED_ROOT, mnt.path, "-o", options))
    assert "allow_other" in _mount_options(mnt.path)
    write_file(mnt / "new", b"written")
    assert mnt.unmount() != SEED_ROOT


def test_ro_option(mounts: Mounts) -> None:
    mnt = _seeded(mounts())
    check(cli(SEED_ROOT, mnt.path, "-o", f"ro,nodev,nosuid,store={mnt.store}"))
    assert mnt.status()["read_only"] is True
    expect_errno(errno.EROFS, write_file, mnt / "new", b"x")
    assert mnt.unmount() == SEED_ROOT


@pytest.mark.parametrize("options", ["bogus", "store", "ro,colour=blue"])
def test_unknown_mount_options_are_usage_errors(mounts: Mounts, options: str) -> None:
    mnt = mounts()
    result = mnt.cli("mount", "empty", mnt.path, "-o", options)
    assert result.returncode == 2, result.stderr
    assert "unknown mount option" in result.stderr and "Traceback" not in result.stderr
    assert not is_mounted(mnt.path)


def test_the_mount_helper(mounts: Mounts) -> None:
    """What `mount -t ipldmount ROOT DIR` runs: /sbin/mount.ipldmount ROOT DIR -o OPTIONS."""
    mnt = _seeded(mounts())
    helper = BIN / "mount.ipldmount"
    fake = subprocess.run([helper, SEED_ROOT, mnt.path, "-f", "-o", "rw"], capture_output=True, text=True)
    assert fake.returncode == 0 and not is_mounted(mnt.path)
    options = f"rw,dev,suid,nofail,_netdev,store={mnt.store}"
    result = subprocess.run([helper, SEED_ROOT, mnt.path, "-o", options], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert read_file(mnt / SEED_FILE) == (SEED_CAR.parent / "tree" / SEED_FILE).read_bytes()
    assert mnt.unmount() == SEED_ROOT


def test_an_fstab_line(mounts: Mounts, tmp_path: Path) -> None:
    """`mount DIR` from an fstab line (type fuse, PROGRAM#ROOT), then `umount DIR`: the daemon syncs."""
    mnt = _seeded(mounts())
    fstab = tmp_path / "fstab"
    fstab.write_text(
        f"{BIN / 'ipldmount'}#{SEED_ROOT} {mnt.path} fuse "
        f"rw,store={mnt.store},nofail,_netdev,x-systemd.automount 0 0\n"
    )
    result = subprocess.run(
        ["mount", "-T", fstab, str(mnt.path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert is_mounted(mnt.path)
    write_file(mnt / "from-fstab", b"hello")
    pid = mnt.daemon_pid()
    subprocess.run(["umount", str(mnt.path)], check=True, timeout=120)
    assert not is_mounted(mnt.path)
    mnt.wait_daemon_gone(pid)
    root = mnt.roots_log()[-1]["root"]
    assert check(mnt.cli("cat", f"{root}/from-fstab")).stdout == "hello"


# --- the store is private ---------------------------------------------------------------------


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder anyone may look into (pytest's own are 0700, which would keep others out for us)."""
    folder = Path(tempfile.mkdtemp(prefix="ipldmount-open-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_the_store_is_private_to_its_owner(mounts: Mounts, open_folder: Path) -> None:
    mnt = mounts(store=open_folder / "store")
    check(mnt.cli("mount", "empty", mnt.path))
    write_file(mnt / "secret", b"the data nobody else may read")
    os.chmod(mnt / "secret", 0o600)
    mnt.sync()
    mnt.unmount()
    for path in [mnt.store, *mnt.store.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode & 0o077 == 0, f"{path} has mode {mode:o}"
    block = next(path for path in (mnt.store / "blocks").rglob("bafk*"))

    def as_nobody(*command: str | os.PathLike[str]) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(command, user=65534, group=65534, extra_groups=[], capture_output=True)

    assert as_nobody("ls", open_folder).returncode == 0, "the test itself must not be what keeps nobody out"
    assert as_nobody("cat", block).returncode != 0
    assert as_nobody("ls", mnt.store).returncode != 0


def test_a_daemon_killed_mid_write_leaves_nothing_world_readable(mounts: Mounts) -> None:
    """Logs and journals are private too, and never quote what was written."""
    mnt = mounts().mount("empty")
    marker = b"MARKER-" + os.urandom(8).hex().encode()
    write_file(mnt / "f", marker * 100)
    mnt.sync()
    wait_for(lambda: mnt.daemon_log() != "", 30, "the daemon to log")
    assert marker.decode() not in mnt.daemon_log()
    for path in (mnt.state_dir() / "daemon.log", mnt.store / "roots.log"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert last_line(check(mnt.cli("unmount", mnt.path)).stdout)


# --- history: sync -m, log, tags as roots ---------------------------------------------------------


def test_syncs_are_recorded_with_their_message_and_parent(mounts: Mounts) -> None:
    mnt = mounts().mount("empty")
    write_file(mnt / "a", b"1")
    first = last_line(check(mnt.cli("sync", mnt.path, "-m", "added a")).stdout)
    write_file(mnt / "b", b"2")
    second = last_line(check(mnt.cli("sync", mnt.path, "--message", "added b")).stdout)
    check(mnt.cli("sync", mnt.path, "-m", "nothing changed"))  # no new root: no record
    records = json.loads(check(mnt.cli("log", mnt.path, "--json")).stdout)
    assert [(r["root"], r["message"]) for r in records] == [(second, "added b"), (first, "added a")]
    assert records[0]["parents"] == [records[1]["commit"]] and records[1]["parents"] == []
    assert all(r["source"] == "mount" and r["where"] == str(mnt.path) for r in records)
    assert [r["changed"] for r in records] == [1, None]  # from its parent, by diff; the first has none
    text = check(mnt.cli("log", mnt.path)).stdout
    assert text.index(second) < text.index(first) and "    added a" in text and "(1 path changed)" in text
    check(mnt.cli("tag", "v1", first))
    final = mnt.unmount()
    assert final == second
    assert json.loads(check(mnt.cli("log", "--json")).stdout)[0]["root"] == second

    # a tag mounts like its CID; `resume` finds the last root synced here in the store's history
    again = mounts("again").mount("v1", "--read-only")
    assert sorted(os.listdir(again.path)) == ["a"]
    again.unmount()
    mnt.mount("resume")
    assert sorted(os.listdir(mnt.path)) == ["a", "b"]
    mnt.unmount()
