"""A stored directory's untouched file entries, packed: about 60 bytes each instead of a node's 400.

A zarr array keeps a million chunk keys in one directory, each a link to one raw block. Listing it
must not make a million tree nodes: the tree keeps such entries here (names, digests and sizes in
flat columns, with a small open-addressing index by name) and makes a node for one only when it is
used for more than its name and size (:meth:`~ipldmount.tree.model.Tree.get_entry`). A row is *taken*
then: from that moment the node is the entry, and the row only keeps its name and position (a
mount hands out inode numbers by position).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator

RAW_SHA256 = bytes([0x01, 0x55, 0x12, 0x20])  # CIDv1, raw, sha2-256, 32-byte digest: a zarr chunk
_DIGEST = 32
UNKNOWN_SIZE = -1


class EntryTable:
    """Rows of (name, raw-block CID, size once known), by position; found by name in O(1)."""

    __slots__ = ("_digests", "_ends", "_index", "_mask", "_names", "_rows", "_taken", "live", "sizes")

    def __init__(self) -> None:
        self._names: bytes | bytearray = bytearray()  # every name's UTF-8, one after another
        self._ends = array("I")  # where each name ends in _names
        self._digests = bytearray()  # 32 bytes per row
        self._index = array("I")  # open addressing over hash(name): position + 1, 0 for empty
        self._mask = 0
        self._rows = 0
        self._taken = bytearray()  # 1 once a node was made for the row
        self.sizes = array("q")  # block sizes, UNKNOWN_SIZE until looked up (by anyone)
        self.live = 0  # rows not taken

    @staticmethod
    def holds(cid: bytes) -> bool:
        """Whether a link to *cid* can be a row: a raw block named by sha2-256, as every chunk is."""
        return len(cid) == len(RAW_SHA256) + _DIGEST and cid[: len(RAW_SHA256)] == RAW_SHA256

    def add(self, name: str, cid: bytes) -> None:
        """A row, while the table is built (before :meth:`seal`)."""
        assert isinstance(self._names, bytearray), "rows are added before the table is sealed"
        self._names += name.encode("utf-8")
        self._ends.append(len(self._names))
        self._digests += cid[len(RAW_SHA256) :]

    def seal(self) -> str | None:
        """Index the rows by name. Returns a name added twice (the directory is malformed), else None."""
        rows = self._rows = self.live = len(self._ends)
        self.sizes = array("q", [UNKNOWN_SIZE]) * rows
        self._taken = bytearray(rows)
        slots = 1 << max(3, (2 * rows).bit_length())  # at most half full: probes stay short
        index = self._index = array("I", [0]) * slots
        mask = self._mask = slots - 1
        names = self._names = bytes(self._names)
        start = 0
        for position, end in enumerate(self._ends):
            key = names[start:end]
            slot = hash(key) & mask
            while index[slot]:
                if self._key(index[slot] - 1) == key:
                    return key.decode("utf-8")
                slot = (slot + 1) & mask
            index[slot] = position + 1
            start = end
        return None

    def __len__(self) -> int:
        return self._rows

    def find(self, name: str) -> int | None:
        """The position of the live row *name*, or None."""
        if not self.live:
            return None
        position = self.position(name)
        return None if position is None or self._taken[position] else position

    def position(self, name: str) -> int | None:
        """The position of row *name*, taken or not, or None."""
        try:
            key = name.encode("utf-8")
        except UnicodeEncodeError:
            return None
        slot = hash(key) & self._mask
        while entry := self._index[slot]:
            if self._key(entry - 1) == key:
                return entry - 1
            slot = (slot + 1) & self._mask
        return None

    def is_live(self, position: int) -> bool:
        return not self._taken[position]

    def live_positions(self) -> Iterator[int]:
        return (position for position in range(self._rows) if self.is_live(position))

    def key(self, position: int) -> bytes:
        """The row's name as UTF-8 (what the kernel is sent)."""
        return self._key(position)

    def name(self, position: int) -> str:
        return self._key(position).decode("utf-8")

    def cid(self, position: int) -> bytes:
        start = position * _DIGEST
        return RAW_SHA256 + bytes(self._digests[start : start + _DIGEST])

    def size(self, position: int) -> int | None:
        size = self.sizes[position]
        return None if size == UNKNOWN_SIZE else size

    def take(self, position: int) -> None:
        """A node is made for the row: it is no longer this table's (its name stays readable: a
        listing that began before finds the node under it)."""
        assert self.is_live(position)
        self._taken[position] = 1
        self.live -= 1

    def untake(self, position: int) -> None:
        """The node made for the row is gone, unchanged: the row is the entry again."""
        assert self._taken[position]
        self._taken[position] = 0
        self.live += 1

    def _key(self, position: int) -> bytes:
        start = self._ends[position - 1] if position else 0
        return bytes(self._names[start : self._ends[position]])
