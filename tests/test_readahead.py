"""Fetching ahead for a lazy mount's files read one after another: which rows a reader's order
makes worth fetching next (the policy alone; tests/test_ipfs_mount.py has it against a node)."""

from __future__ import annotations

import random

import pytest

from ipldmount.adapters.fuse import readahead
from ipldmount.adapters.fuse.readahead import NAME_ORDER_AFTER, WINDOW, NameIndexing, RowScan
from ipldmount.format.entrytable import EntryTable
from ipldmount.ipld import cid as cids


def table_of(names: list[str]) -> EntryTable:
    table = EntryTable()
    for name in names:
        table.add(name, cids.block_cid(cids.RAW, name.encode()))
    assert table.seal() is None
    return table


def read_through(scan: RowScan, positions: list[int]) -> tuple[int, list[int]]:
    """A reader using rows in this order, a miss being a row not fetched yet (the fetches
    themselves done at once): its misses, and every row asked for, in order."""
    fetched: set[int] = set()
    asked: list[int] = []
    misses = 0
    for position in positions:
        missed = position not in fetched
        misses += missed
        ahead = scan.read(position, missed)
        assert len(ahead) <= WINDOW and not fetched & set(ahead)  # nothing fetched twice
        asked += ahead
        fetched.update([position, *ahead])
        if scan.should_index_names():
            scan.index_names()
    return misses, asked


def test_a_reader_in_table_order_misses_twice_then_finds_each_row_fetched() -> None:
    table = table_of([f"{index}" for index in range(500)])
    misses, asked = read_through(RowScan(table), list(range(500)))
    assert misses == 2 and asked == list(range(2, 500))


def test_a_reader_in_name_order_of_a_hashed_table_is_followed_once_names_are_indexed() -> None:
    names = [f"{i}.{j}" for i in range(30) for j in range(30)]
    random.Random(7).shuffle(names)  # a sharded directory's rows come in hash order
    table = table_of(names)
    in_name_order = sorted(range(len(names)), key=lambda position: names[position])
    misses, asked = read_through(RowScan(table), in_name_order)
    assert misses <= NAME_ORDER_AFTER + 3
    assert len(asked) == len(set(asked)) == len(names) - misses


def test_the_window_starts_small_and_grows_while_the_reader_goes_on() -> None:
    scan = RowScan(table_of([f"{index:03}" for index in range(200)]))
    assert scan.read(10, missed=True) == [] and scan.read(11, missed=True) == [12, 13, 14, 15]
    assert scan.read(12, missed=False) == list(range(16, 21))  # 8 ahead of row 12
    assert scan.read(13, missed=False) == list(range(21, 30))  # 16 ahead of row 13
    assert scan.read(14, missed=False) == [30]  # and 16 ahead from then on


def test_a_reader_that_jumps_gets_nothing_fetched_ahead() -> None:
    table = table_of([f"c{index:04}" for index in range(1000)])  # name order is the table's
    jumps = random.Random(3).sample(range(0, 1000, 2), 200)  # never a row right after another
    misses, asked = read_through(RowScan(table), jumps)
    assert misses == 200 and asked == []


def test_rows_that_became_nodes_are_not_fetched_ahead() -> None:
    table = table_of([f"{index:03}" for index in range(40)])
    for position in (3, 4):
        table.take(position)  # written since: the row's block is no longer the file's
    scan = RowScan(table)
    assert scan.read(0, missed=True) == []
    assert scan.read(1, missed=True) == [2, 5]  # the first window: rows 2 to 5


def test_a_table_too_large_to_index_by_name_is_followed_in_its_own_order_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(readahead, "NAME_ORDER_ROWS", 100)
    names = [f"{index:03}" for index in range(101)]
    random.Random(5).shuffle(names)
    table = table_of(names)
    in_name_order = sorted(range(101), key=lambda position: names[position])

    def never(self: RowScan) -> None:
        raise AssertionError("a table this large is never indexed by name")

    monkeypatch.setattr(RowScan, "index_names", never)
    scan = RowScan(table)
    asked: list[int] = []
    for position in in_name_order[:20]:  # rising in name order: indexed, were the table smaller
        asked += scan.read(position, missed=True)
        assert not scan.should_index_names()
    assert all(  # nothing fetched ahead in name order: only rows following one in the table's
        any(table_position - before in range(1, WINDOW + 1) for before in in_name_order[:20])
        for table_position in asked
    )
    assert len(asked) < 20, "a reader in name order is not followed"
    misses, fetched = read_through(RowScan(table), list(range(101)))
    assert misses == 2 and fetched == list(range(2, 101)), "in the table's own order it is"


def test_the_mount_joins_its_name_indexing_threads() -> None:
    names = [f"{index:05}" for index in range(50_000)]
    random.Random(9).shuffle(names)
    scans = [RowScan(table_of(names[:20_000])), RowScan(table_of(names))]
    indexing = NameIndexing()
    for scan in scans:
        indexing.start(scan)
    indexing.close()
    assert indexing.running() == 0
    assert all(scan._rank is not None for scan in scans), "each finished, not abandoned"
    late = RowScan(table_of(names[:10]))
    indexing.start(late)  # the mount has ended: no thread
    assert indexing.running() == 0 and late._rank is None
