"""UnixFS, read: what ``ipfs add`` and ipfs-car make (FORMAT.md, "Reading UnixFS").

A UnixFS node is a DAG-PB block whose ``Data`` is a UnixFS message, or a raw block (a file's
leaf, or a whole small file). Directories are plain (a link per entry, named) or HAMT shards
(entries spread over buckets by the murmur3 hash of their names). A file is its node's own data
followed by its children's bytes, each child as long as the node's ``blocksizes`` say: one rule
reads balanced and trickle layouts alike. Nothing here writes UnixFS.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import mmh3

from ipldmount.blocks import Blockstore
from ipldmount.errors import FormatError, ReadOnlyError
from ipldmount.format.files import BytesReader, FblReader, FileReader, RawReader
from ipldmount.ipld import cid as cids
from ipldmount.ipld import dagpb
from ipldmount.ipld.dagpb import PBLink, UnixFSType
from ipldmount.ipld.varint import encode_varint

log = logging.getLogger(__name__)

MURMUR3_X64_64 = 0x22  # the only HAMT hash UnixFS defines
MAX_FANOUT = 4096  # Kubo and js-ipfs use 256; a power of two up to this is read
MAX_SHARD_DEPTH = 64  # levels of sub-shards followed before a shard is taken as malformed


@dataclass(frozen=True, slots=True)
class UnixfsNode:
    """One UnixFS node: its kind, and for DAG-PB its links and UnixFS message."""

    cid: bytes
    kind: UnixFSType
    links: tuple[PBLink, ...] = ()
    data: dagpb.UnixFSData | None = None

    @property
    def is_directory(self) -> bool:
        return self.kind in (UnixFSType.DIRECTORY, UnixFSType.HAMT_SHARD)

    @property
    def is_file(self) -> bool:
        return self.kind in (UnixFSType.FILE, UnixFSType.RAW)


def read_node(store: Blockstore, cid: bytes) -> UnixfsNode:
    """The UnixFS node *cid* (a raw block is a file's bytes: it is not read here)."""
    if cids.codec_of(cid) == cids.RAW:
        return UnixfsNode(cid, UnixFSType.RAW)
    return decode_node(cid, store.get(cid))


def decode_node(cid: bytes, block: bytes) -> UnixfsNode:
    """The UnixFS node in DAG-PB *block*; FormatError or CorruptBlockError if it is not one."""
    if cids.codec_of(cid) != cids.DAG_PB:
        raise FormatError(f"{cids.cid_to_str(cid)} is not UnixFS (neither dag-pb nor raw)")
    pbnode = dagpb.decode(block)
    data = dagpb.unixfs_data(pbnode.data)
    node = UnixfsNode(cid, data.type, pbnode.links, data)
    if node.is_file and node.links and len(data.blocksizes) != len(node.links):
        raise _malformed(cid, f"{len(node.links)} links but {len(data.blocksizes)} blocksizes")
    if node.kind == UnixFSType.HAMT_SHARD:
        _check_shard(node)
    return node


def _malformed(cid: bytes, why: str) -> FormatError:
    return FormatError(f"UnixFS node {cids.cid_to_str(cid)} is malformed: {why}")


# --- files ------------------------------------------------------------------------------------


def file_size(store: Blockstore, node: UnixfsNode) -> int:
    """The file's length: its own data and its parts (``filesize``, when given, must agree)."""
    if node.kind == UnixFSType.RAW and node.data is None:
        return store.size(node.cid)
    assert node.data is not None
    size = len(node.data.data or b"") + sum(node.data.blocksizes)
    if node.data.filesize is not None and node.data.filesize != size:
        raise _malformed(node.cid, f"filesize {node.data.filesize}, but its data and parts hold {size} bytes")
    return size


class UnixfsFile:
    """A UnixFS file as the content of a tree's File: readable, never written (read-only tree)."""

    __slots__ = ("_size", "cid")

    def __init__(self, cid: bytes, size: int) -> None:
        self.cid = cid
        self._size = size

    def size_in(self, store: Blockstore) -> int:
        return self._size

    def link(self, store: Blockstore) -> bytes:
        raise ReadOnlyError("a UnixFS file is read-only: copy it to make it part of a writable tree")

    def content_cid(self) -> bytes:
        return self.cid

    def inline_form(self, store: Blockstore, name: str) -> None:
        return None

    def reader(self, store: Blockstore) -> FileReader:
        node = read_node(store, self.cid)
        if node.kind == UnixFSType.RAW and node.data is None:
            return RawReader(store, self.cid, self._size)
        assert node.data is not None
        if not node.links:
            return BytesReader(node.data.data or b"")
        return UnixfsReader(store, node)

    def __repr__(self) -> str:
        return f"UnixfsFile({cids.cid_to_str(self.cid)})"


class UnixfsReader(FblReader):
    """Random access into a chunked UnixFS file: the chunked-file reader over DAG-PB nodes.

    A node's own data comes before its children; it is read as a first part held in an
    identity CID (Kubo never writes data beside links, but the format allows it). Nodes with
    links are kept once decoded (as the chunked-file reader keeps its nodes); leaves, whose
    data is the file's bytes, only the last few, so memory stays bounded however long the file.
    """

    LEAVES_KNOWN_BY_CID = False  # a dag-pb block may be a leaf or a node: only its bytes say

    def __init__(self, store: Blockstore, root: UnixfsNode) -> None:
        self._decoded: dict[bytes, UnixfsNode] = {root.cid: root}  # decoded by whoever opened it
        self._leaves: OrderedDict[bytes, UnixfsNode] = OrderedDict()
        super().__init__(store, root.cid)

    def _is_node(self, cid: bytes) -> bool:
        return cids.codec_of(cid) == cids.DAG_PB and bool(self._unixfs(cid).links)

    def _parts(self, cid: bytes) -> list[tuple[bytes, int]]:
        node = self._unixfs(cid)
        assert node.data is not None
        parts = [(link.cid, size) for link, size in zip(node.links, node.data.blocksizes, strict=True)]
        for part, _ in parts:
            _check_part_cid(self.root, part)
        own = node.data.data or b""
        if own:
            inline = bytes([0x01, cids.RAW, cids.IDENTITY]) + encode_varint(len(own)) + own
            if cids.inline_data(inline) is None:
                raise _malformed(
                    cid, f"{len(own)} bytes of data beside its links (up to {cids.MAX_IDENTITY} read)"
                )
            parts.insert(0, (inline, len(own)))
        return parts

    def _check_empty_part(self, cid: bytes) -> None:
        """A part of length 0 is read now (no read would reach it): a raw block, or a file node."""
        if cids.codec_of(cid) == cids.DAG_PB:
            self._unixfs(cid)  # refuses a directory or any other non-file node

    def _leaf_bytes(self, cid: bytes) -> bytes:
        if cids.codec_of(cid) != cids.DAG_PB:
            return self.store.get(cid)  # a raw leaf (or an identity CID's bytes)
        data = self._unixfs(cid).data  # a file's node: checked when decoded
        assert data is not None
        return data.data or b""

    def _unixfs(self, cid: bytes) -> UnixfsNode:
        node = self._decoded.get(cid) or self._leaves.get(cid)
        if node is not None:
            return node
        node = read_node(self.store, cid)
        if not node.is_file:
            raise _malformed(self.root, f"part {cids.cid_to_str(cid)} is a {node.kind.name.lower()}")
        if node.links:
            self._decoded[cid] = node
        else:  # read once to tell it is a leaf, once more for its bytes: kept in between
            with self._lock:
                self._leaves[cid] = node
                if len(self._leaves) > self.LEAVES_KEPT:
                    self._leaves.popitem(last=False)
        return node


def _check_part_cid(root: bytes, cid: bytes) -> None:
    """Refuse a part whose link cannot name a file's part: only raw blocks and dag-pb nodes (sha2-256
    or identity) can (FORMAT.md 12.3), checked for every part when its node is decoded."""
    readable = cids.is_supported(cid) or cids.inline_data(cid) is not None
    if not readable or cids.codec_of(cid) not in (cids.RAW, cids.DAG_PB):
        raise _malformed(root, f"part {cid.hex()} is neither a raw block nor a dag-pb node")


# --- directories ------------------------------------------------------------------------------


def iter_entries(store: Blockstore, node: UnixfsNode) -> Iterator[tuple[str, bytes]]:
    """Every ``(name, cid)`` of a directory, in the order its blocks hold them (a shard is read
    node by node). Names are as stored: the caller checks them, and that none comes twice."""
    if node.kind == UnixFSType.DIRECTORY:
        for link in node.links:
            if link.name is None:
                raise _malformed(node.cid, "a directory entry without a name")
            yield link.name, link.cid
        return
    stack = [(node, 0)]
    while stack:
        shard, depth = stack.pop()
        pad = _bucket_digits(shard)
        below: list[tuple[UnixfsNode, int]] = []
        for link in shard.links:
            name = _bucket_name(shard, link, pad)
            if len(name) == pad:
                below.append((_sub_shard(store, shard, link.cid, depth + 1), depth + 1))
            else:
                yield name[pad:], link.cid
        stack.extend(reversed(below))


def find_entry(
    store: Blockstore, node: UnixfsNode, name: str, visited: list[bytes] | None = None
) -> bytes | None:
    """The CID named *name* in a directory; in a shard only the nodes on its hash's path are read
    (their CIDs appended to *visited*, in order: the blocks that prove the lookup)."""
    if node.kind == UnixFSType.DIRECTORY:
        return next((cid for entry, cid in iter_entries(store, node) if entry == name), None)
    bits = _HashBits(name)
    shard, depth = node, 0
    while True:
        pad = _bucket_digits(shard)
        width = _fanout(shard).bit_length() - 1
        index = bits.take(width)
        if index is None:  # deeper than 64 bits of hash: look through what is left
            return next((cid for entry, cid in iter_entries(store, shard) if entry == name), None)
        bucket = f"{index:0{pad}X}"
        link = next((link for link in shard.links if _bucket_name(shard, link, pad)[:pad] == bucket), None)
        if link is None:
            return None
        assert link.name is not None
        if len(link.name) == pad:
            depth += 1
            shard = _sub_shard(store, shard, link.cid, depth)
            if visited is not None:
                visited.append(shard.cid)
            continue
        return link.cid if link.name[pad:] == name else None


def sub_shards(shard: UnixfsNode) -> list[bytes]:
    """The CIDs of a shard's own sub-shards, in link order: the blocks a sharded directory is made
    of below its top node, none of its entries'."""
    if shard.kind != UnixFSType.HAMT_SHARD:
        return []
    pad = _bucket_digits(shard)
    return [link.cid for link in shard.links if len(_bucket_name(shard, link, pad)) == pad]


def _fanout(shard: UnixfsNode) -> int:
    assert shard.data is not None and shard.data.fanout is not None
    return shard.data.fanout


def _check_shard(shard: UnixfsNode) -> None:
    assert shard.data is not None
    fanout = shard.data.fanout
    if fanout is None or fanout < 2 or fanout > MAX_FANOUT or fanout & (fanout - 1):
        raise _malformed(shard.cid, f"HAMT fanout {fanout} (a power of two up to {MAX_FANOUT} is read)")
    if shard.data.hash_type != MURMUR3_X64_64:
        raise _malformed(shard.cid, f"HAMT hash 0x{shard.data.hash_type or 0:x} (only murmur3-x64-64, 0x22)")


def _bucket_digits(shard: UnixfsNode) -> int:
    """How many hex digits name a bucket: enough for fanout - 1 (two for 256)."""
    return len(f"{_fanout(shard) - 1:X}")


def _bucket_name(shard: UnixfsNode, link: PBLink, pad: int) -> str:
    name = link.name
    if name is None or len(name) < pad:
        raise _malformed(shard.cid, f"a shard link named {name!r}, not a {pad}-digit bucket")
    return name


def _sub_shard(store: Blockstore, parent: UnixfsNode, cid: bytes, depth: int) -> UnixfsNode:
    if depth > MAX_SHARD_DEPTH:
        raise _malformed(parent.cid, f"HAMT shards nested over {MAX_SHARD_DEPTH} deep")
    shard = read_node(store, cid)
    if shard.kind != UnixFSType.HAMT_SHARD or _fanout(shard) != _fanout(parent):
        raise _malformed(parent.cid, f"bucket {cids.cid_to_str(cid)} is not a shard of the same fanout")
    return shard


class _HashBits:
    """The bits of a name's murmur3-x64-64 hash, most significant first, as go-unixfs takes them:
    the first 64 bits of murmur3 x64 128 (seed 0), big-endian."""

    def __init__(self, name: str) -> None:
        first, _ = mmh3.hash64(name.encode("utf-8"), 0, signed=False)
        self._value = first
        self._left = 64

    def take(self, width: int) -> int | None:
        if width > self._left:
            return None
        self._left -= width
        return (self._value >> self._left) & ((1 << width) - 1)
