"""``ipldmount log``: the commits some heads descend from, each with what names it and what it changed.

Read from the store's own records (branches, tags, mountpoints' heads, the history) and the
commit chain in the DAG; nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ipldmount.blocks import Blockstore
from ipldmount.errors import IpldmountError
from ipldmount.format.commit import Commit, ancestry, read_commit
from ipldmount.format.diff import diff_roots
from ipldmount.ipld import cid as cids
from ipldmount.repo.home import StoreHome
from ipldmount.repo.registry import RootRecord


@dataclass(frozen=True)
class LogEntry:
    """One commit as ``ipldmount log`` shows it."""

    commit: str
    tree: str
    parents: list[str]
    time: str
    message: str | None
    changed: int | None  # paths changed from the first parent's tree (None: no parent, or a tree not here)
    names: list[str]  # branches, tags and mountpoints that name it
    tree_stored: bool  # False: gc expired its tree (the commit stays readable)
    source: str | None = None  # how this store got it (mount, import, pull, api), if its history says
    where: str | None = None  # the mountpoint, CAR, node or folder it came from

    def as_json(self) -> dict[str, object]:
        return dict(self.__dict__) | {"root": self.tree}  # "root": the tree, as before commits


def commit_log(
    home: StoreHome, blocks: Blockstore, heads: list[bytes] | None, limit: int | None
) -> list[LogEntry]:
    """The commits *heads* descend from (None: every branch, tag, mountpoint's head and version
    recorded), newest first (children before parents), named by branches, tags and mountpoints."""
    names = _names_of_commits(home)
    history = home.registry.history()  # read once: for the heads and for where each commit came from
    # the first line that names each commit: how the store got it (later ones: branch moves to it)
    made = {record.commit: record for record in history if record.commit}
    entries = []
    for cid, commit in ancestry(
        blocks, list(dict.fromkeys(_all_heads(home, blocks, history) if heads is None else heads)), limit
    ):
        entry = _entry(home, blocks, cid, commit, names.get(cid, []) + names.get(commit.tree, []))
        record = made.get(entry.commit)
        entries.append(replace(entry, source=record.source, where=record.where) if record else entry)
    return entries


def _all_heads(home: StoreHome, blocks: Blockstore, history: list[RootRecord]) -> list[bytes]:
    heads = list(home.branches.all().values())
    heads += [cid for cid in map(cids.parse_cid, home.tags.all().values()) if _is_commit(blocks, cid)]
    for files in home.all_mount_files():
        head = home.read_head(files)
        if head is not None and head.commit:
            heads.append(cids.parse_cid(head.commit))
    heads += [cids.parse_cid(record.commit) for record in history if record.commit]
    return heads


def _is_commit(blocks: Blockstore, cid: bytes) -> bool:
    try:
        return read_commit(blocks, cid) is not None
    except IpldmountError:
        return False


def _names_of_commits(home: StoreHome) -> dict[bytes, list[str]]:
    """Commit (or tree) -> the branches, tags and mountpoints that name it."""
    names: dict[bytes, list[str]] = {}
    for name, head in sorted(home.branches.all().items()):
        names.setdefault(head, []).append(name)
    for name, text in sorted(home.tags.all().items()):
        names.setdefault(cids.parse_cid(text), []).append(f"tag: {name}")
    for files in home.all_mount_files():
        shown = home.read_head(files)
        if shown is not None and shown.commit:
            names.setdefault(cids.parse_cid(shown.commit), []).append(f"mount: {shown.mountpoint}")
    return names


def _entry(home: StoreHome, blocks: Blockstore, cid: bytes, commit: Commit, names: list[str]) -> LogEntry:
    stored = home.blocks.has(commit.tree)
    return LogEntry(
        cids.cid_to_str(cid),
        cids.cid_to_str(commit.tree),
        [cids.cid_to_str(parent) for parent in commit.parents],
        commit.time,
        commit.message,
        _changed(blocks, commit) if stored else None,
        names,
        stored,
    )


def _changed(blocks: Blockstore, commit: Commit) -> int | None:
    """Paths changed from the first parent's tree: a diff, so it costs the change."""
    if not commit.parents:
        return None
    try:
        parent = read_commit(blocks, commit.parents[0])
        if parent is None:
            return None
        return sum(1 for _ in diff_roots(blocks, parent.tree, commit.tree))
    except IpldmountError:
        return None
