"""File contents: how bytes become blocks, and how blocks read back as bytes.

A file of at most ``chunk_size`` bytes is one raw block. A larger file is cut
into ``chunk_size`` raw leaves under a Flexible Byte Layout list (FORMAT.md):
``[[length, link], ...]`` nodes of at most ``FBL_WIDTH`` entries, nested
bottom-up, so no block outgrows the limit however large the file.
"""

from __future__ import annotations

import bisect
import functools
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, wait
from typing import Any, BinaryIO, Protocol

from ipldmount.blocks import BlockSink, Blockstore, Chunk, Staging
from ipldmount.errors import (
    BlockNotFoundError,
    CorruptBlockError,
    FileTooLargeError,
    FormatError,
)
from ipldmount.format import metadata
from ipldmount.ipld import cid as cids
from ipldmount.ipld import codec

log = logging.getLogger(__name__)

BLOCK_LIMIT = 1 << 20
FBL_WIDTH = 1024
# The largest file: what an off_t (and the kernel's FUSE s_maxbytes) can hold. The chunked layout
# describes it with 5 levels of nodes; a hole of that size costs one node per level.
MAX_FILE_SIZE = 2**63 - 1
# In whole-files mode a file is one raw block, hashed in one pass: beyond this it is refused.
MAX_WHOLE_FILE_SIZE = 1 << 32


def max_file_size(chunk_size: int | None) -> int:
    """The largest file the layout for *chunk_size* accepts (None: whole-files mode)."""
    return MAX_WHOLE_FILE_SIZE if chunk_size is None else MAX_FILE_SIZE


def check_file_size(size: int, chunk_size: int | None) -> None:
    """Raise FileTooLargeError (EFBIG) for a size past what the layout accepts."""
    limit = max_file_size(chunk_size)
    if size > limit:
        raise FileTooLargeError(f"{size} bytes is past the largest file size, {limit} bytes")


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
        self._inline: dict[metadata.Render, tuple[Any, bytes] | None] | None = None  # made for metadata only

    def size_in(self, store: Blockstore) -> int:
        if self._size is None:
            self._size = (
                store.size(self.cid) if cids.codec_of(self.cid) == cids.RAW else fbl_size(store, self.cid)
            )
        return self._size

    @property
    def known_size(self) -> int | None:
        """The size if already known (never reads the store)."""
        return self._size

    @property
    def is_raw(self) -> bool:
        """True when the content is one raw block (its bytes are the file's)."""
        return cids.codec_of(self.cid) == cids.RAW

    def link(self, store: Blockstore) -> bytes:
        return self.cid

    def content_cid(self) -> bytes:
        return self.cid

    def inline_form(self, store: Blockstore, name: str) -> tuple[Any, bytes] | None:
        rule_key = metadata.RULES.get(name)
        if rule_key is None:
            return None
        if self._inline is None:
            self._inline = {}
        if rule_key not in self._inline:
            try:
                small = cids.is_supported(self.cid) and cids.codec_of(self.cid) == cids.RAW
                small = small and self.size_in(store) <= metadata.MAX_INLINE_SOURCE
                self._inline[rule_key] = metadata.try_inline(name, store.get(self.cid)) if small else None
            except (BlockNotFoundError, CorruptBlockError):
                # A commit must not need blocks the change did not touch: an unreadable
                # metadata file keeps its link, and is decided again once it is readable.
                return None
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
        # Never trust a cached CID alone: the commit that stored it may have been rolled back.
        if self._cid is None or not store.claim(self._cid):
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
        # Never trust a cached CID alone: the commit that stored it may have been rolled back, or
        # garbage collected since. A claim covers one block: chunked content is stored again.
        if self._cid is None or cids.codec_of(self._cid) != cids.RAW or not store.claim(self._cid):
            self._cid = store_bytes(store, self.data, self.chunk_size).cid
        return self._cid

    def content_cid(self) -> bytes:
        return cids.block_cid(cids.RAW, self.data)  # metadata-sized: always one raw block

    def inline_form(self, store: Blockstore, name: str) -> tuple[Any, bytes] | None:
        return metadata.try_inline(name, self.data)

    def reader(self, store: Blockstore) -> FileReader:
        return BytesReader(self.data)


