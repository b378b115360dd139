"""A file's content while it is being written, before it becomes blocks.

Small files (most zarr chunks) stay in memory, so writing them costs no disk
I/O until they are stored. A file that outgrows that spills to an unnamed
temporary file beside the blockstore. While a writer goes strictly forward,
every full leaf is hashed and stored as soon as it is complete, so closing a
large file stores only its last leaf and the layout root instead of reading
the whole file back to hash it. Whatever the write pattern, :meth:`store`
gives exactly the content :func:`files.store_bytes` would give the same bytes.

Methods that may touch the disk or hash are meant for worker threads; a lock
serializes them per buffer. FUSE-free: the adapter decides what runs where.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from . import cid as cids
from .blockstore import Blockstore
from .files import BLOCK_LIMIT, FileReader, StoredFile, store_bytes, store_leaves, store_stream

COPY_CHUNK = 1 << 20


class WriteBuffer:
    def __init__(
        self, store: Blockstore, tmp_dir: Path, chunk_size: int | None, memory_limit: int = BLOCK_LIMIT
    ) -> None:
        self._store = store
        self._tmp_dir = tmp_dir
        self._chunk = chunk_size
        self._memory_limit = memory_limit
        self._memory: bytearray | None = bytearray()
        self._fd: int | None = None
        self.size = 0
        self._leaves: list[tuple[bytes, int]] = []  # stored leaves covering [0, _streamed)
        self._streamed = 0
        self._forward = chunk_size is not None  # False once a write lands in an already stored leaf
        self._lock = threading.Lock()

    @classmethod
    def from_reader(
        cls, store: Blockstore, tmp_dir: Path, chunk_size: int | None, reader: FileReader
    ) -> WriteBuffer:
        """A buffer holding a file's current content, to be changed in place (may do I/O)."""
        buffer = cls(store, tmp_dir, chunk_size)
        for offset in range(0, reader.size, COPY_CHUNK):
            buffer.write(offset, reader.read(offset, COPY_CHUNK))
        return buffer

    # --- writing ---------------------------------------------------------------

    def stays_in_memory(self, end: int) -> bool:
        """True when writing up to offset *end* touches no disk: cheap enough for an event loop."""
        return self._memory is not None and end <= self._memory_limit

    def write(self, offset: int, data: bytes) -> int:
        with self._lock:
            end = offset + len(data)
            if self._memory is not None and end > self._memory_limit:
                self._spill()
            if self._memory is not None:
                if offset > len(self._memory):
                    self._memory.extend(bytes(offset - len(self._memory)))
                self._memory[offset:end] = data
            else:
                self._pwrite(data, offset)
            if offset < self._streamed:
                self._forward = False
            self.size = max(self.size, end)
            self._store_full_leaves()
            return len(data)

    def truncate(self, size: int) -> None:
        with self._lock:
            if size < self._streamed:
                self._forward = False
            if self._memory is not None and size > self._memory_limit:
                self._spill()
            if self._memory is not None:
                if size < len(self._memory):
                    del self._memory[size:]
                else:
                    self._memory.extend(bytes(size - len(self._memory)))
            else:
                assert self._fd is not None
                os.ftruncate(self._fd, size)
            self.size = size
            self._store_full_leaves()

    def _spill(self) -> None:
        """Move the content from memory to an unnamed temporary file."""
        assert self._memory is not None
        self._fd = os.open(self._tmp_dir, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        data, self._memory = self._memory, None
        self._pwrite(data, 0)

    def _pwrite(self, data: bytes | bytearray, offset: int) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, offset)
            view, offset = view[written:], offset + written

    def _store_full_leaves(self) -> None:
        """Hash and store every complete leaf a forward writer has finished."""
        if not self._forward or self._fd is None or self._chunk is None:
            return
        while self.size - self._streamed >= self._chunk:
            leaf = os.pread(self._fd, self._chunk, self._streamed)
            self._leaves.append((self._store.put(leaf, cids.RAW), len(leaf)))
            self._streamed += len(leaf)

    # --- reading and storing ----------------------------------------------------

    def read(self, offset: int, size: int) -> bytes:
        with self._lock:
            size = max(0, min(size, self.size - offset))
            if self._memory is not None:
                return bytes(self._memory[offset : offset + size])
            assert self._fd is not None
            return os.pread(self._fd, size, offset)

    def store(self) -> StoredFile:
        """Put the content in the blockstore (the leaves stored so far are reused)."""
        with self._lock:
            if self._memory is not None:
                return store_bytes(self._store, bytes(self._memory), self._chunk)
            assert self._fd is not None
            if self._forward:
                tail = os.pread(self._fd, self.size - self._streamed, self._streamed)
                entries = self._leaves + ([(self._store.put(tail, cids.RAW), len(tail))] if tail else [])
                return store_leaves(self._store, entries)
            with os.fdopen(os.dup(self._fd), "rb") as stream:
                stream.seek(0)
                return store_stream(self._store, stream, self._chunk)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._memory = bytearray()
