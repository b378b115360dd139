"""A zarr v3 ``Store`` over the tree and a blockstore: ipldstore's role in today's zarr.

zarr drives stores from its own asyncio loop in a background thread, and users
may call the ``*_sync`` methods from theirs; the tree is not thread-safe, so
every operation holds one lock. Nothing here awaits while holding it, and
nothing here knows about trio or FUSE.
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any, BinaryIO

from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype

from ipldmount.blocks import Blockstore, DirectoryBlockstore, MemoryBlockstore, car
from ipldmount.blocks.gc import Collection, collect_garbage
from ipldmount.errors import NotADirectoryError_, NotFoundError
from ipldmount.ipld import cid as cids
from ipldmount.state.home import StoreHome
from ipldmount.state.registry import RootRecord
from ipldmount.state.retention import Retention, kept_roots
from ipldmount.state.writebuffer import buffer_content, open_buffer
from ipldmount.tree import Directory, File, Tree, split_path


class IPLDStore(Store):
    """zarr keys as files of an IPLD tree; ``freeze()`` gives the root CID.

    >>> store = IPLDStore()            # in memory; pass DirectoryBlockstore(path) to persist
    >>> # ds.to_zarr(store); store.freeze() -> 'bafy...'; store.to_car() -> CARv1 bytes
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
    ) -> None:
        super().__init__(read_only=read_only)
        self.blockstore = blockstore if blockstore is not None else MemoryBlockstore()
        self._root = cids.parse_cid(root) if isinstance(root, str) else root
        self._whole_files = whole_files
        self._lock = threading.RLock()
        self.tree = Tree(self.blockstore, self._root, whole_files=whole_files, read_only=read_only)

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
                "root": self._root,
                "read_only": self.read_only,
                "whole_files": self._whole_files,
                "is_open": self._is_open,
            }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["blockstore"], state["root"], read_only=state["read_only"], whole_files=state["whole_files"]
        )
        self._is_open = state["is_open"]

    def with_read_only(self, read_only: bool = False) -> IPLDStore:
        """Another store over the same blockstore at this store's committed root."""
        with self._lock:
            if not self.read_only:
                self.freeze()
            return type(self)(self.blockstore, self._root, read_only=read_only, whole_files=self._whole_files)

    # --- content addressing --------------------------------------------------

    @property
    def root(self) -> str | None:
        """The root CID as of the last :meth:`freeze` (or the one opened)."""
        return cids.cid_to_str(self._root) if self._root else None

    def freeze(self) -> str:
        """Commit everything written so far and return the root CID (``bafy...``).

        A new root of a store on disk is recorded in its history (``ipldmount log``).
        """
        with self._lock:  # every write holds it: all this store stored so far is in the root
            parent, self._root = self._root, self.tree.commit()
            if self._root != parent and isinstance(self.blockstore, DirectoryBlockstore):
                record = RootRecord(
                    cids.cid_to_str(self._root),
                    RootRecord.now(),
                    "api",
                    str(self.blockstore.root.resolve()),
                    cids.cid_to_str(parent) if parent is not None else None,
                )
                StoreHome(self.blockstore).registry.record(record)
            self.blockstore.settle(time.time())  # what it stored is in a recorded root now
            return cids.cid_to_str(self._root)

    def collect_garbage(
        self, keep: Iterable[str] = (), *, grace: float = 0.0, dry_run: bool = False
    ) -> Collection:
        """Remove the blocks this store's tree (as of a :meth:`freeze` now) and the *keep* roots
        do not reach. On a store on disk, everything ``ipldmount gc`` keeps is kept as well
        (tags, the newest root of each origin, mounts), and blocks other processes are writing."""
        with self._lock:
            roots = [cids.parse_cid(self.freeze()), *(cids.parse_cid(root) for root in keep)]
            if isinstance(self.blockstore, DirectoryBlockstore):
                kept = kept_roots(StoreHome(self.blockstore), Retention(grace=grace))
                roots += [cids.parse_cid(root) for root in kept]
            return collect_garbage(self.blockstore, roots, grace=grace, dry_run=dry_run)

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
        tree = Tree(self.blockstore, roots[0], whole_files=self._whole_files, read_only=self.read_only)
        with self._lock:
            self._root, self.tree = roots[0], tree

    # --- reading -------------------------------------------------------------

    def _file(self, key: str) -> File | None:
        try:
            node = self.tree.resolve(key)
        except (NotFoundError, NotADirectoryError_):  # a key below a file is simply absent
            return None
        return node if isinstance(node, File) else None

    def get_sync(
        self, key: str, *, prototype: BufferPrototype | None = None, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        prototype = prototype or default_buffer_prototype()
        with self._lock:
            file = self._file(key)
            if file is None:
                return None
            reader = self.tree.reader(file)
            start, stop = _byte_span(reader.size, byte_range)
            return prototype.buffer.from_bytes(reader.read(start, stop - start))

    async def get(
        self, key: str, prototype: BufferPrototype | None = None, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        if not self._is_open:
            await self._open()
        return self.get_sync(key, prototype=prototype, byte_range=byte_range)

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return [self.get_sync(key, prototype=prototype, byte_range=request) for key, request in key_ranges]

    async def exists(self, key: str) -> bool:
        with self._lock:
            return self._file(key) is not None

    async def getsize(self, key: str) -> int:
        with self._lock:
            file = self._file(key)
            if file is None:
                raise FileNotFoundError(key)
            return self.tree.size(file)

    # --- writing -------------------------------------------------------------

    def set_sync(self, key: str, value: Buffer) -> None:
        self._check_writable()
        if not isinstance(value, Buffer):
            raise TypeError(f"IPLDStore.set(): value must be a Buffer, not {type(value).__name__}")
        with self._lock:
            self.tree.write_file(key, value.to_bytes())

    async def set(self, key: str, value: Buffer) -> None:
        if not self._is_open:
            await self._open()
        self.set_sync(key, value)

    async def set_partial_values(
        self, key_start_values: Iterable[tuple[str, int, bytes | bytearray | memoryview]]
    ) -> None:
        """Write each value into its key at its byte offset (zarr <= 3.1.2 asks stores for this).

        A key that does not exist yet is created; bytes between the old end and
        *start* read as zeros and cost nothing (a hole, as through the mount).
        """
        self._check_writable()
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

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        self._check_writable()
        with self._lock:
            if self._file(key) is None:
                self.set_sync(key, value)

    def delete_sync(self, key: str) -> None:
        self._check_writable()
        with self._lock:
            if self._file(key) is not None:
                self.tree.remove(key)
                self._prune_empty_parents(key)

    async def delete(self, key: str) -> None:
        self.delete_sync(key)

    async def delete_dir(self, prefix: str) -> None:
        self._check_writable()
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
        node = self.tree.lookup(parent, name)
        if isinstance(node, Directory):
            for child in list(self.tree.entries(node)):
                self._remove_subtree(node, child)
            self.tree.rmdir(parent, name)
        else:
            self.tree.unlink(parent, name)

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
        with self._lock:
            keys = [path for path, _ in self.tree.walk_files()]
        for key in keys:
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        directory = prefix.rpartition("/")[0]
        with self._lock:
            try:
                base = directory + "/" if directory else ""
                keys = [base + path for path, _ in self.tree.walk_files(directory)]
            except _ABSENT:  # nothing under that prefix; a missing or corrupt block still raises
                keys = []
        for key in keys:
            if key.startswith(prefix):
                yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        with self._lock:
            try:
                names = self.tree.listdir(prefix.rstrip("/"))
            except _ABSENT:
                names = []
        for name in names:
            yield name


# What a path lookup raises when there is simply nothing at that path (as opposed
# to a block that is missing or corrupt, which must never read as "no keys").
_ABSENT = (NotFoundError, NotADirectoryError_)


def _same_blockstore(a: Blockstore, b: Blockstore) -> bool:
    return a is b or a == b


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
