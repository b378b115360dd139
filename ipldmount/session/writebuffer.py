"""A file's content while it is being written, before it becomes blocks.

A :class:`ChunkedBuffer` holds a file as leaves (the 1 MiB pieces of FORMAT.md
§5) laid over the content it started from, its *base*: a write touches only the
leaves it covers, a leaf nobody wrote is read from the base (or is zeros past
it), and a truncate moves the line past which the base no longer counts. So
growing a file by any amount, or punching a hole with a write far past its end,
costs nothing; editing one leaf of a huge file costs that leaf; and
:meth:`ChunkedBuffer.store` builds only the nodes on the paths to what changed,
reusing every other node of the base and one shared node per level for every
stretch of zeros. Whatever the pattern, the stored content is exactly what
:func:`files.store_bytes` makes of the same bytes.

Writers almost always go forward (zarr chunks, netCDF, ``cp``): the leaf being
filled stays in memory and a completed leaf is handed to a small pool that
hashes it and stages it (:class:`~ipldmount.blocks.Staging`) while the
writer goes on. The pool (:class:`LeafPool`) belongs to whoever outlives the buffers it serves:
a mount's open files share one, shut down with the session; a buffer opened without one makes
its own on its first full leaf and shuts it down when closed. Leaves stay staged, invisible to
the store, until :meth:`~ChunkedBuffer.store` commits the ones the file still uses; a buffer
closed without storing (a failed close, a file unlinked while open) takes them
all back, so a full disk never leaves blocks behind.

A :class:`WholeFileBuffer` (whole-files mode: every file one raw block) keeps
small content in memory and larger content in a sparse unnamed temporary file.

Methods that may touch the disk or hash are for worker threads; the cheap-call
checks tell the caller when a call is a plain memory copy. A lock serializes
calls per buffer. FUSE-free: the adapter decides what runs where.
"""

from __future__ import annotations

import bisect
import os
import tempfile
import threading
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from ipldmount.blocks import Blockstore, Staging
from ipldmount.errors import IpldmountError
from ipldmount.format import metadata
from ipldmount.format.files import (
    BLOCK_LIMIT,
    FBL_WIDTH,
    FileContent,
    FileReader,
    KnownNode,
    PendingFile,
    StoredFile,
    build_layout,
    check_file_size,
    put_zero_leaf,
    put_zero_node,
    store_stream,
)
from ipldmount.ipld import cid as cids

COPY_CHUNK = 1 << 20
MAX_IN_FLIGHT = 8  # leaves being staged at once per buffer: bounds memory; their disk waits overlap
MEMORY_LIMIT = 8 << 20  # bytes of partly written leaves one buffer keeps in memory
LEAF_WORKERS = 4  # threads of a leaf pool (on 2 cores: hashing and writing release the GIL, and a
# write into a busy page cache waits; measured: 4 beat 2 by about 5%)


class LeafPool:
    """The threads that hash and stage completed leaves: started on the first leaf, shut down
    (after the leaves in flight) by :meth:`close`, which its owner calls when it ends."""

    def __init__(self, workers: int = LEAF_WORKERS) -> None:
        self._workers = workers
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        self._lock = threading.Lock()

    def submit(self, call: Callable[[bytearray], bytes], leaf: bytearray) -> Future[bytes]:
        with self._lock:
            if self._closed:
                raise IpldmountError("the leaf pool is shut down: its owner has ended")
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self._workers, thread_name_prefix="ipldmount-leaf")
            return self._executor.submit(call, leaf)

    @property
    def started(self) -> bool:
        """Whether its threads were started (and not shut down since)."""
        return self._executor is not None

    def close(self) -> None:
        """Wait for the leaves in flight, stop the threads; later leaves are refused."""
        with self._lock:
            executor, self._executor, self._closed = self._executor, None, True
        if executor is not None:
            executor.shutdown(wait=True)


