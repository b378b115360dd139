"""The package's wings and the one direction of their imports (README, Development).

Read from the source with ``ast``: every import statement counts, at module level or inside a
function, so a lazy import cannot slip past the rule.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ipldmount"

# A module may import its own wing and the wings below it: never one above.
RANK = {
    "errors": 0,
    "progress": 0,
    "ipld": 1,
    "blocks": 2,
    "format": 3,
    "tree": 4,
    "unixfs_tree": 4,  # the tree wing's other module: the read-only tree over UnixFS
    "state": 5,
    "mount": 6,
    "zarrstore": 7,
    "cli": 7,
    "serve": 7,
    "__init__": 7,  # the package: re-exports, IPLDStore imported lazily
    "__main__": 8,
}
FUSE_AND_TRIO = {"pyfuse3", "trio"}


def _wing(module: str) -> str:
    """``ipldmount.blocks.car`` -> ``blocks``; ``ipldmount`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (the layout uses absolute ones)"
            assert node.module is not None
            names.add(node.module)
            if node.module == "ipldmount":
                names |= {f"ipldmount.{alias.name}" for alias in node.names if alias.name != "__version__"}
    return names


MODULES = _modules()


def test_every_module_has_a_wing() -> None:
    assert {_wing(name) for name in MODULES} <= set(RANK), "a new top-level module needs a place in RANK"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    wing = _wing(module)
    for imported in _imports(MODULES[module]):
        if imported.split(".")[0] == "ipldmount" and imported != "ipldmount":
            target = _wing(imported)
            above = f"{module} ({wing}) imports {imported} ({target}), a wing above"
            assert RANK[target] <= RANK[wing], above
        if imported.split(".")[0] in FUSE_AND_TRIO:
            assert wing == "mount", f"{module} imports {imported}: only the mount wing may"


def test_the_zarr_store_never_touches_the_mount() -> None:
    imported = _imports(MODULES["ipldmount.zarrstore"])
    assert not {name for name in imported if name.startswith("ipldmount.mount")}
    assert not imported & FUSE_AND_TRIO


def test_the_cli_loads_neither_zarr_nor_the_mount_until_it_mounts() -> None:
    code = "import sys, ipldmount.cli; print(sorted({'zarr', 'trio', 'pyfuse3'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# The names of STORE/'s files and folders: spelled out by the store's owner (state/home.py) and, for
# its own marker, blocks and temporaries, the block store; nowhere else.
STORE_NAMES = {
    "STORE",
    "tmp",
    "cars",
    "mounts",
    "roots.log",
    "roots.head",
    "roots.log.damaged",
    "live",
    "pushes.log",
    "attributes.sqlite",
    "tags.json",
    "daemon.pid",
    "daemon.log",
    "gc.lock",
    "leases",
}
STORE_OWNERS = {"ipldmount.state.home", "ipldmount.blocks.directory"}


@pytest.mark.parametrize("module", sorted(set(MODULES) - STORE_OWNERS))
def test_one_object_owns_the_store_layout(module: str) -> None:
    tree = ast.parse(MODULES[module].read_text())
    slots = {  # attribute names, not paths
        id(node)
        for assign in ast.walk(tree)
        if isinstance(assign, ast.Assign)
        and any(getattr(t, "id", None) == "__slots__" for t in assign.targets)
        for node in ast.walk(assign.value)
    }
    spelled = {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in STORE_NAMES and id(node) not in slots
    }
    assert not spelled, f"{module} spells out STORE/ paths {spelled}: ask StoreHome instead"
