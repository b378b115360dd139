"""What gc and the history owe a mount: a rollback that sticks, the root a mountpoint shows,
files still open after unlink or rename, a CAR that cannot be written, and unsynced changes
that cannot be dropped while mounted. Real mounts, driven through the CLI."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import pytest
from fuse_helpers import Mount, Mounts, assert_one_line_error, check, last_line, read_file, tmpfs, write_file

from ipldmount.blocks import DirectoryBlockstore
from ipldmount.blocks.dag import iter_closure
from ipldmount.ipld.cid import parse_cid

pytest_plugins = ("fuse_helpers",)
pytestmark = pytest.mark.fuse


def gc(mnt: Mount, *options: str) -> dict[str, object]:
    return json.loads(check(mnt.cli("gc", "--grace", "0", "--json", *options)).stdout)  # type: ignore[no-any-return]


def age_blocks(store: Path, seconds: float = 3600) -> None:
    then = time.time() - seconds
    for shard in (store / "blocks").iterdir():
        for block in shard.iterdir():
            os.utime(block, (then, then))


def drop_caches() -> None:
    """The kernel forgets file pages: a read must come from the daemon, and so from the store."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def whole(mnt: Mount, root: str) -> bool:
    store = DirectoryBlockstore(mnt.store)
    return all(store.has(cid) for cid, _ in iter_closure(store, parse_cid(root)))


def test_a_rollback_is_recorded_and_kept_by_gc(mounts: Mounts) -> None:
    mnt = mounts().mount("empty")
    write_file(mnt / "a.txt", b"one\n")
    v1 = last_line(check(mnt.cli("sync", mnt.path, "-m", "v1")).stdout)
    write_file(mnt / "a.txt", b"two\n")
    v2 = mnt.unmount()

    mnt.mount(v1)
    synced = check(mnt.cli("sync", mnt.path, "-m", "rollback to v1")).stdout
    assert last_line(synced) == v1
    record = mnt.roots_log()[-1]  # a commit of v1 (no parents: v1 was mounted as a bare tree)
    assert (record["root"], record["message"]) == (v1, "rollback to v1") and record["commit"]
    assert v2 in {r["root"] for r in mnt.roots_log()}
    assert mnt.unmount() == v1
    age_blocks(mnt.store)

    report = gc(mnt)
    assert v1 in report["kept_roots"]  # type: ignore[operator]
    assert whole(mnt, v1)
    check(mnt.cli("ls", v1))
    mnt.mount("resume")
    assert read_file(mnt / "a.txt") == b"one\n"


def two_versions(mnt: Mount) -> str:
    """Sync "one" (v1), then unmount with "two": v1, now an older root of the mountpoint."""
    mnt.mount("empty")
    write_file(mnt / "a", b"one")
    v1 = mnt.sync()
    write_file(mnt / "a", b"two")
    mnt.unmount()
    return v1


def test_unmounting_an_older_root_without_a_sync_records_it_too(mounts: Mounts) -> None:
    mnt = mounts()
    v1 = two_versions(mnt)
    mnt.mount(v1)
    assert mnt.unmount() == v1  # the root it printed...
    age_blocks(mnt.store)
    assert v1 in gc(mnt)["kept_roots"]  # type: ignore[operator]  # ...is the one gc keeps for it
    mnt.mount("resume")
    assert read_file(mnt / "a") == b"one"


def test_a_mountpoint_names_the_root_it_shows(mounts: Mounts) -> None:
    mnt = mounts()
    v1 = two_versions(mnt)
    mnt.mount(v1)  # a rollback, not synced yet
    assert last_line(check(mnt.cli("tag", "here", mnt.path)).stdout) == f"here {v1}"
    assert check(mnt.cli("diff", v1, mnt.path)).stdout == ""


