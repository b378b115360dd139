"""Which roots a store keeps, and garbage collection of the rest (``ipldmount gc``).

Kept: every tag; the newest ``keep_last`` roots of each origin in the history (a mountpoint,
a CAR file imported, a store frozen in-process) and every root younger than ``keep_within``;
the base root and every block of every mount journal (live mounts, and crashed ones that
``resume`` would bring back); the root each running daemon serves (read-only mounts too).
Everything a writer stored but has not referenced yet is protected by the block store itself
(:mod:`ipldmount.blocks.lease`). CARs in ``STORE/cars`` of roots not kept are removed too,
and the attribute table's rows of file contents not kept.

The store is also a cache of an IPFS node: a kept root that the node holds pinned (checked now,
root by root) may be *left to the node*: its blocks go unless another root still here reaches
them, and it reads back through the node (its files' attribute rows stay). A root that mounts
need (a journal's, a daemon's) is never left, so nothing that exists only here, or that a mount
reads, is removed.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ipldmount.blocks.dag import block_links
from ipldmount.blocks.gc import Collection, Progress, collect_garbage, mark, protection_time
from ipldmount.errors import BlockNotFoundError, CorruptBlockError, InvalidCIDError, IpldmountError
from ipldmount.ipld import cid as cids
from ipldmount.ipld.cid import may_link
from ipldmount.repo.home import StoreHome
from ipldmount.repo.journal import Journal, JournalError
from ipldmount.repo.registry import History

log = logging.getLogger(__name__)

DEFAULT_GRACE = 300.0  # seconds: blocks younger than this are never collected


@dataclass(frozen=True)
class Retention:
    keep_last: int = 1  # roots of each origin
    keep_within: float | None = None  # seconds: roots younger than this
    grace: float = DEFAULT_GRACE  # seconds: blocks written or claimed this recently


@dataclass
class GcReport:
    kept: dict[str, list[str]]  # root CID -> why it is kept
    collection: Collection
    cars_removed: list[Path] = field(default_factory=list)
    left_to_node: list[str] = field(default_factory=list)  # kept roots whose blocks the node holds
    attribute_rows_removed: int = 0  # modes and times of file contents no longer kept


def kept_roots(home: StoreHome, retention: Retention, now: float | None = None) -> dict[str, list[str]]:
    """Every root (or journal-referenced block) to keep, as CID text, with the reasons why.
    Refuses (HistoryDamagedError) when the history cannot be read whole."""
    history = home.registry.read_whole()
    history.check(home.registry.path)
    return _merged(*_kept_parts(home, retention, history, now))


def _kept_parts(
    home: StoreHome, retention: Retention, history: History, now: float | None
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """What tags and history keep, and what mounts and live stores need."""
    by_mounts: dict[str, list[str]] = defaultdict(list)
    _keep_mounts(home, by_mounts)
    for root in home.roots_in_use():
        by_mounts[_checked(root, "a live in-process store's published root")].append(
            "in use by a live in-process store"
        )
    return _kept_by_history(home, retention, history, now), by_mounts


def _merged(*parts: dict[str, list[str]]) -> dict[str, list[str]]:
    kept: dict[str, list[str]] = defaultdict(list)
    for part in parts:
        for root, reasons in part.items():
            kept[root].extend(reasons)
    return dict(kept)


def _kept_by_history(
    home: StoreHome, retention: Retention, history: History, now: float | None
) -> dict[str, list[str]]:
    """The roots tags and the retained history keep (not mounts)."""
    kept: dict[str, list[str]] = defaultdict(list)
    for name, root in home.tags.all().items():
        kept[_checked(root, f"tag {name}")].append(f"tag {name}")
    _keep_history(home, retention, history, now or time.time(), kept)
    return kept


def _keep_history(
    home: StoreHome, retention: Retention, history: History, now: float, kept: dict[str, list[str]]
) -> None:
    seen: dict[tuple[str, str], int] = defaultdict(int)
    for record in history.live:  # newest first, without the roots a collection let go
        origin = (record.source, record.where)
        recent = retention.keep_within is not None and now - _timestamp(record.time) <= retention.keep_within
        if seen[origin] >= retention.keep_last and not recent:
            continue  # kept by nothing whether it is stored or not: no need to look
        if not _stored(home, record.root):
            continue  # collected before dropped lines were written, or a lazy mount's root
        seen[origin] += 1
        if seen[origin] <= retention.keep_last:
            kept[record.root].append(f"last {retention.keep_last} of {record.source} {record.where}")
        else:
            kept[record.root].append(f"made within the last {retention.keep_within:g} s")


def _stored(home: StoreHome, root: str) -> bool:
    try:
        return home.blocks.has(cids.parse_cid(root))
    except InvalidCIDError:
        return False


def _checked(root: str, what: str) -> str:
    """*root* if it reads as a CID; a name that does not is state gc cannot read whole: refuse."""
    try:
        cids.parse_cid(root)
    except InvalidCIDError:
        raise IpldmountError(f"{what} is not a CID ({root[:80]!r}); nothing was collected") from None
    return root


def _timestamp(text: str) -> float:
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0


def _keep_mounts(home: StoreHome, kept: dict[str, list[str]]) -> None:
    for files in home.all_mount_files():
        try:
            pending = Journal(files.journal).read()
        except (JournalError, OSError, ValueError, KeyError, InvalidCIDError) as exc:
            raise IpldmountError(
                f"cannot tell what the journal {files.journal} needs ({exc}); nothing was collected "
                f"(mount that mountpoint to recover or discard its changes first)"
            ) from None
        if pending is not None:
            where = f"journal {files.journal}"
            if pending.root is not None:
                kept[cids.cid_to_str(pending.root)].append(f"base of {where}")
            for record in pending.records:
                if "cid" in record:
                    kept[str(record["cid"])].append(f"written in {where}")
        served = home.served_roots(files)
        what = f"the root file {files.root_file}"
        if served:
            kept[_checked(served[0], what)].append(f"served by the daemon of {files.folder}")
        for held in served[1:]:
            kept[_checked(held, what)].append(f"read by a file open in the daemon of {files.folder}")


def collect(
    home: StoreHome,
    retention: Retention,
    *,
    dry_run: bool = False,
    marking: Progress | None = None,
    sweeping: Progress | None = None,
    pinned_remotely: Callable[[bytes], bool] | None = None,
    also: dict[str, list[str]] | None = None,
) -> GcReport:
    """Remove every block no kept root reaches (and that no writer may be using), and the CARs of
    roots not kept. *dry_run*: remove nothing, say what would go. *pinned_remotely*: whether a
    node holds a root pinned now; such roots kept by tags or history are left to it (module).
    *also*: more roots to keep (CID text -> reasons), such as an in-process store's own.

    The order is the safety argument (README, "Why gc never takes what is needed"): the time
    before which blocks may go is fixed first, then every reference is read, then history
    says which roots it lets go, and only then does a block go.
    """
    older_than = protection_time(home.blocks, retention.grace)
    history = home.registry.read_whole()
    history.check(home.registry.path)
    by_history, by_mounts = _kept_parts(home, retention, history, None)
    kept = _merged(by_history, by_mounts, also or {})
    left: list[str] = []
    if pinned_remotely is not None:  # a root a mount needs stays whole here, pinned or not
        left = [
            text
            for text in by_history
            if text not in by_mounts and text not in (also or {}) and pinned_remotely(cids.parse_cid(text))
        ]
    if not dry_run:
        _say_dropped(home, history, kept, left)
    roots = [cids.parse_cid(text) for text in kept if text not in left]
    # What the roots left to the node reach, marked while it is here: their files keep their
    # modes and times (the attribute table's rows), though their blocks go.
    on_node = mark(home.blocks, [cids.parse_cid(text) for text in left]).cids
    collection = collect_garbage(
        home.blocks,
        roots,
        older_than=older_than,
        dry_run=dry_run,
        marking=marking,
        sweeping=sweeping,
    )
    report = GcReport(kept, collection, left_to_node=left)
    report.attribute_rows_removed = home.attribute_table.prune(
        lambda cid: cid in on_node or collection.keeps(home.blocks, cid), dry_run=dry_run
    )
    for path in home.sync_cars():
        if path.name.split(".", 1)[0] not in kept:
            report.cars_removed.append(path)
            if not dry_run:
                path.unlink(missing_ok=True)
    return report


def _say_dropped(home: StoreHome, history: History, kept: dict[str, list[str]], left: list[str]) -> None:
    """Before any block goes: the history's stored roots this collection lets go are dropped
    (partial from now on, never kept again unless made anew), and those left to the node."""
    going = {record.root for record in history.live if record.root not in kept and _stored(home, record.root)}
    home.registry.drop(sorted(going), "collected")
    home.registry.drop(sorted(set(left) & {record.root for record in history.live}), "left to the IPFS node")


def unnamed_heads(home: StoreHome) -> list[str]:
    """Stored blocks that may link, that no other stored block links to, that neither a tag nor a
    readable history line names (nor a line that dropped them), and that reach every block they
    link (a partial one is what an earlier gc left): every root a damaged history may have lost.
    Reads every linking block of the store (a repair's cost, not a collection's)."""
    store = home.blocks
    linking = [cid for cid in store if may_link(cid)]
    linked: set[bytes] = set()
    for cid in linking:
        try:
            linked.update(block_links(cid, store.get(cid)))
        except (BlockNotFoundError, CorruptBlockError, IpldmountError):
            continue
    history = home.registry.read_whole()
    named = set(home.tags.all().values()) | {record.root for record in history.records} | history.dropped
    heads = [cid for cid in linking if cid not in linked and cids.cid_to_str(cid) not in named]
    whole = [cid for cid in heads if not mark(store, [cid], check_leaves=True).missing_count]
    return sorted(cids.cid_to_str(cid) for cid in whole)  # a partial one is what a gc left: not a root
