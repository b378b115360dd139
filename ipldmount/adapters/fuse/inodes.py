"""Inode numbers and the kernel's references to them: the FUSE adapter's, never the tree's.

The kernel knows every file by a number and counts its references to each (lookups, given back
by forget). A listed directory hands it millions, so both are kept in ranges of numbers with a
packed array of counts beside them, not in an object or a dictionary entry per inode:

- a directory's packed rows (its entries that have no tree node: :class:`Rows`) get one range,
  a row's number being the range's base plus its position in the table;
- tree nodes get numbers from pages of :data:`PAGE` numbers (:class:`NodePage`), in the order
  they are first handed to the kernel; a page goes once none of its nodes is numbered any more.

Numbers are never used twice. A node made from a row the kernel holds (the tree says so:
``Tree.on_node_from_row``) keeps the row's number and its count stays in the row's array; when
the node goes back to its row (:meth:`InodeTable.return_to_row`), the number goes with it.
"""

from __future__ import annotations

import bisect
import errno
from array import array
from collections.abc import Callable
from dataclasses import dataclass

import pyfuse3

from ipldmount.adapters.fuse.readahead import RowScan
from ipldmount.format.entrytable import EntryTable
from ipldmount.tree.model import Directory, Node, Tree

PAGE = 1024  # inode numbers reserved at once for nodes (a page costs 12 bytes per number)


@dataclass(slots=True)
class Rows:
    """The inode numbers of a directory's packed rows (base + position), with the kernel's
    references to each, and the nodes made from rows the kernel held (by position)."""

    base: int
    table: EntryTable
    directory: Directory
    lookups: array[int]
    scan: RowScan | None = None  # on a store that fetches: what a reader in order wants next
    nodes: dict[int, Node] | None = None  # made when first needed: most tables never have one


@dataclass(slots=True)
class NodePage:
    """PAGE inode numbers from *base* for nodes: the node at each (None once forgotten) and the
    kernel's references to it."""

    base: int
    nodes: list[Node | None]
    lookups: array[int]
    used: int = 0  # numbers handed out so far (in order)
    live: int = 0  # numbers whose node is still here

    @classmethod
    def at(cls, base: int) -> NodePage:
        return cls(base, [None] * PAGE, array("I", bytes(4 * PAGE)))


