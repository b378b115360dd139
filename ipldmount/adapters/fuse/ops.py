"""The FUSE adapter: kernel requests in, session requests out.

With :mod:`~ipldmount.adapters.fuse.libfuse_hooks` (what pyfuse3 does not pass on: fallocate, open flags),
the only code that imports pyfuse3 (the daemon mounts and serves through
:func:`mount`, :func:`serve`, :func:`terminate` and :func:`close`). It keeps what
only the kernel protocol needs: inode numbers and lookup counts
(:class:`~ipldmount.adapters.fuse.inodes.InodeTable`), file handle numbers and directory
listings. Everything else is the session's (:class:`~ipldmount.session.session.Session`): the
tree and its journal, open files and their writes, sync, and the attributes the format does
not store (mode, owner, times). A handler translates the kernel's arguments (inode numbers,
bytes, flags), calls the session, and translates its answer; the session runs its blocking work
in trio's worker threads (:class:`TrioRunner`). Every change is journaled before it is
answered; a file's new content reaches the blockstore when the file is closed (``flush``) or
fsynced, never later."""

from __future__ import annotations

import bisect
import contextlib
import errno
import functools
import inspect
import logging
import os
import stat
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from ipldmount.adapters.fuse import control, libfuse_hooks
from ipldmount.adapters.fuse.inodes import InodeTable, Rows
from ipldmount.adapters.fuse.readahead import NameIndexing, RowScan
from ipldmount.blocks import Blockstore
from ipldmount.errors import IpldmountError, errno_for
from ipldmount.format.entrytable import EntryTable
from ipldmount.format.files import StoredFile
from ipldmount.ipld import cid as cids
from ipldmount.remote.fetching import BlockFetcher, MustFetchError
from ipldmount.repo.attributes import Meta
from ipldmount.session.openfiles import FileHandle
from ipldmount.session.runner import TurnLock
from ipldmount.session.session import Session
from ipldmount.tree.model import NAME_MAX, Broken, Directory, File, Node, check_name

log = logging.getLogger(__name__)

TIMEOUT = 300.0  # seconds the kernel may cache entries and attributes: we are the only writer
BLOCK_SIZE = 1 << 20  # st_blksize: tools size their buffers by it
# Extended attributes (README, "What the attributes say"): exactly one of the first three is set.
XATTR_CID = b"user.ipld.cid"  # the block that holds this node now: fetchable, exportable
XATTR_INLINE = b"user.ipld.inline"  # "1": held inside its parent's block, no block of its own
XATTR_DIRTY = b"user.ipld.dirty"  # "1": changed since the last sync, no block yet
XATTR_BROKEN = b"user.ipld.broken"  # why the block (user.ipld.cid) cannot be read
XATTR_SOCKET = control.XATTR_SOCKET.encode()
XATTR_PREFIX = b"user.ipld."  # every attribute above starts with it
XATTR_USER = b"user."  # the only namespace served: no system.posix_acl_*, security.*, trusted.*

P = ParamSpec("P")
R = TypeVar("R")


