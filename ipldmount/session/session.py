"""A mount session: the tree a daemon serves, its journal, and sync.

Knows nothing of FUSE or trio: the FUSE adapter calls these methods from the
event loop (and :meth:`Session.content_of_buffer` from worker threads), the control
server calls :meth:`Session.sync`. Every change to the tree goes through here,
so every change is journaled before the request that made it is answered.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ipldmount.blocks import Blockstore
from ipldmount.blocks.car import write_car_file
from ipldmount.errors import CarWriteError, IpldmountError
from ipldmount.format.files import FileContent, InlineFile, PendingFile, StoredFile
from ipldmount.ipld import cid as cids
from ipldmount.repo.attributes import Attributes
from ipldmount.repo.home import StoreHome
from ipldmount.repo.journal import Journal, Pending, decode_data, encode_data
from ipldmount.repo.registry import RootRecord
from ipldmount.repo.repository import Repository
from ipldmount.session.openfiles import OpenFiles
from ipldmount.session.writebuffer import WriteBuffer, buffer_content
from ipldmount.tree.model import EMPTY_DIRECTORY, EMPTY_ROOT, Directory, File, Node
from ipldmount.tree.unixfs import open_tree

log = logging.getLogger(__name__)


MAX_FAILED_CLOSES = 1000  # paths status lists


class _Unread:
    """Not read from the history yet."""


class PendingChangesError(IpldmountError):
    """The mountpoint has unsynced changes on another root."""


@dataclass(frozen=True)
class SyncResult:
    """A sync's outcome: the root, and the CAR written (None when nothing changed and none was asked for)."""

    root: str
    car: Path | None
    car_bytes: int
    changed: bool
    full_car: bool


