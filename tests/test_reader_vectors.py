"""ipldmount's reader against tests/data/reader_vectors.json (FORMAT.md, Appendix C).

The vectors are blocks no writer makes, each with what FORMAT.md says a reader does with them.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ipldmount.blocks import MemoryBlockstore, car
from ipldmount.errors import IpldmountError
from ipldmount.ipld import cid as cids
from ipldmount.tree.model import Directory, File, Tree

DATA = Path(__file__).parent / "data"
VECTORS = json.loads((DATA / "reader_vectors.json").read_text())


def _tree(vector: dict[str, Any]) -> Tree:
    store = MemoryBlockstore()
    for text, data in vector["blocks"].items():
        cid = cids.parse_cid(text)
        assert store.put(bytes.fromhex(data), cids.codec_of(cid)) == cid
    return Tree(store, cids.parse_cid(vector["root"]))


def _read(tree: Tree, path: str) -> bytes:
    node = tree.resolve(path)
    if isinstance(node, Directory):
        tree.entries(node)
        return b""
    assert isinstance(node, File), f"{path} is {node!r}"
    return tree.read_all(node)


@pytest.mark.parametrize("vector", VECTORS["trees"], ids=lambda vector: vector["name"])
def test_tree_vector(vector: dict[str, Any]) -> None:
    tree = _tree(vector)
    for expected in vector["expect"]:
        if expected.get("error"):
            with pytest.raises(IpldmountError):
                _read(tree, expected["path"])
        else:
            assert _read(tree, expected["path"]) == bytes.fromhex(expected["hex"]), expected["path"]


@pytest.mark.parametrize("case", VECTORS["cid_texts"], ids=lambda case: case["text"][:14])
def test_cid_text(case: dict[str, Any]) -> None:
    if case["cid"] is None:
        with pytest.raises(IpldmountError):
            cids.parse_cid(case["text"])
    else:
        assert cids.cid_to_str(cids.parse_cid(case["text"])) == case["cid"]


@pytest.mark.parametrize("case", VECTORS["cars"], ids=lambda case: case["name"])
def test_car(case: dict[str, Any]) -> None:
    store = MemoryBlockstore()
    stream = io.BytesIO(bytes.fromhex(case["hex"]))
    if case.get("error"):
        with pytest.raises(IpldmountError):
            car.import_car(store, stream)
        assert list(store) == [], "a refused CAR imports nothing"
    else:
        roots = car.import_car(store, stream)
        assert [cids.cid_to_str(root) for root in roots] == case["roots"]


def test_the_vectors_are_what_their_generator_writes(tmp_path: Path) -> None:
    """reader_vectors.json is reproducible from its generator (which does not use ipldmount)."""
    script = (DATA / "make_reader_vectors.py").read_text()
    copy = tmp_path / "make_reader_vectors.py"
    copy.write_text(script)
    subprocess.run([sys.executable, copy], check=True, timeout=60)
    assert json.loads((tmp_path / "reader_vectors.json").read_text()) == VECTORS
