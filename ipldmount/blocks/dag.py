"""Walks over a DAG of blocks: every link of a block, the closure of a root, what a new root adds.

Generic over the format: a block's links are the CIDs in its DAG-CBOR encoding, found by
position (map keys and list indices), or a DAG-PB node's links by index, so the walks serve
the tree, CARs and garbage collection alike without knowing what a directory is. An
identity CID holds its bytes: it is never a link to walk, store or send.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

from ipldmount.blocks.base import Blockstore
from ipldmount.errors import BlockNotFoundError, CorruptBlockError
from ipldmount.ipld import codec, dagpb
from ipldmount.ipld.cid import DAG_PB, cid_to_str, codec_of, inline_data, may_link
from ipldmount.ipld.codec import Link

_Position = tuple[Any, ...]  # map keys and list indices from a block's top value down to a link


def block_links(cid: bytes, data: bytes) -> list[bytes]:
    """The CIDs a block links to, in the order they appear in its encoding."""
    return [link for _, link in _positioned_links(cid, data)]


def _positioned_links(cid: bytes, data: bytes) -> list[tuple[_Position, bytes]]:
    """(position, CID) of every link in a block, in encoding order."""
    if not may_link(cid):
        return []
    try:
        if codec_of(cid) == DAG_PB:
            links = dagpb.decode(data).links
            return [((index,), link.cid) for index, link in enumerate(links) if inline_data(link.cid) is None]
        value = codec.decode(data)
    except CorruptBlockError as exc:
        raise CorruptBlockError(f"block {cid_to_str(cid)}: {exc}") from None
    return _value_links(value)


def value_links(value: Any) -> list[bytes]:
    """The CIDs a decoded DAG-CBOR value links to, in encoding order (a value inline in a block:
    what of the block's links it holds)."""
    return [link for _, link in _value_links(value)]


def _value_links(value: Any) -> list[tuple[_Position, bytes]]:
    found: list[tuple[_Position, bytes]] = []
    stack: list[tuple[_Position, Any]] = [((), value)]
    while stack:  # explicit stack: nesting depth must not hit the recursion limit
        position, item = stack.pop()
        if isinstance(item, Link):
            if inline_data(item.cid) is None:
                found.append((position, item.cid))
        elif isinstance(item, dict):
            stack.extend(reversed([((*position, key), child) for key, child in item.items()]))
        elif isinstance(item, list):
            stack.extend(reversed([((*position, index), child) for index, child in enumerate(item)]))
    return found


LinksOf = Callable[[bytes], list[bytes] | None]
"""A block's links, or None to leave the block out with everything below it."""

Follow = Callable[[bytes, bytes], list[bytes]]
"""Which links of a block (its CID and bytes) a walk goes on to: all of them (:func:`block_links`),
or those of one part of the DAG (a file's, a directory's own nodes)."""


class Seen(Protocol):
    """What a walk has visited: a set of CIDs, or anything that answers like one."""

    def __contains__(self, cid: object, /) -> bool: ...

    def add(self, cid: bytes, /) -> None: ...


class _Forgetful:
    """A :class:`Seen` that remembers nothing: a walk meets a block as often as links lead to it."""

    def __contains__(self, cid: object, /) -> bool:
        return False

    def add(self, cid: bytes, /) -> None:
        pass


def depth_first(root: bytes, links_of: LinksOf, seen: Seen | None = None) -> Iterator[bytes]:
    """Each CID reachable from *root* once, parents first, children in link order.

    *seen* (CIDs already visited, or to skip with what is below them) may be shared
    between walks; it is updated as the walk goes.
    """
    seen = set[bytes]() if seen is None else seen
    stack = [root]
    while stack:
        cid = stack.pop()
        if cid in seen:
            continue
        seen.add(cid)
        links = links_of(cid)
        if links is None:
            continue
        yield cid
        stack.extend(reversed(links))


def iter_closure(
    store: Blockstore,
    root: bytes,
    missing: list[bytes] | None = None,
    *,
    follow: Follow = block_links,
    dups: bool = False,
) -> Iterator[tuple[bytes, bytes]]:
    """Every block reachable from *root*, once each: depth first, parents before children.

    Raises BlockNotFoundError for a missing block, CorruptBlockError for a bad one;
    or, given a *missing* list, notes each such block there and goes on without it.
    *follow* picks the links walked on from each block (all by default); with *dups* a block is
    yielded every time the walk meets it (a CAR with ``dups=y``), not once.
    """
    reader = _Reader(store, missing, follow)
    for cid in depth_first(root, reader.links_of, _Forgetful() if dups else None):
        yield cid, reader.take(cid)


def closure_size(store: Blockstore, root: bytes) -> int:
    """How many blocks :func:`iter_closure` yields (reads every node with links, no raw block)."""

    def links_of(cid: bytes) -> list[bytes]:
        return block_links(cid, store.get(cid)) if may_link(cid) and store.has(cid) else []

    return sum(1 for _ in depth_first(root, links_of))


class _Reader:
    """Reads blocks for a walk, handing each block read for its links on to the walk's caller.

    A block that is missing or does not decode raises, or, given a *missing* list, is
    noted there and left out with everything below it.
    """

    def __init__(self, store: Blockstore, missing: list[bytes] | None, follow: Follow = block_links) -> None:
        self.store = store
        self.missing = missing
        self.follow = follow
        self.read: dict[bytes, bytes] = {}

    def links_of(self, cid: bytes) -> list[bytes] | None:
        try:
            data = self.store.get(cid)
            links = self.follow(cid, data)
        except (BlockNotFoundError, CorruptBlockError):
            if self.missing is None:
                raise
            self.missing.append(cid)
            return None
        self.read[cid] = data
        return links

    def take(self, cid: bytes) -> bytes:
        return self.read.pop(cid)


# --- what a new root adds -------------------------------------------------------


def iter_new_blocks(
    store: Blockstore, root: bytes, since: bytes, missing: list[bytes] | None = None
) -> Iterator[tuple[bytes, bytes]]:
    """The blocks of *root* that *since* does not have: what a CAR of the change must carry.

    Both DAGs are walked side by side from their roots; a link equal on both sides is
    never followed, so the cost is that of the change. A block counts as present in
    *since* when the walk meets it there: on a changed path, or as a link of a changed
    block (a moved or renamed subtree is not sent again). A block that *since* holds
    only elsewhere, outside the changed paths (a copy of an untouched file), may be
    sent again: more than needed, never less. Against an empty *since* this is exactly
    :func:`iter_closure`, in the same order. Blocks of *since* that cannot be read are
    taken as absent; *missing* works as for :func:`iter_closure`.
    """
    if root == since:
        return
    walk = _ChangeWalk(store, since)
    plan = walk.plan(root, since)
    reader = _Reader(store, missing)
    sent: set[bytes] = set(walk.present)  # present blocks are skipped with what is below them
    for whole, cid in plan:
        if whole:
            for found in depth_first(cid, reader.links_of, sent):
                yield found, reader.take(found)
        elif cid not in sent:
            sent.add(cid)
            data = walk.changed.pop(cid, None)  # read (and checked) by the first pass
            if data is not None:
                yield cid, data
            elif reader.links_of(cid) is not None:  # a raw block, or one the first pass could not read
                yield cid, reader.take(cid)


class _ChangeWalk:
    """The first pass of :func:`iter_new_blocks`: pairs changed blocks, notes what *since* has."""

    def __init__(self, store: Blockstore, since: bytes) -> None:
        self.store = store
        self.present: set[bytes] = {since}
        self.changed: dict[bytes, bytes] = {}  # the new side's changed blocks, read once, sent later

    def plan(self, root: bytes, since: bytes) -> list[tuple[bool, bytes]]:
        """``(whole, cid)`` in sending order: a changed block alone, or a new subtree whole."""
        plan: list[tuple[bool, bytes]] = []
        stack: list[tuple[bytes, bytes | None]] = [(root, since)]
        while stack:
            new, old = stack.pop()
            if old is None:
                plan.append((True, new))
                continue
            plan.append((False, new))
            stack.extend(reversed(self._pairs(new, old)))
        return plan

    def _pairs(self, new: bytes, old: bytes) -> list[tuple[bytes, bytes | None]]:
        """The links of *new* that *old* lacks, each with the link of *old* at its position (or None)."""
        new_links, old_links = self._links(new, keep=True), self._links(old)
        if new_links is None:
            return []  # unreadable: the second pass notes it
        old_links = old_links or []
        self.present.update(link for _, link in old_links)
        at_position = dict(old_links)
        new_set, old_set = {link for _, link in new_links}, {link for _, link in old_links}
        pairs: list[tuple[bytes, bytes | None]] = []
        for position, link in new_links:
            if link in old_set:
                continue
            partner = at_position.get(position)
            if partner is not None and (partner in new_set or codec_of(partner) != codec_of(link)):
                partner = None
            pairs.append((link, partner))
        return pairs

    def _links(self, cid: bytes, keep: bool = False) -> list[tuple[_Position, bytes]] | None:
        if not may_link(cid):
            return []  # a raw block has no links: never read here
        try:
            data = self.store.get(cid)
            links = _positioned_links(cid, data)
        except (BlockNotFoundError, CorruptBlockError):
            return None
        if keep:
            self.changed[cid] = data
        return links
