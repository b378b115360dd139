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

# A module may import its own wing and wings of lower rank: never one above, never another of its
# own rank. The ranks follow the architecture (README, Development), not today's imports.
RANK = {
    "_version": 0,
    "errors": 0,
    "progress": 0,
    "ipld": 1,  # CIDs and codecs
    "blocks": 2,  # block stores, CARs, gc's mark and sweep
    "format": 3,  # FORMAT.md's nodes
    "remote": 3,  # transports: never imported by storage or the format
    "tree": 4,  # the model
    "repo": 5,  # one store: roots, history, tags, gc, every path under STORE/
    "session": 6,  # a mount's journaled changes and open files
    "adapters": 7,  # the front doors' package (a docstring)
    "adapters.fuse": 7,
    "adapters.zarr_store": 7,
    "adapters.serve": 7,
    "adapters.cli": 7,
    "package": 8,  # ipldmount/__init__.py: re-exports, IPLDStore imported lazily
    "__main__": 8,
}
# The one door that may open others: the command line starts the mount and the gateway server.
DOORS_OPENED = {("adapters.cli", "adapters.fuse"), ("adapters.cli", "adapters.serve")}
# Third-party packages only one wing may import.
CONFINED = {
    "pyfuse3": "adapters.fuse",
    "trio": "adapters.fuse",
    "zarr": "adapters.zarr_store",
    "numpy": "adapters.zarr_store",
    "urllib3": "remote",
}


def _wing(module: str) -> str:
    """``ipldmount.blocks.car`` -> ``blocks``; ``ipldmount.adapters.fuse.ops`` -> ``adapters.fuse``;
    ``ipldmount`` -> ``package``."""
    parts = module.split(".")[1:]
    if not parts:
        return "package"
    if parts[0] == "adapters" and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0]


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _imports(source: str, where: str = "<source>") -> set[str]:
    """Every module an import statement names, at module level or inside a function; ``from
    ipldmount.x import y`` counts ``ipldmount.x.y`` too when y is a module."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source, where)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{where}: relative import (the layout uses absolute ones)"
            assert node.module is not None
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & set(MODULES)
            names |= submodules if len(submodules) == len(node.names) else {node.module, *submodules}
    return names


def _ours(imported: set[str]) -> set[str]:
    """The package's own modules among *imported*."""
    return {name for name in imported if name == "ipldmount" or name.startswith("ipldmount.")}


def _violations(module: str, source: str) -> list[str]:
    """What *module*, were its text *source*, would break of the layout's rules."""
    wing, found = _wing(module), []
    for imported in sorted(_imports(source, module)):
        top = imported.split(".")[0]
        if top in CONFINED and CONFINED[top] != wing:
            found.append(f"{module} imports {imported}: only {CONFINED[top]} may")
    for imported in sorted(_ours(_imports(source, module))):
        target = _wing(imported)
        if target == wing or (wing, target) in DOORS_OPENED:
            continue
        if RANK[target] > RANK[wing]:
            found.append(f"{module} ({wing}) imports {imported} ({target}), a wing above")
        elif RANK[target] == RANK[wing]:
            found.append(f"{module} ({wing}) imports {imported} ({target}), a wing of its own rank")
    return found


def test_every_module_has_a_wing() -> None:
    assert {_wing(name) for name in MODULES} <= set(RANK), "a new wing needs a place in RANK"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    assert _violations(module, MODULES[module].read_text()) == []


