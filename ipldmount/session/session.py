"""A mount session: the tree a daemon serves, its journal, its open files, and sync.

Knows nothing of FUSE or trio. A front door (the FUSE adapter, the daemon's control server, a
test) calls its requests: changes by name (mkdir, create, rename, ...), the life of open files
(open, read, write, flush, fsync, release), sync and status. Every change to the tree goes
through here, so every change is journaled before the request that made it is answered; a
file's writes reach the blockstore and the journal when it is closed or fsynced. Requests are
coroutines whose blocking parts run where the session's :class:`~.runner.Runner` puts them (a
worker thread, for a front door with an event loop; in place by default).
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ipldmount.blocks.car import write_car_file
from ipldmount.errors import CarWriteError, IpldmountError, IsDirectoryError, ReadOnlyError
from ipldmount.format.files import FileContent, InlineFile, PendingFile, StoredFile, check_file_size
from ipldmount.format.merge import Take, merge_roots
from ipldmount.ipld import cid as cids
from ipldmount.repo.attributes import Attributes, Meta
from ipldmount.repo.home import MountHead
from ipldmount.repo.journal import Journal, Pending, decode_data, encode_data
from ipldmount.repo.repository import Repository
from ipldmount.session.advance import Advance, MergeConflictError, Place
from ipldmount.session.ahead import MetadataAhead
from ipldmount.session.openfiles import FileHandle, OpenFile, OpenFiles
from ipldmount.session.runner import InPlace, Runner
from ipldmount.session.writebuffer import WriteBuffer, buffer_content
from ipldmount.tree.model import EMPTY_DIRECTORY, EMPTY_ROOT, Broken, Directory, File, Node, NodeState
from ipldmount.tree.unixfs import open_tree

log = logging.getLogger(__name__)


MAX_FAILED_CLOSES = 1000  # paths status lists
SMALL_STORE = 64 << 10  # a file this small is stored (hashed, written) in place on close: no thread hop
SMALL_READ = 64 << 10  # a raw block this small is read in place: a thread hop costs more


class PendingChangesError(IpldmountError):
    """The mountpoint has unsynced changes on another root."""


@dataclass(frozen=True)
class SyncResult:
    """A sync's outcome: the tree, the CAR written (None when nothing was committed and none
    was asked for), and the commit the mount stands on now."""

    root: str
    car: Path | None
    car_bytes: int
    changed: bool  # the tree is not the one the previous commit (or the mount) had
    full_car: bool
    commit: str | None = None
    branch: str | None = None
    committed: bool = False  # a new commit was made
    merged: bool = False  # another writer's changes to the branch were merged in


class Session:
    """The tree served at *mountpoint* from *repository*: read through its blocks (a lazy mount's
    fetch), its journal and roots kept in its home."""

    def __init__(
        self,
        repository: Repository,
        mountpoint: Path,
        root: bytes | None,
        *,
        read_only: bool = False,
        whole_files: bool = False,
        car_dir: Path | None = None,
        commit: bytes | None = None,
        branch: str | None = None,
    ) -> None:
        self.repository = repository
        self.store = store = repository.blocks
        self.home = home = repository.home
        self.mountpoint = mountpoint
        self.read_only = read_only
        self.car_dir = car_dir or home.cars_dir
        self.files = home.mount_files(mountpoint)  # now: once mounted, resolving the path would hang
        self.journal = Journal(self.files.journal)
        # An empty mount starts from the empty tree's root, stored, so every root shown is fetchable.
        self.base_root = root if root is not None else store.put(EMPTY_DIRECTORY, cids.DAG_CBOR)
        self.tree = open_tree(store, self.base_root, whole_files=whole_files, read_only=read_only)
        self.open_files = OpenFiles(store, self.tree.chunk_size, home.tmp_dir)
        self._runner: Runner = InPlace()
        self.lock = self._runner.lock()  # tree changes and sync take turns
        self.attributes = Attributes(home.attribute_table, self.tree)
        self.recovered = 0
        self.failed_closes: list[str] = []  # paths whose last close could not store their writes
        self._failed_said = 0  # how many of them a sync has said
        # where it stands in history: the commit it started from (its tree: base_root, unless a
        # journal of a reset or discard says otherwise) and the branch its syncs move
        self.place = Place(commit, repository.commit(commit).tree if commit else self.base_root, branch)
        self.advance = Advance(repository, "mount", str(mountpoint))
        self.on_replaced: Callable[[list[str]], None] = lambda paths: None  # the kernel's caches
        if not read_only:
            self._recover_or_start(self.base_root)
        home.write_root(self.files, cids.cid_to_str(self.base_root))  # for garbage collection
        self._write_head()
        # A remote root: zarr's metadata fetched ahead, once gc knows the root it belongs to.
        self.ahead = MetadataAhead.start(store, self.base_root)

    def run_with(self, runner: Runner) -> None:
        """Have *runner* run the blocking parts of requests (a front door with an event loop: in
        worker threads) and make the lock of its kind; before the first request."""
        self._runner, self.lock = runner, runner.lock()

    # --- journal recovery ------------------------------------------------------

    def _recover_or_start(self, root: bytes) -> None:
        pending = self.journal.read()
        if pending is None or not pending.records:
            self.journal.start(root, commit=self.place.commit, branch=self.place.branch)
            return
        if (pending.root or EMPTY_ROOT) != root:  # a journal of an older version says None for empty
            raise PendingChangesError(
                f"{self.mountpoint} has {len(pending.records)} unsynced changes from an earlier session "
                f"on root {_show(pending.root) or 'empty'}; mount ROOT 'resume' (or that root) to recover "
                f"them (they are in {self.journal.path}), or delete that file to discard them"
            )
        if self.place.commit is None and pending.commit is not None:  # resumed: go on where it stood
            self.place = Place(pending.commit, self.repository.commit(pending.commit).tree, pending.branch)
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
    #
    # Each is journaled before it returns; each takes the lock, so none runs while a sync (in a
    # worker thread) reads the tree. Modes are permission bits (a caller applies its umask).

    def _path(self, directory: Directory, name: str) -> str:
        parent = self.tree.path_of(directory)
        if parent is None:
            raise IpldmountError(f"directory of {name!r} was removed")
        return f"{parent}/{name}" if parent else name

    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyError("mounted read-only")

    async def mkdir(
        self,
        directory: Directory,
        name: str,
        *,
        mode: int = 0o755,
        uid: int | None = None,
        gid: int | None = None,
    ) -> Directory:
        self._check_writable()
        async with self.lock:
            child = self.tree.mkdir(directory, name)
            self.journal.append("mkdir", path=self._path(directory, name))
        self._new_meta(child, stat.S_IFDIR | mode, uid, gid)
        self.touch(directory)
        return child

    async def create(
        self,
        directory: Directory,
        name: str,
        *,
        mode: int = 0o644,
        uid: int | None = None,
        gid: int | None = None,
    ) -> File:
        """A new empty file (open it with :meth:`open`)."""
        self._check_writable()
        async with self.lock:
            file = self.tree.create(directory, name, PendingFile(b"", self.tree.chunk_size))
            self.journal.append("write", path=self._path(directory, name), data="")
        self._new_meta(file, stat.S_IFREG | mode, uid, gid)
        self.touch(directory)
        return file

    async def unlink(self, directory: Directory, name: str) -> None:
        self._check_writable()
        async with self.lock:
            path = self._path(directory, name)
            node = self.tree.unlink(directory, name)
            self.journal.append("unlink", path=path)
        self.touch(directory, node)

    async def rmdir(self, directory: Directory, name: str) -> None:
        self._check_writable()
        async with self.lock:
            path = self._path(directory, name)
            self.tree.rmdir(directory, name)
            self.journal.append("rmdir", path=path)
        self.touch(directory)

    async def rename(
        self, source: Directory, name: str, target: Directory, new_name: str, *, replace: bool = True
    ) -> None:
        self._check_writable()
        attributes = self.attributes
        async with self.lock:
            moving = self.tree.lookup(source, name)
            attributes.get(moving)  # its own row is found under the old path only: read it now
            src, dst = self._path(source, name), self._path(target, new_name)
            self.tree.rename(source, name, target, new_name, replace=replace)
            self.journal.append("rename", src=src, dst=dst)
            attributes.changed(self.tree.lookup(target, new_name))  # kept under its new path
            if attributes.rows_follow(moving):
                await self._runner.in_thread(attributes.copy_rows, src, dst)
        self.touch(source, target)

    async def link(self, node: Node, directory: Directory, name: str) -> None:
        self._check_writable()
        await self._store_if_dirty(node)  # the new name must see what was written
        async with self.lock:
            src = self.tree.path_of(node)
            self.tree.link(node, directory, name)
            if src is not None:
                self.journal.append("link", src=src, dst=self._path(directory, name))
        self.touch(directory, node)

    def _set_content(self, file: File, content: FileContent) -> None:
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

    # --- attributes ------------------------------------------------------------

    def meta(self, node: Node) -> Meta:
        """*node*'s mode, owner and times."""
        return self.attributes.get(node)

    def touch(self, *nodes: Node) -> None:
        """Their content or entries changed now."""
        now = time.time_ns()
        for node in nodes:
            meta = self.attributes.editable(node)
            meta.mtime_ns = meta.ctime_ns = now

    def _new_meta(self, node: Node, mode: int, uid: int | None, gid: int | None) -> None:
        now = time.time_ns()
        uid, gid = os.getuid() if uid is None else uid, os.getgid() if gid is None else gid
        self.attributes.set(node, Meta(mode, uid, gid, now, now, now))

    async def set_attributes(
        self,
        node: Node,
        *,
        size: int | None = None,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
        ctime_ns: int | None = None,
    ) -> None:
        """chmod, chown, utimes and truncate: what is not None changes (a file's kind stays; its
        change time is now unless given)."""
        self._check_writable()
        if size is not None:
            if not isinstance(node, File):
                raise IsDirectoryError(self.tree.path_of(node) or "/")
            await self.truncate(node, size)
        meta = self.attributes.editable(node)
        if mode is not None:
            meta.mode = stat.S_IFMT(meta.mode) | stat.S_IMODE(mode)
        if uid is not None:
            meta.uid = uid
        if gid is not None:
            meta.gid = gid
        if atime_ns is not None:
            meta.atime_ns = atime_ns
        if mtime_ns is not None:
            meta.mtime_ns = mtime_ns
        meta.ctime_ns = ctime_ns if ctime_ns is not None else time.time_ns()

    # --- open files ------------------------------------------------------------
    #
    # A file's writes go into its buffer (OpenFile), shared by its handles; they reach the
    # blockstore and the journal when a handle is closed (flush: close(2)) or fsynced, never
    # later, and once no handle is open and no request uses the buffer it is let go (settled).
    # Requests for one file interleave wherever one waits for the runner's worker thread:
    # everything known before such a wait is checked again after it.

    async def open(self, node: Node, *, writable: bool, truncate: bool = False) -> FileHandle:
        if isinstance(node, Broken):
            raise node.error
        if isinstance(node, Directory):
            raise IsDirectoryError(self.tree.path_of(node) or "/")
        assert isinstance(node, File)
        if writable:
            self._check_writable()
        if node not in self.open_files and not (writable and truncate):
            self.tree.size(node)  # unreadable content (a block is missing) is EIO here, not an empty file
        handle = self.open_files.open(node, writable)
        if writable and truncate:
            await self.truncate(node, 0)
        return handle

    def size(self, node: Node) -> int:
        """*node*'s size as its readers see it: with what open handles wrote (0 for a directory)."""
        if not isinstance(node, File):
            return 0
        buffer = self.open_files.get(node)
        return buffer.data.size if buffer is not None else self.tree.size(node)

    async def read(self, handle: FileHandle, offset: int, size: int) -> bytes:
        node = handle.node
        buffer = self.open_files.get(node)
        if buffer is not None:
            if buffer.data.read_is_cheap(offset, offset + size):
                return buffer.data.read(offset, size)
            buffer.busy += 1
            try:
                return await self._runner.in_thread(buffer.data.read, offset, size)
            finally:
                buffer.busy -= 1
        small = _small_raw(node)  # one small block: cheaper read in place than a thread hop
        if handle.reader is None or handle.reader_content is not node.content:
            handle.reader_content = node.content
            if small:
                handle.reader = self.tree.reader(node)
            else:
                handle.reader = await self._runner.in_thread(self.tree.reader, node)
        reader = handle.reader
        data = reader.cached(offset, size)
        if data is None:
            data = (
                reader.read(offset, size)
                if small
                else await self._runner.in_thread(reader.read, offset, size)
            )
        return data

    async def write(self, handle: FileHandle, offset: int, data: bytes) -> int:
        if not handle.writable:
            raise OSError(errno.EBADF, "not open for writing")
        buffer = await self._buffer(handle.node)
        if buffer.data.write_is_cheap(offset, offset + len(data)):  # a memory copy: no thread hop needed
            written = buffer.data.write(offset, data)
        else:
            buffer.busy += 1
            try:
                written = await self._runner.in_thread(buffer.data.write, offset, data)
            finally:
                buffer.busy -= 1
        buffer.changed()
        return written

    async def truncate(self, node: File, size: int) -> None:
        """The file's new size (a hole past its end); with no handle open, stored now."""
        buffer = await self._buffer(node)
        buffer.busy += 1
        try:
            await self._runner.in_thread(buffer.data.truncate, size)
        finally:
            buffer.busy -= 1
        buffer.changed()
        await self._settle(node, buffer)  # truncate(2) with no open file: store it now

    async def allocate(self, node: File, offset: int, length: int, *, keep_size: bool) -> None:
        """fallocate(2): extends the file with a hole to offset + length, as truncate does; with
        *keep_size* reserves nothing (blocks are written whole, when stored) and succeeds."""
        self._check_writable()
        if offset < 0 or length <= 0:
            raise OSError(errno.EINVAL, "fallocate of an empty or negative range")
        end = offset + length
        check_file_size(end, self.tree.chunk_size)
        if not keep_size and end > self.size(node):
            await self.truncate(node, end)

    async def flush(self, handle: FileHandle) -> None:
        """close(2): what was written reaches the blockstore and the journal before close returns."""
        if handle.writable:
            await self._store_if_dirty(handle.node)

    async def fsync(self, handle: FileHandle) -> None:
        await self._store_if_dirty(handle.node)
        await self.fsync_all()

    async def fsync_all(self) -> None:
        """What ``fsync`` promises: every change so far survives a machine crash."""
        await self._runner.in_thread(self._make_durable)

    async def release(self, handle: FileHandle) -> bool:
        """The handle's last close. True when its file is left unchanged and unused, and may go
        back to being a packed row of its directory (:meth:`Tree.return_to_row`) if nothing
        else (a front door's inode number) holds it."""
        self.open_files.release(handle)
        node = handle.node
        buffer = self.open_files.get(node)
        if buffer is not None:
            await self._settle(node, buffer)
            return False
        if handle.writable or self.open_files.handles(node):
            return False
        if self.lock.locked():
            return False  # a sync (or a change) is reading the tree in a worker thread: keep the node
        return self.attributes.is_default(node)

    async def _buffer(self, node: File) -> OpenFile:
        """The file's write buffer, made on first write over the current content."""
        buffer = self.open_files.get(node)
        if buffer is None:
            if isinstance(node.content, StoredFile):  # reads its root node: a worker thread's job
                data = await self._runner.in_thread(self.open_files.new_buffer, node.content)
            else:  # content in memory (a file just created, metadata): nothing to wait for
                data = self.open_files.new_buffer(node.content)
            buffer = self.open_files.get(node)  # another request may have made one meanwhile
            if buffer is None:
                buffer = self.open_files.add(node, OpenFile(data))
            else:
                data.close()
        return buffer

    async def _settle(self, node: File, buffer: OpenFile) -> None:
        """Once no handle is open and no request uses the buffer: store what is unsaved, then close it.

        Re-checked after every wait, because requests for the same file (an open and
        write, another release) run while this one waits for its worker thread.
        """
        files = self.open_files
        while files.handles(node) <= 0 and buffer.busy <= 0 and files.get(node) is buffer:
            if not buffer.dirty:
                files.close(node)
                return
            try:
                await self._store_if_dirty(node)
            except Exception as exc:
                # The last close got the error (ENOSPC, say); a buffer kept for a retry
                # nobody can make would only fail every later sync. The tree keeps the
                # content of the file's last successful close; status and sync say so.
                if files.handles(node) <= 0 and files.get(node) is buffer:
                    self.close_failed(self.tree.path_of(node), exc)
                    files.close(node)
                raise

    async def _store_if_dirty(self, node: Node) -> None:
        buffer = self.open_files.get(node) if isinstance(node, File) else None
        if buffer is None or not buffer.dirty:
            return
        assert isinstance(node, File)
        link = node.first_link
        if link is None:  # unlinked while open: no name will ever show this content
            buffer.dirty = False
            return
        generation = buffer.generation
        name = link[1]
        buffer.busy += 1
        # Held until journaled: a sync meanwhile leaves what this stores leased (blocks/lease.py).
        with self.store.holding():
            try:
                if buffer.data.size <= SMALL_STORE:  # hashing and writing it costs less than a thread hop
                    content = self.content_of_buffer(buffer.data, name)
                else:
                    content = await self._runner.in_thread(self.content_of_buffer, buffer.data, name)
            finally:
                buffer.busy -= 1
            async with self.lock:
                if generation <= buffer.applied:
                    return  # a store that started later has already put newer content in the tree
                self._set_content(node, content)
                buffer.applied = generation
        if buffer.generation == generation:
            buffer.dirty = False
        self.touch(node)

    async def store_all(self) -> None:
        """Store every file still open with unsaved writes (before a sync or exit)."""
        for node in self.open_files:
            await self._store_if_dirty(node)

    def describe(self, node: Node) -> NodeState:
        """What *node* is made of now, for the user: as the tree says, unless an open handle wrote
        to it or one of its names changed since the last sync (the root: anything unsaved)."""
        state = self.tree.describe(node)
        buffer = self.open_files.get(node) if isinstance(node, File) else None
        if (buffer is not None and buffer.dirty) or (isinstance(node, File) and _changed_since_sync(node)):
            state = NodeState(changed=True)  # its CID (if any) is not one the last sync stored there
        if node is self.tree.root and not self.read_only and self.open_files.unsaved():
            state = NodeState(changed=True)
        return state

    def _make_durable(self) -> None:
        self.store.sync()
        self.journal.flush()

    @property
    def dirty(self) -> bool:
        """Whether there is anything a sync would commit (open files' unsaved writes included)."""
        return (
            self.journal.pending > 0
            or self.tree.root.dirty
            or self.open_files.unsaved() > 0
            or (self.place.tree is not None and self.place.tree != self.base_root)
        )

    def sync_changes_root(self) -> bool:
        """Whether a sync now would give another root (computed without storing anything)."""
        return self.tree.preview_root() != (self.place.tree or self.base_root)

    # --- sync ------------------------------------------------------------------

    async def sync(
        self,
        car: Path | None = None,
        message: str | None = None,
        *,
        full_car: bool = False,
        branch: str | None = None,
    ) -> SyncResult:
        """Everything written so far, including files still open, committed and exported
        (:meth:`_commit`, in a worker thread while changes wait); *branch*: onto a new branch."""
        self._check_writable()
        started = time.time()
        await self.store_all()
        async with self.lock:
            # A file unlinked or renamed over while open reads its old content until closed
            # (POSIX), so garbage collection must keep it: published with the root.
            held = self.open_files.held_contents()
            return await self._runner.in_thread(
                functools.partial(
                    self._commit, car, message, full_car=full_car, started=started, held=held, branch=branch
                )
            )

    def _commit(
        self,
        car_path: Path | None = None,
        message: str | None = None,
        *,
        full_car: bool = False,
        started: float | None = None,
        held: list[bytes] | None = None,
        branch: str | None = None,
    ) -> SyncResult:
        """Commit the tree, move the branch (merging when it moved), start a fresh journal on
        the result, then write the CAR.

        Blocks first, then the commit, the branch, the head and the journal: a crash at any
        point leaves either the old base with its journal (the next sync commits again, and
        finds its own commit on the branch: nothing to merge) or the new one, never a mix.
        The CAR comes last and is derived: by default the blocks new since the previous
        commit's tree (FORMAT.md §8), the whole DAG with *full_car*; none when nothing was
        committed unless asked. If blocks cannot be read, the commit stands all the same and
        IncompleteDagError names them; a CAR that cannot be written is CarWriteError, the commit
        made too. *started* (``time.time()``): blocks stored or claimed since may belong to later
        writes, and stay leased from garbage collection. *held*: contents files still open
        read, published with the root so garbage collection keeps them while the daemon lives.
        MergeConflictError when another writer changed the same paths: nothing is committed.
        """
        started = started or time.time()
        before = self.place.tree or self.base_root
        root = self.tree.commit()
        self.attributes.save()  # changed or not, the files' modes and times outlive the mount
        # One sync makes the tree's blocks (those stored at close too, which the daemon does not
        # fsync one by one) and the commit durable together, before the branch names it.
        done = self.advance.commit(self.place, root, message, self._apply_theirs, onto=branch)
        if not done.made:
            self.store.sync()
        self.place, root = done.place, done.tree
        if done.made or done.merged or self.journal.pending or root != self.base_root:
            self.base_root = root
            self._write_head()
            self.journal.reset(root, commit=self.place.commit, branch=self.place.branch)
        held_text = [cids.cid_to_str(cid) for cid in held or ()]
        self.home.write_root(self.files, cids.cid_to_str(root), held_text)
        # what was stored before the commit is in the root now (recorded here, or before)
        self.repository.record(done.records, settle_before=started)
        result = SyncResult(
            cids.cid_to_str(root),
            None,
            0,
            root != before,
            full_car,
            _show(self.place.commit),
            self.place.branch,
            done.made,
            done.merged,
        )
        if not (done.made or full_car or car_path):
            log.info("synced %s: root %s, nothing to commit", self.mountpoint, result.root)
            return result
        return self._write_car(result, root, before, car_path, full_car)

    def _write_car(
        self, result: SyncResult, root: bytes, before: bytes, car_path: Path | None, full_car: bool
    ) -> SyncResult:
        car_path = car_path or self._default_car(root, full_car)
        try:
            car_bytes = write_car_file(self.store, root, car_path, since=None if full_car else before)
        except OSError as exc:
            raise CarWriteError(root, cids.cid_to_str(root), car_path, exc) from exc
        log.info(
            "synced %s: commit %s, root %s, %s CAR %s (%d bytes)",
            self.mountpoint,
            result.commit,
            result.root,
            "full" if full_car else "change",
            car_path,
            car_bytes,
        )
        return dataclasses.replace(result, car=car_path, car_bytes=car_bytes)

    async def discard(self) -> SyncResult:
        """Drop every unsynced change (open files' unsaved writes too): the tree shows its
        commit again (the root it was mounted from, when it has none)."""
        return await self.reset(self.place, keep=False)

    async def reset(self, target: Place, *, keep: bool) -> SyncResult:
        """Show *target* from now on, its branch moved there too (compare-and-swap from the
        head this mount stands on). *keep*: the unsynced changes stay, merged onto *target*
        (MergeConflictError if they touch paths that differ there); else they are dropped."""
        self._check_writable()
        await self.store_all()
        async with self.lock:
            return await self._runner.in_thread(self._reset, target, keep)

    def _reset(self, target: Place, keep: bool) -> SyncResult:
        current = self.tree.commit()
        goal = target.tree or self.base_root
        base = (self.place.tree or self.base_root) if keep else current
        plan = merge_roots(self.store, base, current, goal)
        if plan.conflicts:
            raise MergeConflictError(
                target.branch or "the target", target.commit or goal, plan.conflicts, str(self.mountpoint)
            )
        branch = self.place.branch
        head = self.repository.branches().get(branch) if branch is not None else None
        if branch is not None and target.commit is not None and head != target.commit:
            self.repository.move_branch(branch, head, target.commit, why="reset", where=str(self.mountpoint))
        self.place = Place(target.commit, target.tree, branch)
        self.tree.apply(plan.actions)
        self.on_replaced([action.path for action in plan.actions])
        self.base_root = self.tree.commit() if keep else goal
        self.store.sync()
        self._write_head()
        # kept changes: the journal starts from the tree that holds them, on the target's commit
        self.journal.reset(self.base_root, commit=target.commit, branch=branch)
        held = [cids.cid_to_str(cid) for cid in self.open_files.held_contents()]  # what open files still read
        self.home.write_root(self.files, cids.cid_to_str(self.base_root), held)
        return SyncResult(self.root, None, 0, False, False, _show(self.place.commit), branch)

    def _apply_theirs(self, actions: list[Take]) -> bytes:
        """Apply another writer's changes (a merge plan) to the tree, tell the kernel, commit."""
        self.tree.apply(actions)
        self.on_replaced([action.path for action in actions])
        root = self.tree.commit()
        self.store.sync()
        return root

    def _write_head(self) -> None:
        place = self.place
        self.home.write_head(
            self.files,
            MountHead(
                cids.cid_to_str(self.base_root), _show(place.commit), place.branch, str(self.mountpoint)
            ),
        )

    def _default_car(self, root: bytes, full_car: bool) -> Path:
        return self.car_dir / f"{cids.cid_to_str(root)}{'.full' if full_car else ''}.car"

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

    @property
    def root(self) -> str:
        """The root as of the last sync (or the one mounted)."""
        return cids.cid_to_str(self.base_root)

    async def status(self) -> dict[str, Any]:
        """What ``ipldmount status`` shows: the session's state, the files still open with
        unsaved writes, and whether a sync would change the root (computed, nothing stored)."""
        unsaved = self.open_files.unsaved()
        status: dict[str, Any] = {
            "mountpoint": str(self.mountpoint),
            "root": self.root,
            "unsynced_changes": self.journal.pending,
            "failed_closes": list(self.failed_closes),
            "store": str(self.home.root),
            "read_only": self.read_only,
            "journal": str(self.journal.path),
            "pid": os.getpid(),
            "open_unsaved_files": unsaved,
            "commit": _show(self.place.commit),
            "branch": self.place.branch,
        }
        warning = self.attributes.table.warning()
        if warning is not None:  # the sync command prints it: modes, owners or times may be lost
            status["attribute_warning"] = warning
        if self.read_only:
            status["sync_changes_root"] = False
        elif unsaved:
            status["sync_changes_root"] = True  # as good as certain, and knowing costs storing them
        else:
            async with self.lock:
                status["sync_changes_root"] = await self._runner.in_thread(self.sync_changes_root)
        return status

    def close(self, clean: bool) -> None:
        """Let go of the open files (what they hold unstored, the threads that stage their
        leaves) and close the journal; a clean exit after a sync leaves none behind."""
        if self.ahead is not None:
            self.ahead.stop()
        self.open_files.shut_down()
        if clean and not self.dirty:
            self.journal.remove()
        else:
            self.journal.close()


def _show(root: bytes | None) -> str | None:
    return cids.cid_to_str(root) if root else None


def _changed_since_sync(file: File) -> bool:
    """Whether a name of *file* was written, created, moved or linked since the last sync: then
    what it holds is not what the last sync stored under that name (README, the xattr table)."""
    return any(
        parent.dirty and (parent.changed is None or name in parent.changed) for parent, name in file.links
    )


def _small_raw(node: File) -> bool:
    """Whether *node* is one raw block of at most SMALL_READ bytes, its size already known."""
    content = node.content
    return (
        isinstance(content, StoredFile)
        and cids.codec_of(content.cid) == cids.RAW
        and content.known_size is not None
        and content.known_size <= SMALL_READ
    )
