"""Versions through a real mount: CARs of the change, read back with the CAR reader and
rebuilt in another store by importing them in order."""

from __future__ import annotations

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
    assert result.stdout.splitlines() == [
        "nothing changed since the last sync: no CAR written (--full-car writes one)",
        root,
    ]
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
    assert records[-1]["parent"] == first
    assert records[-1]["car"] == str(mnt.store / "cars" / f"{second}.car")
