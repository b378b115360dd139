"""IPLDStore under concurrent bulk I/O: chunk writes and reads overlap outside the tree's lock.

What must hold whatever the interleaving: every read returns the bytes written, the
root CID is the one sequential writes give, a garbage collection never takes the
blocks of a value that is stored but not linked yet, and ``freeze()`` makes the
blocks written without an fsync durable before it commits a root.
"""

from __future__ import annotations

import asyncio
import pickle
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from zarr.abc.store import RangeByteRequest
from zarr.core.buffer import Buffer, default_buffer_prototype
from zarr.core.buffer.cpu import Buffer as CPUBuffer
from zarr.core.sync import sync

from ipldmount.adapters.zarr_store import IPLDStore
from ipldmount.blocks import Blockstore, DirectoryBlockstore, MemoryBlockstore
from ipldmount.errors import CorruptBlockError
from ipldmount.format.files import BLOCK_LIMIT, decode_fbl, store_bytes
from ipldmount.ipld import cid as cids


def _buf(data: bytes) -> Buffer:
    return CPUBuffer.from_bytes(data)


def _value(index: int) -> bytes:
    """Distinct bytes per index; every third is chunked (several leaves), the rest small."""
    size = 2 * BLOCK_LIMIT + 1000 * index if index % 3 == 0 else 100 + index
    return np.random.default_rng(index).bytes(size)


def _values(count: int) -> dict[str, bytes]:
    return {f"arr/c/{index % 5}/{index}": _value(index) for index in range(count)}


def _sequential_root(values: dict[str, bytes]) -> str:
    store = IPLDStore(MemoryBlockstore())
    for key, value in values.items():
        store.set_sync(key, _buf(value))
    return store.freeze()


def _blockstore(kind: str, tmp_path: Path) -> Blockstore:
    return MemoryBlockstore() if kind == "memory" else DirectoryBlockstore(tmp_path / "blocks")


@pytest.mark.parametrize("kind", ["memory", "directory"])
def test_concurrent_tasks_write_and_read_back_the_sequential_root(kind: str, tmp_path: Path) -> None:
    values = _values(30)
    store = IPLDStore(_blockstore(kind, tmp_path))

    async def write_then_read(key: str, value: bytes) -> bytes:
        await store.set(key, _buf(value))
        got = await store.get(key, default_buffer_prototype())
        assert got is not None
        return got.to_bytes()

    async def everything() -> list[bytes]:
        return await asyncio.gather(*(write_then_read(key, value) for key, value in values.items()))

    assert sync(everything()) == list(values.values())
    root = store.freeze()
    assert root == _sequential_root(values)
    reopened = IPLDStore(store.blockstore, root, read_only=True)

    async def read_all() -> list[Buffer | None]:
        prototype = default_buffer_prototype()
        return await asyncio.gather(*(reopened.get(key, prototype) for key in values))

    assert [value.to_bytes() for value in sync(read_all()) if value is not None] == list(values.values())


@pytest.mark.parametrize("kind", ["memory", "directory"])
def test_threads_and_tasks_at_once(kind: str, tmp_path: Path) -> None:
    """User threads calling the *_sync methods while zarr's loop runs its own requests."""
    values = _values(24)
    items = list(values.items())
    store = IPLDStore(_blockstore(kind, tmp_path))

    def in_thread(item: tuple[str, bytes]) -> bytes:
        store.set_sync(item[0], _buf(item[1]))
        got = store.get_sync(item[0])
        assert got is not None
        return got.to_bytes()

    async def in_tasks() -> None:
        await asyncio.gather(*(store.set(key, _buf(value)) for key, value in items[1::2]))

    with ThreadPoolExecutor(4) as pool:
        from_threads = pool.map(in_thread, items[::2])
        sync(in_tasks())
        assert list(from_threads) == [value for _, value in items[::2]]
    assert store.freeze() == _sequential_root(values)


def test_the_same_key_from_many_tasks_ends_as_one_of_the_values() -> None:
    store = IPLDStore(MemoryBlockstore())
    candidates = [_value(index) for index in range(0, 18, 3)]  # all chunked

    async def race() -> None:
        await asyncio.gather(*(store.set("arr/c/0", _buf(value)) for value in candidates))

    sync(race())
    got = store.get_sync("arr/c/0")
    assert got is not None and got.to_bytes() in candidates
    assert store.freeze() == _sequential_root({"arr/c/0": got.to_bytes()})


