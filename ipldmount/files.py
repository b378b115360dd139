"""File contents: how bytes become blocks, and how blocks read back as bytes.

A file of at most ``chunk_size`` bytes is one raw block. A larger file is cut
into ``chunk_size`` raw leaves under a Flexible Byte Layout list (FORMAT.md):
``[[length, link], ...]`` nodes of at most ``FBL_WIDTH`` entries, nested
bottom-up, so no block outgrows the limit however large the file.
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO, Protocol

from . import cid as cids
from . import codec, metadata
from .blockstore import Blockstore
from .errors import FormatError

BLOCK_LIMIT = 1 << 20
FBL_WIDTH = 1024


class FileContent(Protocol):
    """What a file holds; immutable once made."""

    def size_in(self, store: Blockstore) -> int: ...

    def link(self, store: Blockstore) -> bytes:
        """The CID standing for this content, storing a block first if needed."""
        ...

    def content_cid(self) -> bytes:
        """The content's CID as a standalone file, computed without storing anything."""
        ...

    def inline_form(self, store: Blockstore, name: str) -> tuple[Any, bytes] | None:
        """The inline metadata value (and its encoding) for this content under *name*."""
        ...

    def reader(self, store: Blockstore) -> FileReader: ...


class StoredFile:
    """Content already in the blockstore: a raw block or a Flexible Byte Layout root."""

    __slots__ = ("_inline", "_size", "cid")

    def __init__(self, cid: bytes, size: int | None = None) -> None:
        self.cid = cid
        self._size = size
        self._inline: dict[metadata.Render, tuple[Any, bytes] | None] = {}

    def size_in(self, store: Blockstore) -> int:
        if self._size is None:
            self._size = (
                store.size(self.cid) if cids.codec_of(self.cid) == cids.RAW else fbl_size(store, self.cid)
            )
        return self._size

    def link(self, store: Blockstore) -> bytes:
        return self.cid

    def content_cid(self) -> bytes:
        return self.cid

    def inline_form(self, store: Blockstore, name: str) -> tuple[Any, bytes] | None:
        rule_key = metadata.RULES.get(name)
        if rule_key is None:
            return None
        if rule_key not in self._inline:
            small = cids.codec_of(self.cid) == cids.RAW and self.size_in(store) <= metadata.MAX_INLINE_SOURCE
            self._inline[rule_key] = metadata.try_inline(name, store.get(self.cid)) if small else None
        return self._inline[rule_key]

    def reader(self, store: Blockstore) -> FileReader:
        if cids.codec_of(self.cid) == cids.RAW:
            return RawReader(store, self.cid, self.size_in(store))
        return FblReader(store, self.cid)

    def __repr__(self) -> str:
        return f"StoredFile({cids.cid_to_str(self.cid)})"


class InlineFile:
    """Content that arrived as inline metadata in a directory node."""

    __slots__ = ("_cid", "data", "name", "value")

    def __init__(self, name: str, value: Any) -> None:
        self.name = name
        self.value = value
        self.data = metadata.render(name, value)
        self._cid: bytes | None = None

    def size_in(self, store: Blockstore) -> int:
        return len(self.data)

    def link(self, store: Blockstore) -> bytes:
        if self._cid is None:
            self._cid = store.put(self.data, cids.RAW)
        return self._cid

    def content_cid(self) -> bytes:
        return cids.block_cid(cids.RAW, self.data)

    def inline_form(self, store: Blockstore, name: str) -> tuple[Any, bytes] | None:
        # Decided from the bytes, exactly as for a fresh write: a foreign block's
        # inline value (too big, too deep) must not keep a form we would not give it.
        return metadata.try_inline(name, self.data)

    def reader(self, store: Blockstore) -> FileReader:
        return BytesReader(self.data)


class PendingFile:
    """Small content kept in memory until a commit decides how to store it.

    Metadata files usually end up inline in their directory node; holding them
    here instead of storing a raw block right away keeps the blockstore free of
    blocks nothing links to.
    """

    __slots__ = ("_cid", "chunk_size", "data")

    def __init__(self, data: bytes, chunk_size: int | None = BLOCK_LIMIT) -> None:
        self.data = data
        self.chunk_size = chunk_size
        self._cid: bytes | None = None

    def size_in(self, store: Blockstore) -> int:
        return len(self.data)

    def link(self, store: Blockstore) -> bytes:
        if self._cid is None:
            self._cid = store_bytes(store, self.data, self.chunk_size).cid
        return self._cid

    def content_cid(self) -> bytes:
        return cids.block_cid(cids.RAW, self.data)  # metadata-sized: always one raw block

    def inline_form(self, store: Blockstore, name: str) -> tuple[Any, bytes] | None:
        return metadata.try_inline(name, self.data)

    def reader(self, store: Blockstore) -> FileReader:
        return BytesReader(self.data)


