"""Modes, owners and times through real mounts: they follow renames across syncs and remounts,
never widen (a file whose mode is lost comes back private), and the command line says when the
attribute table could not be read. Also what ``user.ipld.cid`` and ``user.ipld.dirty`` say of a
file changed since the last sync."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuse_helpers import Mount, Mounts, check, expect_errno, read_file, write_file

pytest_plugins = ("fuse_helpers",)
pytestmark = pytest.mark.fuse

NOBODY = 65534
SECRET = b"-----BEGIN OPENSSH PRIVATE KEY-----\nnot really\n"


@pytest.fixture
def shared(mounts: Mounts) -> Iterator[Mount]:
    """A mount whose mountpoint and store sit in a folder anyone may look into (pytest's own are
    0700, which would keep nobody out for us); unmounted before the folder goes."""
    folder = Path(tempfile.mkdtemp(prefix="ipldmount-open-"))
    folder.chmod(0o755)
    mount = Mount(folder / "mnt", folder / "store")
    mounts.made.append(mount)
    try:
        yield mount
    finally:
        mounts.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def nobody_reads(path: Path) -> bool:
    """Whether user nobody (no groups) can read *path*: the kernel's own permission check."""
    result = subprocess.run(
        ["cat", str(path)], user=NOBODY, group=NOBODY, extra_groups=[], capture_output=True, timeout=60
    )
    return result.returncode == 0


# --- item 9: modes follow renames and never widen -------------------------------------------


def test_a_private_key_stays_private_after_its_directory_is_renamed(shared: Mount) -> None:
    """The reported sequence: chmod 600, sync, mv the directory, sync, remount with
    --allow-other: the key is still 600 and nobody cannot read it."""
    mnt = shared.mount("empty")
    (mnt / "proj/sub").mkdir(parents=True)
    write_file(mnt / "proj/id_key", SECRET)
    write_file(mnt / "proj/sub/deep", SECRET)
    write_file(mnt / "proj/readme", b"anyone may read this")
    os.chmod(mnt / "proj/id_key", 0o600)
    os.chmod(mnt / "proj/sub/deep", 0o640)
    os.chmod(mnt / "proj/sub", 0o750)
    mnt.sync()
    os.rename(mnt / "proj", mnt / "proj2")
    root = mnt.sync()
    mnt.unmount()

    mnt.mount(root, "--allow-other")
    assert mode_of(mnt / "proj2/id_key") == 0o600
    assert mode_of(mnt / "proj2/sub/deep") == 0o640
    assert mode_of(mnt / "proj2/sub") == 0o750
    assert mode_of(mnt / "proj2/readme") == 0o644
    assert nobody_reads(mnt / "proj2/readme"), "the test itself must not be what keeps nobody out"
    assert not nobody_reads(mnt / "proj2/id_key")


def test_modes_follow_renames_made_after_a_remount_before_any_sync(mounts: Mounts) -> None:
    """Renamed in a later mount whose nodes were never looked at (packed rows), shown right at
    once, and kept through the unmount's sync and the next remount; a renamed file too."""
    mnt = mounts().mount("empty")
    (mnt / "a/b").mkdir(parents=True)
    write_file(mnt / "a/b/key", SECRET)
    write_file(mnt / "a/loose", SECRET)
    os.chmod(mnt / "a/b/key", 0o600)
    os.chmod(mnt / "a/loose", 0o600)
    os.chmod(mnt / "a/b", 0o700)
    root = mnt.unmount()

    mnt.mount(root)
    os.rename(mnt / "a", mnt / "c")  # nothing under a/ was looked up before
    os.rename(mnt / "c/loose", mnt / "c/b/moved")
    assert mode_of(mnt / "c/b/key") == 0o600
    assert mode_of(mnt / "c/b/moved") == 0o600
    assert mode_of(mnt / "c/b") == 0o700
    root = mnt.unmount()

    mnt.mount(root)
    assert (mode_of(mnt / "c/b/key"), mode_of(mnt / "c/b/moved"), mode_of(mnt / "c/b")) == (
        0o600,
        0o600,
        0o700,
    )


def test_a_rename_replayed_from_the_journal_keeps_the_modes(mounts: Mounts) -> None:
    """A daemon killed after the rename, before any sync: the journal brings the rename back,
    and the modes come with it (the rows moved when the rename was made)."""
    mnt = mounts().mount("empty")
    (mnt / "d").mkdir()
    write_file(mnt / "d/key", SECRET)
    os.chmod(mnt / "d/key", 0o600)
    root = mnt.unmount()
    mnt.mount(root)
    os.rename(mnt / "d", mnt / "e")
    pid = mnt.kill(9)
    mnt.wait_daemon_gone(pid)
    subprocess.run(["fusermount3", "-u", str(mnt.path)], capture_output=True, timeout=30)
    mnt.mount("resume")
    assert mode_of(mnt / "e/key") == 0o600


