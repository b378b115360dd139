"""Mode, owner and times: what POSIX wants and the format does not keep (a CID depends only on
names and bytes). A mount holds them in memory; each sync saves the ones that changed in the
store's attribute table, keyed by path and content CID, so a remount of any root finds them for
every file whose path and bytes are the same: ``rsync -a`` into a remounted tree sees unchanged
files as unchanged. Directories are keyed by path alone. A rename copies the rows of what it
moves to the new paths when it is made (:meth:`AttributeTable.copy`), so they follow it.

Attributes never widen: a mode that cannot be read (the table is unreadable, or was found
corrupt and moved aside, which loses its rows) shows as private, 0600 for a file and 0700 for a
directory, never as the 0644/0755 a store that kept nothing shows.
"""

from __future__ import annotations

import contextlib
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
from ipldmount.tree.model import Broken, Directory, File, Node, Tree

log = logging.getLogger(__name__)

DIRECTORY_KEY = b""  # the content key of every directory: kept by path only


@dataclass(slots=True)
class Meta:
    """One node's attributes; *kept*: read from the table (rows of it exist under its path)."""

    mode: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    kept: bool = dataclasses.field(default=False, compare=False)


DIRECTORY_ROWS = 4096  # a directory whose subtree has more rows is asked entry by entry
CACHED_DIRECTORIES = 16  # directories whose rows are kept (the ones listed last)
PRUNE_PAGE = 1000  # rows looked at (and removed) per query when garbage collection prunes
RETRY_AFTER = 10.0  # seconds an unreadable table is not asked again (one error, not one per file)
SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database
PUBLIC_MODES = {stat.S_IFREG: 0o644, stat.S_IFDIR: 0o755}  # what a store that kept nothing shows
PRIVATE_MODES = {stat.S_IFREG: 0o600, stat.S_IFDIR: 0o700}  # what a mode that cannot be read shows
_Rows = dict[tuple[str, bytes], tuple[int, int, int, int]]  # (name, cid) -> mode, uid, gid, mtime_ns


class CorruptTableError(sqlite3.DatabaseError):
    """The table's file is not a SQLite database (its header was overwritten)."""


def _is_corrupt(exc: sqlite3.Error) -> bool:
    """Whether *exc* says the file itself is damaged (not busy, not unwritable): only then is it
    moved aside."""
    code = getattr(exc, "sqlite_errorcode", None)
    corrupt = code is not None and code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
    return corrupt or isinstance(exc, CorruptTableError)


