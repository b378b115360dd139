"""Content paths below a root, and the blocks an entity is made of: what a path gateway asks of
both formats this package reads (FORMAT.md §3.2, §5, §6.4 and §12), with their own decoders.

A path ``ROOT/a/b`` is resolved name by name as the tree resolves it: in a directory of this
format by its map (a HAMT root through the nodes on the name's path), in a UnixFS one by its links
(a shard through the sub-shards on the name's hash path). Every block read on the way is kept, in
order: the blocks that prove the path (a trustless client checks them). What the path ends at is
an :class:`Entity`: a file, a directory or something else, with a block of its own or inline in
its directory's block (zarr metadata, small directories).

The *entity* of the trustless gateway's ``dag-scope=entity`` is what reading it whole needs: a
file's every block (a UnixFS file's DAG-PB tree and leaves, a chunked file's nodes and leaves), a
directory's own block and, sharded, every node of its HAMT (never its entries' blocks); anything
else, its block alone. ``entity-bytes`` narrows a file to the blocks that hold a byte range.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from ipldmount.blocks import Blockstore
from ipldmount.blocks.dag import Follow, block_links, value_links
from ipldmount.errors import FormatError, NotDirectoryError, NotFoundError
from ipldmount.format import dirnode, hamt, metadata, unixfs
from ipldmount.format.files import FblReader, FileContent, InlineFile, StoredFile
from ipldmount.format.unixfs import UnixfsFile, UnixfsNode
from ipldmount.ipld import cid as cids
from ipldmount.ipld import codec
from ipldmount.ipld.dagpb import UnixFSType


class Kind(enum.Enum):
    FILE = "file"
    DIRECTORY = "directory"
    OTHER = "other"  # a UnixFS symlink, a DAG-CBOR value that is neither map nor list


@dataclass(frozen=True)
class Entity:
    """What a content path ends at."""

    block: bytes  # its own block, or (inline) the directory block it sits in
    kind: Kind
    inline: bool = False
    name: str = ""  # the last path segment ("" for a root)
    value: Any = None  # a DAG-CBOR directory's map (linked or inline), or inline metadata's value
    node: UnixfsNode | None = None  # a UnixFS node's decoded DAG-PB

    @property
    def sharded(self) -> bool:
        if self.node is not None:
            return self.node.kind == UnixFSType.HAMT_SHARD
        return not self.inline and hamt.is_root(self.value)

    def content(self, store: Blockstore) -> FileContent:
        """A file's content, to read its bytes (FormatError for anything but a file)."""
        if self.kind is not Kind.FILE:
            raise FormatError(f"{self.name or cids.cid_to_str(self.block)!r} is not a file")
        if self.inline:
            return InlineFile(self.name, self.value)
        if self.node is not None and self.node.data is not None:
            return UnixfsFile(self.block, unixfs.file_size(store, self.node))
        return StoredFile(self.block)


@dataclass
class Resolved:
    """A path resolved: where it ends, and the blocks that lead there."""

    entity: Entity
    path: list[bytes] = field(default_factory=list)  # the blocks read from the root down, before its own
    roots: list[bytes] = field(default_factory=list)  # a CID per segment, the root first (inline: its block)
    inner: list[str] = field(default_factory=list)  # an inline entity's names within its block

    @property
    def key(self) -> str:
        """What names the entity's content for good: its CID, or its block's and its names in it."""
        shown = cids.cid_to_str(self.entity.block)
        return "/".join([shown, *(quote(name, safe="") for name in self.inner)])


def open_entity(store: Blockstore, cid: bytes, name: str = "") -> Entity:
    """The entity whose own block is *cid*, told by its codec and shape (the block is read unless
    it is raw). BlockNotFoundError, CorruptBlockError as the store raises them."""
    codec_id = cids.codec_of(cid)
    if codec_id == cids.RAW:
        return Entity(cid, Kind.FILE, name=name)
    if codec_id == cids.DAG_PB:
        node = unixfs.decode_node(cid, store.get(cid))
        kind = Kind.DIRECTORY if node.is_directory else Kind.FILE if node.is_file else Kind.OTHER
        return Entity(cid, kind, name=name, node=node)
    if codec_id != cids.DAG_CBOR:
        raise FormatError(f"{cids.cid_to_str(cid)} is neither raw, dag-cbor nor dag-pb")
    value = codec.decode(store.get(cid))
    if type(value) is dict:
        return Entity(cid, Kind.DIRECTORY, name=name, value=value)
    return Entity(cid, Kind.FILE if isinstance(value, list) else Kind.OTHER, name=name)


