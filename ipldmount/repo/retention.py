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
from ipldmount.errors import (
    BlockNotFoundError,
    CorruptBlockError,
    FormatError,
    InvalidCIDError,
    IpldmountError,
)
from ipldmount.format.commit import ancestry, read_commit
from ipldmount.ipld import cid as cids
from ipldmount.ipld.cid import may_link
from ipldmount.repo.home import MountFiles, StoreHome
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
    commits: int = 0  # commit blocks kept (their trees kept or expired)


def kept_roots(home: StoreHome, retention: Retention, now: float | None = None) -> dict[str, list[str]]:
    """Every root (or journal-referenced block) to keep, as CID text, with the reasons why.
    Refuses (HistoryDamagedError) when the history cannot be read whole."""
    history = home.registry.read_whole()
    history.check(home.registry.path)
    by_history, by_mounts, _ = _kept_parts(home, retention, history, now)
    return _merged(by_history, by_mounts)


def _kept_parts(
    home: StoreHome, retention: Retention, history: History, now: float | None
) -> tuple[dict[str, list[str]], dict[str, list[str]], set[bytes]]:
    """What tags, branches and history keep, what mounts and live stores need, and the commits
    whose blocks are kept (every commit of every kept line, its tree kept or expired)."""
    by_mounts: dict[str, list[str]] = defaultdict(list)
    starts: list[bytes] = []
    _keep_mounts(home, by_mounts, starts)
    for root in home.roots_in_use():
        text = _checked(root, "a live in-process store's published root")
        commit = _commit_named(home, text)
        if commit is not None:  # its commit: kept with its line (the tree is published beside it)
            starts.append(commit)
        else:
            by_mounts[text].append("in use by a live in-process store")
    by_history = _kept_by_history(home, retention, history, now)
    chain = _keep_commits(home, retention, history, now or time.time(), by_history, starts)
    return by_history, by_mounts, chain


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
        age = now - _timestamp(record.time)
        if record.branch and record.commit and age <= retention.grace:
            # a branch's move within the grace period (the reflog): what it named stays whole
            kept[record.root].append(f"branch {record.branch} named it within the grace period")
            continue
        recent = retention.keep_within is not None and age <= retention.keep_within
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


def _keep_commits(
    home: StoreHome,
    retention: Retention,
    history: History,
    now: float,
    kept: dict[str, list[str]],
    starts: list[bytes],
) -> set[bytes]:
    """Keep the trees of each branch's last ``keep_last`` commits, of every commit younger than
    ``keep_within``, of tagged commits; and the blocks of every commit on any kept line (the
    chain stays readable when its older trees expire). *starts*: commits mounts stand on."""
    chain: set[bytes] = set()
    for name, head in home.branches.all().items():
        _walk_line(home, head, f"branch {name}", retention, now, kept, chain)
    for name, text in home.tags.all().items():
        commit = _commit_named(home, text)
        if commit is not None:
            _walk_line(home, commit, f"tag {name}", Retention(1, None, 0), now, kept, chain)
    for record in history.live:
        if record.commit and record.root in kept:  # a history line kept: its commit's line too
            _add_line(home, cids.parse_cid(_checked(record.commit, "a history line's commit")), chain)
    for commit in starts:
        _add_line(home, commit, chain)
    return chain


def _commit_named(home: StoreHome, text: str) -> bytes | None:
    cid = cids.parse_cid(text)
    try:
        return cid if read_commit(home.blocks, cid) is not None else None
    except (BlockNotFoundError, FormatError):
        return None


def _walk_line(
    home: StoreHome,
    head: bytes,
    what: str,
    retention: Retention,
    now: float,
    kept: dict[str, list[str]],
    chain: set[bytes],
) -> None:
    """Every commit *head* descends from goes into *chain*; the trees of the newest
    ``keep_last`` (and of those younger than ``keep_within``) are kept, said as *what*. The
    judged commits come newest first, so the walk stops at the first too old to keep."""
    for index, (_, commit) in enumerate(ancestry(home.blocks, [head])):
        young = retention.keep_within is not None and now - _timestamp(commit.time) <= retention.keep_within
        if index >= retention.keep_last and not young:
            break
        tree = cids.cid_to_str(commit.tree)
        if index < retention.keep_last:
            kept[tree].append(f"{what}: {'its head' if index == 0 else f'commit {index} back'}")
        else:
            kept[tree].append(f"{what}: committed within the last {retention.keep_within:g} s")
    _add_line(home, head, chain)


def _add_line(home: StoreHome, head: bytes, chain: set[bytes]) -> None:
    """*head* and every commit it descends from that the store holds, into *chain*; a commit
    already there was walked from before, with all it descends from: the walk stops there."""
    stack = [head]
    while stack:
        cid = stack.pop()
        if cid in chain:
            continue
        try:
            commit = read_commit(home.blocks, cid)
        except (BlockNotFoundError, CorruptBlockError, FormatError):
            continue  # a line whose older part is not here (pulled later, or never)
        if commit is None:
            continue
        chain.add(cid)
        stack.extend(commit.parents)


def _keep_mounts(home: StoreHome, kept: dict[str, list[str]], starts: list[bytes]) -> None:
    for files in home.all_mount_files():
        _keep_head(home, files, kept, starts)
        try:
            pending = Journal(files.journal).read()
        except (JournalError, OSError, ValueError, KeyError, InvalidCIDError) as exc:
            raise IpldmountError(
                f"cannot tell what the journal {files.journal} needs ({exc}); nothing was collected "
                f"(mount that mountpoint to recover or discard its changes first)"
            ) from None
        if pending is not None:
            where = f"journal {files.journal}"
            if pending.commit is not None:
                starts.append(pending.commit)
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


def _keep_head(home: StoreHome, files: MountFiles, kept: dict[str, list[str]], starts: list[bytes]) -> None:
    """What a mountpoint showed last (its head): kept whole, whether or not it is mounted now."""
    try:
        head = home.read_head(files)
    except IpldmountError as exc:
        raise IpldmountError(f"{exc}; nothing was collected") from None
    if head is None:
        return
    if head.tree is not None:
        kept[_checked(head.tree, str(files.head_file))].append(f"shown by the mountpoint {head.mountpoint}")
    if head.commit is not None:
        starts.append(cids.parse_cid(_checked(head.commit, str(files.head_file))))


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
    by_history, by_mounts, chain = _kept_parts(home, retention, history, None)
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
    roots = [cids.parse_cid(text) for text in kept if text not in left] + sorted(chain)
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
        shallow=frozenset(chain),
    )
    report = GcReport(kept, collection, left_to_node=left, commits=len(chain))
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