class InodeTable:
    """Inode numbers for tree nodes and for packed rows, with the kernel's lookup counts."""

    def __init__(self, tree: Tree) -> None:
        self._tree = tree
        self._ranges: list[Rows | NodePage] = []  # by base, ascending (bases only grow)
        self._bases = array("Q")  # the same bases, for bisect
        self._rows_of: dict[int, Rows] = {}  # by id() of the table (each kept alive here)
        self._inos: dict[Node, int] = {}  # every node that has a number
        self._next = pyfuse3.ROOT_INODE
        self._page = self._new_page()
        self._number(tree.root)
        assert self._inos[tree.root] == pyfuse3.ROOT_INODE
        tree.on_node_from_row = self._node_from_row

    # --- finding ---------------------------------------------------------------------

    def _range(self, ino: int) -> tuple[Rows | NodePage, int] | None:
        """The range holding *ino*, and its place there."""
        index = bisect.bisect_right(self._bases, ino) - 1
        if index < 0:
            return None
        found = self._ranges[index]
        place = ino - found.base
        size = PAGE if isinstance(found, NodePage) else len(found.table)
        return (found, place) if place < size else None

    def find(self, ino: int) -> Node | tuple[Rows, int]:
        """The node of inode *ino*, or the packed row it still is (its table's rows and position)."""
        found = self._range(ino)
        if found is not None:
            where, place = found
            if isinstance(where, NodePage):
                node = where.nodes[place]
                if node is not None:
                    return node
            else:
                node = where.nodes.get(place) if where.nodes else None
                if node is not None:
                    return node
                if where.table.is_live(place):
                    return where, place
        raise pyfuse3.FUSEError(errno.ESTALE)

    def node(self, ino: int) -> Node:
        """The node of inode *ino* (made now if it was a packed row)."""
        found = self.find(ino)
        if isinstance(found, Node):
            return found
        rows, position = found
        node = self._tree.node_from_row(rows.directory, rows.table, position)
        if node not in self._inos:  # the kernel asks, so it holds a reference: keep its number anyway
            self._keep_row_number(rows, position, node)
        return node

    def lookups(self, ino: int) -> int:
        """The kernel's references to inode *ino*."""
        found = self._range(ino)
        if found is None:
            return 0
        where, place = found
        return where.lookups[place]

    # --- numbering -------------------------------------------------------------------

    def known(self, node: Node) -> int | None:
        """*node*'s inode number, if it has one (the kernel may hold it)."""
        return self._inos.get(node)

    def ino(self, node: Node) -> int:
        ino = self._inos.get(node)
        return ino if ino is not None else self._number(node)

    def remember(self, node: Node) -> int:
        """The inode for *node*, counting one more kernel reference to it."""
        ino = self.ino(node)
        found = self._range(ino)
        assert found is not None
        where, place = found
        where.lookups[place] += 1
        return ino

    def rows(self, directory: Directory, table: EntryTable) -> Rows:
        """The inode numbers of *table*'s rows (reserved on first use)."""
        rows = self._rows_of.get(id(table))
        if rows is None:
            rows = Rows(self._next, table, directory, array("I", bytes(4 * len(table))))
            self._next += len(table)
            self._add_range(rows)
            self._rows_of[id(table)] = rows
        return rows

    def forget(self, ino: int, count: int, in_use: Callable[[Node], bool]) -> None:
        """The kernel drops *count* references to *ino*; a node none is left to (and not
        *in_use*, nor the root) loses its number."""
        found = self._range(ino)
        if found is None:
            return
        where, place = found
        left = where.lookups[place] = max(where.lookups[place] - count, 0)
        if isinstance(where, NodePage):
            node = where.nodes[place]
        else:
            node = where.nodes.get(place) if where.nodes else None
        if node is None or left or ino == pyfuse3.ROOT_INODE or in_use(node):
            return
        del self._inos[node]
        if isinstance(where, NodePage):
            where.nodes[place] = None
            where.live -= 1
            if not where.live and where is not self._page:
                self._drop(where)
        else:
            assert where.nodes is not None
            del where.nodes[place]

    def return_to_row(self, node: Node) -> bool:
        """Return a node made from a packed row, used and left unchanged, to its row with its
        inode number and the kernel's references (:meth:`Tree.return_to_row`). Only a node the
        kernel knows by the row's number (or not at all) can go."""
        ino = self._inos.get(node)
        if ino is not None:
            found = self._range(ino)
            where = found[0] if found is not None else None
            if (
                not isinstance(where, Rows)
                or where.nodes is None
                or where.nodes.get(ino - where.base) is not node
            ):
                return False  # the kernel knows it by a number of its own
        returned = self._tree.return_to_row(node)
        if returned is None:
            return False
        table, position = returned
        if ino is not None:  # the row's own number: its references stay in the row's array
            rows = self._rows_of[id(table)]
            assert rows.nodes is not None
            del rows.nodes[position], self._inos[node]
        return True

    def _node_from_row(self, table: EntryTable, position: int, node: Node) -> None:
        """A node was made for a row: if the kernel holds the row's number, it is the node's now."""
        rows = self._rows_of.get(id(table))
        if rows is not None and rows.lookups[position]:
            self._keep_row_number(rows, position, node)

    def _keep_row_number(self, rows: Rows, position: int, node: Node) -> None:
        if rows.nodes is None:
            rows.nodes = {}
        rows.nodes[position] = node
        self._inos[node] = rows.base + position

    def _number(self, node: Node) -> int:
        """A new number for *node*, from the current page (a new one once it is used up)."""
        page = self._page
        if page.used == PAGE:
            if not page.live:  # every node of it was forgotten while it was the current page
                self._drop(page)
            page = self._page = self._new_page()
        place = page.used
        page.used += 1
        page.nodes[place] = node
        page.live += 1
        ino = self._inos[node] = page.base + place
        return ino

    def _new_page(self) -> NodePage:
        page = NodePage.at(self._next)
        self._next += PAGE
        self._add_range(page)
        return page

    def _drop(self, page: NodePage) -> None:
        """A page none of whose numbers has a node any more: its numbers are never used again."""
        index = bisect.bisect_left(self._bases, page.base)
        assert self._ranges[index] is page
        del self._ranges[index], self._bases[index]

    def _add_range(self, found: Rows | NodePage) -> None:
        self._ranges.append(found)  # bases only grow: the list stays sorted
        self._bases.append(found.base)