class Session:
    """The tree served at *mountpoint*, from blocks in *store*; its journal and roots in *home*."""

    def __init__(
        self,
        store: Blockstore,
        home: StoreHome,
        mountpoint: Path,
        root: bytes | None,
        *,
        read_only: bool = False,
        whole_files: bool = False,
        car_dir: Path | None = None,
    ) -> None:
        self.store = store
        self.home = home
        self.mountpoint = mountpoint
        self.read_only = read_only
        self.car_dir = car_dir or home.cars_dir
        self.files = home.mount_files(mountpoint)  # now: once mounted, resolving the path would hang
        self.journal = Journal(self.files.journal)
        # An empty mount starts from the empty tree's root, stored, so every root shown is fetchable.
        self.base_root = root if root is not None else store.put(EMPTY_DIRECTORY, cids.DAG_CBOR)
        self.tree = open_tree(store, self.base_root, whole_files=whole_files, read_only=read_only)
        self.open_files = OpenFiles(store, self.tree.chunk_size, home.tmp_dir)
        self.attributes = Attributes(home.attribute_table, self.tree)
        self.recovered = 0
        self.failed_closes: list[str] = []  # paths whose last close could not store their writes
        self._failed_said = 0  # how many of them a sync has said
        self._recorded: bytes | _Unread | None = _Unread()  # the root the history last has for here
        if not read_only:
            self._recover_or_start(self.base_root)
        home.write_root(self.files, cids.cid_to_str(self.base_root))  # for garbage collection

    # --- journal recovery ------------------------------------------------------

    def _recover_or_start(self, root: bytes) -> None:
        pending = self.journal.read()
        if pending is None or not pending.records:
            self.journal.start(root)
            return
        if (pending.root or EMPTY_ROOT) != root:  # a journal of an older version says None for empty
            raise PendingChangesError(
                f"{self.mountpoint} has {len(pending.records)} unsynced changes from an earlier session "
                f"on root {_show(pending.root) or 'empty'}; mount ROOT 'resume' (or that root) to recover "
                f"them (they are in {self.journal.path}), or delete that file to discard them"
            )
        self._replay(pending)
        self.journal.start(root, keep=True)
        self.journal.pending = len(pending.records)
        self.recovered = len(pending.records)
        log.warning("recovered %d unsynced changes on %s from the journal", self.recovered, self.mountpoint)

    def _replay(self, pending: Pending) -> None:
        for record in pending.records:
            try:
                self._apply(record)
            except (IpldmountError, KeyError, ValueError) as exc:
                log.error("journal record %s could not be replayed: %s", record, exc)

    def _apply(self, record: dict[str, Any]) -> None:
        tree, op = self.tree, record["op"]
        if op == "write":
            tree.write_file(record["path"], self._content_from_record(record))
        elif op == "mkdir":
            tree.mkdir(*tree.locate(record["path"]))
        elif op == "unlink":
            tree.unlink(*tree.locate(record["path"]))
        elif op == "rmdir":
            tree.rmdir(*tree.locate(record["path"]))
        elif op == "rename":
            tree.rename(*tree.locate(record["src"]), *tree.locate(record["dst"]))
        elif op == "link":
            tree.link(tree.resolve(record["src"]), *tree.locate(record["dst"]))
        else:
            raise ValueError(f"unknown journal op {op!r}")

    def _content_from_record(self, record: dict[str, Any]) -> FileContent:
        if "data" in record:
            return PendingFile(decode_data(record["data"]), self.tree.chunk_size)
        return StoredFile(cids.parse_cid(record["cid"]), int(record["size"]))

    # --- changes ---------------------------------------------------------------

    def _path(self, directory: Directory, name: str) -> str:
        parent = self.tree.path_of(directory)
        if parent is None:
            raise IpldmountError(f"directory of {name!r} was removed")
        return f"{parent}/{name}" if parent else name

    def mkdir(self, directory: Directory, name: str) -> Directory:
        child = self.tree.mkdir(directory, name)
        self.journal.append("mkdir", path=self._path(directory, name))
        return child

    def create(self, directory: Directory, name: str) -> File:
        file = self.tree.create(directory, name, PendingFile(b"", self.tree.chunk_size))
        self.journal.append("write", path=self._path(directory, name), data="")
        return file

    def unlink(self, directory: Directory, name: str) -> Node:
        path = self._path(directory, name)
        node = self.tree.unlink(directory, name)
        self.journal.append("unlink", path=path)
        return node

    def rmdir(self, directory: Directory, name: str) -> None:
        path = self._path(directory, name)
        self.tree.rmdir(directory, name)
        self.journal.append("rmdir", path=path)

    def rename(
        self, source: Directory, name: str, target: Directory, new_name: str, *, replace: bool = True
    ) -> None:
        src, dst = self._path(source, name), self._path(target, new_name)
        self.tree.rename(source, name, target, new_name, replace=replace)
        self.journal.append("rename", src=src, dst=dst)
        self.attributes.changed(self.tree.lookup(target, new_name))  # kept under its new path

    def link(self, node: Node, directory: Directory, name: str) -> None:
        src = self.tree.path_of(node)
        self.tree.link(node, directory, name)
        if src is not None:
            self.journal.append("link", src=src, dst=self._path(directory, name))

    def set_content(self, file: File, content: FileContent) -> None:
        self.tree.set_content(file, content)
        path = self.tree.path_of(file)
        if path is None:
            return  # unlinked while open: nothing in the tree to keep
        if isinstance(content, StoredFile):
            self.journal.append(
                "write", path=path, cid=cids.cid_to_str(content.cid), size=content.size_in(self.store)
            )
        else:
            assert isinstance(content, PendingFile | InlineFile)
            self.journal.append("write", path=path, data=encode_data(content.data))

    def content_of_buffer(self, buffer: WriteBuffer, name: str) -> FileContent:
        """Turn a written file into content: touches only the blockstore, so safe in a worker thread."""
        return buffer_content(buffer, name, self.tree.chunk_size)

    def flush(self) -> None:
        """What ``fsync`` promises: every change so far survives a machine crash."""
        self.store.sync()
        self.journal.flush()

    @property
    def dirty(self) -> bool:
        """Whether there is anything a sync would commit (open files' unsaved writes included)."""
        return self.journal.pending > 0 or self.tree.root.dirty or self.open_files.unsaved() > 0

    def sync_changes_root(self) -> bool:
        """Whether a sync now would give another root (computed without storing anything)."""
        return self.tree.preview_root() != self.base_root

    # --- sync ------------------------------------------------------------------

    def sync(
        self,
        car_path: Path | None = None,
        message: str | None = None,
        *,
        full_car: bool = False,
        started: float | None = None,
        held: list[bytes] | None = None,
    ) -> SyncResult:
        """Commit, start a fresh journal on the new root, then write the CAR.

        Blocks first, then the journal: a crash at any point leaves either the old
        root with its journal or the new root, never a mix. The CAR comes last and
        is derived: by default it holds the blocks new since the previous synced
        root (a CAR of the change, FORMAT.md §8), the whole DAG with *full_car*; a
        sync that changed nothing writes none unless asked (*car_path*, *full_car*).
        If blocks cannot be read, the root is committed all the same and
        IncompleteDagError names them (a later full sync or export writes the CAR
        once they are back); a CAR that cannot be written (a full disk) is CarWriteError,
        the root committed too. *started* (``time.time()``) is when the caller began storing
        what the commit takes in (open files): blocks stored or claimed since may belong to
        later writes, and stay leased from garbage collection. *held*: the contents files
        still open read (maybe unlinked or replaced since): published with the root, so
        garbage collection keeps them while the daemon lives.
        """
        parent, started = self.base_root, started or time.time()
        root = self.tree.commit()
        self.attributes.save()  # changed or not, the files' modes and times outlive the mount
        self.store.sync()  # also the blocks stored at close, which the daemon does not fsync one by one
        changed = root != parent
        if changed or self.journal.pending:
            self.base_root = root
            self.journal.reset(root)
        self.home.write_root(self.files, cids.cid_to_str(root), [cids.cid_to_str(cid) for cid in held or ()])
        made: list[RootRecord] = []
        if changed:  # after the journal: a crash in between loses this line only, never the root
            made = [self._made(root, parent, message, car_path or self._default_car(root, full_car))]
        elif self._moved(root):  # a mount of another root than the one last recorded here
            made = [self._made(root, self._recorded_root(), message, None)]
        # what was stored before the commit is in the root now (recorded here, or before)
        Repository(self.store, home=self.home).record(made, settle_before=started)
        if not (changed or full_car or car_path):
            log.info("synced %s: root %s, unchanged", self.mountpoint, cids.cid_to_str(root))
            return SyncResult(cids.cid_to_str(root), None, 0, changed, full_car)
        car_path = car_path or self._default_car(root, full_car)
        try:
            car_bytes = write_car_file(self.store, root, car_path, since=None if full_car else parent)
        except OSError as exc:
            raise CarWriteError(root, cids.cid_to_str(root), car_path, exc) from exc
        log.info(
            "synced %s: root %s, %s CAR %s (%d bytes)",
            self.mountpoint,
            cids.cid_to_str(root),
            "full" if full_car else "change",
            car_path,
            car_bytes,
        )
        return SyncResult(cids.cid_to_str(root), car_path, car_bytes, changed, full_car)

    def _moved(self, root: bytes) -> bool:
        """Whether *root* is not the root this mountpoint last recorded (a mount of an older root,
        a rollback): then a sync records it, so the history, and gc, know what it shows now."""
        return self._recorded_root() != root

    def _recorded_root(self) -> bytes | None:
        """The root the history last has for this mountpoint (read once, then kept up to date)."""
        if isinstance(self._recorded, _Unread):
            synced = self.home.registry.history(str(self.mountpoint))
            self._recorded = cids.parse_cid(synced[0].root) if synced else None
        return self._recorded

    def _default_car(self, root: bytes, full_car: bool) -> Path:
        return self.car_dir / f"{cids.cid_to_str(root)}{'.full' if full_car else ''}.car"

    def _made(
        self, root: bytes, parent: bytes | None, message: str | None, car_path: Path | None
    ) -> RootRecord:
        """The history's record of *root*, made at this mountpoint (now the root it last has)."""
        self._recorded = root
        return RootRecord.made(root, "mount", str(self.mountpoint), parent, message, car_path)

    def close_failed(self, path: str | None, reason: BaseException) -> None:
        """A file's last close could not store its writes (a full disk): it keeps the content of
        its previous close (empty, for a file just created). Said by status and by each sync."""
        shown = path if path is not None else "(a file unlinked meanwhile)"
        log.error(
            "%s: unsaved writes dropped after a failed close (%s); it keeps its earlier content",
            shown,
            reason,
        )
        if path is not None and path not in self.failed_closes[self._failed_said :]:
            self.failed_closes.append(path)
            if len(self.failed_closes) > MAX_FAILED_CLOSES:  # the oldest go: status stays small
                del self.failed_closes[0]
                self._failed_said = max(self._failed_said - 1, 0)

    def warnings(self) -> list[str]:
        """What a sync or unmount says besides its root: what may have been lost (one line each)."""
        said = []
        attributes = self.attributes.table.warning()
        if attributes is not None:
            said.append(attributes)
        fresh, self._failed_said = self.failed_closes[self._failed_said :], len(self.failed_closes)
        if fresh:  # said once by a sync; status lists them all
            shown = ", ".join(fresh[:3]) + (" ..." if len(fresh) > 3 else "")
            said.append(
                f"{len(fresh)} file(s) lost their last writes to a failed close (a full disk?) "
                f"and keep their earlier content: {shown}"
            )
        return said

    def status(self) -> dict[str, Any]:
        return {
            "mountpoint": str(self.mountpoint),
            "root": cids.cid_to_str(self.base_root),
            "unsynced_changes": self.journal.pending,
            "failed_closes": list(self.failed_closes),
            "store": str(self.home.root),
            "read_only": self.read_only,
            "journal": str(self.journal.path),
            "pid": os.getpid(),
        }

    def close(self, clean: bool) -> None:
        """Close the journal; a clean exit after a sync leaves none behind."""
        if clean and not self.dirty:
            self.journal.remove()
        else:
            self.journal.close()


def _show(root: bytes | None) -> str | None:
    return cids.cid_to_str(root) if root else None
