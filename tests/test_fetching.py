"""A store that fetches: blocks its local store lacks come from its sources, verified, once, and
are kept in the local store.

The sources here are other blockstores behind the BlockSource protocol (the real IPFS node and
gateway are tested in test_ipfs_*.py); what is checked is the wrapper's and the fetcher's logic.
That the wrapper keeps the blockstore contract is checked by test_blockstore.py, which runs it
through the same tests as the local stores.
"""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipldmount.blocks import Blockstore, DirectoryBlockstore, MemoryBlockstore, car
from ipldmount.errors import BlockNotFoundError, CorruptBlockError, RemoteError
from ipldmount.ipld import cid as cids
from ipldmount.ipld import codec
from ipldmount.remote.fetching import BlockFetcher, FetchingBlockstore, MustFetchError
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
    store = FetchingBlockstore(local, BlockFetcher([source]))
    tree = Tree(store, root, read_only=True)
    assert tree.read_file("dir/7") == bytes([7]) * 100
    kept = set(local)
    assert cids.block_cid(cids.RAW, bytes([7]) * 100) in kept and root in kept
    assert len(kept) == len(source.asked) < 10  # only what the read needed
    assert Tree(store, root, read_only=True).read_file("dir/7") == bytes([7]) * 100
    assert len(source.asked) == len(kept)  # read again: nothing asked
    assert Tree(local, root, read_only=True).read_file("dir/7") == bytes([7]) * 100  # it is all here


def test_sources_are_tried_in_order_and_failures_named(remote: tuple[MemoryBlockstore, bytes]) -> None:
    origin, root = remote
    broken, good = StoreSource(origin, fail=True), StoreSource(origin)
    local = FetchingBlockstore(MemoryBlockstore(), BlockFetcher([broken, good]))
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
    local = FetchingBlockstore(MemoryBlockstore(), BlockFetcher([source]))
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
    local = FetchingBlockstore(MemoryBlockstore(), BlockFetcher([source]))
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
    store = FetchingBlockstore(local, BlockFetcher([Liar()]))
    for read in (store.get, store.size, lambda cid: store.read(cid, 0, 1)):
        with pytest.raises(BlockNotFoundError, match=r"do not hash|recently"):
            read(root)
    assert not local.has(root) and not store.has(root) and list(local) == []


