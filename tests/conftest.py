"""Fixtures shared by the test modules: a blockstore of each kind, the seed test vector, and
packages the tests need that the library does not."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

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


def required_module(name: str) -> ModuleType:
    """A package of the test extras (pyproject.toml, ``.[test]``, which `make test` installs): without
    it, skip locally, but fail under CI=true, as for FUSE and the IPFS node."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        message = f"{name} is not installed ({exc}): pip install -e '.[test]'"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} -- CI must run these tests", pytrace=False)
        pytest.skip(message, allow_module_level=True)
        raise  # not reached


@pytest.fixture
def tensorstore() -> ModuleType:
    """tensorstore, a second zarr implementation the mount must serve (required under CI)."""
    return required_module("tensorstore")
