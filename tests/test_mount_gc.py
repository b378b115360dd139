"""Garbage collection against live mounts: `ipldmount gc` in a loop while a program writes,
overwrites, fsyncs and deletes through the mount, another process imports CARs and roots get
tagged; afterwards every closed file reads back and every kept root exports and verifies."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from pathlib import Path

import pytest
from fuse_helpers import Mount, Mounts, check, read_file, write_file

from ipldmount.blocks import DirectoryBlockstore
from ipldmount.blocks.car import write_car_file
from ipldmount.blocks.dag import iter_closure
from ipldmount.format.commit import read_commit
from ipldmount.ipld.cid import parse_cid
from ipldmount.tree.model import Tree

pytest_plugins = ("fuse_helpers",)
pytestmark = pytest.mark.fuse

POOL = [bytes([n]) * size for n, size in enumerate([3000, 70_000, 200_000, 1 << 20, (1 << 20) + 5])]
"""Contents the workload writes again and again: a rewrite of content whose block has become
garbage relies on that block (a claim) instead of writing it, which is what gc must not race."""


def gc(mnt: Mount, *options: str) -> dict[str, object]:
    result = check(mnt.cli("gc", "--grace", "0", "--json", *options))
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def age_blocks(store: Path, seconds: float = 3600) -> None:
    then = time.time() - seconds
    for shard in (store / "blocks").iterdir():
        for block in shard.iterdir():
            os.utime(block, (then, then))


def make_cars(folder: Path, count: int) -> list[Path]:
    """*count* CARs of small distinct trees, made in a store of their own."""
    store = DirectoryBlockstore(folder / "source")
    cars = []
    for index in range(count):
        tree = Tree(store)
        tree.write_file(".zgroup", b'{"zarr_format": 2}')
        tree.write_file(f"x/{index}", os.urandom(50_000))
        tree.write_file("shared", POOL[1])  # blocks the mount's workload also writes
        root = tree.commit()
        path = folder / f"import-{index}.car"
        write_car_file(store, root, path)
        cars.append(path)
    return cars


def test_gc_in_a_loop_never_loses_a_closed_file_or_a_kept_root(mounts: Mounts, tmp_path: Path) -> None:
    mnt = mounts().mount("empty")
    cars = make_cars(tmp_path, 3)
    expected: dict[str, bytes] = {}
    tagged: list[str] = []
    errors: list[BaseException] = []
    done = threading.Event()
    rng = random.Random(7)

    def workload() -> None:
        try:
            (mnt / "arr").mkdir()
            for step in range(120):
                name = f"arr/{rng.randrange(12)}"
                if step % 9 == 8 and name in expected:
                    os.unlink(mnt / name)
                    del expected[name]
                    continue
                data = rng.choice(POOL) + (b"%d" % step if step % 3 == 0 else b"")
                with open(mnt / name, "wb") as stream:
                    stream.write(data)
                    if step % 4 == 0:
                        stream.flush()
                        os.fsync(stream.fileno())
                expected[name] = data
                if step % 20 == 19:
                    root = mnt.sync()
                    if step == 39:  # one tag: the other versions become garbage
                        check(mnt.cli("tag", f"v{step}", root))
                        tagged.append(root)
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    def importer() -> None:
        try:
            while not done.is_set():
                for path in cars:
                    check(mnt.cli("import", path))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=workload), threading.Thread(target=importer)]
    for thread in threads:
        thread.start()
    collections = 0
    while not done.is_set():
        gc(mnt)
        collections += 1
    for thread in threads:
        thread.join()
    assert errors == [], errors
    assert collections >= 2
    gc(mnt)

    # every closed file reads back, before and after a remount
    for name, data in expected.items():
        assert read_file(mnt / name) == data, name
    final = mnt.unmount()
    report = gc(mnt)
    kept = set(report["kept_roots"])  # type: ignore[arg-type]
    assert final in kept and set(tagged) <= kept
    store = DirectoryBlockstore(mnt.store)
    for root in kept:  # each exports, every block verified against its CID
        check(mnt.cli("export", root, "-o", tmp_path / "check.car"))
    imported = [check(mnt.cli("import", path)).stdout.split()[-1] for path in cars]
    assert set(imported) <= kept
    # nothing is left but what the kept roots reach
    reachable = set().union(*({cid for cid, _ in iter_closure(store, parse_cid(root))} for root in kept))
    assert {cid for cid in store if read_commit(store, cid) is None} == reachable  # and commits (FORMAT 13)
    mnt.mount(final, "--read-only")
    assert sorted(os.listdir(mnt / "arr")) == sorted(name.split("/")[1] for name in expected)
    for name, data in expected.items():
        assert read_file(mnt / name) == data, name


def test_gc_keeps_what_an_open_file_and_a_crashed_mount_need(mounts: Mounts) -> None:
    """Content rewritten into a file still open, and the journal of a daemon killed with -9."""
    import signal

    mnt = mounts().mount("empty")
    leaves = bytes([9]) * (2 << 20)  # two full 1 MiB leaves, the same block twice
    write_file(mnt / "old", leaves + b"old tail")
    mnt.sync()
    os.unlink(mnt / "old")  # its blocks are garbage once synced
    mnt.sync()
    age_blocks(mnt.store)  # as if written long ago: only marking and claims can keep them now
    with open(mnt / "open", "wb") as stream:
        stream.write(leaves)  # stored leaf by leaf as it comes: the existing leaf is claimed
        stream.flush()
        gc(mnt)  # runs while the written leaves may be in no journal yet
        stream.write(b"tail")
    write_file(mnt / "closed", POOL[3])
    gc(mnt)
    assert read_file(mnt / "open") == leaves + b"tail"
    pid = mnt.kill(signal.SIGKILL)
    mnt.wait_daemon_gone(pid)
    age_blocks(mnt.store)
    gc(mnt)  # the dead daemon's journal still needs its blocks
    mnt.mount("resume")
    assert read_file(mnt / "closed") == POOL[3]
    assert read_file(mnt / "open") == leaves + b"tail"


def test_gc_drops_the_attributes_of_contents_it_removes_and_keeps_the_rest(mounts: Mounts) -> None:
    mnt = mounts().mount("empty")
    write_file(mnt / "f", b"first bytes")
    os.chmod(mnt / "f", 0o600)
    mnt.sync()
    write_file(mnt / "f", b"second bytes")  # the first bytes' row stays in the table
    os.chmod(mnt / "f", 0o640)
    mnt.sync()
    age_blocks(mnt.store)

    assert gc(mnt, "--dry-run")["attribute_rows_removed"] == 1
    report = gc(mnt)
    assert report["attribute_rows_removed"] == 1 and report["removed_blocks"] >= 1
    assert gc(mnt)["attribute_rows_removed"] == 0
    root = mnt.unmount()
    assert (mnt.mount(root) / "f").stat().st_mode & 0o777 == 0o640  # the kept content's row stays
