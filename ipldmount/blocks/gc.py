"""Garbage collection of a block store: mark what kept roots reach, sweep the rest.

Which roots to keep is the caller's policy (a store's history, tags and mounts: see
:mod:`ipldmount.state.retention`); this module only guarantees that a block is removed when
no kept root reaches it and no writer can be relying on it: it was written or claimed
before ``grace`` seconds ago and before every live writer's lease (:mod:`.lease`).

Every kept root is marked in full before anything is removed, so a collection that stops
half way (a crash, Ctrl-C) leaves every kept root complete.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ipldmount.blocks.base import Blockstore
from ipldmount.blocks.dag import block_links, depth_first
from ipldmount.errors import BlockNotFoundError, CorruptBlockError
from ipldmount.ipld.cid import may_link

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called as ``progress(blocks, nbytes)``: blocks marked (or, sweeping, looked at) so far, and the
bytes removed."""

SWEEP_BATCH = 512  # blocks removed per hold of the sweep lock: a claim waits at most that long


@dataclass
class Collection:
    """What a collection kept and removed (or, in a dry run, would remove)."""

    kept_blocks: int = 0
    missing: list[bytes] = field(default_factory=list)  # reachable from a kept root, not stored
    removed_blocks: int = 0
    removed_bytes: int = 0
    recent_blocks: int = 0  # unreachable, kept: written or claimed too recently
    dry_run: bool = False


def mark(
    store: Blockstore, roots: Iterable[bytes], progress: Progress | None = None
) -> tuple[set[bytes], list[bytes]]:
    """Every CID the *roots* reach (stored or not), and those of them that are missing or corrupt."""
    marked: set[bytes] = set()
    missing: list[bytes] = []

    def links_of(cid: bytes) -> list[bytes]:
        if not may_link(cid):
            if not store.has(cid):
                missing.append(cid)
            return []
        try:
            return block_links(cid, store.get(cid))
        except (BlockNotFoundError, CorruptBlockError):
            missing.append(cid)
            return []

    for root in roots:
        for _ in depth_first(root, links_of, marked):
            if progress is not None:
                progress(len(marked), 0)
    return marked, missing


def sweep(
    store: Blockstore,
    marked: set[bytes],
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


def collect_garbage(
    store: Blockstore,
    roots: Iterable[bytes],
    *,
    grace: float = 0.0,
    dry_run: bool = False,
    marking: Progress | None = None,
    sweeping: Progress | None = None,
) -> Collection:
    """Keep what *roots* reach and what writers may rely on (see the module); remove the rest."""
    older_than = time.time() - grace  # taken first: anything written or claimed later is kept
    leased = store.protected_since()
    if leased is not None:
        older_than = min(older_than, leased)
    marked, missing = mark(store, roots, marking)
    result = sweep(store, marked, older_than, dry_run=dry_run, progress=sweeping)
    result.kept_blocks, result.missing = len(marked) - len(missing), missing
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
