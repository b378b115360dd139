"""The mutable tree: a root CID opened lazily, changed in memory, committed bottom-up.

Nodes are plain objects (``Directory``, ``File``, ``Broken``) so that a FUSE
adapter can hand out inode numbers for them and a zarr store can walk them by
path; neither knows how the other works. A directory loads its entries the
first time they are asked for. Every change marks the directories above it
dirty; :meth:`Tree.commit` re-encodes just those, children before parents, and
reuses the stored encoding of everything else.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

from ipldmount.blocks import BlockSink, Blockstore, Chunk, CidOnly
from ipldmount.errors import (
    AlreadyExistsError,
    BlockNotFoundError,
    CorruptBlockError,
    DirectoryNotEmptyError,
    FormatError,
    InvalidMoveError,
    InvalidNameError,
    IpldmountError,
    IsDirectoryError,
    NameTooLongError,
    NotDirectoryError,
    NotFoundError,
    ReadOnlyError,
)
from ipldmount.format import dirnode, hamt, metadata
from ipldmount.format.dirnode import DirectoryForm, EntryForm
from ipldmount.format.entrytable import EntryTable
from ipldmount.format.files import (
    BLOCK_LIMIT,
    FileContent,
    FileReader,
    InlineFile,
    LeafStore,
    PendingFile,
    StoredFile,
    decode_fbl,
    store_bytes,
)
from ipldmount.format.merge import MISSING, Take
from ipldmount.format.unixfs import UnixfsFile
from ipldmount.ipld import cid as cids
from ipldmount.ipld import codec

log = logging.getLogger(__name__)

HAMT_NODE_CACHE = 64 << 20  # estimated bytes of decoded HAMT nodes a tree keeps (hamt.NodeLRU)
# Sharded directories in the pre-spec bitmap order warned about (their CIDs): once per process.
_WARNED_OLD_ORDER: set[bytes] = set()


NAME_MAX = 255
EMPTY_DIRECTORY = codec.encode({})  # the block of an empty tree's root (FORMAT.md §6.5)
EMPTY_ROOT = cids.block_cid(cids.DAG_CBOR, EMPTY_DIRECTORY)


class Node:
    """Something a directory entry can name."""

    __slots__ = ("__weakref__", "_more_links", "_name", "_parent", "meta")

    def __init__(self) -> None:
        # Every (directory, name) that refers to this node: nearly all have one, kept in two
        # fields (a tuple of pairs would cost 88 bytes more per node, and a listed directory
        # has millions); hard links beyond the first in a tuple.
        self._parent: Directory | None = None
        self._name = ""
        self._more_links: tuple[tuple[Directory, str], ...] = ()
        # Kept here for the session (its mode/owner/times, repo/attributes.py): a field costs
        # 8 bytes per node, a dictionary entry beside the tree 50-130.
        self.meta: object = None

    @property
    def links(self) -> tuple[tuple[Directory, str], ...]:
        """Every (directory, name) that refers to this node, the first one first."""
        return () if self._parent is None else ((self._parent, self._name), *self._more_links)

    @property
    def first_link(self) -> tuple[Directory, str] | None:
        return None if self._parent is None else (self._parent, self._name)

    @property
    def parent(self) -> Directory | None:
        """The directory of its first link (None once nothing refers to it)."""
        return self._parent

    @property
    def link_count(self) -> int:
        return 0 if self._parent is None else 1 + len(self._more_links)

    def add_link(self, directory: Directory, name: str) -> None:
        if self._parent is None:
            self._parent, self._name = directory, name
        else:
            self._more_links = (*self._more_links, (directory, name))

    def remove_link(self, directory: Directory, name: str) -> None:
        links = list(self.links)
        links.remove((directory, name))
        if links:
            (self._parent, self._name), *more = links
        else:
            self._parent, self._name, more = None, "", []
        self._more_links = tuple(more)


class File(Node):
    __slots__ = ("content",)

    def __init__(self, content: FileContent) -> None:
        super().__init__()
        self.content = content


class Directory(Node):
    __slots__ = (
        "_entries",
        "_form",
        "_previous",
        "changeable",
        "changed",
        "complete",
        "dirty",
        "old_order",
        "subdirs",
        "table",
    )

    def __init__(self, form: DirectoryForm | None = None) -> None:
        super().__init__()
        self._form = form  # the current encoding; None while dirty
        self._previous: DirectoryForm | None = None  # while dirty: the encoding as of the last commit
        # While dirty: the names whose entries changed since then (None: any may have).
        self.changed: set[str] | None = None if form is None else set()
        # The entries read so far: all of them once complete; a sharded directory reads only the
        # names asked for (Tree.get_entry) until something needs them all (Tree.entries).
        self._entries: dict[str, Node] | None = None if form is not None else {}
        # Once complete, the entries read but never used stay packed here, not in _entries (a
        # listed directory of a million chunks): the two hold every entry, each name in one.
        self.table: EntryTable | None = None
        self.complete = form is None
        # A sharded directory read whole once for a change (a name removed: Tree._check_changeable):
        # every name and node of its committed HAMT is then known valid.
        self.changeable = False
        # A node of its committed HAMT was read in the pre-spec bitmap order (FORMAT.md 6.4).
        self.old_order = False
        self.dirty = form is None
        self.subdirs: int | None = None if form is not None else 0  # known once counted or loaded

    @property
    def cid(self) -> bytes | None:
        """The CID of this directory as of the last commit (None if changed since)."""
        return None if self._form is None else self._form.cid


@dataclass(frozen=True)
class NodeState:
    """What a node is made of now, for the user: the one CID worth showing, or why there is none."""

    cid: bytes | None = None  # the block that holds exactly this node now (fetchable)
    inline: bool = False  # held inside its parent's block: no block of its own
    changed: bool = False  # changed since the last commit: its block does not exist yet
    broken: str | None = None  # why its block cannot be read (cid is the link it had)


class Broken(Node):
    """An entry whose block is missing or unreadable: kept as its link, refused on use.

    *directory* is its best-known kind, so that using it reaches the code that says
    why it fails: a DAG-CBOR block that starts with a map, or is missing, is taken
    for a directory.
    """

    __slots__ = ("cid", "directory", "error")

    def __init__(self, cid: bytes, error: IpldmountError, directory: bool = False) -> None:
        super().__init__()
        self.cid = cid
        self.error = error
        self.directory = directory


def _may_be_directory(cid: bytes, head: bytes | None) -> bool:
    """A linked entry's kind from its block's first byte (CBOR major type 5: a map); a missing
    DAG-CBOR block counts as a directory, the common case, so that both counts and EIO agree."""
    if not cids.is_supported(cid) or cids.codec_of(cid) != cids.DAG_CBOR:
        return False
    return head is None or (bool(head) and head[0] >> 5 == 5)


def _check_block(form: DirectoryForm) -> None:
    """Refuse a directory block holding an invalid name or value anywhere: among its own entries,
    or in a directory inline in it (FORMAT.md 3.2). Such a block is never read in part, so never
    re-encoded: an entry linking it is broken and keeps its link; a root refuses every change."""
    if not form.checked:
        try:
            _check_entries(dirnode.inline_entries(form.value))
        except FormatError as exc:
            raise FormatError(f"directory block {cids.cid_to_str(form.cid)} is malformed: {exc}") from None
        form.checked = True


def _check_entries(entries: Iterable[tuple[Any, Any]]) -> None:
    """Raise FormatError at the first invalid name or value among *entries*, or in a directory
    inline in them: an explicit stack, as inline maps may nest as deep as a decoder allows."""
    stack = [iter(entries)]
    while stack:
        for name, value in stack.pop():
            try:
                _check_key(name)
            except IpldmountError as exc:
                raise FormatError(f"an invalid name: {exc}") from None
            if isinstance(value, codec.Link):
                continue
            dirnode.check_inline_entry(name, value)
            if not metadata.is_metadata_name(name):
                stack.append(iter(dirnode.inline_entries(value)))


def _check_entry(name: object, value: Any) -> None:
    """One entry of a directory, checked as :func:`_check_entries` checks each."""
    _check_entries([(name, value)])


def _once_each(entries: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    """*entries*, refused (FormatError) at a name met twice."""
    seen: set[str] = set()
    for name, value in entries:
        if name in seen:
            raise dirnode.duplicate_name(name)
        seen.add(name)
        yield name, value


def _check_key(name: object) -> None:
    if type(name) is not str:
        raise InvalidNameError(repr(name), "Directory keys must be strings")
    check_name(name)


def check_name(name: str) -> None:
    """Refuse names a directory entry cannot have."""
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise InvalidNameError(name)
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidNameError(name, "File name is not valid UTF-8") from None
    if len(encoded) > NAME_MAX:
        raise NameTooLongError(name)


def _node_links(value: Any) -> list[bytes]:
    """The DAG-CBOR blocks a plain directory node links to: its loading reads each of them
    (subdirectories, chunked files), so a store that fetches asks for them side by side first."""
    if type(value) is not dict:
        return []
    return [
        entry.cid
        for entry in value.values()
        if isinstance(entry, codec.Link)
        and cids.is_supported(entry.cid)
        and cids.codec_of(entry.cid) == cids.DAG_CBOR
    ]


def _stored_link(name: str, node: Node) -> bytes | None:
    """The CID a stored file that is not zarr metadata is written as (a link, never inline), or
    None for any other entry (:meth:`Tree._entry_form` decides)."""
    if type(node) is File and type(node.content) is StoredFile and not metadata.is_metadata_name(name):
        return node.content.cid
    return None


def split_path(path: str) -> list[str]:
    """Path components; leading, trailing and doubled slashes are ignored."""
    return [part for part in path.split("/") if part]


class Tree:
    """A directory tree over a blockstore, opened at a root CID (or empty)."""

    def __init__(
        self,
        store: Blockstore,
        root: bytes | None = None,
        *,
        whole_files: bool = False,
        read_only: bool = False,
    ) -> None:
        self.store = store
        self.chunk_size: int | None = None if whole_files else BLOCK_LIMIT
        self.read_only = read_only
        self.root = self._open_root(root) if root is not None else Directory()
        self._hamt_nodes: MutableMapping[bytes, Any] = hamt.NodeLRU(HAMT_NODE_CACHE)
        self._whole_nodes: set[bytes] = set()  # HAMT nodes a change checked whole (one CID each)
        # Called with (table, position, node) for every node made from a packed row of a
        # directory's entry table (a mount gives the node the row's inode number).
        self.on_node_from_row: Callable[[EntryTable, int, Node], None] | None = None
        # A row becoming a node (a mount opening a chunk, from its own thread) against a commit
        # reading a directory's nodes and rows: each entry must be read in exactly one of them.
        self._moving = threading.RLock()

    def _open_root(self, cid: bytes) -> Directory:
        if cids.codec_of(cid) != cids.DAG_CBOR:
            raise FormatError(f"root {cids.cid_to_str(cid)} is not a dag-cbor directory node")
        if not cids.is_supported(cid):  # FORMAT.md 2.1: identity CIDs are read in UnixFS only
            raise FormatError(
                f"root {cids.cid_to_str(cid)} is not a sha2-256 block (identity CIDs are UnixFS's)"
            )
        data = self.store.get(cid)
        value = codec.decode(data)
        if type(value) is not dict:
            raise FormatError(f"root {cids.cid_to_str(cid)} is not a directory node")
        return Directory(DirectoryForm(value, data, cid))

    # --- reading ---------------------------------------------------------------

    def entries(self, directory: Directory) -> dict[str, Node]:
        """The directory's entries by name, loading them on first use (a node for each: see
        :meth:`listing` for a directory too big for that).

        A directory that cannot be read (an invalid name, a malformed HAMT) raises
        FormatError every time it is asked, and nothing of it is kept: a change
        to it must fail, never commit the part that happened to load.
        """
        if not directory.complete:
            self._load(directory)
        table = directory.table
        if table is not None:
            for position in table.live_positions():
                self._take(directory, table, position)
            directory.table = None
        assert directory._entries is not None
        return directory._entries

    def listing(self, directory: Directory) -> tuple[list[str], EntryTable | None]:
        """Every entry without a node for each: the names of those with a node, sorted, and the
        table of the rest (None if there are none), by position. Loads the directory if needed."""
        if not directory.complete:
            self._load(directory)
        assert directory._entries is not None
        table = directory.table
        return sorted(directory._entries), table if table is not None and table.live else None

    def names(self, directory: Directory) -> list[str]:
        """The entries' names, sorted."""
        names, table = self.listing(directory)
        if table is not None:
            names = sorted([*names, *(table.name(position) for position in table.live_positions())])
        return names

    def find_row(self, directory: Directory, name: str) -> tuple[EntryTable, int] | None:
        """Entry *name* if it is still a packed row (nothing made a node for it): its table and
        position. None otherwise, also when the directory has not been read yet (ask get_entry)."""
        table = directory.table
        if table is None or not directory.complete:
            return None
        assert directory._entries is not None
        if name in directory._entries:
            return None
        position = table.find(name)
        return None if position is None else (table, position)

    def node_from_row(self, directory: Directory, table: EntryTable, position: int) -> Node:
        """The node for a packed row (made now; from then on the entry)."""
        assert directory.table is table and table.is_live(position)
        return self._take(directory, table, position)

    def return_to_row(self, node: Node) -> tuple[EntryTable, int] | None:
        """Make *node* a packed row again if it is one's, unchanged: a file made from a row, still
        its directory's only name for it, with the row's content. Returns the row (None: kept).
        Whoever calls this holds no other reference to the node (a mount: no handle, no inode):
        reading every chunk of a huge directory once must not leave a node for each."""
        link = node.first_link
        if not isinstance(node, File) or link is None or node.link_count != 1:
            return None
        directory, name = link
        table = directory.table
        content = node.content
        if table is None or not isinstance(content, StoredFile):
            return None
        if directory.changed is None or name in directory.changed:
            return None  # its entry is re-encoded from the node at the next commit
        position = table.position(name)
        if position is None or table.is_live(position) or content.cid != table.cid(position):
            return None
        assert directory._entries is not None and directory._entries.get(name) is node
        with self._moving:
            del directory._entries[name]
            node.remove_link(directory, name)
            if content.known_size is not None:
                table.sizes[position] = content.known_size
            table.untake(position)
        return table, position

    def _take(self, directory: Directory, table: EntryTable, position: int) -> Node:
        name = table.name(position)
        node = File(StoredFile(table.cid(position), table.size(position)))
        with self._moving:
            table.take(position)
            node.add_link(directory, name)
            assert directory._entries is not None
            directory._entries[name] = node
        if self.on_node_from_row is not None:
            self.on_node_from_row(table, position, node)
        return node

    def _load(self, directory: Directory) -> None:
        """Read every entry of the committed node: links to raw blocks into a packed table, the
        rest as nodes. Nothing is kept unless all of it reads. Once: a mount listing the directory
        and a sync laying it out (in another thread) must not each make a table of it."""
        with self._moving:
            if directory.complete:
                return
            committed = directory._form or directory._previous
            if committed is not None and committed.stored:
                _check_block(committed)  # once per block: a linked one was checked as it was read
            table = EntryTable()
            if committed is not None and not committed.sharded and self.store.fetches_missing:
                linked = _node_links(committed.value)
                if linked:
                    self.store.prefetch(linked)  # one round trip, not one per entry
            loaded, fresh = self._read_committed(directory, table)
            for name in fresh:
                loaded[name].add_link(directory, name)
            directory._entries, directory.complete = loaded, True
            directory.table = table if table.live else None
            directory.subdirs = sum(isinstance(node, Directory) for node in loaded.values())

    def _read_committed(self, directory: Directory, table: EntryTable) -> tuple[dict[str, Node], list[str]]:
        """Every entry, in the order of the committed node (those read before keep their nodes,
        names removed since stay removed, names added since come last), and the names read now;
        the links to raw blocks read now go to *table* instead (sealed here)."""
        committed = directory._form or directory._previous
        assert committed is not None, "a directory that is not complete has a committed encoding"
        known = directory._entries or {}
        gone = directory.changed or set()  # changed and not known: removed
        loaded: dict[str, Node] = {}
        fresh: list[str] = []
        skipped: set[str] = set()
        for name, value in self._committed_entries(directory, committed):  # no map of them all
            if name in loaded or name in skipped:
                raise dirnode.duplicate_name(name)
            if name in known:
                loaded[name] = known[name]
            elif name in gone:
                skipped.add(name)
            else:
                self._check_stored_name(directory, name)
                if isinstance(value, codec.Link) and table.holds(value.cid):
                    table.add(name, value.cid)
                    continue
                loaded[name] = self._node_for(name, value)
                fresh.append(name)
        twice = table.seal()
        if twice is None:
            twice = next((name for name in (*loaded, *skipped) if table.find(name) is not None), None)
        if twice is not None:
            raise dirnode.duplicate_name(twice)
        loaded.update((name, node) for name, node in known.items() if name not in loaded)
        return loaded, fresh

    def get_entry(self, directory: Directory, name: str) -> Node | None:
        """The entry *name*, or None; in a sharded directory only the HAMT nodes on its path are
        read, so a lookup among a million names costs a few small blocks, not the directory."""
        if not directory.complete:
            committed = directory._form or directory._previous
            assert committed is not None
            if committed.sharded:
                return self._find_unread(directory, committed, name)
            self._load(directory)
        assert directory._entries is not None
        node = directory._entries.get(name)
        table = directory.table
        if node is None and table is not None:
            position = table.find(name)
            if position is not None:
                node = self._take(directory, table, position)
        return node

    def _find_unread(self, directory: Directory, committed: DirectoryForm, name: str) -> Node | None:
        """Entry *name* of a sharded directory not read in full: through the HAMT nodes on its path."""
        known = directory._entries if directory._entries is not None else {}
        directory._entries = known
        if name in known or name in (directory.changed or ()):
            return known.get(name)  # read before, or changed since: removed unless known
        value = self._find_committed(directory, committed, name)
        if value is hamt.MISSING:
            return None
        self._check_stored_name(directory, name)
        node = self._node_for(name, value)
        node.add_link(directory, name)
        known[name] = node
        return node

    def _check_stored_name(self, directory: Directory, name: object) -> None:
        try:
            _check_key(name)
        except IpldmountError as exc:
            raise FormatError(f"directory {self.path_of(directory)!r} holds an invalid name: {exc}") from None

    def subdirectories(self, directory: Directory) -> int:
        """How many directories *directory* holds (its link count is 2 more).

        Counted from its node without loading its entries: a link's kind is read
        from the first byte of the block it names (a map is a directory, a list a
        chunked file), so a ``stat`` never decodes the children.
        """
        if directory.subdirs is None and directory._form is None:  # changed since: count them all
            self._load(directory)
        if directory.subdirs is None:
            assert directory._form is not None
            count = 0
            for name, value in dirnode.plain_entries(self.store, directory._form.value).items():
                self._check_stored_name(directory, name)
                count += self._names_directory(name, value)
            directory.subdirs = count
        return directory.subdirs

    def known_subdirectories(self, directory: Directory) -> int | None:
        """:meth:`subdirectories` if that is cheap: None for a sharded directory not read in full
        (counting would read every node of it: seconds for a million entries, on a mere stat)."""
        committed = directory._form or directory._previous
        if (
            directory.subdirs is None
            and committed is not None
            and committed.sharded
            and not directory.complete
        ):
            return None
        return self.subdirectories(directory)

    def _names_directory(self, name: str, value: Any) -> bool:
        if not isinstance(value, codec.Link):
            return type(value) is dict and not metadata.is_metadata_name(name)
        if not cids.is_supported(value.cid) or cids.codec_of(value.cid) != cids.DAG_CBOR:
            return False
        try:
            head = self.store.read(value.cid, 0, 1)
        except BlockNotFoundError:
            head = None
        return _may_be_directory(value.cid, head)

    def _node_for(self, name: str, value: Any) -> Node:
        if isinstance(value, codec.Link):
            return self._linked_node(name, value.cid)
        dirnode.check_inline_entry(name, value)
        if metadata.is_metadata_name(name):
            return File(InlineFile(name, value))
        return Directory(DirectoryForm(value))

    def _linked_node(self, name: str, cid: bytes) -> Node:
        if cids.is_supported(cid) and cids.codec_of(cid) == cids.RAW:
            return File(StoredFile(cid))
        data: bytes | None = None
        try:
            if not cids.is_supported(cid) or cids.codec_of(cid) != cids.DAG_CBOR:
                raise FormatError(f"entry {name!r} links to a CID this format does not use: {cid.hex()}")
            data = self.store.get(cid)
            value = codec.decode(data)
            if isinstance(value, list):
                return File(StoredFile(cid, sum(length for _, length in decode_fbl(data))))
            if type(value) is dict:
                form = DirectoryForm(value, data, cid)
                _check_block(form)
                return Directory(form)
            raise FormatError(f"block {cids.cid_to_str(cid)} is neither a directory nor a chunked file")
        except (BlockNotFoundError, CorruptBlockError, FormatError) as exc:
            # Not an error yet: the entry is listed, and whoever uses it gets (and logs) EIO.
            log.info("entry %r (%s) is unreadable: %s", name, cids.cid_to_str(cid), exc)
            return Broken(cid, exc, _may_be_directory(cid, data))

    def is_empty(self, directory: Directory) -> bool:
        """Whether *directory* has no entries; a sharded one is not read beyond its first entry."""
        committed = directory._form or directory._previous
        if not directory.complete and committed is not None and not committed.sharded:
            self._load(directory)
        if directory.complete:
            return not directory._entries and (directory.table is None or not directory.table.live)
        assert committed is not None
        if directory._entries:
            return False
        gone = directory.changed or set()
        return all(name in gone for name, _ in self._committed_entries(directory, committed))

    # The committed encoding, read: a tree over another format (UnixFS) reads its own nodes here.

    def _committed_entries(self, directory: Directory, committed: DirectoryForm) -> Iterable[tuple[str, Any]]:
        """The (name, entry value) pairs of *directory*'s committed node, one at a time."""
        return dirnode.iter_entries(self.store, committed.value, self._old_order_notice(directory, committed))

    def _find_committed(self, directory: Directory, committed: DirectoryForm, name: str) -> Any:
        """Entry *name*'s value in *directory*'s committed sharded node (hamt.MISSING if absent)."""
        notice = self._old_order_notice(directory, committed)
        return hamt.find(self.store, committed.value, name, self._hamt_nodes, notice)

    def _old_order_notice(self, directory: Directory, committed: DirectoryForm) -> Callable[[], None]:
        """What a HAMT reader calls for each node it reads in the pre-spec bitmap order: a warning,
        once per directory and process (FORMAT.md 6.4), and the directory marked, so that a change
        to it checks it whole (the change rewrites it whole, in the spec's order)."""

        def notice() -> None:
            directory.old_order = True
            if committed.cid not in _WARNED_OLD_ORDER:
                _WARNED_OLD_ORDER.add(committed.cid)
                where = self.path_of(directory)
                log.warning(
                    "sharded directory %r (%s) uses the pre-spec HAMT bitmap order: it is read correctly,"
                    " and a change to it rewrites it whole in the spec's order",
                    "/" if where == "" else where,
                    cids.cid_to_str(committed.cid),
                )

        return notice

    def lookup(self, directory: Directory, name: str) -> Node:
        node = self.get_entry(directory, name)
        if node is None:
            raise NotFoundError(name)
        return node

    def size(self, node: Node) -> int:
        if isinstance(node, File):
            return node.content.size_in(self.store)
        if isinstance(node, Broken):
            raise node.error
        return 0

    def path_of(self, node: Node) -> str | None:
        """A path that names *node* now (its first link), or None if nothing does."""
        parts: list[str] = []
        while node is not self.root:
            link = node.first_link
            if link is None:
                return None
            node, name = link
            parts.append(name)
        return "/".join(reversed(parts))

    def describe(self, node: Node) -> NodeState:
        """What *node* is made of now: the block holding it, or inline, or changed, or broken.

        The rule FORMAT.md and the README promise: a CID shown to a user always
        names a block in the store (fetchable, exportable); a node without a block
        of its own says so instead.
        """
        if isinstance(node, File):
            content = node.content
            if isinstance(content, StoredFile | UnixfsFile):
                return NodeState(cid=content.cid)
            if isinstance(content, InlineFile):
                return NodeState(inline=True)
            return NodeState(changed=True)
        if isinstance(node, Directory):
            form = node._form
            if node.dirty or form is None:
                return NodeState(changed=True)
            return NodeState(cid=form.cid) if form.stored else NodeState(inline=True)
        assert isinstance(node, Broken)
        return NodeState(cid=node.cid, broken=str(node.error))

    def reader(self, file: File) -> FileReader:
        return file.content.reader(self.store)

    def read_all(self, file: File) -> bytes:
        reader = self.reader(file)
        return reader.read(0, reader.size)

    # --- changing --------------------------------------------------------------

    def _writable(self) -> None:
        if self.read_only:
            raise ReadOnlyError("the tree is read-only")

    def _check_changeable(self, directory: Directory, name: str, *, removing: bool = False) -> None:
        """Refuse a change to *name* in *directory* unless what the change re-encodes could be read
        in full (FORMAT.md 3.2, 6.4): a writer never re-encodes what it could not read. That is
        the directory's block, and each block above it; in a sharded directory, the HAMT nodes on
        the changed names' paths (read again for each name: a change costs its path), or all of
        it when a name goes (the commit lays it out anew, reading it all anyway)."""
        current: Directory | None = directory
        while current is not None:
            committed = current._form or current._previous
            if current.complete or current.changeable:
                pass  # read whole already, and found so
            elif committed is not None and committed.sharded:
                self._check_sharded(current, committed, name, whole=removing)
            else:
                self._load(current)  # a plain block is checked whole as it is read
            link = current.first_link
            if link is None:
                return
            current, name = link
            removing = False  # above, a name is replaced by its new entry: a path's worth

    def _check_sharded(
        self, directory: Directory, committed: DirectoryForm, name: str, *, whole: bool
    ) -> None:
        try:
            if not whole:
                checked = (self._whole_nodes, committed.cid if committed.stored else None)
                notice = self._old_order_notice(directory, committed)
                hamt.check_path(
                    self.store, committed.value, name, _check_entry, self._hamt_nodes, checked, notice
                )
            if whole or directory.old_order:  # a change to an old-order HAMT rewrites it whole
                _check_entries(_once_each(self._committed_entries(directory, committed)))
                directory.changeable = True  # every node read and found whole
        except FormatError as exc:
            where = self.path_of(directory)
            raise FormatError(f"sharded directory {where!r} cannot be changed: {exc}") from None

    def _insert(self, directory: Directory, name: str, node: Node) -> None:
        """Put *node* under *name*, in place of what is there (if anything): a replacement changes
        one name, it removes none, so a sharded directory is checked along that name's path only."""
        existing = self.get_entry(directory, name)  # what it replaces, if anything, is read first
        self._check_changeable(directory, name)
        assert directory._entries is not None
        if existing is not None:
            existing.remove_link(directory, name)
            if isinstance(existing, Directory) and directory.subdirs is not None:
                directory.subdirs -= 1
        directory._entries[name] = node
        node.add_link(directory, name)
        if isinstance(node, Directory) and directory.subdirs is not None:
            directory.subdirs += 1
        _mark_dirty(directory, name)

    def _detach(self, directory: Directory, name: str) -> Node:
        if self.get_entry(directory, name) is None:
            raise KeyError(name)
        self._check_changeable(directory, name, removing=True)
        assert directory._entries is not None
        node = directory._entries.pop(name)
        node.remove_link(directory, name)
        if isinstance(node, Directory) and directory.subdirs is not None:
            directory.subdirs -= 1
        _mark_dirty(directory, name)
        return node

    def create(self, directory: Directory, name: str, content: FileContent | None = None) -> File:
        """A new file *name* in *directory* (EEXIST if the name is taken)."""
        self._writable()
        check_name(name)
        if self.get_entry(directory, name) is not None:
            raise AlreadyExistsError(name)
        file = File(content if content is not None else self.store_bytes(b""))
        self._insert(directory, name, file)
        return file

    def set_content(self, file: File, content: FileContent) -> None:
        """Replace a file's content (every name that links to it sees the change)."""
        self._writable()
        for parent, name in file.links:
            self._check_changeable(parent, name)
        file.content = content
        for parent, name in file.links:
            _mark_dirty(parent, name)

    def store_bytes(self, data: bytes) -> StoredFile:
        """Put *data* in the blockstore as file content, by this tree's chunking rule."""
        return store_bytes(self.store, data, self.chunk_size)

    def content_for(self, name: str, data: Chunk, sink: LeafStore | None = None) -> FileContent:
        """File content for *data* written under *name*: metadata waits in memory for the commit.

        Other content is stored at once, in *sink* (a staging, say; default: the tree's store).
        Nothing of the tree is touched, so a caller may run this outside whatever lock guards
        the tree: hashing and storing a large value is most of the cost of writing it.
        """
        if metadata.is_metadata_name(name) and len(data) <= metadata.MAX_INLINE_SOURCE:
            return PendingFile(bytes(data), self.chunk_size)
        return store_bytes(self.store if sink is None else sink, data, self.chunk_size)

    def mkdir(self, directory: Directory, name: str) -> Directory:
        self._writable()
        check_name(name)
        if self.get_entry(directory, name) is not None:
            raise AlreadyExistsError(name)
        child = Directory()
        self._insert(directory, name, child)
        return child

    def unlink(self, directory: Directory, name: str) -> Node:
        """Remove a non-directory entry; the node lives on for whoever holds it."""
        self._writable()
        if isinstance(self.lookup(directory, name), Directory):
            raise IsDirectoryError(name)
        return self._detach(directory, name)

    def rmdir(self, directory: Directory, name: str) -> None:
        self._writable()
        node = self.lookup(directory, name)
        if not isinstance(node, Directory):
            raise NotDirectoryError(name)
        if not self.is_empty(node):
            raise DirectoryNotEmptyError(name)
        self._detach(directory, name)

    def link(self, file: Node, directory: Directory, name: str) -> None:
        """Another name for *file* (a hard link; stored as a second copy of its link)."""
        self._writable()
        check_name(name)
        if isinstance(file, Directory):
            raise IsDirectoryError(name, "Hard links to directories are not allowed")
        if self.get_entry(directory, name) is not None:
            raise AlreadyExistsError(name)
        self._insert(directory, name, file)

    def rename(
        self, source: Directory, name: str, target: Directory, new_name: str, *, replace: bool = True
    ) -> None:
        """POSIX rename(2): move an entry, replacing a compatible target."""
        self._writable()
        check_name(new_name)
        node = self.lookup(source, name)
        existing = self.get_entry(target, new_name)
        if existing is node:
            return
        if isinstance(node, Directory) and self._is_ancestor(node, target):
            raise InvalidMoveError(new_name)
        self._check_changeable(source, name, removing=True)  # both, before either changes
        self._check_changeable(target, new_name)
        if existing is not None:
            if not replace:
                raise AlreadyExistsError(new_name)
            self._check_replaceable(node, existing, new_name)
            self._detach(target, new_name)
        self._detach(source, name)
        self._insert(target, new_name, node)

    def _check_replaceable(self, node: Node, existing: Node, name: str) -> None:
        if isinstance(existing, Directory):
            if not isinstance(node, Directory):
                raise IsDirectoryError(name)
            if not self.is_empty(existing):
                raise DirectoryNotEmptyError(name)
        elif isinstance(node, Directory):
            raise NotDirectoryError(name)

    @staticmethod
    def _is_ancestor(node: Directory, directory: Directory) -> bool:
        current: Directory | None = directory
        while current is not None:
            if current is node:
                return True
            current = current.parent
        return False

    # --- committing ------------------------------------------------------------

    def commit(self) -> bytes:
        """Encode what changed, store it, and return the root CID.

        Runs inside one blockstore batch, so a commit's blocks become durable
        together, or (if it fails) not at all, and then the tree is as it was:
        every directory the commit touched is still marked changed.
        """
        laid_out: list[tuple[Directory, set[str] | None]] = []
        try:
            with self.store.batch():
                for directory in self._dirty_postorder():
                    directory._form = self._layout(directory, self.store, _committed_form)
                    laid_out.append((directory, directory.changed))
                    directory.dirty, directory.changed = False, set()
                assert self.root._form is not None
                root = self.root._form.store(self.store)
        except BaseException:
            for directory, changed in laid_out:  # as it was: dirty, with the same changes
                directory._form, directory.dirty, directory.changed = None, True, changed
            raise
        for directory, changed in laid_out:
            directory._previous, directory.old_order = None, False  # laid out in the spec's order
            self._settle_contents(directory, changed)
        return root

    def preview_root(self) -> bytes:
        """The root CID a commit would give now, computed without storing or changing anything."""
        forms: dict[int, DirectoryForm] = {}

        def form_of(directory: Directory) -> DirectoryForm:
            form = forms.get(id(directory), directory._form)
            assert form is not None, "dirty directories are laid out children first"
            return form

        for directory in self._dirty_postorder():
            forms[id(directory)] = self._layout(directory, CidOnly(), form_of)
        return form_of(self.root).cid

    def _dirty_postorder(self) -> list[Directory]:
        """The dirty directories, every child before its parent; only changed names are looked at."""
        order: list[Directory] = []
        stack = [self.root] if self.root.dirty else []
        while stack:
            directory = stack.pop()
            order.append(directory)
            if directory.changed is None:
                children: Iterable[Node] = self.entries(directory).values()
            else:
                children = _changed_entries(directory)
            stack.extend(node for node in children if isinstance(node, Directory) and node.dirty)
        order.reverse()
        return order

    def _layout(
        self, directory: Directory, sink: BlockSink, form_of: Callable[[Directory], DirectoryForm]
    ) -> DirectoryForm:
        updated = self._update_sharded(directory, sink, form_of)
        if updated is not None:
            return updated
        if not directory.complete:
            self._load(directory)
        assert directory._entries is not None
        with self._moving:  # nodes and rows as of one moment (a chunk opened meanwhile is in one)
            nodes, table = dict(directory._entries), directory.table
            rows = list(table.live_positions()) if table is not None else []
        forms: dict[str, EntryForm] = {}
        links: dict[str, codec.Link] = {}  # stored chunks: a link each, and no EntryForm
        for name, node in nodes.items():
            cid = _stored_link(name, node)
            if cid is None:
                forms[name] = self._entry_form(name, node, sink, form_of)
            else:
                links[name] = codec.Link(cid)
        if table is not None:
            is_metadata = metadata.is_metadata_name
            for position in rows:  # a row's name is not a node's (both taken under _moving)
                name = table.name(position)
                if is_metadata(name):
                    forms[name] = self._metadata_row_form(directory, table, position, sink, form_of)
                else:
                    links[name] = codec.Link(table.cid(position))
        return dirnode.layout(sink, forms, links=links)

    def _metadata_row_form(
        self,
        directory: Directory,
        table: EntryTable,
        position: int,
        sink: BlockSink,
        form_of: Callable[[Directory], DirectoryForm],
    ) -> EntryForm:
        """A packed row of zarr metadata in a full layout: it may go inline, so its node decides
        (other rows are links, taken without making a node). A row made a node since the layout
        began gives that node: it is unchanged (changes take the mount's lock)."""
        name = table.name(position)
        assert directory._entries is not None
        with self._moving:  # a mount may have made its node since the layout began
            taken = not table.is_live(position)
            node = directory._entries.get(name) if taken else self._take(directory, table, position)
        assert node is not None, "a commit runs while nothing removes entries"
        return self._entry_form(name, node, sink, form_of)

    def _update_sharded(
        self, directory: Directory, sink: BlockSink, form_of: Callable[[Directory], DirectoryForm]
    ) -> DirectoryForm | None:
        """A sharded directory whose changes can only make it bigger stays sharded (FORMAT.md 6.3):
        only the HAMT nodes on the changed names' paths are rewritten (:func:`hamt.update`, byte for
        byte what a full layout gives). None when a full layout is needed: a name went, an entry
        that may be inline (and so smaller than a link) came, or a node of the HAMT was read in the
        pre-spec bitmap order (laid out afresh, it gets the CID its entries give, FORMAT.md 6.4)."""
        previous, changed, entries = directory._previous, directory.changed, directory._entries
        if (
            previous is None
            or not previous.sharded
            or changed is None
            or entries is None
            or directory.old_order
        ):
            return None
        links: dict[str, Any] = {}
        for name in changed:
            node = entries.get(name)  # every changed name still there is known
            if node is None:
                return None
            form = self._entry_form(name, node, sink, form_of)
            if form.inlinable:
                return None
            links[name] = codec.Link(form.cid())
        return DirectoryForm(hamt.update(self.store, sink, previous.value, links))

    def _entry_form(
        self, name: str, node: Node, sink: BlockSink, form_of: Callable[[Directory], DirectoryForm]
    ) -> EntryForm:
        storing = sink is self.store
        if isinstance(node, File):
            content = node.content
            link: bytes | Callable[[], bytes]
            if isinstance(content, StoredFile):
                link = content.cid  # no closure per entry: a commit of a new directory makes 100,000
            else:
                link = (lambda: content.link(self.store)) if storing else content.content_cid
            form = EntryForm(link=link)
            if metadata.is_metadata_name(name):
                inline = content.inline_form(self.store, name)
                if inline is not None:
                    form.inline, form.inline_size = inline[0], len(inline[1])
                    form.inline_depth = codec.depth(inline[0])
            return form
        if isinstance(node, Directory):
            layout = form_of(node)
            form = EntryForm(link=(lambda: layout.store(self.store)) if storing else (lambda: layout.cid))
            if not layout.sharded and not metadata.is_metadata_name(name):
                form.inline, form.inline_size, form.inline_depth = (
                    layout.value,
                    len(layout.data),
                    layout.depth,
                )
            return form
        assert isinstance(node, Broken)
        return EntryForm(link=node.cid)

    def _settle_contents(self, directory: Directory, changed: set[str] | None) -> None:
        """After a commit, say of each file what it now is: a stored block or inline in its node.

        Content written since the last commit (:class:`PendingFile`) has been
        decided by the layout; metadata may have moved between inline and raw.
        Only *changed* names can have moved (None: any).
        """
        form = directory._form
        assert form is not None and directory._entries is not None
        names = (
            directory._entries
            if changed is None
            else (name for name in changed if name in directory._entries)
        )
        for name in names:
            node = directory._entries[name]
            if not isinstance(node, File) or (isinstance(node.content, StoredFile) and form.sharded):
                continue
            content = node.content
            entry = codec.Link(content.link(self.store)) if form.sharded else form.value.get(name)
            if isinstance(entry, codec.Link):
                if not (isinstance(content, StoredFile) and content.cid == entry.cid):
                    node.content = StoredFile(entry.cid, content.size_in(self.store))
            elif not isinstance(content, InlineFile):
                node.content = InlineFile(name, entry)

    # --- paths (for the zarr store, the CLI and tests) -------------------------

    def resolve(self, path: str) -> Node:
        node: Node = self.root
        for part in split_path(path):
            if isinstance(node, Broken):
                raise node.error
            if not isinstance(node, Directory):
                raise NotDirectoryError(path)
            found = self.get_entry(node, part)
            if found is None:
                raise NotFoundError(path)
            node = found
        if isinstance(node, Broken):
            raise node.error
        return node

    def resolve_dir(self, path: str) -> Directory:
        node = self.resolve(path)
        if not isinstance(node, Directory):
            raise NotDirectoryError(path)
        return node

    def resolve_file(self, path: str) -> File:
        node = self.resolve(path)
        if not isinstance(node, File):
            raise IsDirectoryError(path)
        return node

    def exists(self, path: str) -> bool:
        try:
            self.resolve(path)
        except (NotFoundError, NotDirectoryError):
            return False
        return True

    def read_file(self, path: str) -> bytes:
        return self.read_all(self.resolve_file(path))

    def makedirs(self, path: str) -> Directory:
        """The directory at *path*, creating missing ones like ``mkdir -p``."""
        directory = self.root
        for part in split_path(path):
            node = self.get_entry(directory, part)
            if node is None:
                node = self.mkdir(directory, part)
            elif not isinstance(node, Directory):
                raise NotDirectoryError(path)
            directory = node
        return directory

    def write_file(self, path: str, data: bytes | FileContent) -> File:
        """Create or replace the file at *path*, creating parent directories."""
        self._writable()
        *parents, name = split_path(path) or [""]
        check_name(name)
        directory = self.makedirs("/".join(parents))
        content = self.content_for(name, data) if isinstance(data, bytes | bytearray | memoryview) else data
        existing = self.get_entry(directory, name)
        if existing is None:
            return self.create(directory, name, content)
        if not isinstance(existing, File):
            raise IsDirectoryError(path)
        self.set_content(existing, content)
        return existing

    def locate(self, path: str) -> tuple[Directory, str]:
        """The directory holding *path*'s last component, and that name."""
        *parents, name = split_path(path) or [""]
        check_name(name)
        return self.resolve_dir("/".join(parents)), name

    def remove(self, path: str) -> None:
        """Remove the file or (empty) directory at *path*."""
        directory, name = self.locate(path)
        if isinstance(self.lookup(directory, name), Directory):
            self.rmdir(directory, name)
        else:
            self.unlink(directory, name)

    def apply(self, actions: Iterable[Take]) -> None:
        """Apply a merge plan's actions (:func:`~ipldmount.format.merge.merge_roots`), in order:
        each sets or removes one entry, so the tree becomes the merge of its sides."""
        for action in actions:
            if action.value is MISSING:
                self.remove_entry(action.path)
            else:
                self.put_entry(action.path, action.value)

    def put_entry(self, path: str, value: Any) -> Node:
        """Set the entry at *path* to *value*, replacing whatever is there, file or directory, and
        creating missing parents: an entry value as a directory node holds it (a link, or an inline
        value: another tree's entry, taken as it is, not copied file by file), or bytes (a file's
        new content). The node is made as reading that value would make it, so a commit gives the
        CID a tree written from scratch with the same names and bytes gives (FORMAT.md 7)."""
        self._writable()
        *parents, name = split_path(path) or [""]
        check_name(name)
        directory = self.makedirs("/".join(parents))
        if isinstance(value, bytes):
            node: Node = File(self.content_for(name, value))
        else:
            _check_entry(name, value)  # checked as a block's entries are when it is read
            node = self._node_for(name, value)
        self._insert(directory, name, node)
        return node

    def remove_entry(self, path: str) -> Node:
        """Remove the file or the whole directory at *path*, whatever it holds (rmdir wants it
        empty; a merge drops a directory the other side removed with everything in it)."""
        self._writable()
        directory, name = self.locate(path)
        self.lookup(directory, name)
        return self._detach(directory, name)

    def listdir(self, path: str = "") -> list[str]:
        return self.names(self.resolve_dir(path))

    def walk_files(self, path: str = "") -> Iterator[tuple[str, File]]:
        """Every file below *path* as (relative path, file), depth first."""
        stack = [("", self.resolve_dir(path))]
        while stack:
            prefix, directory = stack.pop()
            entries = self.entries(directory)
            for name in sorted(entries, reverse=True):
                node = entries[name]
                if isinstance(node, Directory):
                    stack.append((prefix + name + "/", node))
                elif isinstance(node, File):
                    yield prefix + name, node
                else:
                    raise node.error  # type: ignore[attr-defined]


def _committed_form(directory: Directory) -> DirectoryForm:
    form = directory._form
    assert form is not None, "dirty directories are laid out children first"
    return form


def _mark_dirty(directory: Directory, name: str) -> None:
    """Note that entry *name* of *directory* changed, and mark it and its ancestors dirty (they
    already are, and name it, if it was)."""
    stack = [(directory, name)]
    while stack:
        current, changed = stack.pop()
        if current.changed is not None:
            current.changed.add(changed)
        if not current.dirty:
            current.dirty = True
            current._previous, current._form = current._form, None
            stack.extend(current.links)


def _changed_entries(directory: Directory) -> list[Node]:
    """The nodes under the names that changed (every one still there is known)."""
    entries = directory._entries or {}
    return [entries[name] for name in directory.changed or () if name in entries]
