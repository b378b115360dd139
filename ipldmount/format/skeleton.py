"""The blocks zarr reads to open a hierarchy, fetched a level of the tree at a time.

Opening a zarr hierarchy (``xr.open_zarr``, ``zarr.open_group``) reads the metadata keys of every
group and array: ``.zgroup``, ``.zattrs``, ``.zarray``, ``.zmetadata``, ``zarr.json``. Over a
remote store each read waits for the blocks of its path, one lookup after another, so a dataset
of 50 arrays costs a few hundred round trips. :func:`fetch_metadata_ahead` walks the same paths
breadth first and asks for every block of a level at once (:meth:`Blockstore.prefetch`, side by
side), so the whole hierarchy's metadata arrives in as many round trips as the tree is deep; the
reads that follow find it local. No trustless request names "every metadata key below a root",
so the walk is the client's.

What is walked: directory nodes, from the root down through groups (a directory with no array
metadata); in an array (``.zarray``, or an inline ``zarr.json`` whose ``node_type`` is
``array``) only its metadata, never its chunks or chunk directories; in a sharded directory only
the lookup paths of the metadata names (it is a chunk directory in practice; its listing can be
millions of names); and the blocks of metadata files not inlined. A v3 group whose ``zarr.json``
is a block of its own is walked as a group, but not into a directory named ``c`` (v3's chunk
prefix). Everything is bounded by MAX_BLOCKS; a block that cannot be read or decoded is left
for the read that needs it to report.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ipldmount.blocks import Blockstore
from ipldmount.errors import IpldmountError
from ipldmount.format import hamt
from ipldmount.format.metadata import RULES
from ipldmount.ipld import cid as cids
from ipldmount.ipld import codec

log = logging.getLogger(__name__)

MAX_BLOCKS = 4096  # blocks a walk asks for at most: far more than any hierarchy's metadata
V3_CHUNK_PREFIX = "c"
METADATA_NAMES = tuple(sorted(RULES))  # the names zarr opens, looked up in sharded directories


@dataclass(frozen=True)
class _Wanted:
    """A block to fetch, and what to do with it once here: *names* to look up in a HAMT node at
    *depth*, or (no names) a directory node to expand, or (*leaf*) nothing."""

    cid: bytes
    names: tuple[str, ...] = ()
    depth: int = 0
    leaf: bool = False


def fetch_metadata_ahead(store: Blockstore, root: bytes, stop: Callable[[], bool] = lambda: False) -> int:
    """Fetch the blocks that opening the zarr hierarchy under directory *root* reads, a level at
    a time (see the module); until *stop* says so. The number of blocks asked for."""
    level, asked, seen = [_Wanted(root)], 0, {root}
    while level and asked < MAX_BLOCKS and not stop():
        level = level[: MAX_BLOCKS - asked]
        asked += len(level)
        store.prefetch([wanted.cid for wanted in level])
        following = [found for wanted in level for found in _expand(store, wanted) if found.cid not in seen]
        seen.update(found.cid for found in following)
        level = following
    log.debug("fetched ahead the metadata of %s: %d blocks asked for", cids.cid_to_str(root), asked)
    return asked


def _expand(store: Blockstore, wanted: _Wanted) -> list[_Wanted]:
    """The blocks a fetched block leads to (none if it cannot be read here: its reader reports)."""
    if wanted.leaf or cids.codec_of(wanted.cid) != cids.DAG_CBOR:
        return []
    try:
        value = codec.decode(store.get(wanted.cid))
        if wanted.names:
            return list(_hamt_steps(store, value, wanted.names, wanted.depth))
        return list(_directory(store, value)) if isinstance(value, dict) else []
    except (IpldmountError, ValueError):
        return []


def _directory(store: Blockstore, node: dict[Any, Any]) -> Iterator[_Wanted]:
    """What to fetch below a directory node: its metadata, and its subdirectories if a group."""
    if hamt.is_root(node):
        yield from _hamt_steps(store, node["hamt"], METADATA_NAMES, 0)
        return
    array = _is_array(node)
    for name, value in node.items():
        if not isinstance(name, str):
            continue
        if name in RULES:
            if isinstance(value, codec.Link):
                yield _Wanted(value.cid, leaf=True)
        elif isinstance(value, dict) and not array:
            yield from _directory(store, value)  # an inline directory: expanded where it stands
        elif _may_be_directory(value) and not array and _may_be_group(node, name):
            yield _Wanted(value.cid)


def _hamt_steps(store: Blockstore, node: Any, names: tuple[str, ...], depth: int) -> Iterator[_Wanted]:
    """One level of the lookups of *names* in a HAMT node: the metadata blocks found, and the
    child nodes to read next (one per child, with the names that lead there)."""
    onward: dict[bytes, list[str]] = {}
    for name in names:
        found = hamt.step(store, node, name, depth)
        if isinstance(found, hamt.Next):
            onward.setdefault(found.cid, []).append(name)
        elif isinstance(found, codec.Link):
            yield _Wanted(found.cid, leaf=True)
    for cid, leading in onward.items():
        if depth + 1 < hamt.MAX_DEPTH:
            yield _Wanted(cid, tuple(leading), depth + 1)


def _is_array(node: dict[Any, Any]) -> bool:
    """True for a zarr array's directory (v2 ``.zarray``; v3 ``zarr.json`` inline, node_type array)."""
    if ".zarray" in node:
        return True
    meta = node.get("zarr.json")
    return isinstance(meta, dict) and meta.get("node_type") == "array"


def _may_be_directory(value: Any) -> bool:
    """A link to a DAG-CBOR block: a directory, or a chunked file's node (a raw block is a
    file's bytes, never fetched here)."""
    return isinstance(value, codec.Link) and cids.codec_of(value.cid) == cids.DAG_CBOR


def _may_be_group(node: dict[Any, Any], name: str) -> bool:
    """Whether the subdirectory *name* is worth walking: not v3's chunk prefix beside a
    ``zarr.json`` we could not read inline."""
    return not (name == V3_CHUNK_PREFIX and isinstance(node.get("zarr.json"), codec.Link))