@pytest.mark.parametrize(
    ("module", "planted"),
    [
        ("ipldmount.blocks.base", "from ipldmount.remote.fetching import BlockFetcher"),  # upward
        ("ipldmount.format.files", "from ipldmount.remote import exchange"),  # same rank
        ("ipldmount.adapters.zarr_store", "from ipldmount.adapters.fuse import ops"),  # door to door
        ("ipldmount.adapters.serve", "import ipldmount.adapters.cli"),
        ("ipldmount.adapters.serve.negotiation", "from ipldmount.adapters.cli import main"),
        ("ipldmount.adapters.serve.handler", "from ipldmount.adapters.zarr_store import IPLDStore"),
        ("ipldmount.adapters.serve.server", "import pyfuse3"),  # confined to the mount
        ("ipldmount.session.session", "import trio"),  # confined
        ("ipldmount.repo.registry", "import numpy as np"),
        ("ipldmount.blocks.directory", "import urllib3"),
        ("ipldmount.tree.model", "import ipldmount"),  # the package sits on top
    ],
)
def test_a_planted_bad_import_is_caught(module: str, planted: str) -> None:
    source = MODULES[module].read_text()
    assert _violations(module, source) == []
    assert _violations(module, f"{planted}\n{source}") != []


# Inside the gateway's package, imports point one way too: a module imports only those before it.
SERVE_ORDER = ("negotiation", "handler", "server", "package")


def _serve_name(module: str) -> str:
    """``ipldmount.adapters.serve.handler`` -> ``handler``; the package itself -> ``package``."""
    return module.removeprefix("ipldmount.adapters.serve").removeprefix(".") or "package"


def _serve_violations(module: str, source: str) -> list[str]:
    """What *module* of the gateway's package, were its text *source*, would break of SERVE_ORDER."""
    place, found = SERVE_ORDER.index(_serve_name(module)), []
    for imported in sorted(_ours(_imports(source, module))):
        name = _serve_name(imported)
        if _wing(imported) == "adapters.serve" and name not in SERVE_ORDER[:place]:
            allowed = ", ".join(SERVE_ORDER[:place]) or "none of them"
            found.append(f"{module} imports {imported}: of the gateway's modules it may import {allowed}")
    return found


SERVE_MODULES = sorted(name for name in MODULES if _wing(name) == "adapters.serve")


def test_the_gateway_package_is_what_serve_order_names() -> None:
    assert sorted(_serve_name(name) for name in SERVE_MODULES) == sorted(SERVE_ORDER)


@pytest.mark.parametrize("module", SERVE_MODULES)
def test_the_gateway_modules_import_one_way(module: str) -> None:
    assert _serve_violations(module, MODULES[module].read_text()) == []


@pytest.mark.parametrize(
    ("module", "planted"),
    [
        ("ipldmount.adapters.serve.negotiation", "from ipldmount.adapters.serve.handler import Handler"),
        ("ipldmount.adapters.serve.negotiation", "import ipldmount.adapters.serve.server"),
        ("ipldmount.adapters.serve.handler", "from ipldmount.adapters.serve.server import GatewayServer"),
        ("ipldmount.adapters.serve.handler", "from ipldmount.adapters.serve import server"),
        ("ipldmount.adapters.serve.server", "from ipldmount.adapters.serve import GatewayServer"),
    ],
)
def test_a_planted_gateway_import_is_caught(module: str, planted: str) -> None:
    source = MODULES[module].read_text()
    assert _serve_violations(module, source) == []
    assert _serve_violations(module, f"{planted}\n{source}") != []


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of *graph*, or [] (depth-first, colours)."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return []

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return []


def test_no_cycle_inside_a_wing() -> None:
    graph = {
        module: {name for name in _ours(_imports(path.read_text(), module)) if _wing(name) == _wing(module)}
        - {module}
        for module, path in MODULES.items()
    }
    assert _cycle(graph) == []


def test_the_cycle_finder_finds_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []


def test_the_cli_loads_neither_zarr_nor_the_mount_until_it_mounts() -> None:
    code = (
        "import sys, ipldmount.adapters.cli; "
        "print(sorted({'zarr', 'numpy', 'trio', 'pyfuse3', 'urllib3'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# The names of STORE/'s files and folders: spelled out by the store's owner (repo/home.py) and, for
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
STORE_OWNERS = {"ipldmount.repo.home", "ipldmount.blocks.directory"}


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