def test_set_if_not_exists_from_many_tasks_keeps_exactly_one() -> None:
    store = IPLDStore(MemoryBlockstore())
    candidates = [_value(index) for index in range(6)]

    async def race() -> None:
        await asyncio.gather(*(store.set_if_not_exists("arr/zarr.json", _buf(v)) for v in candidates))
        await store.set_if_not_exists("arr/zarr.json", _buf(b"later"))

    sync(race())
    got = store.get_sync("arr/zarr.json")
    assert got is not None and got.to_bytes() in candidates


def test_a_collection_waits_for_a_value_stored_but_not_linked_yet() -> None:
    store = IPLDStore(MemoryBlockstore())
    stored, release = threading.Event(), threading.Event()
    original = store._store_value

    def slow_store_value(key: str, data: Any) -> Any:
        content = original(key, data)  # the blocks are in the store, nothing links them yet
        stored.set()
        release.wait(10)
        return content

    store._store_value = slow_store_value  # type: ignore[method-assign]
    value = _value(0)
    with ThreadPoolExecutor(2) as pool:
        writing = pool.submit(store.set_sync, "arr/c/0", _buf(value))
        assert stored.wait(10)
        collecting = pool.submit(store.collect_garbage)
        time.sleep(0.2)
        assert not collecting.done(), "the collection must wait for the write to link its value"
        release.set()
        writing.result(10)
        assert collecting.result(10).removed_blocks == 0
    got = store.get_sync("arr/c/0")
    assert got is not None and got.to_bytes() == value
    assert store.collect_garbage().removed_blocks == 0


class _CountingSyncs(DirectoryBlockstore):
    syncs = 0

    def sync(self) -> None:
        type(self).syncs += 1
        super().sync()


def test_freeze_syncs_blocks_written_since_the_last_freeze_once(tmp_path: Path) -> None:
    store = IPLDStore(_CountingSyncs(tmp_path / "blocks"))
    store.set_sync("arr/c/0", _buf(_value(0)))
    before = _CountingSyncs.syncs
    root = store.freeze()
    assert _CountingSyncs.syncs == before + 1
    assert store.freeze() == root
    assert _CountingSyncs.syncs == before + 1, "nothing new: nothing to sync"
    store.set_sync("arr/zarr.json", _buf(b"{}"))  # metadata: inline in its directory, no block yet
    store.freeze()
    assert _CountingSyncs.syncs == before + 1


def test_leaves_cut_from_a_view_have_the_cids_of_bytes() -> None:
    data = _value(3)
    from_bytes = store_bytes(MemoryBlockstore(), data)
    writable = bytearray(data)
    memory = MemoryBlockstore()
    from_view = store_bytes(memory, memoryview(writable))
    assert from_view.cid == from_bytes.cid
    writable[:8] = b"changed!"  # the store kept copies, not views of the caller's buffer
    assert memory.get(cids.block_cid(cids.RAW, data[:BLOCK_LIMIT])) == data[:BLOCK_LIMIT]


def test_memory_blockstore_checks_blocks_it_did_not_hash_itself() -> None:
    memory = MemoryBlockstore()
    cid = memory.put(b"pristine", cids.RAW)
    assert memory.get(cid) == b"pristine"
    memory._blocks[cid] = b"tampered"  # behind the store's back: no longer the bytes it hashed
    with pytest.raises(CorruptBlockError):
        memory.get(cid)

    memory._blocks[cid] = b"pristine"
    copy = pickle.loads(pickle.dumps(memory))
    assert copy.get(cid) == b"pristine"
    copy._blocks[cid] = b"tampered"
    with pytest.raises(CorruptBlockError):
        copy.get(cid)


# --- chunked values read back whole from memory ---------------------------------------------


def _whole_value(leaves: float = 3.5) -> bytes:
    return np.random.default_rng(7).bytes(int(leaves * BLOCK_LIMIT))


@pytest.mark.parametrize("batched", [False, True])
def test_a_memory_store_keeps_a_chunked_file_whole(batched: bool) -> None:
    """One copy of the value, whole; its leaves are views of it, read back as bytes (verified as
    this store's own), and the file whole without a copy."""
    store = MemoryBlockstore()
    data = bytearray(_whole_value())
    if batched:
        with store.batch():
            stored = store_bytes(store, data)
            assert store.whole_file(stored.cid) is None, "staged: not the store's yet"
    else:
        stored = store_bytes(store, data)
    data[:4] = b"gone"  # the caller's buffer is the caller's: the store copied it
    whole = store.whole_file(stored.cid)
    assert whole is not None and whole.readonly and bytes(whole[4:]) == bytes(data[4:])
    assert whole.obj is store.whole_file(stored.cid).obj, "the same bytes every time"  # type: ignore[union-attr]
    leaves = [cid for cid, _ in store_leaf_cids(store, stored.cid)]
    assert len(leaves) == 4
    first = store.get(leaves[0])
    assert type(first) is bytes and first == bytes(whole[:BLOCK_LIMIT])
    assert store.read(leaves[3], 10, 5) == bytes(whole[3 * BLOCK_LIMIT + 10 : 3 * BLOCK_LIMIT + 15])
    again = pickle.loads(pickle.dumps(store))
    assert again.whole_file(stored.cid) is None and again.get(leaves[1]) == bytes(
        whole[BLOCK_LIMIT : 2 * BLOCK_LIMIT]
    )


