"""Blocks a store lacks, fetched on first use from an IPFS node or gateways, and kept.

A :class:`~ipldmount.blocks.base.Blockstore` given a :class:`BlockFetcher` reads a block
it does not hold from the fetcher's sources (in order), verifies it, stores it, and goes on:
the local store is the cache, and a tree or a mount over it sees the remote DAG as if it
were local, fetching only the blocks it touches. A block no source has within its timeout
fails that read (BlockNotFoundError, EIO through the mount), and is not asked for again for
a little while, so a broken link costs one timeout, not one per request.

An event loop must never wait on the network: code running in one marks it with
:meth:`BlockFetcher.no_waiting`, and a block needed there raises :class:`MustFetchError`
instead, for the caller to fetch it (:meth:`BlockFetcher.fetch`) in a worker thread and
try again.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

from ipldmount.errors import BlockNotFoundError, MustFetchError, RemoteError
from ipldmount.ipld.cid import cid_to_str, verify

log = logging.getLogger(__name__)

UNAVAILABLE_FOR = 30.0  # seconds a block no source could give is answered "not found" at once
UNAVAILABLE_KEPT = 4096  # such blocks remembered before the expired ones are dropped

# The thread (by ident) in which the current task must not wait on the network; None: anywhere.
_NO_WAIT: contextvars.ContextVar[int | None] = contextvars.ContextVar("ipldmount_no_wait", default=None)


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
