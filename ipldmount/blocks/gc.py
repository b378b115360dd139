"""Garbage collection of a block store: mark what kept roots reach, sweep the rest.

Which roots to keep is the caller's policy (a store's history, tags and mounts: see
:mod:`ipldmount.repo.retention`); this module only guarantees that a block is removed when
no kept root reaches it and no writer can be relying on it: it was written or claimed
before ``grace`` seconds ago and before every live writer's lease (:mod:`.lease`).

Every kept root is marked in full before anything is removed, so a collection that stops
half way (a crash, Ctrl-C) leaves every kept root complete.
"""

from __future__ import annotations

import logging
import time
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ipldmount.blocks.base import Blockstore
from ipldmount.blocks.dag import block_links, depth_first
from ipldmount.blocks.lease import CLOCK_MARGIN
from ipldmount.errors import BlockNotFoundError, CorruptBlockError
from ipldmount.ipld.cid import is_supported, may_link

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called as ``progress(blocks, nbytes)``: blocks marked (or, sweeping, looked at) so far, and the
bytes removed."""

SWEEP_BATCH = 512  # blocks removed per hold of the sweep lock: a claim waits at most that long
MISSING_NAMED = 1000  # missing blocks a collection names; beyond that it counts them


class MarkSet:
    """The CIDs a collection keeps, as 64-bit hashes in an open-addressing table.

    A set of CIDs costs about 120 bytes a block; this costs 16 to 32, so marking a tree of
    millions of chunks fits in tens of megabytes. Two CIDs may share a hash: then a block no
    root reaches reads as marked and is kept. That is the only mistake a collector may make,
    and with 64 bits it is one in billions of billions per pair.
    """

    _EMPTY = 0  # a free slot; a hash of 0 is stored as 1 (sharing with 1 only keeps garbage)

    def __init__(self, capacity: int = 1 << 12) -> None:
        self._slots = array("Q", bytes(8 * capacity))  # capacity: a power of two
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, cid: object) -> bool:
        key = _key(cid)
        return self._slots[self._slot(key)] == key

    def add(self, cid: bytes) -> None:
        key = _key(cid)
        index = self._slot(key)
        if self._slots[index] == key:
            return
        self._slots[index] = key
        self._count += 1
        if 2 * self._count > len(self._slots):  # at most half full: probes stay short
            self._grow()

    def _slot(self, key: int) -> int:
        """Where *key* is, or the free slot where it would go (linear probing)."""
        slots, mask = self._slots, len(self._slots) - 1
        index = key & mask
        while (held := slots[index]) != key and held != self._EMPTY:
            index = (index + 1) & mask
        return index

    def _grow(self) -> None:
        old = self._slots
        self._slots = array("Q", bytes(16 * len(old)))
        for key in old:
            if key != self._EMPTY:
                self._slots[self._slot(key)] = key


def _key(cid: object) -> int:
    """A CID's 64-bit hash (SipHash, seeded per process), never the empty slot's 0."""
    return (hash(cid) & 0xFFFF_FFFF_FFFF_FFFF) or 1


@dataclass
class Collection:
    """What a collection kept and removed (or, in a dry run, would remove)."""

    kept_blocks: int = 0
    missing: list[bytes] = field(default_factory=list)  # reachable, not stored: the first MISSING_NAMED
    missing_blocks: int = 0  # how many there are in all
    removed_blocks: int = 0
    removed_bytes: int = 0
    recent_blocks: int = 0  # unreachable, kept: written or claimed too recently
    dry_run: bool = False
    stored_leaves: int = field(default=0, repr=False)  # raw blocks the sweep found marked
    marked: MarkSet = field(default_factory=MarkSet, repr=False, compare=False)
    older_than: float = 0.0  # blocks written or claimed since were kept, reached or not

    def keeps(self, store: Blockstore, cid: bytes) -> bool:
        """Whether this collection kept what *cid* names, or would have: a kept root reaches it, or
        it is stored and new enough that a writer may rely on it. Whatever else refers to blocks
        (the attribute table) drops what refers to the rest."""
        if cid in self.marked:
            return True
        return store.has(cid) and store.remove_unused(cid, self.older_than, dry_run=True) is None


@dataclass
class Marked:
    """What the kept roots reach: every CID (stored or not) and those that are missing or corrupt."""

    cids: MarkSet = field(default_factory=MarkSet)
    missing: list[bytes] = field(default_factory=list)  # the first MISSING_NAMED of them
    missing_count: int = 0
    leaves: int = 0  # raw blocks reached: not looked up while marking (the sweep counts them)

    def lack(self, cid: bytes) -> None:
        self.missing_count += 1
        if len(self.missing) < MISSING_NAMED:
            self.missing.append(cid)


def mark(
    store: Blockstore,
    roots: Iterable[bytes],
    progress: Progress | None = None,
    *,
    check_leaves: bool = False,
    shallow: frozenset[bytes] = frozenset(),
) -> Marked:
    """Every CID the *roots* reach (stored or not), and those of them that are missing or corrupt.
    A block in *shallow* is kept without what it links to (a commit whose tree has expired: its
    chain is kept by listing each commit of it).

    Raw blocks (most of a tree: its chunks) are looked up only if *check_leaves*; otherwise they
    are counted, and :func:`collect_garbage` learns from its sweep whether all of them are stored.
    """
    marked = Marked()

    def links_of(cid: bytes) -> list[bytes]:
        if not may_link(cid):
            if check_leaves or not is_supported(cid):
                if not store.has(cid):
                    marked.lack(cid)
            else:
                marked.leaves += 1
            return []
        try:
            links = block_links(cid, store.get(cid))
        except (BlockNotFoundError, CorruptBlockError):
            marked.lack(cid)
            return []
        return [] if cid in shallow else links

    for root in roots:
        for _ in depth_first(root, links_of, marked.cids):
            if progress is not None:
                progress(len(marked.cids), 0)
    return marked


def sweep(
    store: Blockstore,
    marked: MarkSet,
    older_than: float | None,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> Collection:
    """Remove every stored block not *marked* and not written or claimed since *older_than*."""
    result = Collection(dry_run=dry_run)
    stored = iter(store)
    examined = 0
    while batch := [cid for _, cid in zip(range(SWEEP_BATCH), stored, strict=False)]:
        examined += len(batch)
        with store.sweeping():
            for cid in batch:
                if cid not in marked:
                    _sweep_one(store, cid, older_than, dry_run, result)
                elif not may_link(cid):
                    result.stored_leaves += 1
        if progress is not None:
            progress(examined, result.removed_bytes)
    return result


def _sweep_one(
    store: Blockstore, cid: bytes, older_than: float | None, dry_run: bool, result: Collection
) -> None:
    size = store.remove_unused(cid, older_than, dry_run)
    if size is None:
        result.recent_blocks += 1
    else:
        result.removed_blocks += 1
        result.removed_bytes += size


def protection_time(store: Blockstore, grace: float) -> float:
    """Blocks written or claimed at or after this time are kept, reached or not: the grace, and
    every live writer's lease. Take it *before* reading what to keep (the roots): a writer
    publishes its roots before it settles its lease, so whatever it stored is either under a
    lease read here or named by a root read after (README, "Why gc never takes what is needed")."""
    older_than = time.time() - grace - CLOCK_MARGIN  # mtimes lag time.time() by a tick
    leased = store.protected_since()
    return older_than if leased is None else min(older_than, leased)


def collect_garbage(
    store: Blockstore,
    roots: Iterable[bytes],
    *,
    grace: float = 0.0,
    older_than: float | None = None,
    dry_run: bool = False,
    marking: Progress | None = None,
    sweeping: Progress | None = None,
    shallow: frozenset[bytes] = frozenset(),
) -> Collection:
    """Keep what *roots* reach and what writers may rely on (see the module); remove the rest.
    *shallow*: roots kept without what they link to (:func:`mark`).

    *older_than*: :func:`protection_time`, taken before the caller read *roots*; without it,
    it is taken now, which is safe only for roots that no other writer can be publishing.
    """
    if older_than is None:
        older_than = protection_time(store, grace)
    roots = list(roots)
    marked = mark(store, roots, marking, shallow=shallow)
    result = sweep(store, marked.cids, older_than, dry_run=dry_run, progress=sweeping)
    if result.stored_leaves < marked.leaves:  # some raw blocks the roots reach are not stored
        named = mark(store, roots, check_leaves=True, shallow=shallow)  # a second walk, to name them
        marked.missing, marked.missing_count = named.missing, named.missing_count
    result.kept_blocks = len(marked.cids) - marked.missing_count
    result.missing, result.missing_blocks = marked.missing, marked.missing_count
    result.marked, result.older_than = marked.cids, older_than
    log.info(
        "collected %s: kept %d blocks, %s %d (%d bytes), %d recent kept",
        store,
        result.kept_blocks,
        "would remove" if dry_run else "removed",
        result.removed_blocks,
        result.removed_bytes,
        result.recent_blocks,
    )
    return result