def test_an_unlinked_open_file_reads_its_old_content_after_sync_and_gc(mounts: Mounts) -> None:
    mnt = mounts().mount("empty")
    data = os.urandom(3_000_000)
    write_file(mnt / "f", data)
    write_file(mnt / "g", b"g" * 2_000_000)
    write_file(mnt / "h", os.urandom(3_000_000))
    mnt.sync()
    with (
        open(mnt / "f", "rb") as unlinked,
        open(mnt / "g", "rb") as replaced,
        open(mnt / "h", "r+b") as patched,
    ):
        patched.seek(10)
        patched.write(b"patched")
        patched.flush()
        os.unlink(mnt / "f")
        write_file(mnt / "g2", b"new")
        os.rename(mnt / "g2", mnt / "g")
        os.unlink(mnt / "h")
        mnt.sync()
        age_blocks(mnt.store)
        gc(mnt, "--keep-last", "1")
        drop_caches()
        assert unlinked.read() == data
        assert replaced.read() == b"g" * 2_000_000
        patched.seek(0)
        content = patched.read()
        assert len(content) == 3_000_000 and content[10:17] == b"patched"
    mnt.sync()
    age_blocks(mnt.store)
    assert gc(mnt, "--keep-last", "1")["removed_blocks"] > 0  # closed now: their content may go
    assert os.listdir(mnt.path) == ["g"]


def test_a_sync_whose_car_cannot_be_written_says_the_root_is_committed(
    mounts: Mounts, tmp_path: Path
) -> None:
    mnt = mounts().mount("empty")
    write_file(mnt / "big", os.urandom(300_000))
    with tmpfs(tmp_path / "small", "64k") as disk:
        (disk / "filler").write_bytes(b"x" * 60_000)
        result = mnt.cli("sync", mnt.path, "--car", disk / "x.car")
        assert result.returncode == 1
        root = last_line(result.stdout)
        line = assert_one_line_error(result, "committed", "space", root)
        assert "export" in line
    status = mnt.status()
    assert status["root"] == root and status["unsynced_changes"] == 0
    assert mnt.roots_log()[-1]["root"] == root
    check(mnt.cli("export", root, "-o", tmp_path / "later.car"))


def test_discard_while_mounted_says_how_to_drop_the_changes(mounts: Mounts) -> None:
    mnt = mounts().mount("empty")
    write_file(mnt / "a", b"unsynced")
    result = mnt.cli("mount", "resume", mnt.path, "--discard")
    assert_one_line_error(result, "is mounted", f"ipldmount discard {mnt.path}")
    assert read_file(mnt / "a") == b"unsynced"
    check(mnt.cli("discard", mnt.path))  # what it says works, the mount staying up
    assert not (mnt / "a").exists()


def test_a_file_whose_close_failed_is_named_by_status_and_sync(mounts: Mounts, tmp_path: Path) -> None:
    """After a close fails with ENOSPC the file keeps its earlier content (empty, for a new file):
    the daemon log alone said so."""
    with tmpfs(tmp_path / "small-disk", "4m") as disk:
        (disk / "ballast").write_bytes(bytes(1536 * 1024))
        mnt = mounts(store=disk / "store").mount("empty", "--car-dir", str(tmp_path / "cars"))
        with pytest.raises(OSError) as caught, open(mnt / "big", "wb") as stream:
            for _ in range(8):  # 8 MiB onto what is left of a 4 MiB disk
                stream.write(os.urandom(1 << 20))
            stream.flush()
        assert caught.value.errno == errno.ENOSPC
        assert mnt.status()["failed_closes"] == ["big"]
        (disk / "ballast").unlink()
        result = check(mnt.cli("sync", mnt.path))
        assert "big" in result.stderr and "failed close" in result.stderr
        assert "failed close" not in check(mnt.cli("sync", mnt.path)).stderr  # said once
        assert mnt.status()["failed_closes"] == ["big"]  # status keeps saying it
        assert (mnt / "big").stat().st_size == 0
        mnt.unmount()
