"""The format vectors of tests/data/format_vectors.json, rebuilt from their recipes.

Each vector (FORMAT.md, Appendix A) is built with the real code (``Tree`` over a
``MemoryBlockstore``) and must give exactly the recorded root CID, root block,
closure and CAR. FORMAT.md's own claims about the vectors are checked too: the
table of root CIDs, and that the independent encoder of its Appendix B produces
the same blocks.

Vectors whose files add up to 1 GiB or more (``file_1025MiB_zeros``) are marked
slow and only run with ``IPLDMOUNT_SLOW_TESTS=1``.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ipldmount.blocks import MemoryBlockstore
from ipldmount.blocks.car import export_car
from ipldmount.blocks.dag import iter_closure
from ipldmount.format import hamt
from ipldmount.ipld import codec
from ipldmount.ipld.cid import cid_to_str
from ipldmount.tree.model import Tree

REPO = Path(__file__).resolve().parent.parent
VECTORS_FILE = REPO / "tests/data/format_vectors.json"
SEED_CAR = REPO / "tests/data/seed_example/seed_example.car"
FORMAT_MD = REPO / "FORMAT.md"

VECTORS: list[dict[str, Any]] = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))
RUN_SLOW = os.environ.get("IPLDMOUNT_SLOW_TESTS") == "1"
SLOW_BYTES = 1 << 30  # a recipe with this many file bytes needs over a GiB of memory
SLOW_REASON = "over 1 GiB of file data; set IPLDMOUNT_SLOW_TESTS=1 to run it"
# A row of FORMAT.md's table of vectors (section 9.12): | `name` | `root CID` |
VECTOR_ROW = re.compile(r"^\| `(\w+)` \| `(baf[a-z2-7]+)` \|$", re.M)


# --- the recipe interpreter of FORMAT.md, Appendix A ------------------------------


def content(spec: dict[str, Any], name: str) -> bytes:
    if "utf8" in spec:
        return str(spec["utf8"]).encode("utf-8")
    if "hex" in spec:
        return bytes.fromhex(str(spec["hex"]))
    if "repeat" in spec:
        return str(spec["repeat"]).encode("utf-8") * int(spec["count"])
    if "mod251" in spec:
        return bytes(i % 251 for i in range(spec["mod251"]))
    if "zeros" in spec:
        return bytes(spec["zeros"])
    if "concat" in spec:
        return b"".join(content(part, name) for part in spec["concat"])
    if "format" in spec:
        return str(spec["format"]).format(name=name).encode("utf-8")
    raise ValueError(f"unknown content spec {spec!r}")


def content_size(spec: dict[str, Any]) -> int:
    """An upper bound of len(content(spec)), computed without building it."""
    if "utf8" in spec:
        return len(str(spec["utf8"]).encode("utf-8"))
    if "hex" in spec:
        return len(spec["hex"]) // 2
    if "repeat" in spec:
        return len(str(spec["repeat"]).encode("utf-8")) * int(spec["count"])
    if "mod251" in spec:
        return int(spec["mod251"])
    if "zeros" in spec:
        return int(spec["zeros"])
    if "concat" in spec:
        return sum(content_size(part) for part in spec["concat"])
    if "format" in spec:
        return 4 * len(str(spec["format"])) + 1024  # plus the path; paths are short
    raise ValueError(f"unknown content spec {spec!r}")


def _generated_paths(generate: dict[str, Any]) -> Iterator[str]:
    names = [name for name, _ in generate["ranges"]]
    for values in itertools.product(*(range(count) for _, count in generate["ranges"])):
        yield str(generate["names"]).format(**dict(zip(names, values, strict=True)))


def entries(build: dict[str, Any]) -> Iterator[tuple[str, bytes | None]]:
    """(path, bytes) for each file and (path, None) for each empty directory of a recipe."""
    if "tree" in build:
        base = REPO / build["tree"]
        for dirpath, _, filenames in os.walk(base):
            for filename in filenames:
                path = Path(dirpath) / filename
                yield path.relative_to(base).as_posix(), path.read_bytes()
    for entry in build.get("files", []):
        if "generate" in entry:
            for path in _generated_paths(entry["generate"]):
                yield path, content(entry["content"], path)
        elif entry.get("dir"):
            yield entry["path"], None
        else:
            yield entry["path"], content(entry["content"], entry["path"])


def recipe_size(build: dict[str, Any]) -> int:
    """Roughly how many file bytes a recipe makes (to pick out the slow vectors)."""
    total = 0
    if "tree" in build:
        for dirpath, _, filenames in os.walk(REPO / build["tree"]):
            total += sum((Path(dirpath) / filename).stat().st_size for filename in filenames)
    for entry in build.get("files", []):
        if "generate" in entry:
            count = 1
            for _, n in entry["generate"]["ranges"]:
                count *= n
            total += count * content_size(entry["content"])
        elif not entry.get("dir"):
            total += content_size(entry["content"])
    return total


def build(vector: dict[str, Any]) -> tuple[MemoryBlockstore, bytes]:
    """The vector's tree written with ipldmount: its blockstore and root CID."""
    recipe = vector["build"]
    store = MemoryBlockstore()
    tree = Tree(store, whole_files=recipe.get("whole_files", False))
    for path, data in entries(recipe):
        if data is None:
            tree.makedirs(path)
        else:
            tree.write_file(path, data)
    return store, tree.commit()


