"""A file's content while it is being written, before it becomes blocks.

Writers almost always go forward (zarr chunks, netCDF, ``cp``). For them the
buffer keeps only the leaf being filled, in memory: a write is a memory copy,
and a completed leaf is handed to a small pool that hashes and stores it while
the writer goes on (at most a few leaves in flight), so data is hashed once, as
it arrives, and written to disk once, as its block. Closing then stores just
the last leaf and the layout root; an error storing a leaf surfaces there.

A writer that goes back into a leaf already stored (or any writer in
whole-files mode beyond the memory limit) moves the content into an unnamed
temporary file beside the blockstore; :meth:`WriteBuffer.store` then reads it
back in one pass. Whatever the pattern, the stored content is exactly what
:func:`files.store_bytes` makes of the same bytes.

Methods that may touch the disk or hash are for worker threads; the cheap-call
checks tell the caller when a call is a plain memory copy. A lock serializes
calls per buffer. FUSE-free: the adapter decides what runs where.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from . import cid as cids
from .blockstore import Blockstore
from .files import BLOCK_LIMIT, FileReader, StoredFile, store_bytes, store_leaves, store_stream

COPY_CHUNK = 1 << 20
MAX_IN_FLIGHT = 4  # leaves being stored at once per buffer: bounds memory, keeps both cores busy
_LEAF_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ipldmount-leaf")


class WriteBuffer:
    def __init__(
        self, store: Blockstore, tmp_dir: Path, chunk_size: int | None, memory_limit: int = BLOCK_LIMIT
    ) -> None:
        self._store = store
        self._tmp_dir = tmp_dir
        self._chunk = chunk_size
        self._memory_limit = memory_limit
        self.size = 0
        self._leaves: list[Future[bytes]] = []  # the CIDs of the leaves covering [0, _streamed)
        self._in_flight: deque[Future[bytes]] = deque()
        self._streamed = 0
        self._pending = bytearray()  # bytes [_streamed, size) while going forward
        self._fd: int | None = None  # the whole content, once the writer has not gone forward
        self._lock = threading.Lock()

    @classmethod
    def from_reader(
        cls, store: Blockstore, tmp_dir: Path, chunk_size: int | None, reader: FileReader
    ) -> WriteBuffer:
        """A buffer holding a file's current content, to be changed in place (does I/O)."""
        buffer = cls(store, tmp_dir, chunk_size)
        with buffer._lock:
            if reader.size > buffer._window_end():
                buffer._fd = buffer._new_temporary()  # an edit of a big file: no point hashing it now
            for offset in range(0, reader.size, COPY_CHUNK):
                buffer._write(offset, reader.read(offset, COPY_CHUNK))
        return buffer

    # --- what is cheap ------------------------------------------------------------

    def _window_end(self) -> int:
        """Where the in-memory window ends: the end of the leaf being filled."""
        return self._streamed + (self._chunk if self._chunk is not None else self._memory_limit)

    def write_is_cheap(self, offset: int, end: int) -> bool:
        """True when writing [offset, end) is a memory copy (and maybe a hand-off): fine on an event loop."""
        if self._fd is not None or offset < self._streamed:
            return False
        if end < self._window_end():
            return True
        if self._chunk is None:
            return False
        completed = (end - self._streamed) // self._chunk
        return len(self._in_flight) + completed <= MAX_IN_FLIGHT

    def read_is_cheap(self, offset: int) -> bool:
        return self._fd is None and offset >= self._streamed

    # --- writing ------------------------------------------------------------------

    def write(self, offset: int, data: bytes) -> int:
        with self._lock:
            self._write(offset, data)
            return len(data)

    def _write(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        if self._fd is None and (
            offset < self._streamed or (self._chunk is None and end > self._memory_limit)
        ):
            self._to_temporary()
        if self._fd is not None:
            self._pwrite(data, offset)
        else:
            start = offset - self._streamed
            if start > len(self._pending):
                self._pending.extend(bytes(start - len(self._pending)))
            self._pending[start : start + len(data)] = data
        self.size = max(self.size, end)
        self._store_full_leaves()

    def truncate(self, size: int) -> None:
        with self._lock:
            if self._fd is None and (
                size < self._streamed or (self._chunk is None and size > self._memory_limit)
            ):
                self._to_temporary()
            if self._fd is not None:
                os.ftruncate(self._fd, size)
            else:
                keep = size - self._streamed
                if keep < len(self._pending):
                    del self._pending[keep:]
                else:
                    self._pending.extend(bytes(keep - len(self._pending)))
            self.size = size
            self._store_full_leaves()

    def _store_full_leaves(self) -> None:
        """Hand every leaf the forward writer has filled to the pool; wait if too many are in flight."""
        chunk = self._chunk
        if self._fd is not None or chunk is None:
            return
        while len(self._pending) >= chunk:
            leaf = bytes(self._pending[:chunk])
            del self._pending[:chunk]
            stored = _LEAF_POOL.submit(self._store.put, leaf, cids.RAW)
            self._leaves.append(stored)
            self._in_flight.append(stored)
            self._streamed += chunk
        while self._in_flight and (self._in_flight[0].done() or len(self._in_flight) > MAX_IN_FLIGHT):
            self._in_flight.popleft().result()  # raises what storing it raised (a full disk, say)

    def _to_temporary(self) -> None:
        """Move the content into a temporary file: the writer stopped going forward."""
        fd = self._new_temporary()
        offset = 0
        for stored in self._leaves:
            leaf = self._store.get(stored.result())
            self._pwrite(leaf, offset, fd)
            offset += len(leaf)
        self._pwrite(self._pending, offset, fd)
        self._fd, self._leaves, self._streamed, self._pending = fd, [], 0, bytearray()
        self._in_flight.clear()

    def _new_temporary(self) -> int:
        return os.open(self._tmp_dir, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)

    def _pwrite(self, data: bytes | bytearray, offset: int, fd: int | None = None) -> None:
        target = self._fd if fd is None else fd
        assert target is not None
        view = memoryview(data)
        while view:
            written = os.pwrite(target, view, offset)
            view, offset = view[written:], offset + written

    # --- reading and storing ----------------------------------------------------

    def read(self, offset: int, size: int) -> bytes:
        with self._lock:
            end = min(offset + size, self.size)
            if offset >= end:
                return b""
            if self._fd is not None:
                return os.pread(self._fd, end - offset, offset)
            parts = []
            if offset < self._streamed:
                parts.append(self._read_leaves(offset, min(end, self._streamed)))
            start = max(offset, self._streamed) - self._streamed
            parts.append(bytes(self._pending[start : end - self._streamed]))
            return b"".join(parts)

    def _read_leaves(self, offset: int, end: int) -> bytes:
        assert self._chunk is not None
        parts = []
        while offset < end:
            index, within = divmod(offset, self._chunk)
            piece = self._store.read(
                self._leaves[index].result(), within, min(end - offset, self._chunk - within)
            )
            parts.append(piece)
            offset += len(piece)
        return b"".join(parts)

    def store(self) -> StoredFile:
        """Put the content in the blockstore (the leaves stored so far are reused)."""
        with self._lock:
            if self._fd is not None:
                with os.fdopen(os.dup(self._fd), "rb") as stream:
                    stream.seek(0)
                    return store_stream(self._store, stream, self._chunk)
            if not self._leaves:
                return store_bytes(self._store, bytes(self._pending), self._chunk)
            assert self._chunk is not None
            entries = [(stored.result(), self._chunk) for stored in self._leaves]
            if self._pending:
                entries.append((self._store.put(bytes(self._pending), cids.RAW), len(self._pending)))
            return store_leaves(self._store, entries)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._pending = bytearray()
