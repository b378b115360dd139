"""Blocks in a dict: tests, and in-process stores that never touch a disk."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator

from ipldmount.blocks.base import Blockstore, Chunk, Staging
from ipldmount.ipld.cid import (
    RAW,
    block_cid,
    digest_cid,
)

log = logging.getLogger(__name__)


Block = bytes | memoryview  # a leaf of a file stored whole is a view of the file's bytes
_Whole = tuple[bytes, list[bytes]]  # a chunked file's bytes, and its leaves' CIDs


def _put_views(
    holder: MemoryStaging | MemoryBlockstore, data: Chunk, chunk_size: int
) -> tuple[list[tuple[bytes, int]], bytes]:
    """Leaves of *data* kept as views of one immutable copy of it (the one copy a put makes
    anyway, taken whole): such a file can be read back whole without a copy."""
    whole = data if type(data) is bytes else bytes(data)
    view = memoryview(whole)
    entries = []
    for start in range(0, len(whole), chunk_size):
        leaf = view[start : start + chunk_size]
        cid = block_cid(RAW, leaf)
        holder.keep_view(cid, leaf)
        entries.append((cid, len(leaf)))
    return entries, whole


class MemoryStaging(Staging[Block]):
    """Staged blocks as bytes (or views of a staged file's bytes); committing adds them to the
    store's dict."""

    store: MemoryBlockstore

    def __init__(self, store: MemoryBlockstore) -> None:
        super().__init__(store)
        self._wholes: dict[bytes, _Whole] = {}

    def put_leaves(self, data: Chunk, chunk_size: int) -> tuple[list[tuple[bytes, int]], bytes | None]:
        return _put_views(self, data, chunk_size)

    def keep_view(self, cid: bytes, leaf: memoryview) -> None:
        if not self.claim(cid):
            self._keep(cid, leaf)

    def keep_whole(self, root: bytes, data: bytes, leaves: list[bytes]) -> None:
        with self._lock:
            self._wholes[root] = (data, leaves)

    def discard(self) -> None:
        with self._lock:
            self._wholes = {}
        super().discard()

    def put(self, data: Chunk, codec: int) -> bytes:
        """Copied first, then hashed: the bytes kept are the bytes hashed, even if the caller's
        buffer changes meanwhile (the store trusts them from then on, see MemoryBlockstore)."""
        return super().put(bytes(data), codec)

    def _stage(self, data: Chunk) -> Block:
        return bytes(data)  # no copy of what put() copied already

    def _stage_stream(self, chunks: Iterable[Chunk], codec: int) -> tuple[bytes, bytes]:
        data = b"".join(bytes(chunk) for chunk in chunks)
        return block_cid(codec, data), data

    def _read(self, handle: Block, offset: int, size: int) -> bytes:
        return bytes(handle[offset:] if size < 0 else handle[offset : offset + size])

    def _size(self, handle: Block) -> int:
        return len(handle)

    def _release(self, handle: Block) -> None:
        return

    def _install(self, items: dict[bytes, Block], durable: bool) -> None:
        for cid in list(items):
            self.store._keep(cid, items.pop(cid))  # staged blocks were all hashed as they came
        with self._lock:
            wholes, self._wholes = self._wholes, {}
        for root, (data, leaves) in wholes.items():
            self.store._keep_whole(root, data, leaves)


class MemoryBlockstore(Blockstore):
    """Blocks in a dict.

    A block this store hashed itself on the way in is not hashed again by :meth:`get`:
    it is an immutable ``bytes`` that cannot have changed since, and hashing it on every
    read would cost as much as the write did. Blocks that came from a pickle, or that
    anything put into the dict behind the store's back, are checked as on a disk.
    """

    def __init__(self) -> None:
        super().__init__()
        self._blocks: dict[bytes, Block] = {}
        # The very bytes objects hashed by this store, by CID (identity is what is trusted).
        self._hashed: dict[bytes, Block] = {}
        self._wholes: dict[bytes, _Whole] = {}  # chunked files whose leaves are views of their bytes

    def __repr__(self) -> str:
        return f"<MemoryBlockstore of {len(self._blocks)} blocks>"

    def __getstate__(self) -> dict[str, dict[bytes, bytes]]:
        """Pickle the committed blocks only, as bytes: staging is per thread and per process."""
        return {
            "blocks": {
                cid: block if type(block) is bytes else bytes(block) for cid, block in self._blocks.items()
            }
        }

    def __setstate__(self, state: dict[str, dict[bytes, bytes]]) -> None:
        Blockstore.__init__(self)
        self._blocks = dict(state["blocks"])
        self._hashed = {}  # bytes from a pickle are checked when read
        self._wholes = {}

    def put_leaves(self, data: Chunk, chunk_size: int) -> tuple[list[tuple[bytes, int]], bytes | None]:
        batch = self._batches.current
        if batch is not None:
            return batch.put_leaves(data, chunk_size)
        return _put_views(self, data, chunk_size)

    def keep_view(self, cid: bytes, leaf: memoryview) -> None:
        """Keep *leaf*, a view of immutable bytes hashed to *cid*, as it is (no copy)."""
        if not self._claim(cid):
            self._keep(cid, leaf)

    def keep_whole(self, root: bytes, data: bytes, leaves: list[bytes]) -> None:
        batch = self._batches.current
        if batch is not None:
            batch.keep_whole(root, data, leaves)
        else:
            self._keep_whole(root, data, leaves)

    def _keep_whole(self, root: bytes, data: bytes, leaves: list[bytes]) -> None:
        """Serve the file whole if the leaves kept are all views of *data* (none was there before)."""
        kept = (self._blocks.get(cid) for cid in leaves)
        if root in self._blocks and all(isinstance(leaf, memoryview) and leaf.obj is data for leaf in kept):
            self._wholes[root] = (data, leaves)

    def whole_file(self, root: bytes) -> memoryview | None:
        found = self._wholes.get(root)
        if found is None:
            return None
        data, leaves = found
        if root not in self._blocks or any(cid not in self._blocks for cid in leaves):
            return None  # one was removed (collected): read what is left the usual way
        return memoryview(data)

    def put(self, data: Chunk, codec: int) -> bytes:
        """Copied first, then hashed (as :meth:`MemoryStaging.put`): what is kept is what was hashed."""
        return super().put(bytes(data), codec)

    def staging(self) -> MemoryStaging:
        return MemoryStaging(self)

    def _contains(self, cid: bytes) -> bool:
        return cid in self._blocks

    def _lookup(self, cid: bytes) -> bytes | None:
        block = self._blocks.get(cid)
        return block if block is None or type(block) is bytes else bytes(block)

    def _known_intact(self, cid: bytes, data: bytes) -> bool:
        hashed = self._hashed.get(cid)
        # A view this store hashed is of bytes that cannot change: a copy of it is intact too.
        return hashed is data or (type(hashed) is memoryview and self._blocks.get(cid) is hashed)

    def _read_range(self, cid: bytes, offset: int, size: int) -> bytes | None:
        data = self._blocks.get(cid)
        return None if data is None else bytes(data[offset : offset + size])

    def _block_size(self, cid: bytes) -> int | None:
        data = self._blocks.get(cid)
        return None if data is None else len(data)

    def _stored_cids(self) -> Iterator[bytes]:
        yield from list(self._blocks)

    def _remove(self, cid: bytes, older_than: float | None, dry_run: bool = False) -> int | None:
        """In memory there are no other processes: a collector runs with its writers' cooperation
        (:meth:`IPLDStore.collect_garbage <ipldmount.adapters.zarr_store.IPLDStore.collect_garbage>` holds
        the store's lock), so *older_than* does not apply."""
        if dry_run:
            data = self._blocks.get(cid)
        else:
            data = self._blocks.pop(cid, None)
            self._hashed.pop(cid, None)
            self._wholes.pop(cid, None)
        return None if data is None else len(data)

    def __len__(self) -> int:
        batch = self._batches.current
        staged = batch.staged() if batch is not None else []
        return len(self._blocks) + sum(1 for cid in staged if cid not in self._blocks)

    def _add(self, cid: bytes, data: Chunk) -> None:
        """Keep a copy of *data* (our own: a view's owner may change it), hashed by the caller."""
        self._keep(cid, bytes(data))

    def _keep(self, cid: bytes, data: Block) -> None:
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
