"""Fetching ahead for a lazy mount's files read one after another.

A reader that goes through a directory file by file (``cp -r``, ``rsync``, ``ls -l``, a script
over ``sorted(os.listdir())``) waits a network round trip per file when each file's block is
fetched as it is first used. :class:`RowScan` notices such a reader among a directory's packed
rows (its chunk files) and names the rows to fetch next, side by side, so that the round trips
overlap (1.5x in bench/b_ipfs.py, where the node's ``block/get`` becomes the limit).

It follows two orders: the table's, which is readdir's (``cp -r``, ``find``), and name order
(``rsync``, ``ls``, sorted listings). A row used while its block is not here yet (a *miss*)
continues a scan when the row before it, in either order, missed lately or was fetched ahead;
then the rows after it in that order are fetched, each once: FIRST_WINDOW of them, twice as
many each time the reader goes on, up to WINDOW, and every use of a row fetched ahead keeps
that many fetched ahead of the reader. A reader that jumps (zarr reading
the chunks of a selection) starts no scan, and costs nothing more than before.
"""

from __future__ import annotations

import threading
from array import array
from collections import OrderedDict
from collections.abc import Iterable
from itertools import islice
from typing import Literal

from ipldmount.format.entrytable import EntryTable

WINDOW = 16  # rows fetched ahead of a reader going through a directory in order, at most
FIRST_WINDOW = 4  # ...at first: doubled each time the reader goes on (two files in a row may be all)
RECENT = 64  # misses remembered, to tell what follows what
NAME_ORDER_AFTER = 3  # misses in rising name order, not following the table, before name order is indexed
NAME_ORDER_ROWS = 200_000  # tables larger are followed in their own order only: indexing one by
# name holds a key per row while it sorts (about 80 MB for a million rows)

Order = Literal["table", "name"]


class RowScan:
    """What one reader (or several) going through one table's rows in order should fetch next."""

    def __init__(self, table: EntryTable, window: int = WINDOW) -> None:
        self.table = table
        self._window = window
        self._reach = min(FIRST_WINDOW, window)  # rows fetched ahead now: grows to *window*
        self._recent: OrderedDict[int, None] = OrderedDict()  # positions that missed lately
        self._asked = bytearray()  # per position, 1 once handed out to fetch ahead (made on first use)
        self._following: Order | None = None
        self._rising = 0  # misses in a row, each after the one before in name order
        self._last_key = b""
        self._by_name: array[int] | None = None  # place in name order -> position
        self._rank: array[int] | None = None  # position -> place in name order
        self._indexing = False

    def read(self, position: int, missed: bool) -> list[int]:
        """Row *position* is used (its block not here yet if *missed*): the rows to fetch ahead."""
        if not missed:
            if not self._asked or not self._asked[position] or self._following is None:
                return []
            self._reach = min(2 * self._reach, self._window)  # the reader goes on: fetch further
            return self._ahead(position, self._following)
        followed = next((order for order in self._orders() if self._continues(position, order)), None)
        self._remember(position, followed)
        if followed is None:
            return []
        if self._following is not None:
            self._reach = min(2 * self._reach, self._window)  # a scan that outran its fetches
        self._following = followed
        return self._ahead(position, followed)

    def should_index_names(self) -> bool:
        """Whether misses rise in name order without following the table: then name order is to
        be indexed (:meth:`index_names`: O(n log n), for a worker thread), and followed. True once."""
        if self._indexing or self._rising < NAME_ORDER_AFTER or len(self.table) > NAME_ORDER_ROWS:
            return False
        self._indexing = True
        return True

    def index_names(self) -> None:
        """Index the rows by name (the table's own names never change: safe in any thread)."""
        table = self.table
        by_name = array("I", sorted(range(len(table)), key=table.key))
        rank = array("I", bytes(4 * len(table)))
        for place, position in enumerate(by_name):
            rank[position] = place
        self._by_name, self._rank = by_name, rank

    def _orders(self) -> tuple[Order, ...]:
        return ("table",) if self._rank is None else ("table", "name")

    def _continues(self, position: int, order: Order) -> bool:
        before = self._step(position, order, -1)
        return before is not None and (before in self._recent or bool(self._asked and self._asked[before]))

    def _step(self, position: int, order: Order, by: int) -> int | None:
        """The position *by* places from *position* in *order*, if there is one."""
        if order == "table":
            moved = position + by
            return moved if 0 <= moved < len(self.table) else None
        assert self._rank is not None and self._by_name is not None
        place = self._rank[position] + by
        return self._by_name[place] if 0 <= place < len(self._by_name) else None

    def _following_positions(self, position: int, order: Order) -> Iterable[int]:
        if order == "table":
            return range(position + 1, min(position + 1 + self._reach, len(self.table)))
        assert self._rank is not None and self._by_name is not None
        place = self._rank[position] + 1
        return islice(self._by_name, place, place + self._reach)

    def _ahead(self, position: int, order: Order) -> list[int]:
        """The rows in the window after *position* not asked for yet (and still rows): asked now."""
        if not self._asked:
            self._asked = bytearray(len(self.table))
        table, asked = self.table, self._asked
        ahead = [
            following for following in self._following_positions(position, order) if not asked[following]
        ]
        for following in ahead:
            asked[following] = 1
        return [following for following in ahead if table.is_live(following)]

    def _remember(self, position: int, followed: Order | None) -> None:
        key = self.table.key(position)
        rising = key > self._last_key and followed != "table"
        self._rising = self._rising + 1 if rising else 0
        self._last_key = key
        self._recent[position] = None
        self._recent.move_to_end(position)
        if len(self._recent) > RECENT:
            self._recent.popitem(last=False)


class NameIndexing:
    """The threads that index tables by name (:meth:`RowScan.index_names`: a sort of at most
    NAME_ORDER_ROWS keys, under a second), owned by the mount: :meth:`close` joins them."""

    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []
        self._closed = False

    def start(self, scan: RowScan) -> None:
        """Index *scan*'s table in a thread of its own (nothing once closed)."""
        if self._closed:
            return
        self._threads = [thread for thread in self._threads if thread.is_alive()]
        thread = threading.Thread(target=scan.index_names, name="ipldmount-name-order", daemon=True)
        self._threads.append(thread)
        thread.start()

    def running(self) -> int:
        return sum(thread.is_alive() for thread in self._threads)

    def close(self) -> None:
        """No more threads; wait for those running."""
        self._closed = True
        for thread in self._threads:
            thread.join()
        self._threads.clear()