class WriteBuffer(Protocol):
    """What the FUSE adapter and the zarr store need of content being written."""

    size: int

    def write(self, offset: int, data: bytes) -> int: ...

    def truncate(self, size: int) -> None: ...

    def read(self, offset: int, size: int) -> bytes: ...

    def write_is_cheap(self, offset: int, end: int) -> bool:
        """True when writing [offset, end) is a memory copy (and maybe a hand-off): fine on an event loop."""
        ...

    def read_is_cheap(self, offset: int, end: int) -> bool: ...

    def store(self) -> StoredFile:
        """Put the content in the blockstore; the buffer goes on from the stored content."""
        ...

    def close(self) -> None:
        """Let go of everything not stored (staged leaves, temporary files)."""
        ...


def open_buffer(
    store: Blockstore,
    chunk_size: int | None,
    base: FileContent | None = None,
    tmp_dir: Path | None = None,
    pool: LeafPool | None = None,
) -> WriteBuffer:
    """A buffer holding *base* (or nothing) to be changed; reads the base's root node (I/O).
    Its full leaves are staged by *pool* (its owner's), or by a pool of the buffer's own."""
    reader = base.reader(store) if base is not None and base.size_in(store) > 0 else None
    if chunk_size is None:
        return WholeFileBuffer(store, tmp_dir, reader)
    return ChunkedBuffer(store, chunk_size, reader, pool)


def buffer_content(buffer: WriteBuffer, name: str, chunk_size: int | None) -> FileContent:
    """A written file as content: metadata waits in memory for the commit, which inlines it
    or stores it raw; anything else is stored now (touches only the blockstore: thread-safe)."""
    if metadata.is_metadata_name(name) and buffer.size <= metadata.MAX_INLINE_SOURCE:
        return PendingFile(buffer.read(0, buffer.size), chunk_size)
    return buffer.store()


def _is_zeros(data: memoryview) -> bool:
    """True for all-zero bytes; cheap to refuse (first byte) for almost any other data."""
    return not data or (not data[0] and data.tobytes() == bytes(len(data)))


class _Staged:
    """A leaf handed to the store: its CID once staged, and how many of its bytes count
    (fewer than it was staged with, after a truncate)."""

    __slots__ = ("future", "length", "staged_length")

    def __init__(self, future: Future[bytes], length: int) -> None:
        self.future = future
        self.length = self.staged_length = length


