"""A blockstore with a fetcher: blocks it lacks come from its sources, verified, once, and are kept.

The sources here are other blockstores behind the BlockSource protocol (the real IPFS node and
gateway are tested in test_ipfs_*.py); what is checked is the store's and the fetcher's logic.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from ipldmount.blocks import Blockstore, DirectoryBlockstore, MemoryBlockstore
from ipldmount.errors import BlockNotFoundError, CorruptBlockError, MustFetchError, RemoteError
from ipldmount.ipld import cid as cids
from ipldmount.remote.fetching import BlockFetcher
from ipldmount.tree.model import Tree


class StoreSource:
    """A source that serves another store's blocks, counting requests; optionally slow or failing."""

    def __init__(self, store: Blockstore, delay: float = 0.0, fail: bool = False) -> None:
        self.store, self.delay, self.fail = store, delay, fail
        self.asked: list[bytes] = []

    def get_block(self, cid: bytes) -> bytes:
        self.asked.append(cid)
        time.sleep(self.delay)
        if self.fail or not self.store.has(cid):
            raise RemoteError(f"source lacks {cids.cid_to_str(cid)}")
        return self.store.get(cid)


@pytest.fixture
def remote() -> tuple[MemoryBlockstore, bytes]:
    store = MemoryBlockstore()
    tree = Tree(store)
    for index in range(50):
        tree.write_file(f"dir/{index}", bytes([index]) * 100)
    return store, tree.commit()


def test_a_tree_reads_through_to_the_source_and_keeps_what_it_read(
    remote: tuple[MemoryBlockstore, bytes], tmp_path: Path
) -> None:
    origin, root = remote
    source = StoreSource(origin)
    local = DirectoryBlockstore(tmp_path / "cache", durable=False)
    local.fetcher = BlockFetcher([source])
    tree = Tree(local, root, read_only=True)
    assert tree.read_file("dir/7") == bytes([7]) * 100
    kept = set(local)
    assert cids.block_cid(cids.RAW, bytes([7]) * 100) in kept and root in kept
    assert len(kept) == len(source.asked) < 10  # only what the read needed
    assert Tree(local, root, read_only=True).read_file("dir/7") == bytes([7]) * 100
    assert len(source.asked) == len(kept)  # read again: nothing asked


def test_sources_are_tried_in_order_and_failures_named(remote: tuple[MemoryBlockstore, bytes]) -> None:
    origin, root = remote
    broken, good = StoreSource(origin, fail=True), StoreSource(origin)
    local = MemoryBlockstore()
    local.fetcher = BlockFetcher([broken, good])
    assert local.get(root) == origin.get(root)
    assert broken.asked == [root] and good.asked == [root]
    nowhere = cids.block_cid(cids.RAW, b"nobody has it")
    with pytest.raises(BlockNotFoundError, match="no source has it"):
        local.get(nowhere)
    asked = len(good.asked)
    with pytest.raises(BlockNotFoundError, match="recently"):
        local.size(nowhere)  # not asked again for a while
    assert len(good.asked) == asked


def test_one_fetch_however_many_threads_ask(remote: tuple[MemoryBlockstore, bytes]) -> None:
    origin, root = remote
    source = StoreSource(origin, delay=0.2)
    local = MemoryBlockstore()
    local.fetcher = BlockFetcher([source])
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(local.get(root))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [origin.get(root)] * 8 and source.asked == [root]


def test_where_waiting_is_not_allowed_a_fetch_is_handed_back(remote: tuple[MemoryBlockstore, bytes]) -> None:
    origin, root = remote
    source = StoreSource(origin)
    local = MemoryBlockstore()
    local.fetcher = BlockFetcher([source])
    with BlockFetcher.no_waiting():
        with pytest.raises(MustFetchError) as raised:
            local.get(root)
        assert raised.value.cid == root and source.asked == []
        done: list[bytes] = []
        worker = threading.Thread(target=lambda: done.append(local.get(root)))  # another thread may wait
        worker.start()
        worker.join()
        assert done == [origin.get(root)]
        assert local.get(root) == origin.get(root)  # kept: no fetch needed any more


def test_a_source_cannot_slip_in_wrong_bytes(remote: tuple[MemoryBlockstore, bytes]) -> None:
    _, root = remote

    class Liar:
        def get_block(self, cid: bytes) -> bytes:
            return b"wrong"

    local = MemoryBlockstore()
    local.fetcher = BlockFetcher([Liar()])
    with pytest.raises(BlockNotFoundError, match="do not hash"):
        local.get(root)
    assert not local.has(root)


def test_blocks_nobody_had_are_forgotten_once_their_time_is_up(
    remote: tuple[MemoryBlockstore, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ipldmount.remote import fetching

    monkeypatch.setattr(fetching, "UNAVAILABLE_KEPT", 8)
    origin, _ = remote
    fetcher = BlockFetcher([StoreSource(origin)], unavailable_for=0.0)
    local = MemoryBlockstore()
    local.fetcher = fetcher
    for index in range(100):
        with pytest.raises(BlockNotFoundError):
            local.get(cids.block_cid(cids.RAW, index.to_bytes(4, "little")))
    assert len(fetcher._unavailable) <= 8


def test_a_corrupt_local_copy_is_fetched_again(
    remote: tuple[MemoryBlockstore, bytes], tmp_path: Path
) -> None:
    """With a source to ask, a stored block that fails its hash check (a bad disk) is dropped and
    fetched again; without one it stays an error."""
    origin, _ = remote
    local = DirectoryBlockstore(tmp_path / "cache", durable=False)
    local.fetcher = BlockFetcher([StoreSource(origin)])
    chunk = cids.block_cid(cids.RAW, bytes([9]) * 100)
    assert local.get(chunk) == bytes([9]) * 100
    local.block_path(chunk).write_bytes(b"rotten")
    assert local.get(chunk) == bytes([9]) * 100
    assert local.block_path(chunk).read_bytes() == bytes([9]) * 100  # kept whole again
    local.block_path(chunk).write_bytes(b"rotten")
    local.fetcher = None
    with pytest.raises(CorruptBlockError):
        local.get(chunk)


def test_prefetch_fetches_side_by_side_and_only_where_waiting_is_allowed(
    remote: tuple[MemoryBlockstore, bytes],
) -> None:
    origin, _ = remote
    source = _CountingSource(origin)
    local = MemoryBlockstore()
    local.fetcher = BlockFetcher([source])
    wanted = [cids.block_cid(cids.RAW, bytes([index]) * 100) for index in range(8)]
    with BlockFetcher.no_waiting():
        local.prefetch(wanted)  # the event loop: nothing fetched, nothing waited for
    assert source.asked == []
    local.prefetch(wanted)
    assert all(local.has(cid) for cid in wanted) and sorted(source.asked) == sorted(wanted)
    assert source.most_at_once > 1  # side by side, not one after another


class _CountingSource(StoreSource):
    """Notes how many requests it is answering at once (each waits until another arrives, or 2 s)."""

    def __init__(self, store: Blockstore) -> None:
        super().__init__(store)
        self.now = self.most_at_once = 0
        self._lock = threading.Lock()
        self._another = threading.Event()

    def get_block(self, cid: bytes) -> bytes:
        with self._lock:
            self.now += 1
            self.most_at_once = max(self.most_at_once, self.now)
            if self.now > 1:
                self._another.set()
        self._another.wait(2.0)
        try:
            return super().get_block(cid)
        finally:
            with self._lock:
                self.now -= 1