def resolve(store: Blockstore, root: bytes, segments: Sequence[str]) -> Resolved:
    """Follow *segments* (names, already decoded) from *root*: NotFoundError for a missing name,
    NotDirectoryError below a file, FormatError for a malformed directory on the way."""
    entity = open_entity(store, root)
    blocks: list[bytes] = []
    roots = [root]
    inner: list[str] = []
    for segment in segments:
        if entity.kind is not Kind.DIRECTORY:
            raise NotDirectoryError(segment)
        if not blocks or blocks[-1] != entity.block:
            blocks.append(entity.block)
        entity = _child(store, entity, segment, blocks)
        roots.append(entity.block)
        inner = [*inner, segment] if entity.inline else []
    if blocks and blocks[-1] == entity.block:  # inline: its block is the entity's own
        blocks.pop()
    return Resolved(entity, blocks, roots, inner)


def _child(store: Blockstore, directory: Entity, name: str, visited: list[bytes]) -> Entity:
    """Entry *name* of *directory*, the nodes read to find it appended to *visited*."""
    if directory.node is not None:
        found = unixfs.find_entry(store, directory.node, name, visited)
        if found is None:
            raise NotFoundError(name)
        return open_entity(store, found, name)
    value = directory.value
    if hamt.is_root(value):
        nodes: dict[bytes, Any] = {}  # the HAMT nodes the lookup reads, in order
        entry = hamt.find(store, value, name, nodes)
        visited.extend(nodes)
    else:
        entry = value.get(name, hamt.MISSING)
    if entry is hamt.MISSING:
        raise NotFoundError(name)
    if isinstance(entry, codec.Link):
        return open_entity(store, entry.cid, name)
    dirnode.check_inline_entry(name, entry)  # FORMAT.md 3.2, step 2
    kind = Kind.FILE if metadata.is_metadata_name(name) else Kind.DIRECTORY
    return Entity(directory.block, kind, inline=True, name=name, value=entry)


def entries(store: Blockstore, directory: Entity) -> Iterator[tuple[str, bytes | None]]:
    """A directory's ``(name, CID)`` pairs in stored order (None: inline, no block of its own)."""
    if directory.node is not None:
        yield from unixfs.iter_entries(store, directory.node)
        return
    for name, entry in dirnode.iter_entries(store, directory.value):
        yield name, entry.cid if isinstance(entry, codec.Link) else None


# --- the blocks of an entity ---------------------------------------------------------------------


def follow(entity: Entity, scope: str) -> Follow:
    """Which links of each block a walk from ``entity.block`` goes on to, for ``dag-scope``
    *scope* (``block``, ``entity`` or ``all``)."""
    if scope == "block":
        return _nothing
    if scope == "entity":
        if entity.kind is Kind.FILE and not entity.inline:
            return block_links  # a file is all of its blocks
        if entity.kind is Kind.DIRECTORY and entity.sharded:
            return _shard_nodes if entity.node is not None else _hamt_nodes
        return _nothing
    if entity.inline:  # all: what the inline value links to, not the rest of its block

        def inline_first(cid: bytes, data: bytes) -> list[bytes]:
            return value_links(entity.value) if cid == entity.block else block_links(cid, data)

        return inline_first
    return block_links


def range_blocks(store: Blockstore, entity: Entity, start: int, end: int) -> Iterator[bytes]:
    """The CIDs of the blocks holding bytes ``[start, end)`` of a file, depth first from its root
    (its root alone for an empty range): ``entity-bytes``. Only the nodes on the way are read."""
    reader = entity.content(store).reader(store)
    if isinstance(reader, FblReader):
        yield from reader.blocks_for(start, end)
    else:  # one block holds it all (a raw block, a UnixFS node without links, inline metadata)
        yield entity.block


def _nothing(cid: bytes, data: bytes) -> list[bytes]:
    return []


def _shard_nodes(cid: bytes, data: bytes) -> list[bytes]:
    return _stored(_or_none(lambda: unixfs.sub_shards(unixfs.decode_node(cid, data))))


def _hamt_nodes(cid: bytes, data: bytes) -> list[bytes]:
    return _stored(_or_none(lambda: hamt.child_links(codec.decode(data))))


def _or_none(links: Callable[[], list[bytes]]) -> list[bytes]:
    """The links a node names, none if it is malformed: the node is still a block to send, and the
    client finds the directory as it is."""
    try:
        return links()
    except FormatError:
        return []


def _stored(links: Iterable[bytes]) -> list[bytes]:
    return [link for link in links if cids.inline_data(link) is None]