# --- writing ------------------------------------------------------------------


LeafStore = Blockstore | Staging[Any]
"""Where :func:`store_bytes` puts leaves: both take views, and hash and copy each block once."""


def store_bytes(store: LeafStore, data: Chunk, chunk_size: int | None = BLOCK_LIMIT) -> StoredFile:
    """Store *data* as a file's content (one raw block, or chunked).

    The leaves are views of *data*, never copies: the store copies (or writes) each once (a store
    in memory copies *data* once, whole, and keeps the leaves as views of that: it can then give
    the file back without a copy, :meth:`~ipldmount.blocks.base.Blockstore.whole_file`).
    """
    if chunk_size is None or len(data) <= chunk_size:
        return StoredFile(store.put(data, cids.RAW), len(data))
    entries, whole = store.put_leaves(data, chunk_size)
    stored = store_leaves(store, entries, chunk_size)
    if whole is not None:
        store.keep_whole(stored.cid, whole, [cid for cid, _ in entries])
    return stored


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


def store_chunks(store: LeafStore, chunks: Iterable[Chunk], chunk_size: int) -> StoredFile:
    """Store pre-cut leaves (every one but the last exactly *chunk_size*) under an FBL root."""
    entries = [(store.put(chunk, cids.RAW), len(chunk)) for chunk in chunks if chunk]
    return store_leaves(store, entries, chunk_size)


def store_leaves(store: BlockSink, entries: list[tuple[bytes, int]], chunk_size: int) -> StoredFile:
    """A file made of raw leaves already stored, as ``(cid, length)`` in order: every leaf but
    the last holds exactly *chunk_size* bytes (an FBL root if there are several)."""
    if any(length != chunk_size for _, length in entries[:-1]):
        raise ValueError("every leaf but the last must hold exactly chunk_size bytes")
    size = sum(length for _, length in entries)
    if not entries:
        return StoredFile(store.put(b"", cids.RAW), 0)
    return build_layout(store, size, chunk_size, lambda index, length: entries[index][0])


# --- the chunked layout ---------------------------------------------------------

LeafCid = Callable[[int, int], bytes]
"""``leaf_cid(index, length)``: the CID of leaf *index*, which holds *length* bytes (stored)."""
KnownNode = Callable[[int, int], bytes | None]
"""``known_node(level, index)``: the CID of the full node (level, index) if it is already known."""


def layout_height(leaves: int) -> int:
    """Levels of FBL nodes above *leaves* leaves (0 for a single raw block)."""
    height = 0
    while FBL_WIDTH**height < leaves:
        height += 1
    return height


