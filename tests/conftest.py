"""Fixtures shared by the test modules: a blockstore of each kind, and the seed test vector."""

from __future__ import annotations

from pathlib import Path

import pytest

from ipldmount.blocks import Blockstore, DirectoryBlockstore, MemoryBlockstore


@pytest.fixture(params=["memory", "directory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Blockstore:
    """An empty blockstore: in memory, or on disk under the test's temporary directory."""
    if request.param == "memory":
        return MemoryBlockstore()
    return DirectoryBlockstore(tmp_path / "store")


@pytest.fixture
def seed_tree_dir() -> Path:
    """The five files zarr-python 2 writes for the seed example (see data/seed_example/README.md)."""
    return Path(__file__).parent / "data/seed_example/tree"
