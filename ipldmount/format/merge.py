"""A three-way merge of two trees against their common base, at the cost of the change.

When two writers changed one branch, the second has *base* (their common ancestor's tree),
*ours* (its own new tree) and *theirs* (the branch head's tree). :func:`merge_roots` says what
must be applied to *ours* for the merged tree, and which paths conflict (FORMAT.md 13).

Only the names that differ base -> ours or base -> theirs are looked at, found by
:mod:`~ipldmount.format.diff`'s walk (a sharded directory compared node by node): a change
made on one side costs the nodes on its path, never the subtrees around it. Zarr follows
from paths and metadata: two chunks of one array are two names, and ``.zattrs`` or
``zarr.json`` edits to different keys merge as JSON, key by key.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ipldmount.blocks import Blockstore
from ipldmount.format import hamt, metadata
from ipldmount.format.diff import _differing_entries, _directory, _kind, check_root, same_value
from ipldmount.format.files import FileContent, InlineFile, StoredFile
from ipldmount.ipld import cid as cids
from ipldmount.ipld import codec

MISSING = hamt.MISSING  # a side where the name is absent; as a Take's value: remove it
FILE, DIRECTORY = "file", "directory"


@dataclass(frozen=True)
class Take:
    """Set the entry at *path* of ours to *value*: an entry value of theirs (a link, or an
    inline value as its parent node holds it), ``MISSING`` (remove the file or the whole
    directory), or ``bytes`` (a metadata file's merged JSON, rendered as zarr writes it).
    Entry values are never bytes (inline values are JSON or directory maps), so the three
    cannot be confused."""

    path: str
    value: Any


@dataclass(frozen=True)
class MergePlan:
    """What turns ours into the merged tree, and where the two sides disagree."""

    actions: list[Take]
    conflicts: list[str]  # sorted; a path ends with "/" where a side has a directory there

    @property
    def clean(self) -> bool:
        """Whether the actions give the whole merge (no conflict left to settle)."""
        return not self.conflicts


@dataclass(frozen=True)
class _Conflict:
    path: str


_Descend = tuple[Any, Any, Any, str]  # base, ours and theirs directory values, and their path + "/"
_Step = Take | _Conflict | _Descend
_EMPTY: dict[str, Any] = {}  # the empty directory: the base of unrelated histories (never changed)


def merge_roots(store: Blockstore, base: bytes | None, ours: bytes, theirs: bytes) -> MergePlan:
    """The three-way merge of the trees *ours* and *theirs* from *base* (None: unrelated
    histories, merged from the empty tree), in FORMAT.md 13's rules.

    Walked with an explicit stack of directories, as diff is: a tree may nest directories
    to any depth. A block the merge needs and cannot read raises (BlockNotFoundError,
    FormatError): a merge never guesses what it could not see.
    """
    for root in (base, ours, theirs):
        if root is not None:
            check_root(root, "merge combines")
    if ours == theirs or base == theirs:  # nothing to take: ours is the merge
        return MergePlan([], [])
    actions: list[Take] = []
    conflicts: list[str] = []
    start = _EMPTY if base is None else codec.Link(base)
    stack = [_directory_steps(store, start, codec.Link(ours), codec.Link(theirs), "")]
    while stack:
        step = next(stack[-1], None)
        if step is None:
            stack.pop()
        elif isinstance(step, Take):
            actions.append(step)
        elif isinstance(step, _Conflict):
            conflicts.append(step.path)
        else:
            stack.append(_directory_steps(store, *step))
    return MergePlan(actions, sorted(conflicts))


def _directory_steps(store: Blockstore, base: Any, ours: Any, theirs: Any, prefix: str) -> Iterator[_Step]:
    """The merge of one directory, names in order. A name theirs left as it was keeps ours
    (nothing to do, never looked at); one ours left as it was takes theirs; only a name both
    changed is compared further."""
    base_dir = _directory(store, base)
    ours_changed = {
        name: after for name, _, after in _differing_entries(store, base_dir, _directory(store, ours))
    }
    for name, before, after in _differing_entries(store, base_dir, _directory(store, theirs)):
        if name in ours_changed:
            yield from _entry_steps(store, prefix + name, name, before, ours_changed[name], after)
        else:
            yield Take(prefix + name, after)


def _entry_steps(
    store: Blockstore, path: str, name: str, base: Any, ours: Any, theirs: Any
) -> Iterator[_Step]:
    """A name both sides changed (by value: a form alone, inline against linked, counts here)."""
    if same_value(ours, theirs):
        return
    kinds = tuple(_kind_of(store, name, value) for value in (base, ours, theirs))
    base_kind, ours_kind, theirs_kind = kinds
    if ours_kind == theirs_kind == DIRECTORY:
        yield base if base_kind == DIRECTORY else _EMPTY, ours, theirs, path + "/"
    elif ours_kind == theirs_kind == FILE:
        yield from _file_steps(store, path, name, base if base_kind == FILE else MISSING, ours, theirs)
    elif _same_content(store, name, base, ours, base_kind, ours_kind):
        yield Take(path, theirs)  # ours changed the form only: theirs's removal or change stands
    elif not _same_content(store, name, base, theirs, base_kind, theirs_kind):
        yield _Conflict(path + "/" * (DIRECTORY in kinds))


def _file_steps(
    store: Blockstore, path: str, name: str, base: Any, ours: Any, theirs: Any
) -> Iterator[_Step]:
    """Two files, both changed: compared by bytes (one may be inline metadata, the other a raw
    block of the same bytes), then, under a metadata name, merged as JSON."""
    if _same_file(store, name, ours, theirs):
        return
    if base is not MISSING and _same_file(store, name, base, ours):
        yield Take(path, theirs)
        return
    if base is not MISSING and _same_file(store, name, base, theirs):
        return
    merged = None
    if metadata.is_metadata_name(name):
        ours_data = _read(store, name, ours)
        base_data = None if base is MISSING else _read(store, name, base)
        merged = merge_metadata(name, base_data, ours_data, _read(store, name, theirs))
        if merged == ours_data:
            return
    yield _Conflict(path) if merged is None else Take(path, merged)


def _kind_of(store: Blockstore, name: str, value: Any) -> str | None:
    return None if value is MISSING else _kind(store, name, value)


def _same_content(
    store: Blockstore, name: str, a: Any, b: Any, a_kind: str | None, b_kind: str | None
) -> bool:
    """Whether two entries of one name hold the same: two values of different forms may (a
    directory inline in one parent, linked from another; metadata inline or a raw block)."""
    if a_kind != b_kind:
        return False
    if a_kind == FILE:
        return _same_file(store, name, a, b)
    return a_kind is None or _same_tree(store, a, b)


def _same_tree(store: Blockstore, a: Any, b: Any) -> bool:
    """Whether two directories hold the same names and bytes, stopping at the first difference;
    walked like diff (differing values only, an explicit stack)."""
    stack = [(a, b)]
    while stack:
        left, right = stack.pop()
        pairs = _differing_entries(store, _directory(store, left), _directory(store, right))
        for name, before, after in pairs:
            kind = _kind_of(store, name, before)
            if kind != _kind_of(store, name, after):
                return False
            if kind == DIRECTORY:
                stack.append((before, after))
            elif not _same_file(store, name, before, after):
                return False
    return True


def _content(name: str, value: Any) -> FileContent:
    return StoredFile(value.cid) if isinstance(value, codec.Link) else InlineFile(name, value)


def _same_file(store: Blockstore, name: str, a: Any, b: Any) -> bool:
    """Whether two file entries hold the same bytes, read only when their CIDs cannot say: two
    raw blocks differ exactly when their CIDs do; files of different sizes always differ."""
    left, right = _content(name, a), _content(name, b)
    if left.size_in(store) != right.size_in(store):
        return False
    if isinstance(left, StoredFile) and isinstance(right, StoredFile):
        if left.cid == right.cid:
            return True
        if cids.codec_of(left.cid) == cids.codec_of(right.cid) == cids.RAW:
            return False
    return _read(store, name, a) == _read(store, name, b)


def _read(store: Blockstore, name: str, value: Any) -> bytes:
    reader = _content(name, value).reader(store)
    return reader.read(0, reader.size)


# --- JSON -------------------------------------------------------------------------------


class _Clash:
    """A JSON value both sides changed differently (a module-level marker, never data)."""


_CLASH = _Clash()


def merge_metadata(name: str, base: bytes | None, ours: bytes, theirs: bytes) -> bytes | None:
    """The three-way merge of a metadata file whose sides hold JSON objects (*base* None: the
    file is new on both sides, merged from ``{}``), rendered as :func:`metadata.render` renders
    *name*, so that it inlines as zarr itself writes it. None: a conflict (a side is not a JSON
    object, or a key was changed differently on both sides)."""
    values = [_json_object(data) for data in (b"{}" if base is None else base, ours, theirs)]
    if any(value is None for value in values):
        return None
    try:
        merged = _merge_json(*values)
    except RecursionError:  # nested deeper than the stack: too deep to merge, so a conflict
        return None
    return None if isinstance(merged, _Clash) else metadata.render(name, merged)


def _json_object(data: bytes) -> dict[str, Any] | None:
    try:
        value = metadata.parse(data)
    except (ValueError, UnicodeError, RecursionError):
        return None
    return value if type(value) is dict else None


def _merge_json(base: Any, ours: Any, theirs: Any) -> Any:
    """Objects key by key (a key absent on a side is MISSING); any other value must be the same
    on both sides or changed on one side only. _CLASH where that fails."""
    if _same_json(ours, theirs) or _same_json(base, theirs):
        return ours
    if _same_json(base, ours):
        return theirs
    if type(ours) is not dict or type(theirs) is not dict:
        return _CLASH
    start = base if type(base) is dict else {}
    merged: dict[str, Any] = {}
    for key in sorted(start.keys() | ours.keys() | theirs.keys()):
        value = _merge_json(start.get(key, MISSING), ours.get(key, MISSING), theirs.get(key, MISSING))
        if isinstance(value, _Clash):
            return value
        if value is not MISSING:
            merged[key] = value
    return merged


def _same_json(a: Any, b: Any) -> bool:
    """JSON equality: ``1``, ``1.0`` and ``true`` differ (Python's ``==`` takes them for one)."""
    if a is MISSING or b is MISSING:
        return a is b
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
