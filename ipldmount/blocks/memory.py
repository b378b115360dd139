"""Blocks in a dict: tests, and in-process stores that never touch a disk."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator

from ipldmount.blocks.base import Blockstore, Chunk, Staging
from ipldmount.ipld.cid import (
    block_cid,
    digest_cid,
)

log = logging.getLogger(__name__)


class MemoryStaging(Staging[bytes]):
    """Staged blocks as bytes; committing adds them to the store's dict."""

    store: MemoryBlockstore

    def put(self, data: Chunk, codec: int) -> bytes:
        """Copied first, then hashed: the bytes kept are the bytes hashed, even if the caller's
        buffer changes meanwhile (the store trusts them from then on, see MemoryBlockstore)."""
        return super().put(bytes(data), codec)

    def _stage(self, data: Chunk) -> bytes:
        return bytes(data)  # no copy of what put() copied already

    def _stage_stream(self, chunks: Iterable[Chunk], codec: int) -> tuple[bytes, bytes]:
        data = b"".join(bytes(chunk) for chunk in chunks)
        return block_cid(codec, data), data

    def _read(self, handle: bytes, offset: int, size: int) -> bytes:
        return handle[offset:] if size < 0 else handle[offset : offset + size]

    def _size(self, handle: bytes) -> int:
        return len(handle)

    def _release(self, handle: bytes) -> None:
        return

    def _install(self, items: dict[bytes, bytes], durable: bool) -> None:
        for cid in list(items):
            self.store._keep(cid, items.pop(cid))  # staged blocks were all hashed as they came


class MemoryBlockstore(Blockstore):
    """Blocks in a dict.

    A block this store hashed itself on the way in is not hashed again by :meth:`get`:
    it is an immutable ``bytes`` that cannot have changed since, and hashing it on every
    read would cost as much as the write did. Blocks that came from a pickle, or that
    anything put into the dict behind the store's back, are checked as on a disk.
    """

    def __init__(self) -> None:
        super().__init__()
        self._blocks: dict[bytes, bytes] = {}
        # The very bytes objects hashed by this store, by CID (identity is what is trusted).
        self._hashed: dict[bytes, bytes] = {}

    def __repr__(self) -> str:
        return f"<MemoryBlockstore of {len(self._blocks)} blocks>"

    def __getstate__(self) -> dict[str, dict[bytes, bytes]]:
        """Pickle the committed blocks only: staging is per thread and per process."""
        return {"blocks": self._blocks}

    def __setstate__(self, state: dict[str, dict[bytes, bytes]]) -> None:
        Blockstore.__init__(self)
        self._blocks = state["blocks"]
        self._hashed = {}  # bytes from a pickle are checked when read

    def put(self, data: Chunk, codec: int) -> bytes:
        """Copied first, then hashed (as :meth:`MemoryStaging.put`): what is kept is what was hashed."""
        return super().put(bytes(data), codec)

    def staging(self) -> MemoryStaging:
        return MemoryStaging(self)

    def _contains(self, cid: bytes) -> bool:
        return cid in self._blocks

    def _lookup(self, cid: bytes) -> bytes | None:
        return self._blocks.get(cid)

    def _known_intact(self, cid: bytes, data: bytes) -> bool:
        return self._hashed.get(cid) is data

    def _read_range(self, cid: bytes, offset: int, size: int) -> bytes | None:
        data = self._blocks.get(cid)
        return None if data is None else data[offset : offset + size]

    def _block_size(self, cid: bytes) -> int | None:
        data = self._blocks.get(cid)
        return None if data is None else len(data)

    def _stored_cids(self) -> Iterator[bytes]:
        yield from list(self._blocks)

    def _remove(self, cid: bytes, older_than: float | None, dry_run: bool = False) -> int | None:
        """In memory there are no other processes: a collector runs with its writers' cooperation
        (:meth:`IPLDStore.collect_garbage <ipldmount.zarrstore.IPLDStore.collect_garbage>` holds
        the store's lock), so *older_than* does not apply."""
        if dry_run:
            data = self._blocks.get(cid)
        else:
            data = self._blocks.pop(cid, None)
            self._hashed.pop(cid, None)
        return None if data is None else len(data)

    def __len__(self) -> int:
        batch = self._batches.current
        staged = batch.staged() if batch is not None else []
        return len(self._blocks) + sum(1 for cid in staged if cid not in self._blocks)

    def _add(self, cid: bytes, data: Chunk) -> None:
        """Keep a copy of *data* (our own: a view's owner may change it), hashed by the caller."""
        self._keep(cid, bytes(data))

    def _keep(self, cid: bytes, data: bytes) -> None:
        """Store *data*, which this store hashed (or verified) as it came in, unless *cid* is there."""
        if self._blocks.setdefault(cid, data) is data:
            self._hashed[cid] = data

    def _add_stream(self, chunks: Iterable[Chunk], codec: int) -> bytes:
        hasher = hashlib.sha256()
        parts = []
        for chunk in chunks:
            hasher.update(chunk)
            parts.append(bytes(chunk))
        cid = digest_cid(codec, hasher.digest())
        if not self._claim(cid):
            self._add(cid, b"".join(parts))
        return cid