def _params() -> list[Any]:
    params = []
    for vector in VECTORS:
        marks: list[pytest.MarkDecorator] = []
        if recipe_size(vector["build"]) >= SLOW_BYTES:
            marks = [pytest.mark.slow, pytest.mark.skipif(not RUN_SLOW, reason=SLOW_REASON)]
        params.append(pytest.param(vector, id=vector["name"], marks=marks))
    return params


def _vector(name: str) -> dict[str, Any]:
    return next(vector for vector in VECTORS if vector["name"] == name)


# --- the vectors ----------------------------------------------------------------


def test_vector_file_is_well_formed() -> None:
    names = [vector["name"] for vector in VECTORS]
    assert len(names) == len(set(names)), "vector names must be unique"
    required = {"name", "description", "build", "root_cid", "root_block_size", "sharded_root"}
    required |= {"closure_blocks", "car_size", "car_sha256"}
    for vector in VECTORS:
        assert required <= vector.keys(), vector["name"]


@pytest.mark.parametrize("vector", _params())
def test_vector(vector: dict[str, Any]) -> None:
    store, root = build(vector)
    assert cid_to_str(root) == vector["root_cid"]

    data = store.get(root)
    value = codec.decode(data)
    assert len(data) == vector["root_block_size"]
    assert hamt.is_root(value) == vector["sharded_root"]
    if "root_links" in vector:
        links = {name: cid_to_str(item.cid) for name, item in value.items() if isinstance(item, codec.Link)}
        assert links == vector["root_links"]

    order = [cid_to_str(cid) for cid, _ in iter_closure(store, root)]
    assert len(order) == vector["closure_blocks"]
    if "car_block_order" in vector:
        assert order == vector["car_block_order"]

    car = io.BytesIO()
    export_car(store, root, car)
    assert len(car.getvalue()) == vector["car_size"]
    assert hashlib.sha256(car.getvalue()).hexdigest() == vector["car_sha256"]


def test_seed_vector_car_is_the_seed_car() -> None:
    store, root = build(_vector("seed_example"))
    car = io.BytesIO()
    export_car(store, root, car)
    assert car.getvalue() == SEED_CAR.read_bytes()


# --- what FORMAT.md says about them -------------------------------------------------


def test_format_md_lists_every_vector_with_its_root_cid() -> None:
    listed = dict(VECTOR_ROW.findall(FORMAT_MD.read_text(encoding="utf-8")))
    assert listed == {vector["name"]: vector["root_cid"] for vector in VECTORS}


@pytest.fixture(scope="module")
def appendix_b() -> dict[str, Any]:
    """The namespace of FORMAT.md's independent reference encoder (Appendix B)."""
    text = FORMAT_MD.read_text(encoding="utf-8")
    appendix = text[text.index("## Appendix B") :]
    match = re.search(r"```python\n(.*?)```", appendix, re.S)
    assert match is not None
    namespace: dict[str, Any] = {}
    exec(compile(match.group(1), "FORMAT.md Appendix B", "exec"), namespace)
    return namespace


def _nested(recipe: dict[str, Any]) -> dict[str, Any]:
    """A recipe as the nested dicts Appendix B's encoder takes."""
    tree: dict[str, Any] = {}
    for path, data in entries(recipe):
        *parents, name = path.split("/")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[name] = {} if data is None else data
    return tree


@pytest.mark.parametrize("vector", _params())
def test_appendix_b_encoder_agrees(vector: dict[str, Any], appendix_b: dict[str, Any]) -> None:
    blocks: dict[bytes, bytes] = {}
    root = appendix_b["root_cid"](blocks, _nested(vector["build"]), vector["build"].get("whole_files", False))
    assert appendix_b["cid_text"](root) == vector["root_cid"]
    store, our_root = build(vector)
    assert our_root == root
    assert dict(iter_closure(store, our_root)) == blocks
