"""The block store contract: content-addressed blocks keyed by binary CIDs.

Two implementations share it: :class:`~ipldmount.blocks.memory.MemoryBlockstore`
and :class:`~ipldmount.blocks.directory.DirectoryBlockstore`. Every put is
idempotent and content addressed, so two writers racing on the same block write
the same bytes. A :class:`Staging` holds blocks aside until they are committed
(all at once) or discarded (all of them); :meth:`Blockstore.batch` is a staging
for the current thread's puts, made durable together, or (when the ``with`` body
raises) never visible at all.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar

from ipldmount.errors import (
    BlockNotFoundError,
    CorruptBlockError,
    InvalidCIDError,
)
from ipldmount.ipld.cid import (
    DAG_CBOR,
    RAW,
    block_cid,
    cid_to_str,
    inline_data,
    is_supported,
    verify,
)

Chunk = bytes | bytearray | memoryview


def _check_codec(codec: int) -> int:
    if codec not in (RAW, DAG_CBOR):
        raise InvalidCIDError(f"unsupported codec 0x{codec:x} (only raw 0x55 and dag-cbor 0x71)")
    return codec


def _check_range(offset: int, size: int) -> None:
    if offset < 0 or size < 0:
        raise ValueError(f"negative offset or size: offset={offset}, size={size}")


T = TypeVar("T")


class BlockSink(Protocol):
    """Where new blocks go: a blockstore, a staging over one, or a sink that only computes CIDs."""

    def put(self, data: bytes, codec: int) -> bytes: ...

    def has(self, cid: bytes) -> bool: ...

    def claim(self, cid: bytes) -> bool:
        """Like :meth:`has`, for a writer about to rely on the block instead of storing it:
        a stored block is then kept from garbage collection as if just written."""
        ...


def put_leaves_one_by_one(
    sink: Blockstore | Staging[Any], data: Chunk, chunk_size: int
) -> list[tuple[bytes, int]]:
    """Put *data* as raw leaves of *chunk_size* bytes, each a view (the sink copies or writes it)."""
    view = memoryview(data).cast("B")
    leaves = (view[start : start + chunk_size] for start in range(0, len(view), chunk_size))
    return [(sink.put(leaf, RAW), len(leaf)) for leaf in leaves]


class CidOnly:
    """A :class:`BlockSink` that stores nothing: for computing what a commit would give."""

    def put(self, data: bytes, codec: int) -> bytes:
        return block_cid(_check_codec(codec), data)

    def has(self, cid: bytes) -> bool:
        return True

    def claim(self, cid: bytes) -> bool:
        return True


class Staging(ABC, Generic[T]):
    """Blocks written aside: hashed and kept, but visible only through this object until committed.

    Work that builds many blocks before it knows it will succeed (a file's leaves
    while it is being written, a commit's nodes, a CAR being imported) stages
    them here: :meth:`commit` makes them part of the store at once, :meth:`discard`
    takes every one of them back, so a failure or a full disk never leaves blocks
    nothing refers to. Safe to use from several threads. An implementation keeps
    one handle of type ``T`` per staged block (its bytes, or its temporary file).
    """

    def __init__(self, store: Blockstore) -> None:
        self.store = store
        self._items: dict[bytes, T] = {}
        self._lock = threading.Lock()

    # --- writing ------------------------------------------------------------------

    def put(self, data: Chunk, codec: int) -> bytes:
        """Stage *data* unless the store or this staging already holds it; return its CID."""
        cid = block_cid(_check_codec(codec), data)
        self.put_verified(cid, data)
        return cid

    def put_verified(self, cid: bytes, data: Chunk) -> None:
        """Stage a block whose bytes are known to hash to *cid*."""
        if not self.claim(cid):
            self._keep(cid, self._stage(data))

    def put_leaves(self, data: Chunk, chunk_size: int) -> tuple[list[tuple[bytes, int]], bytes | None]:
        """Stage *data* as raw leaves of *chunk_size* bytes: see :meth:`Blockstore.put_leaves`."""
        return put_leaves_one_by_one(self, data, chunk_size), None

    def keep_whole(self, root: bytes, data: bytes, leaves: list[bytes]) -> None:
        """See :meth:`Blockstore.keep_whole` (kept until the staged blocks are committed)."""

    def put_stream(self, chunks: Iterable[Chunk], codec: int) -> bytes:
        """Stage one block given piecewise (hashed while written); return its CID."""
        cid, handle = self._stage_stream(chunks, _check_codec(codec))
        if self.claim(cid):
            self._release(handle)
        else:
            self._keep(cid, handle)
        return cid

    def _keep(self, cid: bytes, handle: T) -> None:
        with self._lock:
            old = self._items.get(cid)
            self._items[cid] = handle
        if old is not None:  # two threads staged the same block: keep one
            self._release(old)

    # --- reading (staged blocks first, then the store) ----------------------------------

    def holds(self, cid: bytes) -> bool:
        """True when the block is staged here (not yet in the store)."""
        return cid in self._items

    def has(self, cid: bytes) -> bool:
        return cid in self._items or self.store._contains(cid)

    def claim(self, cid: bytes) -> bool:
        return cid in self._items or self.store._claim(cid)

    def staged(self) -> list[bytes]:
        with self._lock:
            return list(self._items)

    def lookup(self, cid: bytes) -> bytes | None:
        """A staged block's bytes (our own, written moments ago: not hash-checked), or None."""
        handle = self._items.get(cid)
        return None if handle is None else self._read(handle, 0, -1)

    def read_range(self, cid: bytes, offset: int, size: int) -> bytes | None:
        handle = self._items.get(cid)
        return None if handle is None else self._read(handle, offset, size)

    def block_size(self, cid: bytes) -> int | None:
        handle = self._items.get(cid)
        return None if handle is None else self._size(handle)

    def get(self, cid: bytes) -> bytes:
        data = self.lookup(cid)
        return data if data is not None else self.store.get(cid)

    def read(self, cid: bytes, offset: int, size: int) -> bytes:
        _check_range(offset, size)
        data = self.read_range(cid, offset, size)
        return data if data is not None else self.store.read(cid, offset, size)

    # --- ending -------------------------------------------------------------------

    def forget(self, cid: bytes) -> None:
        """Drop one staged block (no-op if it is not staged here)."""
        with self._lock:
            handle = self._items.pop(cid, None)
        if handle is not None:
            self._release(handle)

    def commit(self, keep: Collection[bytes] | None = None, *, durable: bool = False) -> None:
        """Make the staged blocks (only those in *keep*, if given) part of the store; drop the rest.

        With *durable* they survive a machine crash once this returns. If the
        commit fails, whatever was not yet in place is dropped.
        """
        with self._lock:
            items, self._items = self._items, {}
        if keep is not None:
            for cid in [cid for cid in items if cid not in keep]:
                self._release(items.pop(cid))
        if items:
            self._install(items, durable)

    def discard(self) -> None:
        """Drop everything staged."""
        with self._lock:
            items, self._items = self._items, {}
        for handle in items.values():
            self._release(handle)

    # --- what an implementation provides -------------------------------------------

    @abstractmethod
    def _stage(self, data: Chunk) -> T:
        """Keep a copy of *data* aside."""

    @abstractmethod
    def _stage_stream(self, chunks: Iterable[Chunk], codec: int) -> tuple[bytes, T]: ...

    @abstractmethod
    def _read(self, handle: T, offset: int, size: int) -> bytes:
        """*size* bytes at *offset* of a staged block (``-1``: to its end)."""

    @abstractmethod
    def _size(self, handle: T) -> int: ...

    @abstractmethod
    def _release(self, handle: T) -> None:
        """Let go of a staged copy that will not be installed."""

    @abstractmethod
    def _install(self, items: dict[bytes, T], durable: bool) -> None:
        """Put these staged blocks in the store (removed from *items* as they go in);
        release every one not installed if this fails."""


class _ThreadBatches:
    """The staging of the current thread's open batch (``None`` outside a batch)."""

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def current(self) -> Staging[Any] | None:
        staging: Staging[Any] | None = getattr(self._local, "staging", None)
        return staging

    def open(self, staging: Staging[Any]) -> None:
        self._local.staging = staging

    def close(self) -> Staging[Any] | None:
        staging = self.current
        self._local.staging = None
        return staging


class Blockstore(ABC):
    """A content-addressed block store.

    The public methods (verification, idempotence, batching) live here once;
    an implementation supplies the storage primitives below and its
    :class:`Staging`. Inside a :meth:`batch`, the current thread's puts are
    staged and its reads see them.

    A store here holds what it holds: a block it lacks is not found. A store that gets
    missing blocks from elsewhere wraps one of these (:mod:`ipldmount.remote.fetching`);
    readers ask :attr:`fetches_missing` and use :meth:`prefetch` and :meth:`prefetch_dag`,
    which do nothing here, without knowing where the blocks come from.
    """

    def __init__(self) -> None:
        self._batches = _ThreadBatches()

    def close(self) -> None:
        """Let go of what the store runs beside its blocks (threads fetching ahead): nothing here.
        Whoever made a store closes it; its blocks stay where they are."""
        return

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    # --- reading ----------------------------------------------------------------

    def has(self, cid: bytes) -> bool:
        """True when the block is stored (or staged by this thread's batch); an identity CID
        holds its block, so it is always there."""
        if not is_supported(cid):
            return inline_data(cid) is not None
        batch = self._batches.current
        return (batch is not None and batch.holds(cid)) or self._contains(cid)

    def claim(self, cid: bytes) -> bool:
        """:meth:`has`, for a writer that will rely on the block (see :class:`BlockSink`)."""
        if not is_supported(cid):
            return False
        batch = self._batches.current
        return (batch is not None and batch.holds(cid)) or self._claim(cid)

    def get(self, cid: bytes) -> bytes:
        """The block's bytes, checked against the CID so corruption never passes silently."""
        data = self._batch_lookup(cid)
        if data is None:
            data = self._lookup(cid) if is_supported(cid) else inline_data(cid)
        if data is None:
            raise self._not_found(cid)
        if not self._known_intact(cid, data) and not verify(cid, data):
            actual = cid_to_str(block_cid(cid[1], data))
            message = f"block {cid_to_str(cid)} in {self!r} is corrupt: the bytes hash to {actual}"
            raise CorruptBlockError(message)
        return data

    def read(self, cid: bytes, offset: int, size: int) -> bytes:
        """Up to *size* bytes at *offset*, unverified: for reading large raw blocks piecewise."""
        _check_range(offset, size)
        batch = self._batches.current
        data = batch.read_range(cid, offset, size) if batch is not None else None
        if data is None:
            data = self._read_range(cid, offset, size) if is_supported(cid) else None
        if data is None:
            inline = inline_data(cid)
            data = inline[offset : offset + size] if inline is not None else None
        if data is None:
            raise self._not_found(cid)
        return data

    def size(self, cid: bytes) -> int:
        """The block's length in bytes, without reading it."""
        batch = self._batches.current
        length = batch.block_size(cid) if batch is not None else None
        if length is None:
            length = self._block_size(cid) if is_supported(cid) else None
        if length is None:
            inline = inline_data(cid)
            length = len(inline) if inline is not None else None
        if length is None:
            raise self._not_found(cid)
        return length

    def __iter__(self) -> Iterator[bytes]:
        """Every stored CID (and those staged by this thread's batch), in no particular order."""
        batch = self._batches.current
        staged = set(batch.staged()) if batch is not None else set()
        for cid in self._stored_cids():
            staged.discard(cid)
            yield cid
        yield from staged

    def __len__(self) -> int:
        """How many blocks are stored (a full scan for an on-disk store)."""
        return sum(1 for _ in self)

    def __bool__(self) -> bool:
        """Always true: an empty store is still a store, and a truth test must not count blocks."""
        return True

    def read_soon(self, wanted: Iterable[bytes]) -> None:
        """*wanted* will be read shortly, in order (a reader's next leaves): a store on a disk
        starts loading them now, so the disk works while the reader goes on. A hint, never an
        error (a block it lacks is met by whoever reads it). Nothing here."""
        return

    # --- what a store that fetches missing blocks does more (remote/fetching.py) ----------

    @property
    def fetches_missing(self) -> bool:
        """Whether a block this store lacks may still come, from elsewhere, when read: then a read
        may wait on the network, and a reader may ask for blocks ahead of need. False here."""
        return False

    def prefetch(self, wanted: Iterable[bytes], *, wait: bool = True) -> None:
        """Where :attr:`fetches_missing`, fetch those of *wanted* the store lacks, side by side (a
        listing's entries, a reader's next leaves). *wait*: return once each is here or failed (a
        failure is met again by whoever reads that block); else at once. Nothing here."""
        return

    def prefetch_dag(self, root: bytes) -> Future[None] | None:
        """Where :attr:`fetches_missing`, fetch what the store lacks of the DAG under *root* in the
        background, in one request if a source can send a whole DAG (a reader's next stretch of a
        file). Its future (done once the blocks are here or the fetch failed, which is only
        logged), or None when nothing is fetched so: then the reader fetches block by block.
        None here."""
        return None

    def _batch_lookup(self, cid: bytes) -> bytes | None:
        batch = self._batches.current
        return batch.lookup(cid) if batch is not None else None

    # --- writing ----------------------------------------------------------------

    def put(self, data: Chunk, codec: int) -> bytes:
        """Store *data* under its CID and return the CID; an existing block is left alone.

        *data* may be a view (of a caller's buffer, say): it is hashed once and copied or
        written once, and not kept.
        """
        batch = self._batches.current
        if batch is not None:
            return batch.put(data, codec)
        cid = block_cid(_check_codec(codec), data)
        if not self._claim(cid):
            self._add(cid, data)
        return cid

    def put_leaves(self, data: Chunk, chunk_size: int) -> tuple[list[tuple[bytes, int]], bytes | None]:
        """Store *data* as raw leaves of *chunk_size* bytes (the last one shorter): their
        ``(cid, length)`` in order, and *data* as immutable bytes if the store keeps the leaves
        as views of it (then :meth:`keep_whole` may follow), else None."""
        batch = self._batches.current
        if batch is not None:
            return batch.put_leaves(data, chunk_size)
        return put_leaves_one_by_one(self, data, chunk_size), None

    def keep_whole(self, root: bytes, data: bytes, leaves: list[bytes]) -> None:
        """The chunked file under FBL root *root* is *data*, whose *leaves* :meth:`put_leaves`
        stored: a store that holds them as views of it can serve the file whole (:meth:`whole_file`)."""
        batch = self._batches.current
        if batch is not None:
            batch.keep_whole(root, data, leaves)

    def whole_file(self, root: bytes) -> memoryview | None:
        """The bytes of the chunked file under FBL root *root* as one view, without a copy, if this
        store holds them back to back in memory (:meth:`keep_whole`); None: read its leaves."""
        return None

    def put_block(self, cid: bytes, data: bytes) -> None:
        """Store a block that came from outside (CAR, network), refusing bytes that lie."""
        if not is_supported(cid):
            raise InvalidCIDError(
                f"cannot store {cid_to_str(cid)}: only CIDv1 raw, dag-cbor or dag-pb with sha2-256"
            )
        if not verify(cid, data):
            raise CorruptBlockError(f"refusing block {cid_to_str(cid)}: its bytes do not hash to the CID")
        batch = self._batches.current
        if batch is not None:
            batch.put_verified(cid, data)
        elif not self._claim(cid):
            self._add(cid, bytes(data))

    def put_stream(self, chunks: Iterable[Chunk], codec: int = RAW) -> bytes:
        """Store one block given piecewise (hashed while written) and return its CID."""
        batch = self._batches.current
        if batch is not None:
            return batch.put_stream(chunks, _check_codec(codec))
        return self._add_stream(chunks, _check_codec(codec))

    @abstractmethod
    def staging(self) -> Staging[Any]:
        """A new, empty :class:`Staging` over this store."""

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Stage this thread's puts and make them durable together on normal exit.

        If the body raises, nothing staged becomes visible. A nested ``batch()``
        joins the outer one. The batch belongs to the calling thread.
        """
        if self._batches.current is not None:
            yield
            return
        staging = self.staging()
        self._batches.open(staging)
        try:
            yield
        except BaseException:
            self._batches.close()
            staging.discard()
            raise
        self._batches.close()
        staging.commit(durable=True)

    def sync(self) -> None:
        """Make every block put so far durable (a no-op where puts already are, or nothing is on disk)."""
        return

    # --- garbage collection -------------------------------------------------------

    def delete(self, cid: bytes) -> bool:
        """Remove a stored block; False if it was not stored. Nothing checks that no one needs it:
        see :func:`~ipldmount.blocks.gc.collect_garbage` for the safe way."""
        return is_supported(cid) and self._remove(cid, None) is not None

    def remove_unused(self, cid: bytes, older_than: float | None, dry_run: bool = False) -> int | None:
        """For a collector that knows no kept root reaches *cid*: remove the block unless it was
        written or claimed at or after *older_than*. Its size, or None if absent or kept."""
        return self._remove(cid, older_than, dry_run) if is_supported(cid) else None

    def settle(self, before: float) -> None:
        """Say that every block this process stored or claimed before *before* (``time.time()``)
        is now referenced by a root or journal that garbage collection keeps: that part of its
        lease (if the store keeps leases) ends."""
        return

    @contextmanager
    def holding(self) -> Iterator[None]:
        """Around storing blocks and then linking them into a tree or journal: a :meth:`settle`
        meanwhile (another thread's commit) keeps what this stores leased (lease.py)."""
        yield

    def protected_since(self) -> float | None:
        """Blocks written or claimed at or after this time (``time.time()``) may be in use by a
        live writer of another process: collecting garbage must keep them. None: no such writer."""
        return None

    @contextmanager
    def sweeping(self) -> Iterator[None]:
        """Held while garbage collection removes a batch of blocks: no claim runs meanwhile."""
        yield

    def _not_found(self, cid: bytes) -> BlockNotFoundError:
        return BlockNotFoundError(f"block {cid_to_str(cid)} not found in {self!r}")

    # --- what an implementation provides -----------------------------------------

    @abstractmethod
    def _contains(self, cid: bytes) -> bool: ...

    def _claim(self, cid: bytes) -> bool:
        """:meth:`_contains`, renewing a stored block's protection from garbage collection."""
        return self._contains(cid)

    def _known_intact(self, cid: bytes, data: bytes) -> bool:
        """Whether :meth:`get` may skip hashing *data*: only where the bytes cannot have changed
        since this store hashed them itself (never for bytes read back from a disk)."""
        return False

    @abstractmethod
    def _remove(self, cid: bytes, older_than: float | None, dry_run: bool = False) -> int | None:
        """Delete a block unless it was written or claimed at or after *older_than*; return its
        size, or None when it was absent or kept (*dry_run*: only say so)."""

    @abstractmethod
    def _lookup(self, cid: bytes) -> bytes | None:
        """The stored bytes, or None."""

    @abstractmethod
    def _read_range(self, cid: bytes, offset: int, size: int) -> bytes | None: ...

    @abstractmethod
    def _block_size(self, cid: bytes) -> int | None: ...

    @abstractmethod
    def _stored_cids(self) -> Iterator[bytes]: ...

    @abstractmethod
    def _add(self, cid: bytes, data: Chunk) -> None:
        """Store a block known to be absent, at once (durably if the store is durable)."""

    @abstractmethod
    def _add_stream(self, chunks: Iterable[Chunk], codec: int) -> bytes: ...
