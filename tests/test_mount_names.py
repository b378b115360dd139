"""Real mounts: many names in one directory (zarr chunk keys), up to and past directory sharding."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fuse_helpers import (
    Mount,
    Mounts,
    read_file,
)

pytest_plugins = ("fuse_helpers",)
pytestmark = pytest.mark.fuse


def _chunk_names(count: int, width: int) -> list[str]:
    return [f"{i // width}.{i % width}" for i in range(count)]


def _write_tiny_files(directory: Path, names: list[str]) -> None:
    for name in names:
        fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, name.encode())
        finally:
            os.close(fd)


def _check_all(directory: Path, names: list[str]) -> None:
    """Every chunk name listed exactly once (besides .zarray), each holding its own name."""
    listed = os.listdir(directory)
    assert len(listed) == len(names) + 1
    assert set(listed) == {*names, ".zarray"}
    for name in names:
        assert read_file(directory / name) == name.encode(), name
    assert read_file(directory / ".zarray") == b'{"zarr_format": 2}'


def _round_trip(mounts: Mounts, count: int, width: int, read_before: bool = True) -> tuple[Mount, list[str]]:
    mnt = mounts().mount("empty")
    names = _chunk_names(count, width)
    (mnt / "arr").mkdir()
    (mnt / "arr/.zarray").write_bytes(b'{"zarr_format": 2}')
    _write_tiny_files(mnt / "arr", names)
    if read_before:
        _check_all(mnt / "arr", names)
    else:
        assert sorted(os.listdir(mnt / "arr")) == sorted([*names, ".zarray"])
    root = mnt.unmount()
    again = mounts().mount(root, "--read-only")
    _check_all(again / "arr", names)
    return again, names


def test_three_thousand_chunk_keys(mounts: Mounts) -> None:
    again, names = _round_trip(mounts, 3000, 60)
    assert "49.59" in names
    assert read_file(again / "arr/.zarray") == b'{"zarr_format": 2}'


def test_twenty_five_thousand_files_shard_the_directory(mounts: Mounts) -> None:
    """Past ~21k entries a directory node is sharded (HAMT); the mount must not notice."""
    from ipldmount.blocks import DirectoryBlockstore
    from ipldmount.ipld import cid as cids
    from ipldmount.ipld.codec import decode

    again, names = _round_trip(mounts, 25_000, 250, read_before=False)
    # the directory really is sharded: its node is not a plain map of 25,001 entries
    cid = os.getxattr(again / "arr", "user.ipld.cid").decode()
    node = decode(DirectoryBlockstore(again.store).get(cids.parse_cid(cid)))
    assert len(node) < len(names)