def test_blocks_nobody_had_are_forgotten_once_their_time_is_up(
    remote: tuple[MemoryBlockstore, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ipldmount.remote import fetching

    monkeypatch.setattr(fetching, "UNAVAILABLE_KEPT", 8)
    origin, _ = remote
    fetcher = BlockFetcher([StoreSource(origin)], unavailable_for=0.0)
    local = FetchingBlockstore(MemoryBlockstore(), fetcher)
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
    store = FetchingBlockstore(local, BlockFetcher([StoreSource(origin)]))
    chunk = cids.block_cid(cids.RAW, bytes([9]) * 100)
    assert store.get(chunk) == bytes([9]) * 100
    local.block_path(chunk).write_bytes(b"rotten")
    assert store.get(chunk) == bytes([9]) * 100
    assert local.block_path(chunk).read_bytes() == bytes([9]) * 100  # kept whole again
    local.block_path(chunk).write_bytes(b"rotten")
    with pytest.raises(CorruptBlockError):
        local.get(chunk)


def test_prefetch_fetches_side_by_side_and_waits_only_where_waiting_is_allowed(
    remote: tuple[MemoryBlockstore, bytes],
) -> None:
    origin, _ = remote
    source = _CountingSource(origin)
    local = FetchingBlockstore(MemoryBlockstore(), BlockFetcher([source]))
    wanted = [cids.block_cid(cids.RAW, bytes([index]) * 100) for index in range(8)]
    local.prefetch(wanted)
    assert all(local.has(cid) for cid in wanted) and sorted(source.asked) == sorted(wanted)
    assert source.most_at_once > 1  # side by side, not one after another
    local.close()


def test_where_waiting_is_not_allowed_prefetch_starts_the_fetches_and_returns(
    remote: tuple[MemoryBlockstore, bytes],
) -> None:
    """The mount's event loop must not wait: the blocks are asked for in the background, so the
    reader that then needs one finds the others on their way. The source answers nothing until
    released, so a prefetch that returned did not wait; it then answers them side by side."""
    origin, _ = remote
    source = _ReleasedSource(origin)
    local = FetchingBlockstore(MemoryBlockstore(), BlockFetcher([source]))
    wanted = [cids.block_cid(cids.RAW, bytes([index]) * 100) for index in range(8)]
    with BlockFetcher.no_waiting():
        local.prefetch(wanted)  # returns while the source holds every answer back
    assert not any(local.has(cid) for cid in wanted)
    source.release.set()
    for cid in wanted:
        assert local.get(cid) == origin.get(cid)  # joins the fetch already under way
    assert sorted(source.asked) == sorted(wanted)  # each asked once
    assert source.most_at_once > 1  # side by side
    local.close()


class _ReleasedSource(StoreSource):
    """Holds every answer until :attr:`release` is set; notes how many wait at once."""

    def __init__(self, store: Blockstore) -> None:
        super().__init__(store)
        self.release = threading.Event()
        self.waiting = self.most_at_once = 0
        self._lock = threading.Lock()

    def get_block(self, cid: bytes) -> bytes:
        with self._lock:
            self.waiting += 1
            self.most_at_once = max(self.most_at_once, self.waiting)
        assert self.release.wait(30)
        with self._lock:
            self.waiting -= 1
        return super().get_block(cid)


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


# --- what the wrapper adds, and what it leaves to the local store -------------------------------


class Boom(Exception):
    pass


def test_a_miss_is_fetched_verified_and_kept_in_the_local_store(
    remote: tuple[MemoryBlockstore, bytes],
) -> None:
    origin, _ = remote
    source = StoreSource(origin)
    local = MemoryBlockstore()
    store = FetchingBlockstore(local, BlockFetcher([source]))
    leaf, other, third = (cids.block_cid(cids.RAW, bytes([index]) * 100) for index in (3, 4, 5))
    assert not store.has(leaf)  # has() is what is here: it never fetches
    assert store.read(leaf, 10, 5) == bytes([3]) * 5
    assert store.size(other) == 100
    assert store.get(third) == bytes([5]) * 100
    assert set(local) == {leaf, other, third} and source.asked == [leaf, other, third]
    assert all(local.get(cid) == origin.get(cid) for cid in (leaf, other, third))  # verified on the way in
    assert store.get(leaf) == bytes([3]) * 100 and len(source.asked) == 3  # kept: not asked again


def test_a_block_fetched_inside_a_batch_is_kept_when_the_batch_fails(
    remote: tuple[MemoryBlockstore, bytes],
) -> None:
    """A fetched block goes straight into the local store: a failed batch takes back what the
    thread wrote, not what it read."""
    origin, root = remote
    local = MemoryBlockstore()
    store = FetchingBlockstore(local, BlockFetcher([StoreSource(origin)]))
    with pytest.raises(Boom), store.batch():
        written = store.put(b"written in the batch", cids.RAW)
        assert store.get(root) == origin.get(root)
        assert local.has(written)  # the local store's batch: one batch, whichever handle opened it
        raise Boom
    assert local.has(root) and not local.has(written)


def test_stores_of_their_own_fetch_nothing(tmp_path: Path) -> None:
    cid = cids.block_cid(cids.RAW, b"absent")
    for local in (MemoryBlockstore(), DirectoryBlockstore(tmp_path / "store")):
        assert not local.fetches_missing and local.prefetch_dag(cid) is None
        local.prefetch([cid])
        local.prefetch([cid], wait=False)
        with pytest.raises(BlockNotFoundError):
            local.get(cid)
        local.close()
    source = StoreSource(MemoryBlockstore())
    assert FetchingBlockstore(MemoryBlockstore(), BlockFetcher([source])).fetches_missing


def test_the_wrapper_passes_every_method_of_the_contract_on() -> None:
    """A method added to Blockstore and not forwarded here would run the base class's code on the
    wrapper's own (empty) batches instead of the local store's."""
    inherited_on_purpose = {"__bool__", "__enter__", "__exit__"}
    contract = {
        name
        for name in vars(Blockstore)
        if (not name.startswith("_") or name in {"__iter__", "__len__"} | inherited_on_purpose)
    }
    missing = {name for name in contract - inherited_on_purpose if name not in vars(FetchingBlockstore)}
    assert missing == set()
    abstract = set(getattr(Blockstore, "__abstractmethods__", ()))
    assert abstract <= set(vars(FetchingBlockstore))


def _prefetch_threads() -> list[threading.Thread]:
    return [
        thread
        for thread in threading.enumerate()
        if thread.name.startswith("ipldmount-") and "prefetch" in thread.name
    ]


class StoreCarSource(StoreSource):
    """A source that also sends whole DAGs as CARs (as an IPFS node or a trustless gateway does)."""

    def __init__(self, store: Blockstore) -> None:
        super().__init__(store)
        self.cars: list[bytes] = []

    def export_car(self, root: bytes) -> Iterator[bytes]:
        self.cars.append(root)
        out = io.BytesIO()
        car.export_car(self.store, root, out)
        yield out.getvalue()


def test_a_dag_comes_in_one_request_from_a_source_that_sends_cars(
    remote: tuple[MemoryBlockstore, bytes],
) -> None:
    origin, root = remote
    plain = FetchingBlockstore(MemoryBlockstore(), BlockFetcher([StoreSource(origin)]))
    assert plain.prefetch_dag(root) is None  # no source sends CARs: the reader fetches block by block
    source = StoreCarSource(origin)
    local = MemoryBlockstore()
    with FetchingBlockstore(local, BlockFetcher([source])) as store:
        fetching = store.prefetch_dag(root)
        assert fetching is not None
        fetching.result(timeout=10)
    assert set(local) == set(origin) and source.cars == [root]


def test_pools_start_on_first_use_and_close_shuts_them_down(remote: tuple[MemoryBlockstore, bytes]) -> None:
    origin, root = remote
    before = set(_prefetch_threads())
    store = FetchingBlockstore(MemoryBlockstore(), BlockFetcher([StoreCarSource(origin)]))
    assert set(_prefetch_threads()) == before  # nothing started by building it
    wanted = [cids.block_cid(cids.RAW, bytes([index]) * 100) for index in range(4)]
    store.prefetch(wanted)
    fetching = store.prefetch_dag(root)
    assert fetching is not None
    fetching.result(timeout=10)
    started = set(_prefetch_threads()) - before
    assert {thread.name.rsplit("_", 1)[0] for thread in started} == {
        "ipldmount-prefetch",
        "ipldmount-dag-prefetch",
    }
    store.close()
    assert not any(thread.is_alive() for thread in started)
    store.close()  # twice is fine
    store.prefetch([cids.block_cid(cids.RAW, bytes([9]) * 100)])  # used again: a new pool
    assert store.has(cids.block_cid(cids.RAW, bytes([9]) * 100))
    store.close()
    assert set(_prefetch_threads()) == before


def test_close_drops_what_was_not_started(remote: tuple[MemoryBlockstore, bytes]) -> None:
    origin, _ = remote
    source = StoreSource(origin, delay=0.3)
    store = FetchingBlockstore(MemoryBlockstore(), BlockFetcher([source]))
    wanted = [cids.block_cid(cids.RAW, bytes([index]) * 100) for index in range(40)]
    store.prefetch(wanted, wait=False)
    started = time.monotonic()
    store.close()  # waits for the 8 under way, not for the 32 queued behind them
    assert time.monotonic() - started < 2.0 and len(source.asked) < len(wanted)


def test_no_http_client_is_loaded_before_a_transport_is_built() -> None:
    code = (
        "import sys\n"
        "import ipldmount.remote.fetching, ipldmount.remote.remotes, ipldmount.remote.exchange\n"
        "from ipldmount.remote.remotes import Remotes\n"
        "remotes = Remotes.resolve(None, (), environ={'IPLDMOUNT_CONFIG': '/nonexistent'})\n"
        "print('urllib3' in sys.modules)\n"
        "Remotes.of(None, ['http://127.0.0.1:9']).sources()\n"
        "print('urllib3' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "True"]


def test_loading_a_directory_asks_for_its_linked_entries_side_by_side() -> None:
    """A directory node that links its subdirectories (too big to hold them inline) is loaded
    by reading each of them: they are asked for together, one round trip, not one each."""
    origin = MemoryBlockstore()
    tree = Tree(origin)
    for group in range(6):  # six subdirectories of ~300 KB: over the node limit together
        for index in range(1000):
            tree.write_file(f"g/{group}/{index:04d}{'x' * 240}", bytes([group]))
    root = tree.commit()
    group_node = codec.decode(origin.get(root))["g"]
    if isinstance(group_node, codec.Link):
        group_node = codec.decode(origin.get(group_node.cid))
    assert sum(isinstance(value, codec.Link) for value in group_node.values()) >= 2
    source = _CountingSource(origin)
    local = FetchingBlockstore(MemoryBlockstore(), BlockFetcher([source]))
    reader = Tree(local, root, read_only=True)
    assert sorted(reader.listdir("g")) == [str(group) for group in range(6)]
    assert reader.read_file(f"g/5/0999{'x' * 240}") == bytes([5])
    assert source.most_at_once > 1  # side by side
    local.close()
