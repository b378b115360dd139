"""Commit nodes: a version of a tree, with the versions it came from (FORMAT.md §13).

A tree's CID depends only on its names and bytes; a *commit* says when a tree was made a
version, from which versions, and why. It is one DAG-CBOR map::

    {"ipldmount/commit": 1, "tree": <link>, "parents": [<link>, ...], "time": "...Z",
     "message": "..."}

No directory node can be read as a commit, nor a commit as a directory: entry names never
hold ``/`` (FORMAT.md §3.4), and the key ``ipldmount/commit`` does. Readers keep keys they do
not know (room for more), and refuse a map that has the commit key but not its fields.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ipldmount.blocks import Blockstore
from ipldmount.errors import BlockNotFoundError, FormatError
from ipldmount.ipld import cid as cids
from ipldmount.ipld import codec

COMMIT_KEY = "ipldmount/commit"
VERSION = 1
MAX_PARENTS = 64  # a merge of more is refused: a hostile commit cannot make a walk fan out
MAX_MESSAGE = 64 << 10  # bytes of UTF-8


@dataclass(frozen=True)
class Commit:
    """One version: *tree* (a root CID), the commits it follows (first: the one it was made on)."""

    tree: bytes
    parents: tuple[bytes, ...] = ()
    time: str = ""  # UTC, RFC 3339 with milliseconds: 2026-12-07T18:00:00.123Z
    message: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # keys this version does not know

    @staticmethod
    def now() -> str:
        stamp = time.time()
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp)) + f".{int(stamp * 1000) % 1000:03d}Z"

    @classmethod
    def made(cls, tree: bytes, parents: tuple[bytes, ...] = (), message: str | None = None) -> Commit:
        return cls(tree, parents, cls.now(), message or None)

    def encode(self) -> bytes:
        value: dict[str, Any] = {
            **self.extra,
            COMMIT_KEY: VERSION,
            "tree": codec.Link(self.tree),
            "parents": [codec.Link(parent) for parent in self.parents],
            "time": self.time,
        }
        if self.message is not None:
            value["message"] = self.message
        return codec.encode(value)


def is_commit_value(value: Any) -> bool:
    """Whether a decoded block is a commit (whatever else it holds)."""
    return type(value) is dict and COMMIT_KEY in value


def decode_commit(data: bytes | memoryview) -> Commit:
    """The commit in a block; FormatError if it is not one, or not a well-formed one."""
    value = codec.decode(data)
    if not is_commit_value(value):
        raise FormatError("not a commit")
    return _commit_of(value)


def _commit_of(value: dict[str, Any]) -> Commit:
    if value[COMMIT_KEY] != VERSION or type(value[COMMIT_KEY]) is not int:
        raise FormatError(f"a commit of version {value[COMMIT_KEY]!r}: this reader knows version {VERSION}")
    tree, parents, when = value.get("tree"), value.get("parents"), value.get("time")
    message = value.get("message")
    if not isinstance(tree, codec.Link) or cids.codec_of(tree.cid) not in (cids.DAG_CBOR, cids.DAG_PB):
        raise FormatError("a commit's tree must be a link to a directory node")
    if not isinstance(parents, list) or len(parents) > MAX_PARENTS:
        raise FormatError(f"a commit's parents must be a list of at most {MAX_PARENTS} links")
    if not all(isinstance(parent, codec.Link) and _is_commit_cid(parent.cid) for parent in parents):
        raise FormatError("a commit's parents must be links to DAG-CBOR commits")
    if not isinstance(when, str) or len(when) > 64:
        raise FormatError("a commit's time must be a short text")
    if message is not None and (not isinstance(message, str) or len(message.encode()) > MAX_MESSAGE):
        raise FormatError(f"a commit's message must be a text of at most {MAX_MESSAGE} bytes")
    known = {COMMIT_KEY, "tree", "parents", "time", "message"}
    extra = {key: item for key, item in value.items() if key not in known}
    return Commit(tree.cid, tuple(parent.cid for parent in parents), when, message, extra)


def _is_commit_cid(cid: bytes) -> bool:
    return cids.is_supported(cid) and cids.codec_of(cid) == cids.DAG_CBOR


def store_commit(store: Blockstore, commit: Commit) -> bytes:
    """Store *commit*; its CID."""
    return store.put(commit.encode(), cids.DAG_CBOR)


def read_commit(store: Blockstore, cid: bytes) -> Commit | None:
    """The commit at *cid*, or None when the block there is a tree (any non-commit node).
    BlockNotFoundError when the store lacks it; FormatError when it is a malformed commit."""
    if not _is_commit_cid(cid):
        return None
    value = codec.decode(store.get(cid))
    return _commit_of(value) if is_commit_value(value) else None


def first_parents(store: Blockstore, head: bytes) -> Iterator[tuple[bytes, Commit]]:
    """*head* and its first parents, newest first (``BRANCH~N`` counts along it)."""
    cid: bytes | None = head
    seen: set[bytes] = set()
    while cid is not None and cid not in seen:
        seen.add(cid)
        commit = read_commit(store, cid)
        if commit is None:
            raise FormatError(f"{cids.cid_to_str(cid)} is not a commit")
        yield cid, commit
        cid = commit.parents[0] if commit.parents else None


def ancestry(
    store: Blockstore, heads: list[bytes], limit: int | None = None
) -> Iterator[tuple[bytes, Commit]]:
    """Every commit reachable from *heads* once, as far as the store holds them (a missing
    parent ends that line: a pull may bring it later), newest first by time but never a commit
    before one of its children (``git log --date-order``). The whole reachable history is read
    first (one small block per commit), since a head may be an ancestor of another."""
    found = _reachable(store, heads)
    waiting = {cid: 0 for cid in found}  # children not yet shown, per commit
    for commit in found.values():
        for parent in set(commit.parents):
            if parent in waiting:
                waiting[parent] += 1
    ready = [(_reverse(commit.time), cid) for cid, commit in found.items() if not waiting[cid]]
    heapq.heapify(ready)
    shown = 0
    while ready and (limit is None or shown < limit):
        _, cid = heapq.heappop(ready)
        commit = found[cid]
        shown += 1
        yield cid, commit
        for parent in set(commit.parents):
            if parent in waiting:
                waiting[parent] -= 1
                if not waiting[parent]:
                    heapq.heappush(ready, (_reverse(found[parent].time), parent))


def _reachable(store: Blockstore, heads: list[bytes]) -> dict[bytes, Commit]:
    found: dict[bytes, Commit] = {}
    stack = list(heads)
    while stack:
        cid = stack.pop()
        if cid in found:
            continue
        try:
            commit = read_commit(store, cid)
        except BlockNotFoundError:
            continue
        if commit is not None:
            found[cid] = commit
            stack.extend(commit.parents)
    return found


def _newest_first(store: Blockstore, head: bytes) -> Iterator[bytes]:
    """*head*'s ancestry by time, read lazily (order only roughly matters: merge bases)."""
    queue: list[tuple[str, bytes]] = []
    seen: set[bytes] = set()

    def push(cid: bytes) -> None:
        if cid in seen:
            return
        seen.add(cid)
        try:
            commit = read_commit(store, cid)
        except BlockNotFoundError:
            return
        if commit is not None:
            heapq.heappush(queue, (_reverse(commit.time), cid))
            pending[cid] = commit

    pending: dict[bytes, Commit] = {}
    push(head)
    while queue:
        _, cid = heapq.heappop(queue)
        yield cid
        for parent in pending.pop(cid).parents:
            push(parent)


def _reverse(text: str) -> str:
    """A key that sorts RFC 3339 times newest first."""
    return "".join(chr(0x10FFFF - ord(char)) if ord(char) < 0x10FFFF else char for char in text)


def merge_base(store: Blockstore, a: bytes, b: bytes) -> bytes | None:
    """A newest commit both *a* and *b* descend from (None: unrelated histories). The two
    ancestries are walked side by side, newest first, so the cost is the commits since the
    two lines parted, not the whole history."""
    walks = (_newest_first(store, a), _newest_first(store, b))
    seen: tuple[set[bytes], set[bytes]] = (set(), set())
    running = [True, True]
    while any(running):
        for side in (0, 1):
            if not running[side]:
                continue
            step = next(walks[side], None)
            if step is None:
                running[side] = False
                continue
            seen[side].add(step)
            if step in seen[1 - side]:
                return step
    return None
