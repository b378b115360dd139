"""Blocks a store lacks, fetched on first use from an IPFS node or gateways, and kept.

A :class:`FetchingBlockstore` wraps a local :class:`~ipldmount.blocks.base.Blockstore`: a
block the local store does not hold is read from a :class:`BlockFetcher`'s sources (in order),
verified, kept in the local store, and returned. The local store is the cache, and a tree or
a mount over the wrapper sees the remote DAG as if it were local, fetching only the blocks it
touches. A block no source has within its timeout fails that read (BlockNotFoundError, EIO
through the mount), and is not asked for again for a little while, so a broken link costs one
timeout, not one per request.

An event loop must never wait on the network: code running in one marks it with
:meth:`BlockFetcher.no_waiting`, and a block needed there raises :class:`MustFetchError`
instead, for the caller to fetch it (``store.get``) in a worker thread and try again.

Nothing here loads an HTTP client: the sources a fetcher is given (:mod:`.kubo`,
:mod:`.gateway`) do, when they are built.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Generic, ParamSpec, Protocol, TypeVar

from ipldmount.blocks.base import Blockstore, Chunk, Staging
from ipldmount.errors import BlockNotFoundError, CorruptBlockError, IpldmountError, RemoteError
from ipldmount.ipld.cid import RAW, cid_to_str, is_supported, verify
from ipldmount.remote.exchange import CarSource, fetch_dag_ahead

log = logging.getLogger(__name__)

UNAVAILABLE_FOR = 30.0  # seconds a block no source could give is answered "not found" at once
UNAVAILABLE_KEPT = 4096  # such blocks remembered before the expired ones are dropped
BLOCK_FETCH_THREADS = 8  # blocks a store fetches ahead at once: network-bound, so more than cores
DAG_FETCH_THREADS = 2  # DAGs (one CAR each) a store fetches ahead at once

# The thread (by ident) in which the current task must not wait on the network; None: anywhere.
_NO_WAIT: contextvars.ContextVar[int | None] = contextvars.ContextVar("ipldmount_no_wait", default=None)


class MustFetchError(IpldmountError):
    """A block must come from the network, and this thread (an event loop) must not wait for it:
    the caller fetches it in a worker thread and tries again (never seen outside the mount; the
    tree and the format let it pass)."""

    def __init__(self, cid: bytes) -> None:
        super().__init__(f"block {cid_to_str(cid)} must be fetched from the network first")
        self.cid = cid


Lookup = Callable[[bytes], "bytes | None"]  # a block from the local store, or None
Keep = Callable[[bytes, bytes], None]  # store a fetched (verified) block locally


class BlockSource(Protocol):
    """Where a missing block may come from: an IPFS node or a trustless gateway. Verifies what it
    returns against the CID, and raises RemoteError if it cannot."""

    def get_block(self, cid: bytes) -> bytes: ...


class BlockFetcher:
    """Fetches blocks from *sources* (tried in order), once each however many threads ask."""

    def __init__(self, sources: Sequence[BlockSource], unavailable_for: float = UNAVAILABLE_FOR) -> None:
        if not sources:
            raise ValueError("a fetcher needs at least one source")
        self.sources = list(sources)
        self._unavailable_for = unavailable_for
        self._lock = threading.Lock()
        self._in_flight: dict[bytes, threading.Event] = {}
        self._unavailable: dict[bytes, tuple[float, str]] = {}  # cid -> (until, why)

    def __repr__(self) -> str:
        return f"BlockFetcher({self.sources!r})"

    @staticmethod
    @contextmanager
    def no_waiting() -> Iterator[None]:
        """In this task, on this thread, a block to fetch raises MustFetchError instead of waiting."""
        token = _NO_WAIT.set(threading.get_ident())
        try:
            yield
        finally:
            _NO_WAIT.reset(token)

    @staticmethod
    def may_wait() -> bool:
        """False inside :meth:`no_waiting` (this thread must not wait for the network)."""
        return _NO_WAIT.get() != threading.get_ident()

    def fetch(self, cid: bytes, local: Lookup, keep: Keep) -> bytes:
        """The block *cid* from the first source that has it (verified by the source), kept with
        *keep*; when another thread is fetching it already, that thread's copy, read with *local*.

        Raises BlockNotFoundError when no source gives it (saying why each failed), at once for
        a block none gave recently, also where waiting is not allowed (code that can do without
        the block goes on, not after a round trip through a worker); MustFetchError where waiting
        is not allowed for any other block.
        """
        self._check_available(cid)
        if not self.may_wait():
            raise MustFetchError(cid)
        while True:
            self._check_available(cid)
            leader, event = self._join(cid)
            if leader:
                break
            event.wait()
            data = local(cid)
            if data is not None:
                return data
        try:
            data = self.fetch_now(cid)
            keep(cid, data)
            return data
        finally:
            with self._lock:
                self._in_flight.pop(cid, None)
            event.set()

    def _join(self, cid: bytes) -> tuple[bool, threading.Event]:
        with self._lock:
            event = self._in_flight.get(cid)
            if event is not None:
                return False, event
            event = self._in_flight[cid] = threading.Event()
            return True, event

    def _check_available(self, cid: bytes) -> None:
        with self._lock:
            until, why = self._unavailable.get(cid, (0.0, ""))
        if time.monotonic() < until:
            raise BlockNotFoundError(f"block {cid_to_str(cid)} is not in the store, and {why} (recently)")

    def fetch_now(self, cid: bytes) -> bytes:
        """Ask the sources in order, now, in this thread."""
        reasons = []
        for source in self.sources:
            try:
                data = source.get_block(cid)
            except RemoteError as exc:
                reasons.append(str(exc))
                continue
            if not verify(cid, data):  # sources check too: this one guards the store itself
                reasons.append(f"{source!r} sent bytes that do not hash to the CID")
                continue
            log.debug("fetched %s (%d bytes) from %r", cid_to_str(cid), len(data), source)
            return data
        why = "no source has it: " + "; ".join(reasons)
        now = time.monotonic()
        with self._lock:
            if len(self._unavailable) >= UNAVAILABLE_KEPT:  # forget the ones whose time is up
                self._unavailable = {key: entry for key, entry in self._unavailable.items() if entry[0] > now}
            self._unavailable[cid] = (now + self._unavailable_for, why)
        log.debug("block %s: %s", cid_to_str(cid), why)  # raised: whoever catches it says so
        raise BlockNotFoundError(f"block {cid_to_str(cid)} is not in the store, and {why}")


P = ParamSpec("P")
T = TypeVar("T")
L = TypeVar("L", bound=Blockstore)


class FetchingBlockstore(Blockstore, Generic[L]):
    """A store that reads what its *local* store lacks from *fetcher*'s sources and keeps it there.

    A read of a block *local* does not hold fetches it (verified by the fetcher) and keeps it in
    *local*; so does a read of a block stored there corrupt (a bad disk: the sources have it
    whole). Everything else is *local*'s own: its blocks, batches, staging, sync, leases and
    sweeps, so gc and writers see one store whichever of the two they are given. What only the
    local store has (a directory store's path, its files) is reached through :attr:`local`.

    Fetching ahead (:meth:`prefetch`, :meth:`prefetch_dag`) runs in thread pools this store
    owns, started on first use; :meth:`close` shuts them down. *local* stays open: its maker
    closes it.
    """

    def __init__(self, local: L, fetcher: BlockFetcher) -> None:
        super().__init__()
        self.local = local
        self.fetcher = fetcher
        self._car_sources = [source for source in fetcher.sources if isinstance(source, CarSource)]
        self._block_workers = _LazyThreadPool(BLOCK_FETCH_THREADS, "ipldmount-prefetch")
        self._dag_workers = _LazyThreadPool(DAG_FETCH_THREADS, "ipldmount-dag-prefetch")

    def __repr__(self) -> str:
        return f"<FetchingBlockstore into {self.local!r} from {self.fetcher.sources!r}>"

    def close(self) -> None:
        """Stop fetching ahead: what was asked for and not started is dropped, what is under way
        ends (within the sources' timeouts) before this returns. Reads still fetch what they need,
        and a later prefetch starts the pools again."""
        self._block_workers.close()
        self._dag_workers.close()

    # --- reading: the local store, else the sources -----------------------------------------

    @property
    def fetches_missing(self) -> bool:
        return True

    def has(self, cid: bytes) -> bool:
        return self.local.has(cid)

    def claim(self, cid: bytes) -> bool:
        return self.local.claim(cid)

    def get(self, cid: bytes) -> bytes:
        try:
            return self.local.get(cid)
        except BlockNotFoundError:
            if not is_supported(cid):
                raise  # no source could send it: nothing to ask for
        except CorruptBlockError as exc:
            log.warning("%s: dropped, and fetched again", exc)  # the sources have it whole
            self.local.delete(cid)
        return self._fetch(cid)

    def read(self, cid: bytes, offset: int, size: int) -> bytes:
        try:
            return self.local.read(cid, offset, size)
        except BlockNotFoundError:
            if not is_supported(cid):
                raise
        return self._fetch(cid)[offset : offset + size]

    def size(self, cid: bytes) -> int:
        try:
            return self.local.size(cid)
        except BlockNotFoundError:
            if not is_supported(cid):
                raise
        return len(self._fetch(cid))

    def _fetch(self, cid: bytes) -> bytes:
        """A block the local store lacks, from the sources (verified), then kept there."""
        return self.fetcher.fetch(cid, self.local._lookup, self._keep_fetched)

    def _keep_fetched(self, cid: bytes, data: bytes) -> None:
        # Through the local store's primitives: the block is verified already (no second hash),
        # and it goes into the store now, outside any batch of the thread that asked for it (a
        # batch that fails must not take a fetched block with it).
        if not self.local._claim(cid):
            self.local._add(cid, data)

    def read_soon(self, wanted: Iterable[bytes]) -> None:
        """Those of *wanted* held here start loading from the local disk (see :meth:`prefetch`
        for the others)."""
        self.local.read_soon(wanted)

    def prefetch(self, wanted: Iterable[bytes], *, wait: bool = True) -> None:
        """Fetch those of *wanted* the local store lacks, side by side (see
        :meth:`Blockstore.prefetch`). A thread that must not wait on the network (the mount's
        event loop, a zarr store's lookup under its lock) starts them without waiting: its
        reader then fetches the one it needs first in a worker, and finds the others on their
        way rather than asking for each in turn, a round trip apiece."""
        if wait and not self.fetcher.may_wait():
            wait = False
        missing = [cid for cid in wanted if is_supported(cid) and not self.has(cid)]
        fetching = [self._block_workers.submit(self._fetch_quietly, cid) for cid in missing]
        for done in fetching if wait else ():
            with contextlib.suppress(futures.CancelledError):  # closed meanwhile: not fetched ahead
                done.result()

    def _fetch_quietly(self, cid: bytes) -> None:
        try:
            self.get(cid)
        except IpldmountError as exc:
            log.debug("fetching %s ahead of need failed: %s", cid_to_str(cid), exc)

    def prefetch_dag(self, root: bytes) -> Future[None] | None:
        """Pull the DAG under *root* in the background from the sources that send CARs (an IPFS
        node, a trustless gateway): one request for many blocks, where fetching each is a round
        trip. None when no source sends CARs (see :meth:`Blockstore.prefetch_dag`)."""
        if not self._car_sources:
            return None
        return self._dag_workers.submit(fetch_dag_ahead, self.local, root, self._car_sources)

    # --- everything else is the local store's -----------------------------------------------

    def put(self, data: Chunk, codec: int) -> bytes:
        return self.local.put(data, codec)

    def put_leaves(self, data: Chunk, chunk_size: int) -> tuple[list[tuple[bytes, int]], bytes | None]:
        return self.local.put_leaves(data, chunk_size)

    def keep_whole(self, root: bytes, data: bytes, leaves: list[bytes]) -> None:
        self.local.keep_whole(root, data, leaves)

    def whole_file(self, root: bytes) -> memoryview | None:
        return self.local.whole_file(root)

    def put_block(self, cid: bytes, data: bytes) -> None:
        self.local.put_block(cid, data)

    def put_stream(self, chunks: Iterable[Chunk], codec: int = RAW) -> bytes:
        return self.local.put_stream(chunks, codec)

    def staging(self) -> Staging[Any]:
        return self.local.staging()

    @contextmanager
    def batch(self) -> Iterator[None]:
        with self.local.batch():
            yield

    def sync(self) -> None:
        self.local.sync()

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.local)

    def __len__(self) -> int:
        return len(self.local)

    def delete(self, cid: bytes) -> bool:
        return self.local.delete(cid)

    def remove_unused(self, cid: bytes, older_than: float | None, dry_run: bool = False) -> int | None:
        return self.local.remove_unused(cid, older_than, dry_run)

    def settle(self, before: float) -> None:
        self.local.settle(before)

    @contextmanager
    def holding(self) -> Iterator[None]:
        with self.local.holding():
            yield

    def protected_since(self) -> float | None:
        return self.local.protected_since()

    @contextmanager
    def sweeping(self) -> Iterator[None]:
        with self.local.sweeping():
            yield

    # The primitives, for the contract's sake: every public method above goes to the local store.

    def _contains(self, cid: bytes) -> bool:
        return self.local._contains(cid)

    def _claim(self, cid: bytes) -> bool:
        return self.local._claim(cid)

    def _known_intact(self, cid: bytes, data: bytes) -> bool:
        return self.local._known_intact(cid, data)

    def _remove(self, cid: bytes, older_than: float | None, dry_run: bool = False) -> int | None:
        return self.local._remove(cid, older_than, dry_run)

    def _lookup(self, cid: bytes) -> bytes | None:
        return self.local._lookup(cid)

    def _read_range(self, cid: bytes, offset: int, size: int) -> bytes | None:
        return self.local._read_range(cid, offset, size)

    def _block_size(self, cid: bytes) -> int | None:
        return self.local._block_size(cid)

    def _stored_cids(self) -> Iterator[bytes]:
        return self.local._stored_cids()

    def _add(self, cid: bytes, data: Chunk) -> None:
        self.local._add(cid, data)

    def _add_stream(self, chunks: Iterable[Chunk], codec: int) -> bytes:
        return self.local._add_stream(chunks, codec)


class _LazyThreadPool:
    """Worker threads started by the first task and shut down by :meth:`close` (started again by a
    task after that)."""

    def __init__(self, workers: int, name: str) -> None:
        self._workers, self._name = workers, name
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def submit(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        with self._lock:  # never into a pool being shut down
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix=self._name)
            return self._pool.submit(function, *args, **kwargs)

    def close(self) -> None:
        """Drop the tasks not started, wait for those under way, end the threads."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
