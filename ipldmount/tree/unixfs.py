"""Trees over UnixFS: what ``ipfs add -r`` made, mounted and read like any tree, never changed.

:class:`UnixfsTree` is a read-only :class:`~ipldmount.tree.model.Tree` whose directories are UnixFS
nodes (plain or HAMT-sharded) and whose files are UnixFS files; everything above the tree (the
mount, the zarr store, the CLI) uses it unchanged. :func:`open_tree` picks the tree a root
needs by its codec.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

from ipldmount.blocks import Blockstore
from ipldmount.errors import BlockNotFoundError, CorruptBlockError, FormatError, ReadOnlyError
from ipldmount.format import hamt, unixfs
from ipldmount.format.dirnode import DirectoryForm
from ipldmount.format.files import StoredFile
from ipldmount.format.unixfs import UnixfsFile, UnixfsNode
from ipldmount.ipld import cid as cids
from ipldmount.ipld import codec
from ipldmount.ipld.dagpb import UnixFSType
from ipldmount.tree.model import Broken, Directory, File, Node, Tree

log = logging.getLogger(__name__)

PREFETCH_BATCH = 256  # entries whose blocks a remote-backed listing fetches side by side


def is_unixfs(root: bytes) -> bool:
    """Whether *root* names a UnixFS node (dag-pb): a tree that opens read-only."""
    return cids.codec_of(root) == cids.DAG_PB


def open_tree(
    store: Blockstore, root: bytes | None, *, whole_files: bool = False, read_only: bool = False
) -> Tree:
    """The tree at *root*: ipldmount's format, or UnixFS (read-only: asking to write is refused)."""
    if root is None or not is_unixfs(root):
        return Tree(store, root, whole_files=whole_files, read_only=read_only)
    if not read_only:
        raise ReadOnlyError(f"{cids.cid_to_str(root)} is a UnixFS directory: it opens read-only")
    return UnixfsTree(store, root, whole_files=whole_files)


class UnixfsDirectoryForm(DirectoryForm):
    """A UnixFS directory node as a directory's committed encoding (never re-encoded)."""

    __slots__ = ("node",)

    def __init__(self, node: UnixfsNode, data: bytes) -> None:
        super().__init__({}, data, node.cid)
        self.node = node
        self.sharded = node.kind == UnixFSType.HAMT_SHARD

    def store(self, store: Blockstore) -> bytes:
        """Its block is stored already (it was read from there): never re-encoded as DAG-CBOR."""
        return self.cid


class UnixfsTree(Tree):
    """A read-only tree over a UnixFS DAG: dag-pb directories and shards, chunked and raw files.

    An entry's kind is in its own block (a dag-pb link does not say), so listing a directory
    reads each entry's first block; on a remote-backed store those are fetched side by side.
    A symlink or other UnixFS node that is neither file nor directory is listed and answers EIO.
    """

    def __init__(self, store: Blockstore, root: bytes, *, whole_files: bool = False) -> None:
        super().__init__(store, root, whole_files=whole_files, read_only=True)

    def _open_root(self, cid: bytes) -> Directory:
        data = self.store.get(cid)
        node = unixfs.decode_node(cid, data)
        if not node.is_directory:
            kind = node.kind.name.lower().replace("_", " ")
            raise FormatError(f"root {cids.cid_to_str(cid)} is a UnixFS {kind}, not a directory")
        return Directory(UnixfsDirectoryForm(node, data))

    def _committed_entries(self, directory: Directory, committed: DirectoryForm) -> Iterable[tuple[str, Any]]:
        return self._prefetched(unixfs.iter_entries(self.store, _node_of(committed)))

    def _prefetched(self, entries: Iterator[tuple[str, bytes]]) -> Iterator[tuple[str, codec.Link]]:
        """*entries* as links, the dag-pb blocks of each batch fetched together first (a remote
        store; a local one has them)."""
        batch: list[tuple[str, bytes]] = []
        for entry in entries:
            batch.append(entry)
            if len(batch) == PREFETCH_BATCH:
                yield from self._links(batch)
                batch = []
        yield from self._links(batch)

    def _links(self, batch: list[tuple[str, bytes]]) -> Iterator[tuple[str, codec.Link]]:
        self.store.prefetch([cid for _, cid in batch if cids.codec_of(cid) == cids.DAG_PB])
        return ((name, codec.Link(cid)) for name, cid in batch)

    def _find_committed(self, directory: Directory, committed: DirectoryForm, name: str) -> Any:
        cid = unixfs.find_entry(self.store, _node_of(committed), name)
        return hamt.MISSING if cid is None else codec.Link(cid)

    def get_entry(self, directory: Directory, name: str) -> Node | None:
        """Entry *name*, reading only its own block (and a shard's nodes on its path): in a plain
        directory too, since knowing any other entry's kind would cost that entry's block."""
        if not directory.complete:
            return self._find_unread(directory, _form_of(directory), name)
        return super().get_entry(directory, name)

    def is_empty(self, directory: Directory) -> bool:
        if directory.complete:
            return super().is_empty(directory)
        return not _node_of(_form_of(directory)).links  # a shard with links has entries

    def subdirectories(self, directory: Directory) -> int:
        if directory.subdirs is None:
            self._load(directory)
        assert directory.subdirs is not None
        return directory.subdirs

    def known_subdirectories(self, directory: Directory) -> int | None:
        """Counted once listed (each entry's kind costs its block): "not counted" until then."""
        return directory.subdirs

    def _linked_node(self, name: str, cid: bytes) -> Node:
        node: UnixfsNode | None = None
        try:
            if not cids.is_supported(cid) and cids.inline_data(cid) is None:
                raise FormatError(f"entry {name!r} links to an unsupported CID {cid.hex()}")
            if cids.codec_of(cid) == cids.RAW:
                return File(StoredFile(cid))  # a file of one raw block
            data = self.store.get(cid)
            node = unixfs.decode_node(cid, data)
            if node.is_directory:
                return Directory(UnixfsDirectoryForm(node, data))
            if node.is_file:
                return File(UnixfsFile(cid, unixfs.file_size(self.store, node)))
            raise FormatError(f"a UnixFS {node.kind.name.lower()}: only files and directories are read")
        except (BlockNotFoundError, CorruptBlockError, FormatError) as exc:
            log.info("entry %r (%s) is unreadable: %s", name, cids.cid_to_str(cid), exc)
            return Broken(cid, exc, node is not None and node.is_directory)


def _form_of(directory: Directory) -> DirectoryForm:
    form = directory._form
    assert form is not None, "a read-only tree's directories keep their committed form"
    return form


def _node_of(form: DirectoryForm) -> UnixfsNode:
    assert isinstance(form, UnixfsDirectoryForm), "a UnixFS tree holds only UnixFS directories"
    return form.node