class AttributeTable:
    """``path, content CID -> mode, uid, gid, mtime`` for a whole store (SQLite: one file, safe
    for several mounts at once). A table that cannot be read or written costs the attributes,
    never the data: the mount goes on, modes it cannot read show private (:meth:`trusted`), and
    :attr:`problem` says why for the command line. A corrupt one is moved aside, never replaced
    in place, and the new one remembers that rows were lost (:meth:`recover`)."""

    def __init__(self, path: Path, open_private: Callable[[Path, int], int]) -> None:
        self.path = path
        self._open_private = open_private
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._inode: tuple[int, int] | None = None  # (device, inode) of the file _db opened
        self._empty: bool | None = None
        self._lost: bool | None = None  # rows were lost: a table made after a corrupt one
        self._failed_at = -RETRY_AFTER  # time.monotonic() of the last failure
        self._damaged = False  # SQLite found it corrupt: nothing it says (or not) can be trusted
        self._directories: OrderedDict[str, _Rows | None] = OrderedDict()  # recently asked, LRU
        self.problem: str | None = None  # why the table cannot be read or written now
        self.recovered: str | None = None  # what this process did with a corrupt table

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            os.close(self._open_private(self.path, os.O_RDWR | os.O_CREAT))  # the store's file mode
            _check_header(self.path)
            info = os.stat(self.path)
            db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS attributes (path TEXT NOT NULL, cid BLOB NOT NULL,"
                    " mode INTEGER, uid INTEGER, gid INTEGER, mtime_ns INTEGER, PRIMARY KEY (path, cid))"
                    " WITHOUT ROWID"
                )
                self._lost = _has_table(db, "lost")
            except BaseException:
                db.close()
                raise
            self._db, self._inode = db, (info.st_dev, info.st_ino)
        return self._db

    def trusted(self) -> bool:
        """Whether a node without a row has the public defaults: False while the table cannot
        be read, and for good once rows were lost (any node may have had a private mode)."""
        self.holds_rows()  # connects, or finds out why it cannot
        return self.problem is None and not self._damaged and self._lost is False

    def warning(self) -> str | None:
        """What the command line should say about the table, one line (None: nothing)."""
        return self.problem or self.recovered

    def holds_rows(self) -> bool:
        """Whether the table holds any row: most stores never keep any, and then nothing is
        asked (nor a path made) per file."""
        with self._lock:
            if self._empty is None:
                if time.monotonic() - self._failed_at < RETRY_AFTER:
                    return False
                try:
                    found = self._connect().execute("SELECT 1 FROM attributes LIMIT 1").fetchone()
                except (OSError, sqlite3.Error) as exc:
                    self._failed("read", exc)
                    return False
                self._empty, self.problem = found is None, None
            return not self._empty

    def _failed(self, what: str, exc: BaseException) -> None:
        """Note why the table cannot be used (logged once per new reason)."""
        problem = f"the attribute table {self.path} cannot be {what} ({exc})"
        if problem != self.problem:
            log.error("%s", problem)
        self.problem, self._failed_at = problem, time.monotonic()
        self._damaged = self._damaged or (isinstance(exc, sqlite3.Error) and _is_corrupt(exc))

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
            except (OSError, sqlite3.Error) as exc:
                self._failed("read", exc)
                return None
            if not self._damaged:
                self.problem = None
        if row is None:
            return None
        mode, uid, gid, mtime_ns = row
        return Meta(mode, uid, gid, mtime_ns, mtime_ns, mtime_ns, kept=True)

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

    def save(self, rows: Iterable[tuple[str, bytes, Meta]]) -> bool:
        """Write *rows*; False (logged, :attr:`problem` set) if they could not be. A table found
        corrupt is moved aside and they go to a new one (:meth:`recover`)."""
        values = [(path, cid, m.mode, m.uid, m.gid, m.mtime_ns) for path, cid, m in rows]
        if not values:
            return True
        with self._lock:
            try:
                try:
                    self._write(values)
                except sqlite3.Error as exc:
                    if not _is_corrupt(exc):
                        raise
                    log.warning("%s", self._move_aside(exc))
                    self._write(values)
            except (OSError, sqlite3.Error) as exc:
                self._failed(f"written ({len(values)} rows not saved)", exc)
                return False
        return True

    def _write(self, values: list[tuple[str, bytes, int, int, int, int]]) -> None:
        db = self._current()
        with db:
            db.execute("BEGIN")
            db.executemany("INSERT OR REPLACE INTO attributes VALUES (?, ?, ?, ?, ?, ?)", values)
        self._empty, self.problem = False, None
        self._directories.clear()

    def _current(self) -> sqlite3.Connection:
        """The connection, to the file now at the path, whose header is still SQLite's: an open
        connection would notice neither (it writes on, into a file nobody reads any more)."""
        if self._db is not None:
            try:
                info = os.stat(self.path)
                moved = (info.st_dev, info.st_ino) != self._inode
            except FileNotFoundError:
                moved = True
            if moved:
                self._close()
            else:
                _check_header(self.path)
        return self._connect()  # checks the header of what it opens

    def copy(self, old: str, new: str) -> bool:
        """After a rename of *old* to *new*: its rows, and those of everything under it, also
        under *new*, in one transaction (one range of the primary key: the cost is the rows
        under *old*, not the tree's size). Copied, not moved: the old root, another mount, or a
        discarded journal still read them at *old*. False if the table could not be written."""
        if not self.holds_rows():
            return self.problem is None  # empty: nothing to copy (or unreadable: not done)
        with self._lock:
            try:
                db = self._connect()
                with db:
                    db.execute("BEGIN")
                    db.execute(
                        "INSERT OR REPLACE INTO attributes SELECT ? || substr(path, ?), cid, mode, uid,"
                        " gid, mtime_ns FROM attributes WHERE path = ? OR (path >= ? AND path < ?)",
                        (new, len(old) + 1, old, old + "/", old + "0"),
                    )
                self._directories.clear()
            except (OSError, sqlite3.Error) as exc:
                self._failed(f"written (the rows of {old!r} did not follow it to {new!r} yet)", exc)
                return False
        return True

    def recover(self) -> str | None:
        """For the mount command: None if the table is readable (or there is none yet), else
        one line saying what is wrong. A corrupt table is moved aside (``.corrupt-TIME``, with
        its -wal and -shm) and a new one made that remembers rows were lost."""
        if not self.path.exists():
            return None
        with self._lock:
            try:
                try:
                    self._current().execute("SELECT 1 FROM attributes LIMIT 1").fetchone()
                    return None
                except sqlite3.Error as exc:
                    if not _is_corrupt(exc):
                        raise
                    return self._move_aside(exc)
            except (OSError, sqlite3.Error) as exc:
                self._failed("read", exc)
                return (
                    f"{self.problem}: files and directories show 0600 and 0700 where it kept"
                    " something, and changes to modes, owners and times may not be kept"
                )

    def _move_aside(self, reason: sqlite3.Error) -> str:
        """Move the corrupt table aside and start a new one that says rows were lost; what was done."""
        self._close()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{os.getpid()}")
        for suffix in ("", "-wal", "-shm"):  # gone already: another process moved it first
            with contextlib.suppress(FileNotFoundError):
                os.rename(f"{self.path}{suffix}", f"{aside}{suffix}")
        db = self._connect()
        with db:
            db.execute("BEGIN")
            db.execute("CREATE TABLE IF NOT EXISTS lost (time TEXT, moved_to TEXT, reason TEXT)")
            db.execute("INSERT INTO lost VALUES (?, ?, ?)", (stamp, str(aside), str(reason)))
        self._empty, self._lost, self.problem, self._damaged = True, True, None, False
        self._directories.clear()
        self.recovered = (
            f"the attribute table {self.path} was corrupt ({reason}): moved aside to {aside}; the"
            " modes, owners and times it kept are lost: files show 0600 and directories 0700 until"
            " changed"
        )
        return self.recovered

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
            except (OSError, sqlite3.Error) as exc:
                log.error("attribute table %s cannot be pruned: %s", self.path, exc)
        return removed

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db, self._inode, self._empty = None, None, None

    def close(self) -> None:
        with self._lock:
            self._close()