class ChunkedBuffer:
    """A file as a sparse map of leaves over its base (see the module docstring).

    Invariant: for a leaf in ``_leaves``, its bytes past its own length are zeros;
    for a leaf not in it, the bytes below ``_base_end`` are the base's, the rest zeros.
    """

    def __init__(
        self,
        store: Blockstore,
        chunk_size: int,
        base: FileReader | None = None,
        pool: LeafPool | None = None,
    ) -> None:
        self._store = store
        self._chunk = chunk_size
        self._own_pool = pool is None  # then shut down with the buffer
        self._pool = pool if pool is not None else LeafPool()
        self._staging: Staging[Any] = store.staging()
        self._lock = threading.Lock()
        self._refs: Counter[bytes] = Counter()  # staged CID -> leaves using it
        self._refs_lock = threading.Lock()
        self._rebase(base)

    def _rebase(self, base: FileReader | None) -> None:
        """Start over from *base*, with no leaf changed."""
        self._base = base
        self._base_end = base.size if base is not None else 0
        self.size = self._base_end
        self._leaves: dict[int, bytearray | _Staged] = {}
        self._memory: OrderedDict[int, None] = OrderedDict()  # in-memory leaves, least recently written first
        self._memory_bytes = 0
        self._in_flight: deque[Future[bytes]] = deque()

    # --- what is cheap ------------------------------------------------------------

    def _is_hole(self, index: int) -> bool:
        """True when leaf *index* is zeros nobody wrote (no leaf, past the base)."""
        return index not in self._leaves and index * self._chunk >= self._base_end

    def _in_memory(self, index: int) -> bool:
        return isinstance(self._leaves.get(index), bytearray) or self._is_hole(index)

    def write_is_cheap(self, offset: int, end: int) -> bool:
        first, last = offset // self._chunk, max(end - 1, offset) // self._chunk
        touched = last - first + 1
        if len(self._in_flight) + touched > MAX_IN_FLIGHT:
            return False
        return all(
            self._in_memory(index) or self._covers(offset, end, index) for index in range(first, last + 1)
        )

    def _covers(self, offset: int, end: int, index: int) -> bool:
        return offset <= index * self._chunk and (index + 1) * self._chunk <= end

    def read_is_cheap(self, offset: int, end: int) -> bool:
        first, last = offset // self._chunk, max(end - 1, offset) // self._chunk
        return all(self._in_memory(index) for index in range(first, last + 1))

    # --- writing ------------------------------------------------------------------

    def write(self, offset: int, data: bytes) -> int:
        end = offset + len(data)
        check_file_size(end, self._chunk)
        view = memoryview(data)
        with self._lock:
            position = offset
            while position < end:
                index, within = divmod(position, self._chunk)
                take = min(self._chunk - within, end - position)
                self._write_leaf(index, within, view[position - offset : position - offset + take])
                position += take
            self.size = max(self.size, end)
            self._limit_memory()
            self._reap()
        return len(data)

    def _write_leaf(self, index: int, within: int, piece: memoryview) -> None:
        if self._is_hole(index) and _is_zeros(piece):
            return  # zeros over zeros: only the size changes
        if within == 0 and len(piece) == self._chunk:
            self._drop(index)
            leaf = bytearray(piece)
        else:
            leaf = self._editable(index)
            if within > len(leaf):
                leaf.extend(bytes(within - len(leaf)))
            leaf[within : within + len(piece)] = piece
        self._keep_in_memory(index, leaf)
        if len(leaf) == self._chunk:
            self._hand_off(index)

    def _editable(self, index: int) -> bytearray:
        """Leaf *index*'s current bytes as a bytearray of its own (taken out of the map)."""
        leaf = self._leaves.get(index)
        if isinstance(leaf, bytearray):
            return leaf
        if isinstance(leaf, _Staged):
            cid = leaf.future.result()
            data = bytearray(self._staging.read(cid, 0, leaf.length))
            self._drop(index)
            return data
        start = index * self._chunk
        if self._base is not None and start < self._base_end:
            return bytearray(self._base.read(start, min(self._chunk, self._base_end - start)))
        return bytearray()

    def _keep_in_memory(self, index: int, leaf: bytearray) -> None:
        old = self._leaves.get(index)
        if isinstance(old, bytearray):
            self._memory_bytes -= len(old)
        self._leaves[index] = leaf
        self._memory_bytes += len(leaf)
        self._memory[index] = None
        self._memory.move_to_end(index)

    def _hand_off(self, index: int) -> None:
        """Give leaf *index* to the pool to be hashed and staged."""
        leaf = self._leaves[index]
        assert isinstance(leaf, bytearray)
        del self._memory[index]
        self._memory_bytes -= len(leaf)
        future = self._pool.submit(self._stage, leaf)  # the bytearray is never touched again here
        self._leaves[index] = _Staged(future, len(leaf))
        self._in_flight.append(future)

    def _stage(self, data: bytearray) -> bytes:
        cid = self._staging.put(data, cids.RAW)
        with self._refs_lock:
            self._refs[cid] += 1
        return cid

    def _release(self, cid: bytes) -> None:
        """One leaf less uses staged block *cid*; drop it once none does."""
        with self._refs_lock:
            self._refs[cid] -= 1
            unused = self._refs[cid] <= 0
            if unused:
                del self._refs[cid]
        if unused:
            self._staging.forget(cid)

    def _drop(self, index: int) -> None:
        """Forget leaf *index*'s own content (the base, or zeros, show through again)."""
        leaf = self._leaves.pop(index, None)
        if isinstance(leaf, bytearray):
            del self._memory[index]
            self._memory_bytes -= len(leaf)
        elif isinstance(leaf, _Staged):
            try:
                cid = leaf.future.result()
            except (IpldmountError, OSError):
                return  # it never got staged (a full disk, say): nothing to drop
            self._release(cid)

    def _limit_memory(self) -> None:
        """Hand the least recently written leaves to the pool while too much is in memory."""
        while self._memory_bytes > MEMORY_LIMIT and len(self._memory) > 1:
            self._hand_off(next(iter(self._memory)))

    def _reap(self) -> None:
        """Surface what staging raised (a full disk, say); wait if too many leaves are in flight."""
        while self._in_flight and (self._in_flight[0].done() or len(self._in_flight) > MAX_IN_FLIGHT):
            self._in_flight.popleft().result()

    def truncate(self, size: int) -> None:
        check_file_size(size, self._chunk)
        with self._lock:
            if size < self.size:
                self._cut(size)
            self.size = size

    def _cut(self, size: int) -> None:
        index, within = divmod(size, self._chunk)
        for gone in [other for other in self._leaves if other >= index + (within > 0)]:
            self._drop(gone)
        leaf = self._leaves.get(index)
        if within and isinstance(leaf, bytearray) and len(leaf) > within:
            self._memory_bytes -= len(leaf) - within
            del leaf[within:]
        elif within and isinstance(leaf, _Staged):
            leaf.length = min(leaf.length, within)
        self._base_end = min(self._base_end, size)

    # --- reading ------------------------------------------------------------------

    def read(self, offset: int, size: int) -> bytes:
        with self._lock:
            end = min(offset + size, self.size)
            parts = []
            position = offset
            while position < end:
                index, within = divmod(position, self._chunk)
                take = min(self._chunk - within, end - position)
                parts.append(self._read_leaf(index, within, take))
                position += take
            return b"".join(parts)

    def _read_leaf(self, index: int, within: int, take: int) -> bytes:
        leaf = self._leaves.get(index)
        if isinstance(leaf, bytearray):
            data = bytes(leaf[within : within + take])
        elif isinstance(leaf, _Staged):
            length = max(min(take, leaf.length - within), 0)
            data = self._staging.read(leaf.future.result(), within, length) if length else b""
        else:
            start = index * self._chunk + within
            length = max(min(take, self._base_end - start), 0)
            data = self._base.read(start, length) if self._base is not None and length else b""
        return data if len(data) == take else data + bytes(take - len(data))

    # --- storing ------------------------------------------------------------------

    def store(self) -> StoredFile:
        with self._lock:
            while self._in_flight:
                self._in_flight.popleft().result()
            used: set[bytes] = set()
            stored = build_layout(
                _Recording(self._staging, used),
                self.size,
                self._chunk,
                lambda index, length: self._final_leaf(index, length, used),
                self._known_node(sorted(self._leaves), used),
            )
            used.add(stored.cid)
            self._staging.commit(used, durable=self._store_is_durable())
            with self._refs_lock:
                self._refs.clear()
            self._rebase(stored.reader(self._store))
            return stored

    def _store_is_durable(self) -> bool:
        return bool(getattr(self._store, "durable", False))

    def _final_leaf(self, index: int, length: int, used: set[bytes]) -> bytes:
        """The CID of leaf *index* holding exactly *length* bytes, staged if new."""
        leaf = self._leaves.get(index)
        start = index * self._chunk
        if isinstance(leaf, _Staged) and leaf.length == leaf.staged_length == length:
            cid = leaf.future.result()
            used.add(cid)
            return cid
        if leaf is None and start + length <= self._base_end and self._base is not None:
            reused = self._base.leaf_at(start, length)
            if reused is not None:
                return reused
        if leaf is None and start >= self._base_end:
            cid = put_zero_leaf(_Recording(self._staging, used), self._chunk, length)
        else:
            cid = self._staging.put(self._read_leaf(index, 0, length), cids.RAW)
        used.add(cid)
        return cid

    def _known_node(self, changed: list[int], used: set[bytes]) -> KnownNode:
        """``known_node`` for :func:`build_layout`: a full node with no changed leaf under it is
        the base's own node (if laid out canonically) or, past the base, the shared zero node."""

        def known(level: int, index: int) -> bytes | None:
            leaves = FBL_WIDTH**level
            first, end = index * leaves, (index + 1) * leaves
            position = bisect.bisect_left(changed, first)
            if position < len(changed) and changed[position] < end:
                return None
            if first * self._chunk >= self._base_end:
                return put_zero_node(_Recording(self._staging, used), self._chunk, level)
            if end * self._chunk <= self._base_end and self._base is not None:
                return self._base.full_node_at(first * self._chunk, level, self._chunk)
            return None

        return known

    def close(self) -> None:
        with self._lock:
            for future in self._in_flight:
                future.exception()  # wait: nothing may be staged after the discard
            self._staging.discard()
            self._leaves.clear()
            self._memory.clear()
            self._memory_bytes = 0
            self._in_flight.clear()
        if self._own_pool:
            self._pool.close()


