"""What changed between two trees, at the cost of the change.

Two entries with the same value (the same link, or the same inline value) hold the
same bytes: the walk never descends into them. Sharded directories are compared
node by node (:func:`~ipldmount.format.hamt.diff_entries`), so one changed chunk in
a directory of a million costs the few HAMT nodes on its path.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ipldmount.blocks import Blockstore
from ipldmount.errors import FormatError
from ipldmount.format import dirnode, hamt, metadata
from ipldmount.ipld import cid as cids
from ipldmount.ipld import codec

MISSING = hamt.MISSING


@dataclass(frozen=True)
class Change:
    """One difference: ``added``, ``removed`` or ``modified``; a directory's path ends with ``/``."""

    kind: str
    path: str


def diff_roots(store: Blockstore, a: bytes, b: bytes) -> Iterator[Change]:
    """The changes that turn the tree *a* into the tree *b*, depth first, names in order.

    Walked with an explicit stack, never by recursion: a tree may nest directories to any
    depth (a chain of thousands), and the walk must not hit Python's recursion limit.
    """
    for root in (a, b):
        check_root(root, "diff compares")
    if a == b:
        return
    stack = [_directory_steps(store, codec.Link(a), codec.Link(b), "")]
    while stack:
        step = next(stack[-1], None)
        if step is None:
            stack.pop()
        elif isinstance(step, Change):
            yield step
        else:
            stack.append(_directory_steps(store, *step))


def check_root(root: bytes, what: str) -> None:
    """Refuse a UnixFS root: only trees of this format are compared node by node."""
    if cids.codec_of(root) == cids.DAG_PB:
        raise FormatError(
            f"{cids.cid_to_str(root)} is UnixFS: {what} ipldmount trees (mount both and"
            " compare their files, or copy it into a mount first)"
        )


_Descend = tuple[Any, Any, str]  # two directory values (links or inline maps) and their path + "/"


def _directory_steps(store: Blockstore, a: Any, b: Any, prefix: str) -> Iterator[Change | _Descend]:
    """The changes between two directories in name order, with a directory on both sides
    given back as a step to descend into (the caller's stack does it, in that order)."""
    before_dir, after_dir = _directory(store, a), _directory(store, b)
    for name, before, after in _differing_entries(store, before_dir, after_dir):
        yield from _entry_steps(store, prefix + name, name, before, after)


def _differing_entries(
    store: Blockstore, a: dict[str, Any], b: dict[str, Any]
) -> Iterator[tuple[str, Any, Any]]:
    if hamt.is_root(a) and hamt.is_root(b):
        yield from sorted(hamt.diff_entries(store, a, b), key=lambda item: item[0])
        return
    old, new = dirnode.plain_entries(store, a), dirnode.plain_entries(store, b)
    for name in sorted(old.keys() | new.keys()):
        before, after = old.get(name, MISSING), new.get(name, MISSING)
        if not same_value(before, after):
            yield name, before, after


def same_value(a: Any, b: Any) -> bool:
    """Whether two entry values (or MISSING) are the same. Python's ``==`` alone takes ``1``,
    ``1.0`` and ``true`` for one another, three different JSON values of inline metadata (and
    so three different files); their DAG-CBOR encodings never do."""
    if a is b:
        return True
    if a != b:
        return False
    return isinstance(a, codec.Link) or codec.encode(a) == codec.encode(b)


def _entry_steps(
    store: Blockstore, path: str, name: str, before: Any, after: Any
) -> Iterator[Change | _Descend]:
    old_kind = None if before is MISSING else _kind(store, name, before)
    new_kind = None if after is MISSING else _kind(store, name, after)
    if old_kind == new_kind == "directory":
        yield before, after, path + "/"
    elif old_kind == new_kind == "file":
        yield Change("modified", path)
    else:
        if old_kind is not None:
            yield Change("removed", path + "/" * (old_kind == "directory"))
        if new_kind is not None:
            yield Change("added", path + "/" * (new_kind == "directory"))


def _kind(store: Blockstore, name: str, value: Any) -> str:
    """``file`` or ``directory``, from the link's codec and its block's first byte (FORMAT.md 3.2)."""
    if isinstance(value, codec.Link):
        if not cids.is_supported(value.cid) or cids.codec_of(value.cid) == cids.RAW:
            return "file"
        head = store.read(value.cid, 0, 1)
        return "directory" if head and head[0] >> 5 == 5 else "file"  # a map, or a chunked file's list
    if metadata.is_metadata_name(name) or type(value) is not dict:
        return "file"
    return "directory"


def _directory(store: Blockstore, value: Any) -> dict[str, Any]:
    if isinstance(value, codec.Link):
        value = codec.decode(store.get(value.cid))
    if type(value) is not dict:
        raise FormatError("not a directory node")
    return value
