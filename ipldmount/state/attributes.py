"""Mode, owner and times: what POSIX wants and the format does not keep (a CID depends only on
names and bytes). A mount holds them in memory; each sync saves the ones that changed in the
store's attribute table, keyed by path and content CID, so a remount of any root finds them for
every file whose path and bytes are the same: ``rsync -a`` into a remounted tree sees unchanged
files as unchanged. Directories are keyed by path alone.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sqlite3
import stat
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ipldmount.format.entrytable import EntryTable
from ipldmount.tree import Broken, Directory, File, Node, Tree

log = logging.getLogger(__name__)

DIRECTORY_KEY = b""  # the content key of every directory: kept by path only


@dataclass(slots=True)
class Meta:
    """One node's attributes."""

    mode: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int


DIRECTORY_ROWS = 4096  # a directory whose subtree has more rows is asked entry by entry
CACHED_DIRECTORIES = 16  # directories whose rows are kept (the ones listed last)
PRUNE_PAGE = 1000  # rows looked at (and removed) per query when garbage collection prunes
_Rows = dict[tuple[str, bytes], tuple[int, int, int, int]]  # (name, cid) -> mode, uid, gid, mtime_ns


class AttributeTable:
    """``path, content CID -> mode, uid, gid, mtime`` for a whole store (SQLite: one file, safe
    for several mounts at once). A table that cannot be read or written costs the attributes,
    never the data: it is logged and the mount goes on with defaults."""

    def __init__(self, path: Path, open_private: Callable[[Path, int], int]) -> None:
        self.path = path
        self._open_private = open_private
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._empty: bool | None = None
        self._directories: OrderedDict[str, _Rows | None] = OrderedDict()  # recently asked, LRU

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            os.close(self._open_private(self.path, os.O_RDWR | os.O_CREAT))  # the store's file mode
            db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS attributes (path TEXT NOT NULL, cid BLOB NOT NULL, mode INTEGER,"
                " uid INTEGER, gid INTEGER, mtime_ns INTEGER, PRIMARY KEY (path, cid)) WITHOUT ROWID"
            )
            self._db = db
        return self._db

    def holds_rows(self) -> bool:
        """Whether the table holds any row: most stores never keep any, and then nothing is
        asked (nor a path made) per file."""
        with self._lock:
            try:
                if self._empty is None:
                    self._empty = (
                        self._connect().execute("SELECT 1 FROM attributes LIMIT 1").fetchone() is None
                    )
            except sqlite3.Error as exc:
                log.error("attribute table %s cannot be read: %s", self.path, exc)
                return False
            return not self._empty

    def lookup(self, path: str, cid: bytes) -> Meta | None:
        if not self.holds_rows():
            return None
        with self._lock:
            try:
                db = self._connect()
                directory, _, name = path.rpartition("/")
                rows = self._directory_rows(db, directory)
                if rows is not None:
                    row = rows.get((name, cid))
                else:
                    row = db.execute(
                        "SELECT mode, uid, gid, mtime_ns FROM attributes WHERE path = ? AND cid = ?",
                        (path, cid),
                    ).fetchone()
            except sqlite3.Error as exc:
                log.error("attribute table %s cannot be read: %s", self.path, exc)
                return None
        if row is None:
            return None
        mode, uid, gid, mtime_ns = row
        return Meta(mode, uid, gid, mtime_ns, mtime_ns, mtime_ns)

    def _directory_rows(self, db: sqlite3.Connection, directory: str) -> _Rows | None:
        """The rows of *directory*'s entries, read in one query when first asked (a listing asks
        for every entry); None when its subtree holds too many to keep: then one query each."""
        if directory in self._directories:
            self._directories.move_to_end(directory)
            return self._directories[directory]
        prefix = directory + "/" if directory else ""
        end = directory + "0" if directory else "\U0010ffff"  # "0" follows "/": the subtree's paths
        found = db.execute(
            "SELECT path, cid, mode, uid, gid, mtime_ns FROM attributes WHERE path >= ? AND path < ? LIMIT ?",
            (prefix, end, DIRECTORY_ROWS + 1),
        ).fetchall()
        rows: _Rows | None = None
        if len(found) <= DIRECTORY_ROWS:
            rows = {}
            for path, cid, *values in found:
                name = path[len(prefix) :]
                if "/" not in name:
                    rows[(name, cid)] = tuple(values)
        self._directories[directory] = rows
        if len(self._directories) > CACHED_DIRECTORIES:
            self._directories.popitem(last=False)
        return rows

    def save(self, rows: Iterable[tuple[str, bytes, Meta]]) -> None:
        values = [(path, cid, m.mode, m.uid, m.gid, m.mtime_ns) for path, cid, m in rows]
        if not values:
            return
        with self._lock:
            try:
                db = self._connect()
                with db:
                    db.execute("BEGIN")
                    db.executemany("INSERT OR REPLACE INTO attributes VALUES (?, ?, ?, ?, ?, ?)", values)
                self._empty = False
                self._directories.clear()
            except sqlite3.Error as exc:
                log.error("attribute table %s cannot be written (%d lost): %s", self.path, len(values), exc)

    def prune(self, keeps: Callable[[bytes], bool], dry_run: bool = False) -> int:
        """Remove the rows of file contents *keeps* says are gone (garbage collection removed
        them, or will), a page at a time; how many (would) go. Directory rows are kept: they
        are keyed by path alone. A table that cannot be read or written is logged and left."""
        if not self.path.exists():
            return 0  # a store that never kept attributes: no table to make
        removed, after = 0, ("", b"")
        with self._lock:
            try:
                db = self._connect()
                while page := db.execute(
                    "SELECT path, cid FROM attributes WHERE (path, cid) > (?, ?) ORDER BY path, cid LIMIT ?",
                    (*after, PRUNE_PAGE),
                ).fetchall():
                    after = page[-1]
                    gone = [(path, cid) for path, cid in page if cid != DIRECTORY_KEY and not keeps(cid)]
                    removed += len(gone)
                    if gone and not dry_run:
                        with db:
                            db.execute("BEGIN")
                            db.executemany("DELETE FROM attributes WHERE path = ? AND cid = ?", gone)
                self._directories.clear()
            except sqlite3.Error as exc:
                log.error("attribute table %s cannot be pruned: %s", self.path, exc)
        return removed

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class Attributes:
    """A mount's attributes: loaded from the table on first use, saved at sync when changed.

    Each node holds its own in ``node.meta``; the many that were never changed and are not in
    the table share one default per kind (do not modify what :meth:`get` returns: take
    :meth:`editable`)."""

    def __init__(self, table: AttributeTable, tree: Tree) -> None:
        self.table = table
        self.tree = tree
        self._changed: weakref.WeakSet[Node] = weakref.WeakSet()
        self._started_ns = time.time_ns()
        self._defaults: dict[int, Meta] = {}

    def get(self, node: Node) -> Meta:
        meta = node.meta
        if meta is None:
            meta = node.meta = self._load(node) or self._default(node)
        assert isinstance(meta, Meta)
        return meta

    def editable(self, node: Node) -> Meta:
        """*node*'s own attributes, to change in place: saved at the next sync."""
        meta = self.get(node)
        if any(meta is default for default in self._defaults.values()):
            meta = node.meta = dataclasses.replace(meta)
        self._changed.add(node)
        return meta

    def is_default(self, node: Node) -> bool:
        """Whether *node* has the attributes every untouched node of its kind shares (none of its
        own, none to save)."""
        meta = node.meta
        shared = meta is None or any(meta is default for default in self._defaults.values())
        return shared and node not in self._changed

    def set(self, node: Node, meta: Meta) -> None:
        """A new node's attributes (create, mkdir)."""
        node.meta = meta
        self._changed.add(node)

    def changed(self, node: Node) -> None:
        """Its path changed: save its attributes under the new one at the next sync."""
        self.editable(node)

    def save(self) -> None:
        """After a commit: every changed node still in the tree, under its path and content CID."""
        rows = []
        for node in list(self._changed):
            meta, path = node.meta, self.tree.path_of(node)
            if isinstance(meta, Meta) and path is not None and not isinstance(node, Broken):
                rows.append((path, _content_key(node), meta))
        self.table.save(rows)
        self._changed = weakref.WeakSet()

    def _load(self, node: Node) -> Meta | None:
        if isinstance(node, Broken) or not self.table.holds_rows():
            return None
        path = self.tree.path_of(node)
        return None if path is None else self.table.lookup(path, _content_key(node))

    def of_row(self, directory: Directory, table: EntryTable, position: int) -> Meta:
        """The attributes of an entry that is still a packed row (no node): the table's, or the
        default of a file (do not modify it)."""
        if self.table.holds_rows():
            path = self.tree.path_of(directory)
            if path is not None:
                name = table.name(position)
                meta = self.table.lookup(f"{path}/{name}" if path else name, table.cid(position))
                if meta is not None:
                    return meta
        return self._default_of(directory=False)

    def _default(self, node: Node) -> Meta:
        return self._default_of(isinstance(node, Directory) or (isinstance(node, Broken) and node.directory))

    def _default_of(self, directory: bool) -> Meta:
        kind, perm = (stat.S_IFDIR, 0o755) if directory else (stat.S_IFREG, 0o644)
        meta = self._defaults.get(kind)
        if meta is None:
            now = self._started_ns
            meta = self._defaults[kind] = Meta(kind | perm, os.getuid(), os.getgid(), now, now, now)
        return meta


def _content_key(node: Node) -> bytes:
    return node.content.content_cid() if isinstance(node, File) else DIRECTORY_KEY