# --- writing ------------------------------------------------------------------


def store_bytes(store: Blockstore, data: bytes, chunk_size: int | None = BLOCK_LIMIT) -> StoredFile:
    """Store *data* as a file's content (one raw block, or chunked)."""
    if chunk_size is None or len(data) <= chunk_size:
        return StoredFile(store.put(data, cids.RAW), len(data))
    view = memoryview(data)
    return store_chunks(
        store, (view[i : i + chunk_size] for i in range(0, len(data), chunk_size)), chunk_size
    )


def store_stream(store: Blockstore, stream: BinaryIO, chunk_size: int | None = BLOCK_LIMIT) -> StoredFile:
    """Store a file read from *stream* without holding it all in memory."""
    if chunk_size is None:
        counter = _CountingChunks(stream, 1 << 20)
        return StoredFile(store.put_stream(counter, cids.RAW), counter.total)
    first = _read_full(stream, chunk_size)
    second = _read_full(stream, chunk_size) if len(first) == chunk_size else b""
    if not second:
        return StoredFile(store.put(first, cids.RAW), len(first))
    return store_chunks(store, _chain_chunks(first, second, stream, chunk_size), chunk_size)


def store_chunks(store: Blockstore, chunks: Iterable[bytes | memoryview], chunk_size: int) -> StoredFile:
    """Store pre-cut leaves (every one but the last exactly *chunk_size*) under an FBL root."""
    entries = [(store.put(bytes(chunk), cids.RAW), len(chunk)) for chunk in chunks if chunk]
    return store_leaves(store, entries)


def store_leaves(store: Blockstore, entries: list[tuple[bytes, int]]) -> StoredFile:
    """A file made of raw leaves already stored, as ``(cid, length)`` in order (FBL root if several)."""
    total = sum(length for _, length in entries)
    if len(entries) <= 1:
        return StoredFile(entries[0][0] if entries else store.put(b"", cids.RAW), total)
    while len(entries) > FBL_WIDTH:
        entries = [
            _put_fbl_node(store, entries[i : i + FBL_WIDTH]) for i in range(0, len(entries), FBL_WIDTH)
        ]
    root, _ = _put_fbl_node(store, entries)
    return StoredFile(root, total)


def _put_fbl_node(store: Blockstore, entries: list[tuple[bytes, int]]) -> tuple[bytes, int]:
    node = [[length, codec.Link(cid)] for cid, length in entries]
    return store.put(codec.encode(node), cids.DAG_CBOR), sum(length for _, length in entries)


class _CountingChunks:
    def __init__(self, stream: BinaryIO, size: int) -> None:
        self.stream, self.size, self.total = stream, size, 0

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.stream.read(self.size):
            self.total += len(chunk)
            yield chunk


def _chain_chunks(first: bytes, second: bytes, stream: BinaryIO, size: int) -> Iterator[bytes]:
    yield first
    yield second
    while chunk := _read_full(stream, size):
        yield chunk


def _read_full(stream: BinaryIO, size: int) -> bytes:
    """*size* bytes, fewer only at the end: a raw stream (pipe, socket) may return short reads."""
    data = stream.read(size)
    if not data or len(data) == size:
        return data
    parts = [data]
    missing = size - len(data)
    while missing and (more := stream.read(missing)):
        parts.append(more)
        missing -= len(more)
    return b"".join(parts)


# --- reading ------------------------------------------------------------------


class FileReader(Protocol):
    size: int

    def read(self, offset: int, size: int) -> bytes: ...

    def cached(self, offset: int, size: int) -> bytes | None:
        """The bytes if they are already in memory (no I/O), else None."""
        ...


class BytesReader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def read(self, offset: int, size: int) -> bytes:
        return self.data[offset : offset + size]

    def cached(self, offset: int, size: int) -> bytes | None:
        return self.data[offset : offset + size]


