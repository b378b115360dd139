"""Stores from before commits: each history line becomes a commit, once, resumably.

A line of ``roots.log`` written before commits names a root, the root it was made from, when,
and why. Its commit is computed from those alone (tree, the commit of the line that made its
parent root, time, message), so it is the same CID however often the upgrade runs: a run cut
short is simply run again. Order: the commits are stored and synced; each mountpoint that has
no head yet gets one (its newest line: ``resume`` and gc go on from it); last, the history is
rewritten whole (atomically, under its lock) with each line's commit filled in, the step that
says the upgrade is done.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from ipldmount.format.commit import Commit, store_commit
from ipldmount.ipld import cid as cids
from ipldmount.repo.home import MountHead, StoreHome
from ipldmount.repo.registry import RootRecord

log = logging.getLogger(__name__)

MARKER = "history.commits"  # STORE/history.commits: this store's history lines all have commits


def upgrade_history(home: StoreHome) -> int:
    """Give every line from before commits its commit; how many lines were upgraded (0: none
    needed). Refuses (HistoryDamagedError) a history it cannot read whole: nothing is guessed."""
    marker = home.root / MARKER
    if marker.exists():
        return 0  # upgraded, or made with commits: no need to read the whole history again
    history = home.registry.read_whole()
    if not any(_legacy(record) for record in history.records):
        _mark_upgraded(home)
        return 0
    history.check(home.registry.path)
    commits = _commits_of(home, history.records)
    home.blocks.sync()
    _give_heads(home, history.records, commits)
    upgraded = home.registry.fill(lambda record: _filled(record, commits))
    _mark_upgraded(home)
    log.info("upgraded %d history lines of %s to commits", upgraded, home.root)
    return upgraded


def _mark_upgraded(home: StoreHome) -> None:
    """Say that every line has its commit (after the history says so), so that later commands
    need not read the whole history to know."""
    fd = home.open_private(home.root / MARKER, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.close(fd)


def _legacy(record: RootRecord) -> bool:
    return record.commit is None and record.branch is None


def _commits_of(home: StoreHome, records: list[RootRecord]) -> dict[tuple[str, str], str]:
    """(root, time) of each legacy line -> its commit, stored; oldest first, so a parent's
    commit is known before its children's."""
    latest: dict[str, str] = {}  # root -> the commit of the newest line that made it
    made: dict[tuple[str, str], str] = {}
    for record in records:
        if not _legacy(record):
            if record.commit:
                latest[record.root] = record.commit
            continue
        parent = latest.get(record.parent) if record.parent else None
        parents = (cids.parse_cid(parent),) if parent else ()
        commit = Commit(cids.parse_cid(record.root), parents, record.time, record.message)
        text = cids.cid_to_str(store_commit(home.blocks, commit))
        made[(record.root, record.time)] = latest[record.root] = text
    return made


def _give_heads(home: StoreHome, records: list[RootRecord], commits: dict[tuple[str, str], str]) -> None:
    """Each mountpoint's newest line becomes its head, unless it has one."""
    newest: dict[str, RootRecord] = {}
    for record in records:
        if record.source == "mount" and record.where:
            newest[record.where] = record
    for where, record in newest.items():
        files = home.mount_files(Path(where))
        if home.read_head(files) is None:
            commit = commits.get((record.root, record.time), record.commit)
            home.write_head(files, MountHead(record.root, commit, None, where))


def _filled(record: RootRecord, commits: dict[tuple[str, str], str]) -> RootRecord:
    if not _legacy(record):
        return record
    commit = commits.get((record.root, record.time))
    return dataclasses.replace(record, commit=commit) if commit else record
