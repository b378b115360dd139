"""Versions through a real mount: CARs of the change, read back with the CAR reader and
rebuilt in another store by importing them in order."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from fuse_helpers import Mounts, check, cli, write_file

from ipldmount.blocks import DirectoryBlockstore
from ipldmount.blocks.car import read_car
from ipldmount.blocks.dag import iter_closure
from ipldmount.ipld.cid import cid_to_str, parse_cid

pytest_plugins = ("fuse_helpers",)
pytestmark = pytest.mark.fuse


def car_blocks(path: Path) -> tuple[list[str], dict[bytes, bytes]]:
    with path.open("rb") as stream:
        roots, sections = read_car(stream)
        return [cid_to_str(root) for root in roots], dict(sections)


def closure(store: Path, root: str) -> dict[bytes, bytes]:
    return dict(iter_closure(DirectoryBlockstore(store), parse_cid(root)))


def cars(store: Path) -> list[str]:
    folder = store / "cars"
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def test_a_sync_writes_the_blocks_new_since_the_last_one(mounts: Mounts, tmp_path: Path) -> None:
    mnt = mounts().mount("empty")
    (mnt / "arr").mkdir()
    write_file(mnt / "arr/.zarray", b'{"zarr_format": 2, "chunks": [8]}')
    for i in range(40):
        write_file(mnt / f"arr/{i}", bytes([i]) * 65536)
    first = mnt.sync()
    first_car = mnt.store / "cars" / f"{first}.car"
    assert car_blocks(first_car) == ([first], closure(mnt.store, first))  # from the empty tree: all of it

    write_file(mnt / "arr/7", b"overwritten")
    result = check(mnt.cli("sync", mnt.path, "-m", "one chunk"))
    second = result.stdout.splitlines()[-1]
    assert "the blocks new since the last sync" in result.stdout
    second_car = mnt.store / "cars" / f"{second}.car"
    roots, blocks = car_blocks(second_car)
    old, new = closure(mnt.store, first), closure(mnt.store, second)
    assert roots == [second]
    assert blocks == {cid: data for cid, data in new.items() if cid not in old}
    assert len(blocks) == 2 and second_car.stat().st_size < 4096  # the root and the chunk

    # applied in order, the CARs rebuild every version in a store that has none of it
    elsewhere = tmp_path / "elsewhere"
    for path, root in ((first_car, first), (second_car, second)):
        assert check(cli("import", path, "--store", elsewhere)).stdout.split()[-1] == root
        assert closure(elsewhere, root) == closure(mnt.store, root)


def test_a_sync_with_nothing_changed_writes_nothing(mounts: Mounts, tmp_path: Path) -> None:
    mnt = mounts().mount("empty")
    write_file(mnt / "f", b"data")
    root = mnt.sync()
    before = cars(mnt.store)
    result = check(mnt.cli("sync", mnt.path))
    lines = result.stdout.splitlines()
    assert lines[0] == "nothing changed since the last sync: no CAR written (--full-car writes one)"
    assert lines[1].startswith("at branch main: commit ") and lines[2:] == [root]
    assert cars(mnt.store) == before
    # --full-car: the whole DAG, beside the CARs of the change; --car: wherever asked
    assert mnt.sync(None, "--full-car") == root
    full = mnt.store / "cars" / f"{root}.full.car"
    assert car_blocks(full) == ([root], closure(mnt.store, root))
    empty_change = tmp_path / "change.car"
    assert mnt.sync(empty_change) == root
    assert car_blocks(empty_change) == ([root], {})


def test_unmount_writes_the_change_of_its_final_sync(mounts: Mounts) -> None:
    mnt = mounts().mount("empty")
    write_file(mnt / "a", b"a" * 5000)
    first = mnt.sync()
    write_file(mnt / "b", b"b" * 5000)
    second = mnt.unmount()
    roots, blocks = car_blocks(mnt.store / "cars" / f"{second}.car")
    assert roots == [second]
    assert set(blocks) == set(closure(mnt.store, second)) - set(closure(mnt.store, first))
    records = mnt.roots_log()
    assert [record["root"] for record in records] == [first, second]
    assert records[-1]["parent"] == first and records[-1]["branch"] == "main"
    assert records[-1]["previous"] == records[0]["commit"]  # the branch moved from the first commit


# --- attributes outside the CID --------------------------------------------------------


def test_mode_mtime_and_owner_survive_an_unmount_without_changing_the_root(mounts: Mounts) -> None:
    mnt = mounts().mount("empty")
    write_file(mnt / "f", b"bytes")
    os.mkdir(mnt / "d")
    os.chmod(mnt / "f", 0o600)
    os.utime(mnt / "f", ns=(1_500_000_000_000_000_000, 1_500_000_000_123_456_789))
    os.chown(mnt / "f", 1234, 5678)
    os.utime(mnt / "d", ns=(1_400_000_000_000_000_000, 1_400_000_000_000_000_000))
    root = mnt.unmount()
    assert root == plain_root(mnt.store, {"f": b"bytes", "d/": b""})  # names and bytes only

    mnt.mount(root)
    info = os.stat(mnt / "f")
    assert stat.S_IMODE(info.st_mode) == 0o600 and (info.st_uid, info.st_gid) == (1234, 5678)
    assert info.st_mtime_ns == 1_500_000_000_123_456_789
    assert os.stat(mnt / "d").st_mtime_ns == 1_400_000_000_000_000_000
    write_file(mnt / "f", b"new bytes")  # new content: a new mtime, kept in turn
    mtime = os.stat(mnt / "f").st_mtime_ns
    assert mtime != 1_500_000_000_123_456_789
    assert mnt.unmount() != root
    mnt.mount("resume")
    assert os.stat(mnt / "f").st_mtime_ns == mtime


def plain_root(store: Path, files: dict[str, bytes]) -> str:
    from ipldmount.blocks import MemoryBlockstore
    from ipldmount.tree.model import Tree

    tree = Tree(MemoryBlockstore())
    for path, data in files.items():
        if path.endswith("/"):
            tree.makedirs(path.rstrip("/"))
        else:
            tree.write_file(path, data)
    return cid_to_str(tree.commit())


def test_rsync_twice_across_a_remount_transfers_nothing(mounts: Mounts, tmp_path: Path) -> None:
    source = tmp_path / "source"
    for index in range(30):
        folder = source / f"arr{index % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{index}").write_bytes(os.urandom(1000 + index * 5000))
        os.chmod(folder / f"{index}", 0o640 if index % 2 else 0o600)
    mnt = mounts().mount("empty")
    first = rsync(source, mnt.path)
    assert first["files"] == 30
    root = mnt.unmount()
    mnt.mount(root)
    second = rsync(source, mnt.path)
    assert second["files"] == 0 and second["bytes"] == 0, second
    assert mnt.sync(None, "--full-car") == root  # nothing changed


def rsync(source: Path, target: Path) -> dict[str, int]:
    """``rsync -a`` and what it says it transferred: files, and bytes of file data."""
    result = subprocess.run(
        ["rsync", "-a", "--stats", f"{source}/", f"{target}/"], capture_output=True, text=True, check=True
    )
    numbers = {}
    for line in result.stdout.splitlines():
        key, _, value = line.partition(":")
        numbers[key.strip()] = value.strip().split(" ")[0].replace(",", "")
    return {
        "files": int(numbers["Number of regular files transferred"]),
        "bytes": int(numbers["Total transferred file size"]),
    }