def _check_header(path: Path) -> None:
    """Raise CorruptTableError unless *path* is empty (a new table) or starts as SQLite's do."""
    with open(path, "rb") as stream:
        head = stream.read(len(SQLITE_MAGIC))
    if head and head != SQLITE_MAGIC:
        raise CorruptTableError("file is not a database")


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    found = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
    return found.fetchone() is not None


class Attributes:
    """A mount's attributes: loaded from the table on first use, saved at sync when changed.

    Each node holds its own in ``node.meta``; the many that were never changed and are not in
    the table share one default per kind (do not modify what :meth:`get` returns: take
    :meth:`editable`)."""

    def __init__(self, table: AttributeTable, tree: Tree) -> None:
        self.table = table
        self.tree = tree
        self._changed: weakref.WeakSet[Node] = weakref.WeakSet()
        self._changing = threading.Lock()  # chmod in the event loop, save in a sync's thread
        self._copies: list[tuple[str, str]] = []  # (old, new) of renames whose rows are not copied
        self._started_ns = time.time_ns()
        self._defaults: dict[tuple[int, bool], Meta] = {}  # (kind, private) -> the shared default

    def get(self, node: Node) -> Meta:
        meta = node.meta
        if meta is None:
            meta = node.meta = self._load(node) or self._default(node)
        assert isinstance(meta, Meta)
        return meta

    def editable(self, node: Node) -> Meta:
        """*node*'s own attributes, to change in place: saved at the next sync."""
        meta = self.get(node)
        if self._shared(meta):
            meta = node.meta = dataclasses.replace(meta)
        with self._changing:
            self._changed.add(node)
        return meta

    def _shared(self, meta: object) -> bool:
        return any(meta is default for default in self._defaults.values())

    def is_default(self, node: Node) -> bool:
        """Whether *node* has the attributes every untouched node of its kind shares (none of its
        own, none to save)."""
        meta = node.meta
        return (meta is None or self._shared(meta)) and node not in self._changed

    def set(self, node: Node, meta: Meta) -> None:
        """A new node's attributes (create, mkdir)."""
        node.meta = meta
        with self._changing:
            self._changed.add(node)

    def changed(self, node: Node) -> None:
        """Its path changed: save its attributes under the new one at the next sync."""
        self.editable(node)

    def rows_follow(self, node: Node) -> bool:
        """Whether renaming *node* must copy rows of the table to its new path (:meth:`copy_rows`):
        for a directory, whose entries never loaded have their rows only under its old path; for
        a file read from the table, whose node keeps its attributes but whose rows a journal
        replayed after a crash would look for under the new path. Never when the table is empty."""
        meta = node.meta
        follow = isinstance(node, Directory) or (isinstance(meta, Meta) and meta.kept)
        return follow and (self.table.holds_rows() or self.table.problem is not None)

    def copy_rows(self, old: str, new: str) -> None:
        """The rows of path *old* and of everything under it, also under *new* (a rename); if
        the table cannot take them now, at the next sync, before that sync's rows."""
        with self._changing:
            self._copies.append((old, new))
        self._copy_pending()

    def _copy_pending(self) -> bool:
        """Make the copies not made yet, in the order of the renames; False if some remain."""
        with self._changing:
            copies, self._copies = self._copies, []
        for index, (old, new) in enumerate(copies):
            if not self.table.copy(old, new):
                with self._changing:
                    self._copies[:0] = copies[index:]
                return False
        return True

    def save(self) -> None:
        """After a commit: every changed node still in the tree, under each of its paths (hard
        links) and its content CID. Rows that could not be written stay to save at the next sync."""
        self._copy_pending()  # rows a rename could not copy go first: this sync's own replace them
        with self._changing:
            changed, self._changed = self._changed, weakref.WeakSet()
        rows = []
        for node in list(changed):
            meta = node.meta
            if isinstance(meta, Meta) and not isinstance(node, Broken):
                rows += [(path, _content_key(node), meta) for path in self._paths(node)]
        if not self.table.save(rows):
            with self._changing:
                self._changed |= changed

    def _paths(self, node: Node) -> list[str]:
        """Every path that names *node* now (one per hard link; none once removed)."""
        if node is self.tree.root:
            return [""]
        paths = []
        for directory, name in node.links:
            parent = self.tree.path_of(directory)
            if parent is not None:
                paths.append(f"{parent}/{name}" if parent else name)
        return paths

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
        """The shared default: public where the table can say a node kept nothing, private
        where it cannot (the node may have had a private mode)."""
        kind = stat.S_IFDIR if directory else stat.S_IFREG
        private = not self.table.trusted()
        meta = self._defaults.get((kind, private))
        if meta is None:
            perm = (PRIVATE_MODES if private else PUBLIC_MODES)[kind]
            now = self._started_ns
            meta = self._defaults[(kind, private)] = Meta(
                kind | perm, os.getuid(), os.getgid(), now, now, now
            )
        return meta


def _content_key(node: Node) -> bytes:
    return node.content.content_cid() if isinstance(node, File) else DIRECTORY_KEY