def build_layout(
    store: BlockSink,
    size: int,
    chunk_size: int,
    leaf_cid: LeafCid,
    known_node: KnownNode | None = None,
) -> StoredFile:
    """Store the FBL nodes of a file of *size* bytes cut into *chunk_size* leaves (FORMAT.md §5).

    Node (level, index) covers leaves ``[index * W**level, (index + 1) * W**level)``
    (``W`` = 1024), cut at the last leaf: exactly the nodes the bottom-up grouping of
    FORMAT.md makes. A *full* node (one that covers ``W**level`` leaves) that
    *known_node* can name is not built again: that is what makes a one-leaf change
    cost one path of nodes, and a hole of any size cost one node per level.
    """
    leaves = -(-size // chunk_size)
    if leaves <= 1:
        return StoredFile(leaf_cid(0, size), size)

    def node(level: int, index: int) -> bytes:
        if level == 0:
            return leaf_cid(index, min(chunk_size, size - index * chunk_size))
        span = FBL_WIDTH ** (level - 1) * chunk_size  # bytes under each child
        if known_node is not None and (index + 1) * FBL_WIDTH * span <= size:
            known = known_node(level, index)
            if known is not None:
                return known
        first = index * FBL_WIDTH
        last = min(first + FBL_WIDTH, -(-size // span))
        entries = [
            [min(span, size - child * span), codec.Link(node(level - 1, child))]
            for child in range(first, last)
        ]
        return store.put(codec.encode(entries), cids.DAG_CBOR)

    return StoredFile(node(layout_height(leaves), 0), size)


@functools.cache
def zero_leaf(chunk_size: int) -> tuple[bytes, bytes]:
    """(CID, bytes) of a full leaf of zeros."""
    data = bytes(chunk_size)
    return cids.block_cid(cids.RAW, data), data


@functools.cache
def zero_node(chunk_size: int, level: int) -> tuple[bytes, bytes]:
    """(CID, encoding) of the full FBL node of *level* whose leaves are all zeros.

    Every full stretch of a hole is this same node, so a hole costs one block per
    level, whatever its size, and the file's CID is that of the same bytes written.
    """
    child, _ = zero_leaf(chunk_size) if level == 1 else zero_node(chunk_size, level - 1)
    length = FBL_WIDTH ** (level - 1) * chunk_size
    data = codec.encode([[length, codec.Link(child)]] * FBL_WIDTH)
    return cids.block_cid(cids.DAG_CBOR, data), data


def put_zero_leaf(store: BlockSink, chunk_size: int, length: int) -> bytes:
    """The CID of a leaf of *length* zero bytes, stored."""
    if length == chunk_size:
        cid, data = zero_leaf(chunk_size)
        if not store.claim(cid):
            store.put(data, cids.RAW)
        return cid
    return store.put(bytes(length), cids.RAW)


def put_zero_node(store: BlockSink, chunk_size: int, level: int) -> bytes:
    """The CID of the full all-zero node of *level*, stored with everything below it."""
    cid, data = zero_node(chunk_size, level)
    # Every level is claimed or stored, not just this node: a claim covers one block, and the
    # levels below must outlive a garbage collection as long as this one does.
    if level == 1:
        put_zero_leaf(store, chunk_size, chunk_size)
    else:
        put_zero_node(store, chunk_size, level - 1)
    if not store.claim(cid):
        store.put(data, cids.DAG_CBOR)
    return cid


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

    def leaf_at(self, offset: int, length: int) -> bytes | None:
        """The CID of a raw leaf that holds exactly the bytes ``[offset, offset + length)``,
        if the content has one: reusable as is."""
        ...

    def full_node_at(self, offset: int, level: int, chunk_size: int) -> bytes | None:
        """The CID of a full FBL node of *level* covering exactly ``[offset, offset + W**level *
        chunk_size)`` laid out as FORMAT.md lays it out, if the content has one."""
        ...


class BytesReader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def read(self, offset: int, size: int) -> bytes:
        return self.data[offset : offset + size]

    def cached(self, offset: int, size: int) -> bytes | None:
        return self.data[offset : offset + size]

    def leaf_at(self, offset: int, length: int) -> bytes | None:
        return None

    def full_node_at(self, offset: int, level: int, chunk_size: int) -> bytes | None:
        return None


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

    def leaf_at(self, offset: int, length: int) -> bytes | None:
        return self.cid if offset == 0 and length == self.size else None

    def full_node_at(self, offset: int, level: int, chunk_size: int) -> bytes | None:
        return None


def decode_fbl(data: bytes) -> list[tuple[bytes, int]]:
    """The ``(cid, length)`` entries of a Flexible Byte Layout node."""
    node = codec.decode(data)
    if not isinstance(node, list) or not node:
        raise FormatError(f"not a chunked-file node (expected a non-empty list, not a {type(node).__name__})")
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
        part = item[1].cid
        if (
            not cids.is_supported(part) or cids.codec_of(part) == cids.DAG_PB
        ):  # FORMAT.md 5: a raw leaf or a node
            raise FormatError("chunked-file entry links to a CID that is neither raw nor dag-cbor")
        entries.append((item[1].cid, item[0]))
    return entries


def fbl_size(store: Blockstore, cid: bytes) -> int:
    return sum(length for _, length in decode_fbl(store.get(cid)))


FETCH_AHEAD = 32 << 20  # bytes of a chunked file fetched ahead of a reader on a remote-backed store
READ_AHEAD = 8 << 20  # bytes of a chunked file a local store starts loading ahead of a reader going forward
SUBTREE_SPAN = 64 << 20  # a node of a file spanning at most this much is fetched ahead whole, in one request
SEQUENTIAL_SLACK = 1 << 20  # a read starting this far past the furthest one still counts as going forward


class FblReader:
    """Random access into a chunked file, keeping the few leaves it read last.

    The kernel reads ahead with several requests at once, slices of one leaf or of
    the next few: requests for one leaf share one load (and one hash check) of it,
    and different leaves load at the same time (reading a block file and hashing it
    let other threads run: a cold sequential read keeps the disk and both cores busy).
    Leaves are kept by CID, so a hole (one zero leaf, many times) is read once.
    """

    LEAVES_KEPT = 8  # more than the kernel's read-ahead has in flight, or it reloads leaves
    # Whether a leaf's CID alone tells it is one (a raw block): then the leaves ahead of a reader
    # are named to a local store without reading them (a UnixFS leaf must be read to tell).
    LEAVES_KNOWN_BY_CID = True

    def __init__(self, store: Blockstore, root: bytes) -> None:
        self.store = store
        self._nodes: dict[bytes, tuple[list[int], list[bytes]]] = {}
        self.root = root
        self._lock = threading.Lock()  # before the root is decoded: checking its parts may take it
        self.size = self._node(root)[0][-1]
        self._blocks: OrderedDict[bytes, bytes] = OrderedDict()  # leaf CID -> its bytes
        self._recent: OrderedDict[int, bytes] = OrderedDict()  # file offset of a leaf -> its bytes
        self._canonical: dict[tuple[bytes, int, int], bool] = {}
        self._loading: dict[bytes, Future[bytes]] = {}  # leaf CID -> the load under way
        self._fetched_until = 0  # file offset up to which leaves are fetched or asked for
        self._read_until = 0  # the furthest any read has reached: a read from about there goes forward
        self._dags: dict[bytes, Future[None]] = {}  # nodes whose whole DAG is asked for in one request

    def _node(self, cid: bytes) -> tuple[list[int], list[bytes]]:
        """Cumulative end offsets and child CIDs of a node; its parts of length 0, which no read
        reaches, are checked here, before any read (FORMAT.md 5)."""
        if cid not in self._nodes:
            ends, children, total = [], [], 0
            for child, length in self._parts(cid):
                if length == 0:
                    self._check_empty_part(child)
                total += length
                ends.append(total)
                children.append(child)
            self._nodes[cid] = (ends, children)
        return self._nodes[cid]

    # The layout: a subclass reading another one (UnixFS) says what a node is and what a leaf holds.

    def _is_node(self, cid: bytes) -> bool:
        """Whether *cid* is a node (parts below it) rather than a leaf."""
        return cids.codec_of(cid) == cids.DAG_CBOR

    def _parts(self, cid: bytes) -> list[tuple[bytes, int]]:
        """The ``(cid, length)`` parts of node *cid*, in order."""
        return decode_fbl(self.store.get(cid))

    def _leaf_bytes(self, cid: bytes) -> bytes:
        """What leaf *cid* holds of the file (its verified bytes)."""
        return self.store.get(cid)

    def _check_empty_part(self, cid: bytes) -> None:
        """Refuse a part of length 0 that is neither a raw leaf nor a chunked-file node: a
        part no read reaches must make a file malformed as surely as one a read reaches."""
        if cids.codec_of(cid) == cids.DAG_CBOR:
            try:
                decode_fbl(self.store.get(cid))
            except FormatError as exc:
                raise FormatError(
                    f"chunked file {cids.cid_to_str(self.root)} is malformed: its part"
                    f" {cids.cid_to_str(cid)} of length 0 is {exc}"
                ) from None

    def _leaf_at(self, start: int, cid: bytes, length: int | None) -> bytes:
        """The leaf that begins at file offset *start*, cut to its stated *length*."""
        with self._lock:
            leaf = self._recent.get(start)
            if leaf is not None:
                self._recent.move_to_end(start)
                return leaf
            block = self._blocks.get(cid)
            loading = self._loading.get(cid) if block is None else None
            mine = block is None and loading is None
            if mine:
                loading = self._loading[cid] = Future()
        if block is None:
            assert loading is not None
            block = self._load(cid, loading) if mine else loading.result()
        with self._lock:
            self._keep(self._blocks, cid, block)
            # only the bytes its entry states count
            leaf = block[:length] if length is not None and len(block) > length else block
            self._keep(self._recent, start, leaf)
            return leaf

    def _load(self, cid: bytes, loading: Future[bytes]) -> bytes:
        """Read and check a leaf, outside the lock; whoever waits for it gets it (or the error)."""
        try:
            block = self._leaf_bytes(cid)
        except BaseException as exc:
            loading.set_exception(exc)
            raise
        else:
            loading.set_result(block)
            return block
        finally:
            with self._lock:
                self._loading.pop(cid, None)

    def _keep(self, kept: OrderedDict[Any, bytes], key: Any, data: bytes) -> None:
        kept[key] = data
        kept.move_to_end(key)
        if len(kept) > self.LEAVES_KEPT:
            kept.popitem(last=False)

    def cached(self, offset: int, size: int) -> bytes | None:
        end = min(offset + size, self.size)
        for start, data in list(self._recent.items()):
            if start <= offset and end <= start + len(data):
                return data[offset - start : end - start]
        return None

    def read(self, offset: int, size: int) -> bytes:
        parts: list[bytes] = []
        end = min(offset + size, self.size)
        going_forward = offset <= self._read_until + SEQUENTIAL_SLACK
        if going_forward and (self.store.fetches_missing or self.LEAVES_KNOWN_BY_CID):
            self._fetch_ahead(end)
        self._read_until = max(self._read_until, end)
        if self._dags:
            self._await_dag(offset)
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
        while self._is_node(cid):
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

    def _fetch_ahead(self, offset: int) -> None:
        """Ask for the leaves after *offset* now, so that a reader going forward finds them here
        instead of waiting for each in turn. On a store that fetches missing blocks from the
        network, the next FETCH_AHEAD bytes, side by side in the background (where a node of at
        most SUBTREE_SPAN bytes holds them, its whole DAG in one request instead); on a local
        store, the next READ_AHEAD bytes, which the disk loads while the reader is served."""
        remote = self.store.fetches_missing
        with self._lock:
            start = max(offset, self._fetched_until)
            stop = min(offset + (FETCH_AHEAD if remote else READ_AHEAD), self.size)
            if start >= stop:
                return
            self._fetched_until = stop
        position, leaves = start, []
        while position < stop:
            subtree = self._subtree_at(position) if remote else None
            if subtree is not None and self._fetch_dag(subtree[0]):
                position = subtree[1]
                continue
            cid, length = self._leaf_cid_at(position)
            leaves.append(cid)
            position += length
        with self._lock:  # the last leaf named ends past *stop*: the next call starts after it
            self._fetched_until = max(self._fetched_until, position)
        if remote:
            self.store.prefetch(leaves, wait=False)
        else:
            self.store.read_soon(leaves)

    def _fetch_dag(self, cid: bytes) -> bool:
        """Whether the DAG under node *cid* comes in one request (asked for now, or before)."""
        with self._lock:
            if cid in self._dags:
                return True
            fetching = self.store.prefetch_dag(cid)
            if fetching is None:
                return False
            self._dags[cid] = fetching
            return True

    def _await_dag(self, offset: int) -> None:
        """If the stretch holding *offset* is being fetched in one request, wait for it (it ends
        within the sources' timeouts): fetching its leaves one by one beside it costs twice."""
        subtree = self._subtree_at(offset)
        fetching = self._dags.get(subtree[0]) if subtree is not None else None
        if fetching is not None:  # it never raises: a failure, or a store closed meanwhile, is
            wait([fetching])  # met again by reading the blocks one by one

    def _subtree_at(self, offset: int) -> tuple[bytes, int] | None:
        """The largest node holding *offset* that spans at most SUBTREE_SPAN bytes (and holds
        more than one leaf), with the file offset where it ends; None if there is none."""
        cid, start, end = self.root, 0, self.size
        while self._is_node(cid):
            ends, children = self._node(cid)
            if end - start <= SUBTREE_SPAN and len(children) > 1:
                return cid, end
            index = bisect.bisect_right(ends, offset - start)
            if index == len(ends):
                return None
            start, end, cid = start + (ends[index - 1] if index else 0), start + ends[index], children[index]
        return None

    def _leaf_cid_at(self, offset: int) -> tuple[bytes, int]:
        """The CID of the leaf holding *offset*, and how many bytes of the file it holds from there."""
        cid, left = self.root, self.size - offset
        while self._is_node(cid):
            ends, children = self._node(cid)
            index = bisect.bisect_right(ends, offset)
            if index == len(ends):
                break
            skipped = ends[index - 1] if index else 0
            left = ends[index] - offset
            offset -= skipped
            cid = children[index]
        return cid, max(left, 1)

    def blocks_for(self, start: int, end: int) -> Iterator[bytes]:
        """The CIDs of the nodes and leaves holding bytes ``[start, end)``, depth first, each node
        before its parts: what proves that range (a verifiable range request). Only the nodes on
        the way are read; a part held in an identity CID is no block, so not given."""
        stack = [(self.root, 0)]
        while stack:
            cid, offset = stack.pop()
            if cids.inline_data(cid) is None:
                yield cid
            if not self._is_node(cid):
                continue
            ends, children = self._node(cid)
            starts = [offset, *(offset + stop for stop in ends[:-1])]
            below = [
                (child, first)
                for child, first, stop in zip(children, starts, ends, strict=True)
                if first < end and offset + stop > start and offset + stop > first
            ]
            stack.extend(reversed(below))

    # --- reuse by a writer ----------------------------------------------------------

    def _part_at(self, offset: int, length: int) -> bytes | None:
        """The CID of the part (node or leaf) that covers exactly ``[offset, offset + length)``."""
        cid, start, end = self.root, 0, self.size
        while True:
            if start == offset and end - start == length:
                return cid
            if not self._is_node(cid) or end - start < length:
                return None
            ends, children = self._node(cid)
            index = bisect.bisect_right(ends, offset - start)
            if index == len(ends):
                return None
            child_start = start + (ends[index - 1] if index else 0)
            cid, start, end = children[index], child_start, start + ends[index]
            if start > offset or end < offset + length:
                return None

    def leaf_at(self, offset: int, length: int) -> bytes | None:
        cid = self._part_at(offset, length)
        return cid if cid is not None and cids.codec_of(cid) == cids.RAW else None

    def full_node_at(self, offset: int, level: int, chunk_size: int) -> bytes | None:
        cid = self._part_at(offset, FBL_WIDTH**level * chunk_size)
        return cid if cid is not None and self._is_canonical(cid, level, chunk_size) else None

    def _is_canonical(self, cid: bytes, level: int, chunk_size: int) -> bool:
        """Whether the full node *cid* of *level* is exactly what FORMAT.md's layout makes
        (W children, each a full node one level down; raw leaves of *chunk_size* at the bottom).
        Checked once per distinct node: a hole's nodes are all one."""
        key = (cid, level, chunk_size)
        if key not in self._canonical:
            self._canonical[key] = self._check_canonical(cid, level, chunk_size)
        return self._canonical[key]

    def _check_canonical(self, cid: bytes, level: int, chunk_size: int) -> bool:
        if cids.codec_of(cid) != cids.DAG_CBOR:
            return False
        ends, children = self._node(cid)
        span = FBL_WIDTH ** (level - 1) * chunk_size
        if len(children) != FBL_WIDTH or ends != list(range(span, span * FBL_WIDTH + 1, span)):
            return False
        if level == 1:
            return all(cids.codec_of(child) == cids.RAW for child in children)
        return all(self._is_canonical(child, level - 1, chunk_size) for child in children)