def replies(handler: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Answer every failure with an errno (the mapping lives in errors.errno_for) and log why."""
    parameters = list(inspect.signature(handler).parameters)[1:]  # without self

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await _fetching_as_needed(handler, args, kwargs)
        except pyfuse3.FUSEError:
            raise
        except (IpldmountError, OSError) as exc:
            code = errno_for(exc)
            level = logging.ERROR if code in (errno.EIO, errno.ENOSPC) else logging.DEBUG
            log.log(level, "%s%s: %s", handler.__name__, _brief(parameters, args[1:]), exc)
            raise pyfuse3.FUSEError(code) from None
        except Exception:
            log.exception("%s%s failed unexpectedly", handler.__name__, _brief(parameters, args[1:]))
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


# Requests that change nothing before they have read what they need: run again from the start
# after a block they need is fetched (in a worker thread). Others fetch where they stand.
RETRIED_AFTER_FETCH = frozenset(
    {"lookup", "getattr", "opendir", "readdir", "open", "read", "getxattr", "listxattr", "statfs"}
)
MAX_FETCHES = 1024  # blocks one request may have to fetch (a path deep in large sharded directories)


async def _fetching_as_needed(
    handler: Callable[..., Coroutine[Any, Any, R]], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> R:
    """Run *handler*; on a store that fetches missing blocks, the event loop never waits for one:
    the block is fetched in a worker thread and the request runs again."""
    store = args[0].tree.store
    if not store.fetches_missing or handler.__name__ not in RETRIED_AFTER_FETCH:
        return await handler(*args, **kwargs)
    failed: set[bytes] = set()
    for _ in range(MAX_FETCHES):
        try:
            with BlockFetcher.no_waiting():
                return await handler(*args, **kwargs)
        except MustFetchError as needed:
            cid = needed.cid
        try:
            await trio.to_thread.run_sync(store.get, cid)  # fetched and kept
        except IpldmountError:
            # No source gave it: the request runs again and meets the failure where it matters
            # (a listing shows a broken entry; a read of that block answers EIO), once.
            if cid in failed:
                raise
            failed.add(cid)
    raise IpldmountError(f"{handler.__name__}: more than {MAX_FETCHES} blocks to fetch for one request")


_CONTENT_PARAMETERS = frozenset({"buf", "value"})  # what a file or attribute holds: never logged


def _brief(parameters: list[str], args: tuple[Any, ...]) -> str:
    """The request's arguments for the log: names and numbers, never file contents."""
    shown = []
    for name, arg in zip(parameters, args, strict=False):
        if isinstance(arg, pyfuse3.RequestContext):
            continue
        if name in _CONTENT_PARAMETERS and isinstance(arg, bytes | bytearray | memoryview):
            shown.append(f"<{len(arg)} bytes>")
        else:
            shown.append(repr(arg)[:80])
    return "(" + ", ".join(shown) + ")"


def mount(ops: Operations, mountpoint: Path, *, read_only: bool, allow_other: bool) -> None:
    """Mount *ops* at *mountpoint* (the kernel sends requests once :func:`serve` runs)."""
    source = libfuse_hooks.fsname(ops.session.root)  # /proc/mounts: ipldmount:ROOT
    options = set(pyfuse3.default_options) | {f"fsname={source}", "subtype=ipldmount"}
    if read_only:
        options.add("ro")
    if allow_other:
        options.add("allow_other")
    pyfuse3.init(ops, str(mountpoint), options)
    libfuse_hooks.install_fallocate(ops.fallocate)
    libfuse_hooks.install_open_flags()
    libfuse_hooks.install_xattr_shortcut(XATTR_USER)


async def serve() -> None:
    """Answer the kernel's requests until the file system is unmounted or :func:`terminate` is called."""
    await pyfuse3.main()


def terminate() -> None:
    """Make :func:`serve` return (the caller then unmounts with :func:`close`)."""
    pyfuse3.terminate()


def close(unmount: bool) -> None:
    """End the FUSE session, unmounting if still mounted."""
    pyfuse3.close(unmount=unmount)


def decode_name(raw: bytes) -> str:
    """A name from the kernel as the tree's str; too long or not UTF-8 is refused here."""
    if len(raw) > NAME_MAX:
        raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise pyfuse3.FUSEError(errno.EINVAL) from None
    check_name(name)
    return name


class TrioRunner:
    """The session's blocking work in trio's worker threads, its turns taken with a trio lock."""

    async def in_thread(self, call: Callable[..., R], *args: Any) -> R:
        return await trio.to_thread.run_sync(call, *args)

    def lock(self) -> TurnLock:
        return trio.Lock()


@dataclass
class DirListing:
    """An open directory. Its entries are listed on the first readdir: the kernel may answer
    from its own cache of the listing and never ask."""

    directory: Directory
    names: list[str] | None = None  # ".", "..", then the names of the entries that have a node
    # (not the nodes: a list of (name, node) pairs would cost 64 bytes more per entry)...
    table: EntryTable | None = None  # ...then the packed rows, by position
    sized_until: int = 0  # entries before this index had their sizes looked for


class Operations(pyfuse3.Operations):
    """pyfuse3 handlers over a :class:`Session`."""

    def __init__(self, session: Session, control_socket: Path | None = None) -> None:
        super().__init__()
        self.session = session
        session.run_with(TrioRunner())  # its blocking work in worker threads, its lock trio's
        self.tree = session.tree
        self.control_socket = control_socket
        self.inodes = InodeTable(self.tree)
        self.handles: dict[int, FileHandle] = {}  # the kernel's file handles: the session's handles
        self.listings: dict[int, DirListing] = {}
        self._next_fh = 1
        self.indexing = NameIndexing()
        session.on_replaced = self.invalidate

    def invalidate(self, paths: list[str]) -> None:
        """A merge, reset or discard replaced *paths* under the kernel: drop its cached entries
        (queued: called from a worker thread, maybe while a request waits on us)."""
        for path in paths:
            parent, _, name = path.rstrip("/").rpartition("/")
            try:
                directory = self.tree.resolve_dir(parent)
            except IpldmountError:
                continue  # its directory went too: the kernel drops what is under it with it
            ino = pyfuse3.ROOT_INODE if directory is self.tree.root else self.inodes.known(directory)
            if ino is not None:
                pyfuse3.invalidate_entry_async(ino, os.fsencode(name), ignore_enoent=True)

    def close(self) -> None:
        """The mount ended: the threads it started are joined."""
        self.indexing.close()

    # --- attributes ------------------------------------------------------------

    def attributes(self, ino: int, node: Node, *, fetch: bool = True) -> pyfuse3.EntryAttributes:
        """What the kernel is told of *node*. Without *fetch*, a size that needs a block from the
        network is left unknown (a listing must not fetch every file it lists)."""
        size: int | None = 0
        if not isinstance(node, Broken):
            try:
                size = self.session.size(node)
            except MustFetchError:
                if fetch:
                    raise
                size = None
            except IpldmountError as exc:
                log.error("size of %s is unknown: %s", self.tree.path_of(node), exc)
                size = None
        return _entry_attributes(ino, self.session.meta(node), self._link_count(ino, node), size)

    def row_attributes(
        self, ino: int, rows: Rows, position: int, *, fetch: bool = True
    ) -> pyfuse3.EntryAttributes:
        """The attributes of an entry that is still a packed row: a file with one name (*fetch*:
        as for :meth:`attributes`)."""
        table = rows.table
        size = table.size(position)
        if fetch and self.tree.store.fetches_missing:
            self._fetch_ahead(rows, position, missed=size is None)
        if size is None:
            try:
                size = _row_size(self.tree.store, table, position)
            except MustFetchError:
                if fetch:
                    raise
            except IpldmountError as exc:
                path = self.tree.path_of(rows.directory)
                log.error("size of %s/%s is unknown: %s", path, table.name(position), exc)
        return _entry_attributes(
            ino, self.session.attributes.of_row(rows.directory, table, position), 1, size
        )

    def _fetch_ahead(self, rows: Rows, position: int, missed: bool) -> None:
        """A packed row is used (looked up, stat'ed; *missed*: its size is not known yet): fetch
        what a reader going through the directory in order wants next (:mod:`.readahead`)."""
        store, table = self.tree.store, rows.table
        if rows.scan is None:
            rows.scan = RowScan(table)
        ahead = rows.scan.read(position, missed and not store.has(table.cid(position)))
        if rows.scan.should_index_names():
            self.indexing.start(rows.scan)
        if ahead:
            store.prefetch([table.cid(row) for row in ahead], wait=False)

    def _row_entry(self, rows: Rows, position: int) -> pyfuse3.EntryAttributes:
        """Attributes for a reply that hands the kernel a new reference to a packed row."""
        attributes = self.row_attributes(rows.base + position, rows, position)
        rows.lookups[position] += 1
        return attributes

    def _link_count(self, ino: int, node: Node) -> int:
        """As on any Linux file system: a file's names (0 once unlinked), 2 + subdirectories for a
        directory (0 once removed); 1, "not counted", for a directory that cannot be read and for a
        sharded one not listed yet (find and fts read 1 so)."""
        if isinstance(node, File):
            return node.link_count
        if not isinstance(node, Directory):
            return 1
        if not node.link_count and ino != pyfuse3.ROOT_INODE:
            return 0
        try:
            count = self.tree.known_subdirectories(node)
        except MustFetchError:
            return 1  # a lazy mount's directory whose blocks are not here yet: not counted (no fetch)
        except IpldmountError as exc:
            log.error("directory %s cannot be read: %s", self.tree.path_of(node) or "/", exc)
            return 1
        return 1 if count is None else 2 + count

    def _entry(self, node: Node) -> pyfuse3.EntryAttributes:
        """Attributes for a reply that hands the kernel a new reference to *node*."""
        return self.attributes(self.inodes.remember(node), node)

    def _directory(self, ino: int) -> Directory:
        node = self.inodes.node(ino)
        if isinstance(node, Broken):
            raise node.error  # unreadable, whatever it was: EIO, not ENOTDIR
        if not isinstance(node, Directory):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return node

    # --- lookups and attributes ------------------------------------------------

    @replies
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        directory = self._directory(parent_inode)
        if name == b".":
            return self._entry(directory)
        if name == b"..":
            parent = directory.parent
            return self._entry(directory if parent is None else parent)
        decoded = decode_name(name)
        row = self.tree.find_row(directory, decoded)
        if row is not None:  # no node made for it: a stat of each entry of a huge directory
            return self._row_entry(self.inodes.rows(directory, row[0]), row[1])
        return self._entry(self.tree.lookup(directory, decoded))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            self.inodes.forget(ino, count, self.session.open_files.in_use)

    @replies
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        found = self.inodes.find(inode)
        if isinstance(found, Node):
            return self.attributes(inode, found)
        return self.row_attributes(inode, *found)

    @replies
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self.inodes.node(inode)
        await self.session.set_attributes(
            node,
            size=attr.st_size if fields.update_size else None,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
            ctime_ns=attr.st_ctime_ns if fields.update_ctime else None,
        )
        return self.attributes(inode, node)

    @replies
    async def fallocate(self, inode: int, mode: int, offset: int, length: int) -> None:
        """fallocate(2) (through libfuse_hooks): mode 0 or FALLOC_FL_KEEP_SIZE
        (:meth:`Session.allocate`); other modes are not supported."""
        if mode & ~libfuse_hooks.FALLOC_FL_KEEP_SIZE:
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        node = self.inodes.node(inode)
        if not isinstance(node, File):
            raise pyfuse3.FUSEError(errno.ENODEV)  # as for a directory on ext4
        keep_size = bool(mode & libfuse_hooks.FALLOC_FL_KEEP_SIZE)
        await self.session.allocate(node, offset, length, keep_size=keep_size)

    # --- directories -----------------------------------------------------------

    @replies
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        directory = self._directory(parent_inode)
        child = await self.session.mkdir(
            directory, decode_name(name), mode=mode & 0o7777 & ~ctx.umask, uid=ctx.uid, gid=ctx.gid
        )
        return self._entry(child)

    @replies
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        directory = self._directory(parent_inode)
        await self.session.rmdir(directory, decode_name(name))

    @replies
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        directory = self._directory(inode)
        self.tree.is_empty(directory)  # reads its (first) block: a missing one is EIO here, at opendir
        fh = self._new_fh()
        self.listings[fh] = DirListing(directory)
        return fh

    @replies
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        listing = self.listings[fh]
        if listing.names is None and self.tree.store.fetches_missing:
            # all of its blocks may come from the network: read them in a thread, one request
            await trio.to_thread.run_sync(self.tree.listing, listing.directory)
        names, table = self._listed(listing)
        count = len(names) + (len(table) if table is not None else 0)
        for index in range(start_id, count):
            if index >= listing.sized_until:
                listing.sized_until = index + SIZE_LOOKAHEAD
                await self._find_sizes(listing, range(index, min(listing.sized_until, count)))
            try:
                if not self._reply_entry(listing, index, token):
                    return
            except MustFetchError:
                if index == start_id:
                    raise  # nothing replied yet: fetched in a thread, and the request starts over
                return  # the kernel asks again from this entry on

    def _reply_entry(self, listing: DirListing, index: int, token: pyfuse3.ReaddirToken) -> bool:
        """Add entry *index* of the listing to the reply; False once the reply is full."""
        names = listing.names
        assert names is not None
        table = listing.table
        position = index - len(names)
        if table is not None and position >= 0 and table.is_live(position):
            if len(names) > 2 and _listed_before(names, table.name(position)):
                return True  # listed by the node it had then (given back to its row since)
            rows = self.inodes.rows(listing.directory, table)
            attributes = self.row_attributes(rows.base + position, rows, position, fetch=False)
            if not pyfuse3.readdir_reply(token, table.key(position), attributes, index + 1):
                return False
            rows.lookups[position] += 1
            return True
        if position < 0:
            name = names[index]
        else:
            assert table is not None
            name = table.name(position)  # a node was made for it: listed under its name
            if _listed_before(names, name):
                return True  # ...by its node, made before the listing began
        node = self._listed_node(listing, index, name)
        if node is None:
            return True  # removed since the listing began
        ino = self.inodes.ino(node)
        attributes = self.attributes(ino, node, fetch=False)
        if not pyfuse3.readdir_reply(token, name.encode("utf-8"), attributes, index + 1):
            return False
        if index >= 2:  # the kernel takes no reference for "." and ".."
            self.inodes.remember(node)
        return True

    def _listed(self, listing: DirListing) -> tuple[list[str], EntryTable | None]:
        if listing.names is None:
            names, listing.table = self.tree.listing(listing.directory)
            listing.names = [".", "..", *names]
        return listing.names, listing.table

    def _listed_node(self, listing: DirListing, index: int, name: str) -> Node | None:
        directory = listing.directory
        if index == 0:
            return directory
        if index == 1:
            parent = directory.parent
            return directory if parent is None else parent
        return self.tree.get_entry(directory, name)  # a packed row's name has no node or its own

    async def _find_sizes(self, listing: DirListing, indexes: range) -> None:
        """Learn the sizes of the raw blocks of these entries (a stat of each block file) at once.
        In the page cache a stat takes microseconds: done here. When the first few show they wait
        on the disk, the rest are spread over worker threads, whose waits overlap."""
        unknown = self._unknown_sizes(listing, indexes)
        store = self.tree.store
        started = time.perf_counter()
        _look_up_sizes(store, unknown[:SIZE_PROBE])
        rest = unknown[SIZE_PROBE:]
        if time.perf_counter() - started < SIZE_PROBE * WARM_STAT:
            _look_up_sizes(store, rest)
            return
        async with trio.open_nursery() as nursery:
            for worker in range(SIZE_WORKERS):
                part = rest[worker::SIZE_WORKERS]
                nursery.start_soon(functools.partial(trio.to_thread.run_sync, _look_up_sizes, store, part))

    def _unknown_sizes(
        self, listing: DirListing, indexes: range
    ) -> list[StoredFile | tuple[EntryTable, int]]:
        """The entries among *indexes* whose size nobody has looked up: contents, or packed rows."""
        names, table = listing.names, listing.table
        assert names is not None
        unknown: list[StoredFile | tuple[EntryTable, int]] = []
        for index in indexes:
            position = index - len(names)
            if position < 0:
                content = _size_unknown(self._listed_node(listing, index, names[index]))
                if content is not None:
                    unknown.append(content)
            elif table is not None and table.is_live(position) and table.size(position) is None:
                unknown.append((table, position))
        return unknown

    async def releasedir(self, fh: int) -> None:
        self.listings.pop(fh, None)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await self.session.fsync_all()

    # --- names -----------------------------------------------------------------

    @replies
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        directory = self._directory(parent_inode)
        await self.session.unlink(directory, decode_name(name))

    @replies
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        source, target = self._directory(parent_inode_old), self._directory(parent_inode_new)
        old, new = decode_name(name_old), decode_name(name_new)
        await self.session.rename(source, old, target, new, replace=not flags & pyfuse3.RENAME_NOREPLACE)

    @replies
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = self.inodes.node(inode)
        directory = self._directory(new_parent_inode)
        await self.session.link(node, directory, decode_name(new_name))
        return self._entry(node)

    @replies
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        log.info("symlink %r refused: the format stores only files and directories", name)
        raise pyfuse3.FUSEError(errno.EPERM)

    @replies
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if not stat.S_ISREG(mode):
            log.info("mknod %r refused: the format stores only files and directories", name)
            raise pyfuse3.FUSEError(errno.EPERM)
        directory = self._directory(parent_inode)
        file = await self.session.create(
            directory, decode_name(name), mode=mode & 0o7777 & ~ctx.umask, uid=ctx.uid, gid=ctx.gid
        )
        return self._entry(file)

    # --- files -----------------------------------------------------------------

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def _handle(self, handle: FileHandle) -> pyfuse3.FileInfo:
        fh = self._new_fh()
        self.handles[fh] = handle
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    @replies
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        writable = flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
        node = self.inodes.node(inode)
        return self._handle(
            await self.session.open(node, writable=writable, truncate=bool(flags & os.O_TRUNC))
        )

    @replies
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        directory = self._directory(parent_inode)
        file = await self.session.create(
            directory, decode_name(name), mode=mode & 0o7777 & ~ctx.umask, uid=ctx.uid, gid=ctx.gid
        )
        attrs = self._entry(file)
        writable = flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
        return self._handle(await self.session.open(file, writable=writable)), attrs

    @replies
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self.session.read(self.handles[fh], off, size)

    @replies
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self.session.write(self.handles[fh], off, buf)

    @replies
    async def flush(self, fh: int) -> None:
        """close(2): what was written reaches the blockstore and the journal before close returns."""
        await self.session.flush(self.handles[fh])

    @replies
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.session.fsync(self.handles[fh])

    @replies
    async def release(self, fh: int) -> None:
        handle = self.handles.pop(fh)
        if await self.session.release(handle):
            # The last handle of an untouched chunk closed: its node goes back to being a packed row.
            self.inodes.return_to_row(handle.node)

    # --- file system -----------------------------------------------------------

    @replies
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        disk = os.statvfs(self.session.home.root)
        data = pyfuse3.StatvfsData()
        data.f_bsize, data.f_frsize = disk.f_bsize, disk.f_frsize
        data.f_blocks, data.f_bfree, data.f_bavail = disk.f_blocks, disk.f_bfree, disk.f_bavail
        data.f_files, data.f_ffree, data.f_favail = disk.f_files, disk.f_ffree, disk.f_favail
        data.f_namemax = NAME_MAX
        return data

    @replies
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if not name.startswith(XATTR_USER):
            # No ACLs, no security labels: "not supported" (not "no such attribute") lets ls -l,
            # cp -a and rsync -AX stop asking after the first file of the file system.
            raise pyfuse3.FUSEError(errno.ENOTSUP)
        if not name.startswith(XATTR_PREFIX):
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        value = self._attributes_of(inode).get(name)
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    def _attributes_of(self, ino: int) -> dict[bytes, bytes]:
        """The extended attributes of an inode: what it is made of, and for the root the socket."""
        state = self.session.describe(self.inodes.node(ino))
        found: dict[bytes, bytes] = {}
        if state.cid is not None:
            found[XATTR_CID] = cids.cid_to_str(state.cid).encode()
        if state.inline:
            found[XATTR_INLINE] = b"1"
        if state.changed:
            found[XATTR_DIRTY] = b"1"
        if state.broken is not None:
            found[XATTR_BROKEN] = state.broken.encode(errors="replace")
        if ino == pyfuse3.ROOT_INODE and self.control_socket:
            found[XATTR_SOCKET] = str(self.control_socket).encode()
        return found

    @replies
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return list(self._attributes_of(inode))

    @replies
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    @replies
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        return True  # the kernel checks permissions itself (default_permissions)


SIZE_LOOKAHEAD = 512  # readdir finds the sizes of this many entries ahead at once...
SIZE_WORKERS = 16  # ...in this many worker threads (a cold stat waits on the disk: they overlap),
SIZE_PROBE = 16  # unless this many of them, found first, took less than
WARM_STAT = 20e-6  # seconds each: then their inodes are cached and threads would only cost


def _look_up_sizes(store: Blockstore, entries: list[StoredFile | tuple[EntryTable, int]]) -> None:
    remote = store.fetches_missing
    for entry in entries:
        cid = entry.cid if isinstance(entry, StoredFile) else entry[0].cid(entry[1])
        if remote and not store.has(cid):
            continue  # not fetched for a listing: its size once someone asks (stat, open)
        with contextlib.suppress(IpldmountError):  # attributes() logs it when it gets there
            if isinstance(entry, StoredFile):
                entry.size_in(store)
            else:
                _row_size(store, *entry)


def _listed_before(names: list[str], name: str) -> bool:
    """Whether *name* is among the node names of a listing (sorted after "." and "..")."""
    index = bisect.bisect_left(names, name, 2)
    return index < len(names) and names[index] == name


def _row_size(store: Blockstore, table: EntryTable, position: int) -> int:
    """The size of a packed row's block, kept in the table once known."""
    size = table.sizes[position] = store.size(table.cid(position))
    return size


def _entry_attributes(ino: int, meta: Meta, links: int, size: int | None) -> pyfuse3.EntryAttributes:
    """What the kernel is told of an inode; a size that could not be found (None) shows as 0 and is
    not cached (a missing block must not fail lookup or readdir of the whole directory, and the
    size shows once the block is back; reading it fails in open instead)."""
    attrs = pyfuse3.EntryAttributes()
    attrs.st_ino = ino
    attrs.entry_timeout = attrs.attr_timeout = TIMEOUT if size is not None else 0
    attrs.st_mode = meta.mode
    attrs.st_nlink = links
    attrs.st_uid, attrs.st_gid = meta.uid, meta.gid
    attrs.st_size = size or 0
    attrs.st_blksize = BLOCK_SIZE
    attrs.st_blocks = (attrs.st_size + 511) // 512
    attrs.st_atime_ns, attrs.st_mtime_ns, attrs.st_ctime_ns = meta.atime_ns, meta.mtime_ns, meta.ctime_ns
    return attrs


def _size_unknown(node: Node | None) -> StoredFile | None:
    """*node*'s content if it is stored and nobody has looked up its size yet."""
    content = node.content if isinstance(node, File) else None
    return content if isinstance(content, StoredFile) and content.known_size is None else None
