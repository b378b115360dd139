"""A zarr v3 ``Store`` over the tree and a blockstore: ipldstore's role in today's zarr.

zarr drives stores from its own asyncio loop in a background thread, and users
may call the ``*_sync`` methods from theirs. zarr asks for many chunks at once,
so the coroutines hand the work to threads (``asyncio.to_thread``, as zarr's
own ``LocalStore`` does) and the costly part of each request runs there in
parallel: hashing, copying and block I/O release the GIL. The tree is not
thread-safe, so what touches it holds one lock, briefly: a write hashes and
stores its blocks first and takes the lock only to link the finished content
in; a read takes it only to find the content (immutable) it then reads.
Nothing here awaits while holding it, and nothing here knows about trio or FUSE.
"""

from __future__ import annotations

import asyncio
import io
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, BinaryIO, ParamSpec, TypeVar

import numpy as np
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype

from ipldmount.blocks import Blockstore, Chunk, MemoryBlockstore, car
from ipldmount.blocks.gc import Collection
from ipldmount.errors import IpldmountError, NotDirectoryError, NotFoundError
from ipldmount.format.files import FileContent, StoredFile
from ipldmount.format.merge import Take
from ipldmount.ipld import cid as cids
from ipldmount.remote.exchange import push
from ipldmount.remote.fetching import BlockFetcher, FetchingBlockstore
from ipldmount.remote.kubo import KuboNode
from ipldmount.remote.remotes import Remotes
from ipldmount.repo.repository import Repository
from ipldmount.repo.retention import Retention
from ipldmount.session.advance import Advance, Place
from ipldmount.session.ahead import MetadataAhead
from ipldmount.session.writebuffer import buffer_content, open_buffer
from ipldmount.tree.model import Directory, File, check_name, split_path
from ipldmount.tree.unixfs import open_tree

P = ParamSpec("P")
R = TypeVar("R")


