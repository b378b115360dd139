"""A writer's place in history, and moving it on: commit, compare-and-swap, merge.

A mount (or an in-process store) stands on a :class:`Place`: the commit its tree started from,
and the branch its syncs move, if any. Committing a new tree makes a commit on that place and
moves the branch from the head the writer last saw. When another writer moved the branch
first, the two changes are merged (:mod:`ipldmount.format.merge`): applied to the writer's
own tree, so what it shows is what it commits. Paths both changed differently are refused
(:class:`MergeConflictError`), and nothing of either side is lost: the branch keeps the other
writer's head and the caller keeps its unsynced changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from ipldmount.errors import IpldmountError
from ipldmount.format.commit import merge_base
from ipldmount.format.merge import MergePlan, Take, merge_roots
from ipldmount.ipld import cid as cids
from ipldmount.repo.branches import BranchMovedError
from ipldmount.repo.registry import RootRecord
from ipldmount.repo.repository import Repository

log = logging.getLogger(__name__)

MAX_RACES = 16  # merges in a row before giving up: another writer moving the branch faster than we merge
MAX_LISTED = 20  # conflicting paths a message lists


@dataclass(frozen=True)
class Place:
    """Where a writer stands: *commit* (None: not committed yet) whose tree is *tree*, on *branch*."""

    commit: bytes | None = None
    tree: bytes | None = None
    branch: str | None = None


@dataclass
class Advanced:
    """What committing did: the place now, the tree shown, and the history lines to record."""

    place: Place
    tree: bytes
    made: bool  # a new commit was made (False: nothing to commit, or the branch head taken as it is)
    merged: bool = False  # the branch had moved: its changes were merged into the writer's tree
    records: list[RootRecord] = field(
        default_factory=list
    )  # detached commits (branch moves record themselves)


class MergeConflictError(IpldmountError):
    """Two writers changed the same paths differently: nothing was committed or lost."""

    def __init__(self, branch: str, head: bytes, paths: list[str], where: str) -> None:
        self.branch, self.head, self.paths = branch, head, paths
        shown = ", ".join(paths[:MAX_LISTED]) + (
            f" and {len(paths) - MAX_LISTED} more" if len(paths) > MAX_LISTED else ""
        )
        super().__init__(
            f"branch {branch} moved to {cids.cid_to_str(head)} with changes to the same paths: {shown}. "
            f"Nothing was committed and every unsynced change is kept: sync onto a new branch "
            f"(`ipldmount sync {where} --branch NAME`), or drop them (`ipldmount discard {where}`)"
        )


Apply = Callable[[list[Take]], bytes]  # apply a plan's actions to the writer's tree, commit it: the new root


class Advance:
    """Commits of one writer (a mountpoint, a store's folder) in *repository*."""

    def __init__(self, repository: Repository, source: str, where: str) -> None:
        self.repository = repository
        self.source, self.where = source, where
        self._durable: Callable[[], None] = repository.local.sync

    def commit(
        self,
        place: Place,
        root: bytes,
        message: str | None,
        apply: Apply,
        *,
        onto: str | None = None,
        make_durable: Callable[[], None] | None = None,
    ) -> Advanced:
        """Commit *root* on *place* (a commit even of an unchanged tree when *place* has none), then
        move its branch, or *onto* (a new branch, made here). Merges when the branch moved.
        *make_durable* (default: sync the store) runs once a commit is stored, before any name
        points at it: the tree's blocks and the commit's at once. Without a commit it does not
        run: the caller makes its own blocks durable."""
        self._durable = make_durable or self.repository.local.sync
        try:
            return self._commit(place, root, message, apply, onto)
        finally:  # held no longer: a writer's bound method kept here would keep the writer alive
            self._durable = self.repository.local.sync

    def _commit(
        self, place: Place, root: bytes, message: str | None, apply: Apply, onto: str | None
    ) -> Advanced:
        if onto is not None and onto in self.repository.branches():
            raise IpldmountError(f"branch {onto} exists: sync onto a new branch name (nothing was committed)")
        branch, expected = (onto, None) if onto is not None else (place.branch, place.commit)
        commit, made = place.commit, False
        if commit is None or root != place.tree or onto is not None:
            parents = [] if place.commit is None else [place.commit]
            commit, made = self.repository.make_commit(root, parents, message), True
            self._durable()
        if branch is None:
            assert commit is not None
            records = [self._record(root, commit, message, place.tree)] if made else []
            return Advanced(Place(commit, root, None), root, made, records=records)
        ours = Place(commit, root, branch)
        return self._onto_branch(branch, expected, ours, made, message, apply, creating=onto is not None)

    def _onto_branch(
        self,
        branch: str,
        expected: bytes | None,
        ours: Place,
        made: bool,
        message: str | None,
        apply: Apply,
        *,
        creating: bool,
    ) -> Advanced:
        merged = False
        for _ in range(MAX_RACES):
            if ours.commit == expected:  # nothing of ours to move on: follow the branch if it moved
                head = self.repository.branches().get(branch)
                if head is None or head == expected:
                    return Advanced(ours, _tree(ours), made, merged)
                ours, made = self._merge(branch, expected, ours, made, head, apply)
                expected, merged = head, True
                continue
            try:
                assert ours.commit is not None
                self.repository.move_branch(
                    branch, expected, ours.commit, why=self.source, where=self.where, message=message
                )
                return Advanced(ours, _tree(ours), made, merged)
            except BranchMovedError as moved:
                if creating and moved.head is not None:  # made meanwhile by another writer
                    raise IpldmountError(
                        f"branch {branch} was made meanwhile by another writer: nothing was committed; "
                        f"sync onto another name, or mount {branch}"
                    ) from None
                if moved.head is None:
                    raise IpldmountError(
                        f"branch {branch} was deleted meanwhile: nothing was committed; sync onto a "
                        f"branch (`ipldmount sync {self.where} --branch NAME`)"
                    ) from None
                ours, made = self._merge(branch, expected, ours, made, moved.head, apply)
                expected, merged, message = moved.head, True, None
        raise IpldmountError(f"branch {branch} kept moving while this sync merged: try again")

    def _merge(
        self, branch: str, expected: bytes | None, ours: Place, made: bool, head: bytes, apply: Apply
    ) -> tuple[Place, bool]:
        """Bring *head*'s changes into our tree: (our place now, whether we made a commit)."""
        theirs = self.repository.commit(head)
        if not made or theirs.tree == ours.tree:  # nothing of ours to keep apart: take theirs as it is
            plan = (
                self._plan(expected, _tree(ours), theirs.tree, branch, head)
                if theirs.tree != ours.tree
                else None
            )
            root = apply(plan.actions) if plan is not None else _tree(ours)
            return Place(head, root, branch), False
        assert ours.commit is not None
        plan = self._plan(
            merge_base(self.repository.blocks, ours.commit, head), _tree(ours), theirs.tree, branch, head
        )
        root = apply(plan.actions)
        merge = self.repository.make_commit(root, [ours.commit, head], f"merge {branch} into {self.where}")
        self._durable()
        log.info("merged %s (%s) into %s", branch, cids.cid_to_str(head), self.where)
        return Place(merge, root, branch), True

    def _plan(self, base: bytes | None, ours: bytes, theirs: bytes, branch: str, head: bytes) -> MergePlan:
        base_tree = self.repository.commit(base).tree if base is not None else None
        plan = merge_roots(self.repository.blocks, base_tree, ours, theirs)
        if plan.conflicts:
            raise MergeConflictError(branch, head, plan.conflicts, self.where)
        return plan

    def _record(self, root: bytes, commit: bytes, message: str | None, parent: bytes | None) -> RootRecord:
        return RootRecord.made(root, self.source, self.where, parent, message, commit=commit)


def _tree(place: Place) -> bytes:
    assert place.tree is not None
    return place.tree