def store_leaf_cids(store: Blockstore, root: bytes) -> list[tuple[bytes, int]]:
    return decode_fbl(store.get(root))


def test_a_file_is_not_whole_when_its_leaves_were_there_already_or_go() -> None:
    store = MemoryBlockstore()
    value = _whole_value(2)
    first = store_bytes(store, value[:BLOCK_LIMIT] + bytes(BLOCK_LIMIT))  # its second leaf is zeros
    stored = store_bytes(store, bytes(BLOCK_LIMIT) + value[BLOCK_LIMIT:])  # its first leaf is that one
    assert store.whole_file(first.cid) is not None and store.whole_file(stored.cid) is None
    reader = stored.reader(store)
    assert reader.read(0, reader.size) == bytes(BLOCK_LIMIT) + value[BLOCK_LIMIT:]
    leaf = store_leaf_cids(store, first.cid)[0][0]
    store.remove_unused(leaf, None)
    assert store.whole_file(first.cid) is None, "a leaf went: read what is left the usual way"


def test_a_staging_discarded_keeps_nothing_whole() -> None:
    store = MemoryBlockstore()
    value = _whole_value(2)
    try:
        with store.batch():
            stored = store_bytes(store, value)
            raise RuntimeError("fail")
    except RuntimeError:
        pass
    assert not store.has(stored.cid) and store.whole_file(stored.cid) is None
    again = store_bytes(store, value)
    assert again.cid == stored.cid and store.whole_file(again.cid) is not None


def test_ipldstore_reads_a_chunked_value_from_memory_without_a_copy() -> None:
    blockstore = MemoryBlockstore()
    store = IPLDStore(blockstore)
    value = _whole_value()
    store.set_sync("arr/c/0", _buf(value))
    root = store.freeze()
    reader = IPLDStore(blockstore, root, read_only=True)
    got = reader.get_sync("arr/c/0")
    assert got is not None and got.to_bytes() == value
    file = reader.tree.resolve_file("arr/c/0")
    whole = blockstore.whole_file(file.content.cid)  # type: ignore[attr-defined]
    assert whole is not None and np.shares_memory(got.as_numpy_array(), np.frombuffer(whole, dtype="B"))
    part = reader.get_sync("arr/c/0", byte_range=RangeByteRequest(BLOCK_LIMIT - 3, BLOCK_LIMIT + 5))
    assert part is not None and part.to_bytes() == value[BLOCK_LIMIT - 3 : BLOCK_LIMIT + 5]


class _MeetingBlockstore(DirectoryBlockstore):
    """Once :attr:`meeting` is set, a read of a raw block waits there for the others: reads that
    run one after another never all arrive, and the barrier breaks (a failure, not a hang)."""

    meeting: threading.Barrier | None = None

    def _lookup(self, cid: bytes) -> bytes | None:
        if self.meeting is not None and cids.codec_of(cid) == cids.RAW:
            self.meeting.wait()
        return super()._lookup(cid)


def test_concurrent_gets_read_their_blocks_side_by_side(tmp_path: Path) -> None:
    """zarr asks for many chunks at once: their lookups take the tree's lock in turn, briefly,
    and their block reads all run at the same time, outside it."""
    values = {f"a/c/{index}": _value(index) for index in (1, 2, 4, 5)}  # one raw block each
    blockstore = _MeetingBlockstore(tmp_path / "store")
    writer = IPLDStore(blockstore)
    for key, value in values.items():
        writer.set_sync(key, _buf(value))
    root = writer.freeze()
    reader = IPLDStore(blockstore, root, read_only=True)
    blockstore.meeting = threading.Barrier(len(values), timeout=30)

    async def get_all() -> list[Buffer | None]:
        return await asyncio.gather(*(reader.get(key) for key in values))

    got = asyncio.run(get_all())
    assert [None if buffer is None else buffer.to_bytes() for buffer in got] == list(values.values())
    reader.close()
    writer.close()