class RawReader:
    """Reads one raw block; small blocks are fetched (and hash-verified) once."""

    VERIFY_LIMIT = 4 * BLOCK_LIMIT

    def __init__(self, store: Blockstore, cid: bytes, size: int) -> None:
        self.store, self.cid, self.size = store, cid, size
        self._data: bytes | None = None
        self._lock = threading.Lock()  # concurrent read-ahead requests share one load

    def read(self, offset: int, size: int) -> bytes:
        if self.size <= self.VERIFY_LIMIT:
            with self._lock:
                if self._data is None:
                    self._data = self.store.get(self.cid)
            return self._data[offset : offset + size]
        return self.store.read(self.cid, offset, size)

    def cached(self, offset: int, size: int) -> bytes | None:
        data = self._data
        return None if data is None else data[offset : offset + size]


def decode_fbl(data: bytes) -> list[tuple[bytes, int]]:
    """The ``(cid, length)`` entries of a Flexible Byte Layout node."""
    node = codec.decode(data)
    if not isinstance(node, list) or not node:
        raise FormatError("not a chunked-file node (expected a non-empty list)")
    entries = []
    for item in node:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or type(item[0]) is not int
            or item[0] < 0
            or not isinstance(item[1], codec.Link)
        ):
            raise FormatError("malformed chunked-file entry (expected [length, link])")
        entries.append((item[1].cid, item[0]))
    return entries


def fbl_size(store: Blockstore, cid: bytes) -> int:
    return sum(length for _, length in decode_fbl(store.get(cid)))


class FblReader:
    """Random access into a chunked file, keeping the few leaves it read last.

    The kernel reads ahead with several requests at once, each a slice of the
    same leaf; the lock makes them share one load (and one hash check) of it.
    """

    LEAVES_KEPT = 4

    def __init__(self, store: Blockstore, root: bytes) -> None:
        self.store = store
        self._nodes: dict[bytes, tuple[list[int], list[bytes]]] = {}
        self.root = root
        self.size = self._node(root)[0][-1]
        self._leaves: OrderedDict[int, bytes] = OrderedDict()  # file offset of a leaf -> its bytes
        self._lock = threading.Lock()

    def _node(self, cid: bytes) -> tuple[list[int], list[bytes]]:
        """Cumulative end offsets and child CIDs of an FBL node."""
        if cid not in self._nodes:
            ends, children, total = [], [], 0
            for child, length in decode_fbl(self.store.get(cid)):
                total += length
                ends.append(total)
                children.append(child)
            self._nodes[cid] = (ends, children)
        return self._nodes[cid]

    def _leaf_at(self, start: int, cid: bytes, length: int | None) -> bytes:
        """The leaf that begins at file offset *start*, cut to its stated *length*."""
        with self._lock:
            leaf = self._leaves.get(start)
            if leaf is None:
                leaf = self.store.get(cid)
                if length is not None and len(leaf) > length:  # only the bytes its entry states count
                    leaf = leaf[:length]
                self._leaves[start] = leaf
                if len(self._leaves) > self.LEAVES_KEPT:
                    self._leaves.popitem(last=False)
            else:
                self._leaves.move_to_end(start)
            return leaf

    def cached(self, offset: int, size: int) -> bytes | None:
        end = min(offset + size, self.size)
        for start, data in list(self._leaves.items()):
            if start <= offset and end <= start + len(data):
                return data[offset - start : end - start]
        return None

    def read(self, offset: int, size: int) -> bytes:
        parts: list[bytes] = []
        end = min(offset + size, self.size)
        while offset < end:
            piece = self._read_from(self.root, offset, end - offset)
            if not piece:
                raise FormatError(
                    f"chunked file {cids.cid_to_str(self.root)} is shorter than its lengths say"
                )
            parts.append(piece)
            offset += len(piece)
        return b"".join(parts)

    def _read_from(self, cid: bytes, offset: int, size: int) -> bytes:
        """Read from the one leaf under *cid* that holds *offset*."""
        leaf_start = offset
        part_length: int | None = None
        while cids.codec_of(cid) == cids.DAG_CBOR:
            ends, children = self._node(cid)
            index = bisect.bisect_right(ends, offset)
            if index == len(ends):
                return b""
            size = min(size, ends[index] - offset)  # never read past a part's stated length
            skipped = ends[index - 1] if index else 0
            offset -= skipped
            part_length = ends[index] - skipped
            cid = children[index]
        leaf = self._leaf_at(leaf_start - offset, cid, part_length)
        return leaf[offset : offset + size]
