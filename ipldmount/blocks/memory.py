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

    def _stage(self, data: Chunk) -> bytes:
        return bytes(data)

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
            self.store._blocks.setdefault(cid, items.pop(cid))


class MemoryBlockstore(Blockstore):
    """Blocks in a dict."""

    def __init__(self) -> None:
        super().__init__()
        self._blocks: dict[bytes, bytes] = {}

    def __repr__(self) -> str:
        return f"<MemoryBlockstore of {len(self._blocks)} blocks>"

    def __getstate__(self) -> dict[str, dict[bytes, bytes]]:
        """Pickle the committed blocks only: staging is per thread and per process."""
        return {"blocks": self._blocks}

    def __setstate__(self, state: dict[str, dict[bytes, bytes]]) -> None:
        Blockstore.__init__(self)
        self._blocks = state["blocks"]

    def staging(self) -> MemoryStaging:
        return MemoryStaging(self)

    def _contains(self, cid: bytes) -> bool:
        return cid in self._blocks

    def _lookup(self, cid: bytes) -> bytes | None:
        return self._blocks.get(cid)

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
        data = self._blocks.get(cid) if dry_run else self._blocks.pop(cid, None)
        return None if data is None else len(data)

    def __len__(self) -> int:
        batch = self._batches.current
        staged = batch.staged() if batch is not None else []
        return len(self._blocks) + sum(1 for cid in staged if cid not in self._blocks)

    def _add(self, cid: bytes, data: bytes) -> None:
        self._blocks[cid] = bytes(data)

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