def test_a_hard_link_keeps_the_mode_under_both_names(mounts: Mounts) -> None:
    mnt = mounts().mount("empty")
    write_file(mnt / "key", SECRET)
    os.chmod(mnt / "key", 0o600)
    os.link(mnt / "key", mnt / "other-name")
    root = mnt.unmount()
    mnt.mount(root)
    assert (mode_of(mnt / "key"), mode_of(mnt / "other-name")) == (0o600, 0o600)


# --- item 9: a corrupt attribute table --------------------------------------------------------


def corrupt_first_page(table: Path) -> bytes:
    """Overwrite the table's first page (its header and schema) with garbage; the garbage."""
    garbage = bytes(range(256)) * 16
    with open(table, "r+b") as stream:
        stream.write(garbage)
    return garbage


def warnings_in(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "warning" in line.lower()]


def test_a_corrupt_attribute_table_is_moved_aside_and_modes_come_back_private(shared: Mount) -> None:
    mnt = shared.mount("empty")
    (mnt / "d").mkdir()
    write_file(mnt / "d/key", SECRET)
    write_file(mnt / "plain", b"plain")
    os.chmod(mnt / "d/key", 0o600)
    os.chmod(mnt / "d", 0o755)
    os.chmod(mnt / "plain", 0o644)
    root = mnt.unmount()
    table = mnt.store / "attributes.sqlite"
    garbage = corrupt_first_page(table)

    result = check(mnt.cli("mount", root, mnt.path, "--allow-other"))
    lines = warnings_in(result.stderr)
    assert len(lines) == 1, result.stderr
    assert "attribute" in lines[0] and "0600" in lines[0] and "0700" in lines[0], lines[0]
    aside = list(mnt.store.glob("attributes.sqlite.corrupt-*"))
    aside = [path for path in aside if not path.name.endswith(("-wal", "-shm"))]
    assert len(aside) == 1 and f"moved aside to {aside[0]};" in lines[0], (aside, lines[0])
    assert aside[0].read_bytes().startswith(garbage), "the corrupt table is kept as it was"
    for path, mode in [("d/key", 0o600), ("plain", 0o600), ("d", 0o700), ("", 0o700)]:
        assert mode_of(mnt / path) == mode, path  # the root too: its mode was lost with the rest
    assert not nobody_reads(mnt / "plain"), "a mode that was lost comes back private"

    os.chmod(mnt / "plain", 0o644)  # a chmod works, and is kept
    assert mode_of(mnt / "plain") == 0o644
    sync = check(mnt.cli("sync", mnt.path))
    assert not warnings_in(sync.stderr), sync.stderr  # the table is a new one, readable
    mnt.unmount()
    again = check(mnt.cli("mount", root, mnt.path))
    assert not warnings_in(again.stderr), again.stderr
    assert (mode_of(mnt / "plain"), mode_of(mnt / "d/key"), mode_of(mnt / "d")) == (0o644, 0o600, 0o700)


def test_a_table_corrupted_while_mounted_is_reported_by_sync(mounts: Mounts) -> None:
    mnt = mounts().mount("empty")
    write_file(mnt / "f", b"f")
    write_file(mnt / "g", b"g")
    os.chmod(mnt / "g", 0o640)
    mnt.sync()
    table = mnt.store / "attributes.sqlite"
    corrupt_first_page(table)
    os.chmod(mnt / "f", 0o604)
    result = check(mnt.cli("sync", mnt.path))
    lines = warnings_in(result.stderr)
    assert len(lines) == 1 and "attribute" in lines[0], result.stderr
    root = mnt.unmount()
    mnt.mount(root)
    assert mode_of(mnt / "f") == 0o604, "the chmod made after the table broke is kept"
    assert mode_of(mnt / "g") == 0o600, "one kept in the broken table is lost: private, never wider"


# --- item 17: the extended attributes of a changed file ---------------------------------------


def test_a_file_changed_since_the_last_sync_is_dirty_and_shows_no_cid(mounts: Mounts) -> None:
    mnt = mounts().mount("empty")
    write_file(mnt / "f", b"first")
    write_file(mnt / "same", b"unchanged")
    mnt.sync()
    synced = os.getxattr(mnt / "f", "user.ipld.cid")
    assert "user.ipld.dirty" not in os.listxattr(mnt / "f")

    write_file(mnt / "f", b"second")
    expect_errno(errno.ENODATA, os.getxattr, mnt / "f", "user.ipld.cid")
    assert os.getxattr(mnt / "f", "user.ipld.dirty") == b"1"
    assert set(os.listxattr(mnt / "f")) == {"user.ipld.dirty"}
    shown = subprocess.run(
        ["getfattr", "-d", "-m", "user.ipld", str(mnt / "f")], capture_output=True, text=True, timeout=60
    )
    assert "user.ipld.dirty" in shown.stdout and "user.ipld.cid" not in shown.stdout, shown.stdout
    assert "user.ipld.dirty" not in os.listxattr(mnt / "same")  # untouched: still its synced CID

    mnt.sync()
    assert "user.ipld.dirty" not in os.listxattr(mnt / "f")
    assert os.getxattr(mnt / "f", "user.ipld.cid") not in (synced, b"")
    assert read_file(mnt / "f") == b"second"