class _Gate:
    """Any number of holders at once, or one exclusive holder that waits for them all to leave.

    Chunk reads and writes hold it shared while they touch blocks outside the tree's lock;
    a garbage collection holds it exclusively, so that it never removes the blocks of a
    value that is stored but not linked into the tree yet, or that is being read.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._holders = 0
        self._exclusive = False  # held, or waited for: new holders wait too (no starvation)

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._condition:
            self._condition.wait_for(lambda: not self._exclusive)
            self._holders += 1
        try:
            yield
        finally:
            with self._condition:
                self._holders -= 1
                self._condition.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._condition:
            self._condition.wait_for(lambda: not self._exclusive)
            self._exclusive = True
            self._condition.wait_for(lambda: not self._holders)
        try:
            yield
        finally:
            with self._condition:
                self._exclusive = False
                self._condition.notify_all()


class IPLDStore(Store):
    """zarr keys as files of an IPLD tree; ``freeze()`` gives the root CID.

    >>> store = IPLDStore()            # in memory; pass DirectoryBlockstore(path) to persist
    >>> # ds.to_zarr(store); store.freeze() -> 'bafy...'; store.to_car() -> CARv1 bytes

    A value's blocks are written without an fsync each (nothing refers to them before a
    root does); :meth:`freeze` makes them durable, with one sync of the filesystem, before
    it commits the root that refers to them.
    """

    supports_writes = True
    supports_deletes = True
    supports_listing = True
    supports_partial_writes = False

    def __init__(
        self,
        blockstore: Blockstore | None = None,
        root: str | bytes | None = None,
        *,
        read_only: bool = False,
        whole_files: bool = False,
        branch: str | None = None,
    ) -> None:
        super().__init__(read_only=read_only)
        self.blockstore = blockstore if blockstore is not None else MemoryBlockstore()
        # The store's history, live roots and gc (none in memory): this store's own.
        self.repository = Repository(self.blockstore)
        self.place = self._place(root, branch)
        self._root = self.place.tree
        self._whole_files = whole_files
        self._lock = threading.RLock()  # guards the tree; held only for what touches it
        self._gate = _Gate()  # see _Gate: block work outside the lock vs garbage collection
        self._unsynced = False  # blocks were stored without an fsync since the last freeze
        self._had_unsynced = False  # so were some, when the freeze running now began
        # Reads from memory cost a copy, and small writes to it a hash: a hop to a thread would
        # cost more than it overlaps (about 40 us a hop, against 2 us to hash 1 KiB).
        self._in_memory = isinstance(self.blockstore, MemoryBlockstore)
        self._reads_in_thread = not self._in_memory
        self.tree = open_tree(self.blockstore, self._root, whole_files=whole_files, read_only=read_only)
        self._advance = Advance(self.repository, "api", self.repository.where)
        if self._root is not None:
            # its tree is read from here on, its commit named: gc must keep them
            self.repository.publish_in_use(self._root, self.place.commit)
        # A remote root: its metadata fetched ahead, once published as in use (gc keeps it).
        self._ahead = MetadataAhead.start(self.blockstore, self._root)

    def _place(self, root: str | bytes | None, branch: str | None) -> Place:
        """Where the store stands: ROOT (a commit or a tree CID), or *branch*'s head (a branch
        that does not exist yet is made at the first :meth:`freeze`)."""
        if root is not None:
            version = self.repository.version_of(cids.parse_cid(root) if isinstance(root, str) else root)
            return Place(version.commit, version.tree, branch)
        head = self.repository.branches().get(branch) if branch is not None else None
        return Place(head, self.repository.commit(head).tree if head else None, branch)

    @property
    def commit(self) -> str | None:
        """The commit as of the last :meth:`freeze` (or the one opened); None before any."""
        return cids.cid_to_str(self.place.commit) if self.place.commit else None

    def close(self) -> None:
        """Close the store: its root is no longer published as in use (garbage collection keeps
        it only if the history or a tag does). Freeze first to keep what was written."""
        if self._ahead is not None:
            self._ahead.stop()
        super().close()
        self.repository.close()

    # --- identity, pickling --------------------------------------------------

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, IPLDStore)
            and _same_blockstore(self.blockstore, other.blockstore)
            and self._root == other._root
            and self.read_only == other.read_only
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        root = cids.cid_to_str(self._root) if self._root else "empty"
        return f"IPLDStore({self.blockstore!r}, root={root})"

    def __getstate__(self) -> dict[str, Any]:
        """Pickle as (blockstore, committed root): a copy sees everything written so far."""
        with self._lock:
            if not self.read_only:
                self.freeze()
            return {
                "blockstore": self.blockstore,
                "root": self.place.commit or self._root,
                "branch": self.place.branch,
                "read_only": self.read_only,
                "whole_files": self._whole_files,
                "is_open": self._is_open,
            }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["blockstore"],
            state["root"],
            read_only=state["read_only"],
            whole_files=state["whole_files"],
            branch=state.get("branch"),
        )
        self._is_open = state["is_open"]

    def with_read_only(self, read_only: bool = False) -> IPLDStore:
        """Another store over the same blockstore at this store's committed root."""
        with self._lock:
            if not self.read_only:
                self.freeze()
            root = self.place.commit or self._root
            return type(self)(self.blockstore, root, read_only=read_only, whole_files=self._whole_files)

    # --- content addressing --------------------------------------------------

    @property
    def root(self) -> str | None:
        """The root CID as of the last :meth:`freeze` (or the one opened)."""
        return cids.cid_to_str(self._root) if self._root else None

    def freeze(self, message: str | None = None) -> str:
        """Commit everything written so far and return the root CID (``bafy...``).

        A store on disk makes a commit of a changed tree (:attr:`commit`), moves its branch if
        it has one (merging what another writer committed there meanwhile, or refusing with
        MergeConflictError, keeping every change), records it in its history (``ipldmount
        log``) and publishes the root as in use while this store lives, before the writer's
        lease over its blocks is settled; a value another thread is storing meanwhile stays
        leased until it is linked in. A store in memory only computes the root.
        """
        with self._lock:  # every write links under it: all this store stored so far is in the root
            started = time.time()  # writes that stored blocks after this may not be in the root
            unsynced, self._unsynced = self._unsynced, False  # blocks stored from now on: next time
            self._had_unsynced = unsynced
            root = self.tree.commit()
            records = []
            made = False
            # a branch is looked at even with nothing new: another writer may have moved it
            moved = root != self._root or self.place.commit is None or self.place.branch is not None
            if self.repository.on_disk and not self.read_only and moved:
                done = self._advance.commit(
                    self.place, root, message, self._apply_theirs, make_durable=self._sync
                )
                self.place, root, records, made = done.place, done.tree, done.records, done.made
            if unsynced and not made:  # a commit synced them with itself
                self.blockstore.sync()
            self._root = root
            # what it stored is in a recorded (and published) root now: the lease is settled
            self.repository.record(
                records, settle_before=started, in_use=self._root, in_use_commit=self.place.commit
            )
            return cids.cid_to_str(self._root)

    def _sync(self) -> None:
        """Make what this store stored durable: one sync of the filesystem, skipped when every
        block was fsynced as it was written (a durable store) and none was written unsynced."""
        if not getattr(self.blockstore, "durable", True) or self._had_unsynced:
            self.blockstore.sync()

    def _apply_theirs(self, actions: list[Take]) -> bytes:
        """Another writer's changes to the branch, merged into this store's tree."""
        self.tree.apply(actions)
        root = self.tree.commit()
        self.blockstore.sync()
        return root

    def collect_garbage(
        self, keep: Iterable[str] = (), *, grace: float = 0.0, dry_run: bool = False
    ) -> Collection:
        """Remove the blocks this store's tree (as of a :meth:`freeze` now) and the *keep* roots
        do not reach. On a store on disk, everything ``ipldmount gc`` keeps is kept as well
        (tags, the newest root of each origin, mounts, live stores), and blocks other processes
        are writing."""
        with self._gate.exclusive(), self._lock:
            also = {root: ["this store's tree, or kept by the caller"] for root in [self.freeze(), *keep]}
            return self.repository.collect(Retention(grace=grace), dry_run=dry_run, also=also).collection

    def export_car(self, out: BinaryIO) -> int:
        """Write a CARv1 of the committed tree to *out*; returns the bytes written."""
        root = cids.parse_cid(self.freeze())
        return car.export_car(self.blockstore, root, out)

    def to_car(self) -> bytes:
        """The CARv1 of the whole tree, as bytes (the seed's ``to_car``)."""
        buffer = io.BytesIO()
        self.export_car(buffer)
        return buffer.getvalue()

    def import_car(self, archive: bytes | bytearray | memoryview | BinaryIO | os.PathLike[str]) -> None:
        """Import a single-root CAR and make its root this store's tree (see :attr:`root`).

        Returns None, as the seed's ``import_car`` did, so its doctests hold.

        Like the seed's ``import_car``, this replaces the store's content (changes
        not yet frozen are dropped), so a read-only store refuses it, and a CAR
        with several roots is refused (its blocks stay in the blockstore).
        """
        self._check_writable()
        if isinstance(archive, os.PathLike):
            with open(archive, "rb") as stream:
                roots = car.import_car(self.blockstore, stream)
        elif isinstance(archive, bytes | bytearray | memoryview):
            roots = car.import_car(self.blockstore, io.BytesIO(archive))
        else:
            roots = car.import_car(self.blockstore, archive)
        if len(roots) != 1:
            raise ValueError(f"CAR must have a single root, the given CAR has {len(roots)} roots")
        # Open the new tree first: a root that is not a directory leaves the store as it was.
        tree = open_tree(self.blockstore, roots[0], whole_files=self._whole_files, read_only=self.read_only)
        with self._lock:
            self._root, self.tree = roots[0], tree
            self.repository.publish_in_use(roots[0])

    # --- threads -------------------------------------------------------------

    async def _in_thread(self, function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run *function* in a worker thread, off zarr's event loop: it may block on the disk,
        or hash, and other requests go on meanwhile."""
        return await asyncio.to_thread(function, *args, **kwargs)

    async def _reading(self, function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run a read: in a worker thread, unless the blocks are in memory (no I/O, no hashing)."""
        if self._reads_in_thread:
            return await asyncio.to_thread(function, *args, **kwargs)
        return function(*args, **kwargs)

    async def _writing(self, value: Buffer, function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run a write: in a worker thread, unless it is a small value bound for memory (its hash
        costs less than the hop; a large one is hashed in a thread, beside the others)."""
        if self._in_memory and len(value) <= _INLINE_WRITE:
            return function(*args, **kwargs)
        return await asyncio.to_thread(function, *args, **kwargs)

    # --- reading -------------------------------------------------------------

    def _file(self, key: str) -> File | None:
        try:
            node = self.tree.resolve(key)
        except (NotFoundError, NotDirectoryError):  # a key below a file is simply absent
            return None
        return node if isinstance(node, File) else None

    def _content(self, key: str) -> FileContent | None:
        """What *key* holds now. Content is immutable: it can be read after the lock is let go.

        The lookup holds the lock while it fetches a directory block it lacks. Letting the lock
        go and looking up again once the block is here (as the mount does) was measured slower:
        the tree reads a directory's sibling entries to load it, so each retry decoded again
        what the last one had read, 20x the CPU for 50 arrays. Chunk reads, the bulk of the
        traffic, fetch outside the lock."""
        with self._lock:
            file = self._file(key)
            return None if file is None else file.content

    def get_sync(
        self, key: str, *, prototype: BufferPrototype | None = None, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        prototype = prototype or default_buffer_prototype()
        with self._gate.shared():
            content = self._content(key)
            if content is None:
                return None
            whole = self.blockstore.whole_file(content.cid) if isinstance(content, StoredFile) else None
            if whole is not None:  # held in memory back to back: no copy at all
                start, stop = _byte_span(len(whole), byte_range)
                return prototype.buffer.from_bytes(whole[start:stop])
            if byte_range is None and isinstance(content, StoredFile) and content.is_raw:
                # one raw block, whole (most chunks): read as it is, no size asked first
                return prototype.buffer.from_bytes(self.blockstore.get(content.cid))
            reader = content.reader(self.blockstore)
            start, stop = _byte_span(reader.size, byte_range)
            return prototype.buffer.from_bytes(reader.read(start, stop - start))

    async def get(
        self, key: str, prototype: BufferPrototype | None = None, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        if not self._is_open:
            await self._open()
        return await self._reading(self.get_sync, key, prototype=prototype, byte_range=byte_range)

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        requests = list(key_ranges)
        return await self._reading(self._get_ranges, prototype, requests)

    def _get_ranges(
        self, prototype: BufferPrototype, requests: list[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return [self.get_sync(key, prototype=prototype, byte_range=request) for key, request in requests]

    async def exists(self, key: str) -> bool:
        return await self._reading(self._exists_sync, key)

    def _exists_sync(self, key: str) -> bool:
        with self._lock:
            return self._file(key) is not None

    async def getsize(self, key: str) -> int:
        return await self._reading(self._getsize_sync, key)

    def _getsize_sync(self, key: str) -> int:
        with self._lock:
            file = self._file(key)
            if file is None:
                raise FileNotFoundError(key)
            return self.tree.size(file)

    # --- writing -------------------------------------------------------------

    def set_sync(self, key: str, value: Buffer) -> None:
        self._set(key, value, replace=True)

    async def set(self, key: str, value: Buffer) -> None:
        if not self._is_open:
            await self._open()
        await self._writing(value, self._set, key, value, replace=True)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        await self._writing(value, self._set, key, value, replace=False)

    def _set(self, key: str, value: Buffer, *, replace: bool) -> None:
        """Store *value*'s blocks, then link it in as *key* (unless *key* exists and not *replace*).

        Only the linking holds the tree's lock: concurrent writes hash and store in parallel.
        """
        self._check_writable()
        if not isinstance(value, Buffer):
            raise TypeError(f"IPLDStore.set(): value must be a Buffer, not {type(value).__name__}")
        if not replace and self._exists_sync(key):
            return
        with self._gate.shared(), self.blockstore.holding():  # leased until linked: see freeze()
            content = self._store_value(key, _view(value))
            with self._lock:
                if replace or self._file(key) is None:  # checked again: another write may have won
                    self.tree.write_file(key, content)

    def _store_value(self, key: str, data: Chunk) -> FileContent:
        """*data* as the content of a file named like *key*: its blocks hashed and stored.

        Runs outside the tree's lock (it touches no tree state). The blocks are staged and
        installed together, without an fsync each (see the class docstring), so a failure
        leaves none behind.
        """
        *_, name = split_path(key) or [""]
        check_name(name)  # before any block is stored for it
        staging = self.blockstore.staging()
        try:
            content = self.tree.content_for(name, data, staging)
            staged = bool(staging.staged())
            staging.commit()
        except BaseException:
            staging.discard()
            raise
        if staged:  # after they are in place and before they are linked: see freeze()
            self._unsynced = True
        return content

    async def set_partial_values(
        self, key_start_values: Iterable[tuple[str, int, bytes | bytearray | memoryview]]
    ) -> None:
        """Write each value into its key at its byte offset (zarr <= 3.1.2 asks stores for this).

        A key that does not exist yet is created; bytes between the old end and
        *start* read as zeros and cost nothing (a hole, as through the mount).
        """
        self._check_writable()
        await self._in_thread(self._set_ranges, list(key_start_values))

    def _set_ranges(self, key_start_values: list[tuple[str, int, bytes | bytearray | memoryview]]) -> None:
        for key, start, value in key_start_values:
            data = value.to_bytes() if isinstance(value, Buffer) else bytes(value)
            self.set_range_sync(key, start, data)

    def set_range_sync(self, key: str, start: int, data: bytes) -> None:
        """Write *data* into *key* at byte *start*: costs the leaves it touches, not the value."""
        self._check_writable()
        if start < 0:
            raise ValueError(f"negative offset {start}")
        with self._lock:
            file = self._file(key)
            if file is None:
                file = self.tree.write_file(key, b"")
            buffer = open_buffer(self.blockstore, self.tree.chunk_size, file.content)
            try:
                buffer.write(start, data)
                content = buffer_content(buffer, split_path(key)[-1], self.tree.chunk_size)
            finally:
                buffer.close()
            self.tree.set_content(file, content)

    def delete_sync(self, key: str) -> None:
        self._check_writable()
        with self._lock:
            if self._file(key) is not None:
                self.tree.remove(key)
                self._prune_empty_parents(key)

    async def delete(self, key: str) -> None:
        await self._in_thread(self.delete_sync, key)

    async def delete_dir(self, prefix: str) -> None:
        self._check_writable()
        await self._in_thread(self._delete_dir_sync, prefix)

    def _delete_dir_sync(self, prefix: str) -> None:
        with self._lock:
            parts = split_path(prefix)
            if not parts:
                for name in list(self.tree.entries(self.tree.root)):
                    self._remove_subtree(self.tree.root, name)
                return
            try:
                parent = self.tree.resolve_dir("/".join(parts[:-1]))
            except _ABSENT:
                return
            if isinstance(self.tree.get_entry(parent, parts[-1]), Directory):
                self._remove_subtree(parent, parts[-1])
                self._prune_empty_parents(prefix)

    def _remove_subtree(self, parent: Directory, name: str) -> None:
        """Remove *name* and everything below it, children first: a stack, not recursion, since
        a tree may be nested deeper than Python recurses."""
        stack: list[tuple[Directory, str, bool]] = [(parent, name, False)]
        while stack:
            directory, entry, emptied = stack.pop()
            node = self.tree.lookup(directory, entry)
            if not isinstance(node, Directory):
                self.tree.unlink(directory, entry)
            elif emptied:
                self.tree.rmdir(directory, entry)
            else:
                stack.append((directory, entry, True))
                stack.extend((node, child, False) for child in list(self.tree.entries(node)))

    def _prune_empty_parents(self, key: str) -> None:
        """Drop directories a delete left empty: keys, not directories, are what zarr sees."""
        parts = split_path(key)[:-1]
        while parts:
            parent = self.tree.resolve_dir("/".join(parts[:-1]))
            child = self.tree.get_entry(parent, parts[-1])
            if not isinstance(child, Directory) or not self.tree.is_empty(child):
                return
            self.tree.rmdir(parent, parts[-1])
            parts.pop()

    # --- listing -------------------------------------------------------------

    async def list(self) -> AsyncIterator[str]:
        for key in await self._reading(self._keys_under, ""):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        for key in await self._reading(self._keys_under, prefix.rpartition("/")[0]):
            if key.startswith(prefix):
                yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        for name in await self._reading(self._names_in, prefix.rstrip("/")):
            yield name

    def _keys_under(self, directory: str) -> Sequence[str]:
        """Every key below *directory* ("" for all); none if it is absent."""
        base = directory + "/" if directory else ""
        with self._lock:
            try:
                return [base + path for path, _ in self.tree.walk_files(directory)]
            except _ABSENT:  # nothing under that prefix; a missing or corrupt block still raises
                return []

    def _names_in(self, directory: str) -> Sequence[str]:
        with self._lock:
            try:
                return self.tree.listdir(directory)
            except _ABSENT:
                return []


class IPFSStore(IPLDStore):
    """An :class:`IPLDStore` whose tree lives on an IPFS node (ipldstore's ``get_ipfs_mapper()``).

    Blocks the local *cache* lacks come from the node's RPC API at *ipfs* (then the
    *gateways*, read-only), verified, and stay in the cache; :meth:`freeze` sends the node
    what the new root adds (only that: see :func:`~ipldmount.remote.exchange.push`) and, with
    *pin*, pins it there. With only gateways it reads and cannot push (``read_only``).

    >>> store = IPFSStore("http://127.0.0.1:5001")   # doctest: +SKIP
    >>> ds.to_zarr(store); store.freeze()            # doctest: +SKIP
    'bafy...'
    """

    def __init__(
        self,
        ipfs: str | None = "http://127.0.0.1:5001",
        root: str | bytes | None = None,
        *,
        cache: Blockstore | None = None,
        gateways: Sequence[str] = (),
        pin: bool = True,
        read_only: bool = False,
        whole_files: bool = False,
    ) -> None:
        self.remotes = Remotes.of(ipfs, gateways)
        if not self.remotes:
            raise IpldmountError("IPFSStore needs an IPFS node (ipfs=URL) or a gateway to read from")
        if self.remotes.ipfs is None and not read_only:
            raise IpldmountError("a store over gateways alone is read-only: pass read_only=True")
        self.cache = cache if cache is not None else MemoryBlockstore()  # where fetched blocks stay
        self.pin = pin
        fetching = FetchingBlockstore(self.cache, BlockFetcher(self.remotes.sources()))
        super().__init__(fetching, root, read_only=read_only, whole_files=whole_files)
        self._reads_in_thread = True  # a read may wait on the network: never on zarr's event loop
        self._pushed = self._root  # the root the node has complete (opened from it, or sent)

    def __repr__(self) -> str:
        root = cids.cid_to_str(self._root) if self._root else "empty"
        return f"IPFSStore({self.remotes.ipfs or self.remotes.gateways!r}, root={root})"

    def close(self) -> None:
        """Close the store (see :meth:`IPLDStore.close`) and stop fetching ahead; the cache stays
        open (its maker closes it)."""
        super().close()
        self.blockstore.close()

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        return {**state, "blockstore": self.cache, "remotes": self.remotes, "pin": self.pin}

    def __setstate__(self, state: dict[str, Any]) -> None:
        remotes: Remotes = state["remotes"]
        self.__init__(  # type: ignore[misc]
            remotes.ipfs,
            state["root"],
            cache=state["blockstore"],
            gateways=remotes.gateways,
            pin=state["pin"],
            read_only=state["read_only"],
            whole_files=state["whole_files"],
        )
        self._is_open = state["is_open"]

    def with_read_only(self, read_only: bool = False) -> IPFSStore:
        with self._lock:
            if not self.read_only:
                self.freeze()
            return type(self)(
                self.remotes.ipfs,
                self._root,
                cache=self.cache,
                gateways=self.remotes.gateways,
                pin=self.pin,
                read_only=read_only,
                whole_files=self._whole_files,
            )

    def freeze(self, message: str | None = None) -> str:
        """Commit, send the node what the new root adds (pinning it, unless ``pin=False``), and
        return the root CID. A root the node already has costs one question to the node."""
        with self._lock:
            root = super().freeze(message)
            if self.remotes.ipfs is not None and not self.read_only and self._root != self._pushed:
                node = KuboNode(self.remotes.ipfs)
                bases = [self._pushed] if self._pushed is not None else []
                pushed = cids.parse_cid(root)
                push(self.blockstore, pushed, node, bases=bases, pin=self.pin)
                self._pushed = pushed
            return root


def get_ipfs_mapper(host: str = "http://127.0.0.1:5001", *, pin: bool = True) -> IPFSStore:
    """ipldstore's entry point: a writable zarr store on the IPFS node at *host* (see IPFSStore)."""
    return IPFSStore(host, pin=pin)


# The largest value a store in memory hashes on the caller's thread (see IPLDStore._writing).
_INLINE_WRITE = 64 * 1024

# What a path lookup raises when there is simply nothing at that path (as opposed
# to a block that is missing or corrupt, which must never read as "no keys").
_ABSENT = (NotFoundError, NotDirectoryError)


def _view(value: Buffer) -> memoryview:
    """A zarr buffer's bytes without a copy (one only if they are not contiguous).

    The store hashes the view and copies or writes each block once; nothing keeps it.
    """
    return np.ascontiguousarray(value.as_numpy_array()).data.cast("B")


def _same_blockstore(a: Blockstore, b: Blockstore) -> bool:
    a, b = _local(a), _local(b)
    return a is b or a == b


def _local(store: Blockstore) -> Blockstore:
    """The store that holds *store*'s blocks: itself, or the cache a store that fetches keeps them in."""
    return store.local if isinstance(store, FetchingBlockstore) else store


def _byte_span(size: int, byte_range: ByteRequest | None) -> tuple[int, int]:
    """(start, stop) of a zarr byte request within a value of *size* bytes."""
    if byte_range is None:
        return 0, size
    if isinstance(byte_range, RangeByteRequest):
        return min(byte_range.start, size), min(byte_range.end, size)
    if isinstance(byte_range, OffsetByteRequest):
        return min(byte_range.offset, size), size
    if isinstance(byte_range, SuffixByteRequest):
        return max(size - byte_range.suffix, 0), size
    # zarr's own stores raise with this wording; zarr.testing's StoreTests matches it.
    raise TypeError(f"Unexpected byte_range, got {byte_range!r}.")