class _Recording:
    """A staging that notes every block put through it, so that a store() commits exactly
    the blocks the new content uses. A block staged earlier but not noted yet counts as
    absent, so that it gets noted when it is put again."""

    def __init__(self, staging: Staging[Any], used: set[bytes]) -> None:
        self._staging, self._used = staging, used

    def put(self, data: bytes, codec: int) -> bytes:
        cid = self._staging.put(data, codec)
        self._used.add(cid)
        return cid

    def has(self, cid: bytes) -> bool:
        return cid in self._used or self._staging.store.has(cid)

    def claim(self, cid: bytes) -> bool:
        return cid in self._used or self._staging.store.claim(cid)


class WholeFileBuffer:
    """Content that will be one raw block: in memory up to 1 MiB, beyond that in a sparse
    unnamed temporary file (a hole there costs no disk)."""

    def __init__(self, store: Blockstore, tmp_dir: Path | None, base: FileReader | None = None) -> None:
        self._store = store
        self._tmp_dir = tmp_dir if tmp_dir is not None else Path(tempfile.gettempdir())
        self._memory = bytearray()
        self._fd: int | None = None
        self._lock = threading.Lock()
        self.size = 0
        if base is not None:
            for offset in range(0, base.size, COPY_CHUNK):
                self._write(offset, base.read(offset, COPY_CHUNK))

    def write_is_cheap(self, offset: int, end: int) -> bool:
        return self._fd is None and end <= BLOCK_LIMIT

    def read_is_cheap(self, offset: int, end: int) -> bool:
        return self._fd is None

    def write(self, offset: int, data: bytes) -> int:
        check_file_size(offset + len(data), None)
        with self._lock:
            self._write(offset, data)
        return len(data)

    def _write(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        if self._fd is None and end > BLOCK_LIMIT:
            self._to_temporary()
        if self._fd is not None:
            _pwrite_all(self._fd, data, offset)
        else:
            if offset > len(self._memory):
                self._memory.extend(bytes(offset - len(self._memory)))
            self._memory[offset:end] = data
        self.size = max(self.size, end)

    def truncate(self, size: int) -> None:
        check_file_size(size, None)
        with self._lock:
            if self._fd is None and size > BLOCK_LIMIT:
                self._to_temporary()
            if self._fd is not None:
                os.ftruncate(self._fd, size)
            elif size < len(self._memory):
                del self._memory[size:]
            self.size = size

    def _to_temporary(self) -> None:
        fd = os.open(self._tmp_dir, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        _pwrite_all(fd, self._memory, 0)
        os.ftruncate(fd, self.size)
        self._fd, self._memory = fd, bytearray()

    def read(self, offset: int, size: int) -> bytes:
        with self._lock:
            end = min(offset + size, self.size)
            if offset >= end:
                return b""
            if self._fd is not None:
                return os.pread(self._fd, end - offset, offset)
            data = bytes(self._memory[offset:end])
            return data + bytes(end - offset - len(data))

    def store(self) -> StoredFile:
        with self._lock:
            if self._fd is None:
                data = bytes(self._memory) + bytes(self.size - len(self._memory))
                return StoredFile(self._store.put(data, cids.RAW), self.size)
            with os.fdopen(os.dup(self._fd), "rb") as stream:
                stream.seek(0)
                return store_stream(self._store, stream, None)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._memory = bytearray()


def _pwrite_all(fd: int, data: bytes | bytearray, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
