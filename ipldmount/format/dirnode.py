"""Directory nodes: what an entry value means, and how a directory is laid out.

The layout rule (FORMAT.md, "Directory layout") keeps every node under the block
limit while leaving small trees exactly as ipldstore wrote them: everything that
may be inline starts inline; while the node is too big, the largest inline
entries become links; if even all-links is too big, the directory is sharded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ipldmount.blocks import BlockSink, Blockstore
from ipldmount.errors import FormatError
from ipldmount.format import hamt, metadata
from ipldmount.ipld import cid as cids
from ipldmount.ipld import codec

BLOCK_LIMIT = 1 << 20
LINK_SIZE = codec.encoded_link_size(bytes(cids.CID_LENGTH))
# No node nests maps and lists deeper than this, so any decoder (cbor2 stops at 400) reads it.
MAX_NODE_DEPTH = 64


class DirectoryForm:
    """One encoding of a directory: a plain map or a HAMT root, with its bytes."""

    __slots__ = ("_cid", "_data", "_depth", "checked", "sharded", "stored", "value")

    def __init__(self, value: dict[str, Any], data: bytes | None = None, cid: bytes | None = None) -> None:
        self.value = value
        self.sharded = hamt.is_root(value)
        self._data = data
        self._cid = cid
        self._depth: int | None = None
        self.stored = cid is not None  # read from its own block, or stored since: a block holds it
        self.checked = False  # every name and value in the block (inline directories too) is valid

    @property
    def depth(self) -> int:
        """How deeply the node's value nests (FORMAT.md: an inline entry must nest less than 64)."""
        if self._depth is None:
            self._depth = codec.depth(self.value)
        return self._depth

    @property
    def data(self) -> bytes:
        if self._data is None:
            self._data = codec.encode(self.value)
        return self._data

    @property
    def cid(self) -> bytes:
        if self._cid is None:
            self._cid = cids.block_cid(cids.DAG_CBOR, self.data)
        return self._cid

    def store(self, store: Blockstore) -> bytes:
        """Put this form as its own block (idempotent) and return its CID."""
        self._cid = store.put(self.data, cids.DAG_CBOR)
        self.stored = True
        return self._cid


@dataclass(slots=True)
class EntryForm:
    """The ways one entry can be written into its parent node."""

    link: bytes | Callable[[], bytes]  # the CID, or what stores the entry's own block if needed and gives it
    inline: Any = None  # the value to embed (meaningful only when inline_size > 0: JSON null is a value)
    inline_size: int = 0  # bytes the inline value takes when encoded; 0: the entry must be a link
    inline_depth: int = 0  # how deeply the inline value nests

    @property
    def inlinable(self) -> bool:
        return self.inline_size > 0 and self.inline_depth < MAX_NODE_DEPTH

    def cid(self) -> bytes:
        """The entry as a link (its block stored first if need be)."""
        link = self.link
        return link if isinstance(link, bytes) else link()


def plain_entries(store: Blockstore, value: Any) -> Mapping[str, Any]:
    """The name -> entry map of a directory node, whether plain or sharded."""
    if not hamt.is_root(value):
        if type(value) is not dict:
            raise not_a_directory(value)
        return value
    entries: dict[str, Any] = {}
    for name, entry in iter_entries(store, value):
        if name in entries:
            raise duplicate_name(name)
        entries[name] = entry
    return entries


def iter_entries(store: Blockstore, value: Any, notice: hamt.Notice = None) -> Iterable[tuple[str, Any]]:
    """The (name, entry) pairs of a directory node, one at a time (a sharded one node by node:
    no map of a million entries at once; *notice*: see :data:`hamt.Notice`). The caller checks
    that no name comes twice."""
    if hamt.is_root(value):
        return hamt.iter_entries(store, value, notice)
    if type(value) is not dict:
        raise not_a_directory(value)
    return value.items()


def inline_entries(value: Any) -> Iterable[tuple[Any, Any]]:
    """The entries a directory node's own value holds: a plain map's; none for a HAMT root (its
    entries are in its buckets, checked as they are read)."""
    if hamt.is_root(value):
        return ()
    if type(value) is not dict:
        raise not_a_directory(value)
    return value.items()


def not_a_directory(value: Any) -> FormatError:
    return FormatError(f"not a directory node (a {type(value).__name__})")


def duplicate_name(name: str) -> FormatError:
    # FORMAT.md 6.4: a name appears once; which copy counts is undefined
    return FormatError(f"sharded directory holds the name {name!r} twice")


def layout(
    store: BlockSink,
    entries: Mapping[str, EntryForm],
    limit: int = BLOCK_LIMIT,
    *,
    links: Mapping[str, codec.Link] | None = None,
) -> DirectoryForm:
    """Lay a directory out by the FORMAT.md rule. *links*: more entries, each a link and
    nothing else (a stored chunk): no EntryForm made for each of a new directory's 100,000
    files (a name is in *entries* or *links*, never both)."""
    links = links or {}
    count = len(entries) + len(links)
    if codec.map_head_size(count) + len(links) * (LINK_SIZE + 1) > limit:
        return _sharded(store, entries, links)  # over the limit whatever the inline entries do
    inline = {name for name, form in entries.items() if form.inlinable}
    total = (
        codec.map_head_size(count)
        + sum(
            codec.encoded_str_size(name) + (form.inline_size if name in inline else LINK_SIZE)
            for name, form in entries.items()
        )
        + sum(codec.encoded_str_size(name) + LINK_SIZE for name in links)
    )
    if total > limit:
        for name in sorted(inline, key=lambda name: (-entries[name].inline_size, name.encode("utf-8"))):
            if total <= limit or entries[name].inline_size <= LINK_SIZE:
                break
            inline.discard(name)
            total -= entries[name].inline_size - LINK_SIZE
    if total > limit:
        return _sharded(store, entries, links)
    value = {
        name: form.inline if name in inline else codec.Link(form.cid()) for name, form in entries.items()
    }
    value.update(links)
    return DirectoryForm(value)


def _sharded(
    store: BlockSink, entries: Mapping[str, EntryForm], links: Mapping[str, codec.Link]
) -> DirectoryForm:
    every = dict(links)
    every.update((name, codec.Link(form.cid())) for name, form in entries.items())
    return DirectoryForm(hamt.build(store, every))


def check_inline_entry(name: str, value: Any) -> None:
    """Raise FormatError unless *value* is a valid non-link entry under *name*."""
    if metadata.is_metadata_name(name):
        try:
            metadata.render(name, value)
        except (TypeError, ValueError):
            raise FormatError(f"entry {name!r}: inline metadata is not JSON") from None
    elif type(value) is not dict:
        raise FormatError(f"entry {name!r}: a {type(value).__name__} is neither a link nor a directory")
