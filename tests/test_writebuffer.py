"""WriteBuffer against a bytearray model: whatever the write pattern, the stored content
is exactly what store_bytes makes of the final bytes."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipldmount.blocks import DirectoryBlockstore, MemoryBlockstore
from ipldmount.errors import FileTooLargeError, StoreFullError
from ipldmount.format.files import (
    BLOCK_LIMIT,
    MAX_FILE_SIZE,
    MAX_WHOLE_FILE_SIZE,
    FileContent,
    PendingFile,
    StoredFile,
    store_bytes,
    store_chunks,
)
from ipldmount.ipld import cid as cids
from ipldmount.session.writebuffer import ChunkedBuffer, LeafPool, WriteBuffer, open_buffer

MIB = 1 << 20


def _model_write(model: bytearray, offset: int, data: bytes) -> None:
    if offset > len(model):
        model.extend(bytes(offset - len(model)))
    model[offset : offset + len(data)] = data


def _check(buffer: WriteBuffer, model: bytearray, chunk_size: int | None) -> None:
    assert buffer.size == len(model)
    assert buffer.read(0, len(model) + 10) == bytes(model)
    expected = store_bytes(MemoryBlockstore(), bytes(model), chunk_size).cid
    assert buffer.store().cid == expected
    assert buffer.read(0, len(model) + 10) == bytes(model), "reads the same after storing"


@pytest.mark.parametrize("chunk_size", [BLOCK_LIMIT, None])
def test_sequential_large_file_streams_leaves(tmp_path: Path, chunk_size: int | None) -> None:
    store = MemoryBlockstore()
    buffer = open_buffer(store, chunk_size, None, tmp_path)
    model = bytearray()
    piece = bytes(range(256)) * 512  # 128 KiB
    for index in range(30):  # 3.75 MiB in 128 KiB writes, like the kernel sends them
        data = bytes([index]) + piece[1:]
        buffer.write(len(model), data)
        model += data
    if chunk_size is not None:
        assert not buffer.read_is_cheap(0, 1), "the full leaves were handed off while the data arrived"
    _check(buffer, model, chunk_size)
    if chunk_size is not None:
        assert len(store) == 5, "three full leaves, the tail leaf and the layout root"
    buffer.close()


def test_forward_writes_are_memory_copies(tmp_path: Path) -> None:
    store = MemoryBlockstore()
    buffer = open_buffer(store, BLOCK_LIMIT, None, tmp_path)
    assert buffer.write_is_cheap(0, 64 * 1024)
    buffer.write(0, b"x" * 65536)
    assert len(store) == 0 and buffer.read_is_cheap(0, 1)
    assert buffer.write_is_cheap(65536, MIB), "completing a leaf only hands it to the pool"
    buffer.write(65536, b"y" * (MIB - 65536))
    assert not buffer.read_is_cheap(0, 1)
    assert buffer.write_is_cheap(MIB, MIB + 10)
    assert not buffer.write_is_cheap(10, 20), "going back into a stored leaf needs the disk"
    _check(buffer, bytearray(b"x" * 65536 + b"y" * (MIB - 65536)), BLOCK_LIMIT)


def test_overwriting_a_staged_leaf_restages_that_leaf_alone(tmp_path: Path) -> None:
    """A write into a leaf already handed off reads that one leaf back from staging (a disk
    read: not cheap), edits it and, as it is whole, hands it off again; its old staged copy is
    let go (here still used by the equal leaves 1 and 2), which stay staged as they were."""
    store = MemoryBlockstore()
    buffer = open_buffer(store, BLOCK_LIMIT, None, tmp_path)
    assert isinstance(buffer, ChunkedBuffer)
    model = bytearray(b"a" * (3 * MIB))
    buffer.write(0, bytes(model))
    assert buffer.read(0, 3 * MIB) == bytes(model)  # waits until the three are staged
    same = cids.block_cid(cids.RAW, b"a" * MIB)
    assert buffer._refs == {same: 3}, "three leaves, one staged block"
    assert not buffer.write_is_cheap(10, 17), "the leaf must be read back first"
    buffer.write(10, b"changed")
    _model_write(model, 10, b"changed")
    assert buffer.read(0, 20) == bytes(model[:20])
    edited = cids.block_cid(cids.RAW, bytes(model[:MIB]))
    assert buffer._refs == {same: 2, edited: 1}, "leaf 0 staged anew, leaves 1 and 2 untouched"
    _check(buffer, model, BLOCK_LIMIT)
    assert len(store) == 3, "the two leaf blocks and the layout root"
    buffer.close()


def test_a_buffer_without_a_pool_owns_one_until_closed(tmp_path: Path) -> None:
    buffer = open_buffer(MemoryBlockstore(), BLOCK_LIMIT, None, tmp_path)
    assert isinstance(buffer, ChunkedBuffer)
    pool = buffer._pool
    assert not pool.started, "no thread until a leaf is full"
    buffer.write(0, b"x" * MIB)
    assert pool.started
    buffer.close()
    assert not pool.started, "shut down with its buffer"


def test_a_buffer_given_a_pool_leaves_it_running(tmp_path: Path) -> None:
    pool = LeafPool()
    store = MemoryBlockstore()
    for _ in range(2):
        buffer = open_buffer(store, BLOCK_LIMIT, None, tmp_path, pool)
        buffer.write(0, b"y" * MIB)
        assert buffer.store().size_in(store) == MIB
        buffer.close()
        assert pool.started, "its owner's: still running"
    pool.close()
    assert not pool.started


def test_from_reader_and_truncate(tmp_path: Path) -> None:
    original = bytes(range(256)) * 10_000
    buffer = open_buffer(MemoryBlockstore(), BLOCK_LIMIT, PendingFile(original), tmp_path)
    model = bytearray(original)
    buffer.truncate(1000)
    del model[1000:]
    _check(buffer, model, BLOCK_LIMIT)
    buffer.truncate(2 * MIB + 5)
    model.extend(bytes(2 * MIB + 5 - 1000))
    _check(buffer, model, BLOCK_LIMIT)


operation = st.one_of(
    st.tuples(st.just("write"), st.integers(0, 3 * MIB), st.integers(1, 300_000)),
    st.tuples(st.just("truncate"), st.integers(0, 3 * MIB), st.just(0)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(operation, max_size=8), st.sampled_from([BLOCK_LIMIT, None]))
def test_matches_model(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int, int]], chunk_size: int | None
) -> None:
    tmp = tmp_path_factory.mktemp("wb")
    buffer = open_buffer(MemoryBlockstore(), chunk_size, None, tmp)
    model = bytearray()
    for number, (kind, offset, length) in enumerate(ops):
        if kind == "write":
            data = bytes([number % 251 + 1]) * length
            buffer.write(offset, data)
            _model_write(model, offset, data)
        else:
            buffer.truncate(offset)
            if offset < len(model):
                del model[offset:]
            else:
                model.extend(bytes(offset - len(model)))
    _check(buffer, model, chunk_size)
    buffer.close()


# --- holes, bases and the cost of a change ---------------------------------------------------


def _stored_model(store: MemoryBlockstore, model: bytes, chunk_size: int | None) -> StoredFile:
    return store_bytes(store, model, chunk_size)


base_kind = st.sampled_from(["none", "pending", "stored", "foreign"])
small_operation = st.one_of(
    st.tuples(st.just("write"), st.integers(0, 25_000), st.integers(1, 40)),
    st.tuples(st.just("zeros"), st.integers(0, 25_000), st.integers(1, 40)),
    st.tuples(st.just("truncate"), st.integers(0, 25_000), st.just(0)),
    st.tuples(st.just("store"), st.just(0), st.just(0)),
)


def _base(store: MemoryBlockstore, kind: str, data: bytes, chunk_size: int) -> FileContent | None:
    if kind == "none":
        return None
    if kind == "pending":
        return PendingFile(data)
    if kind == "stored":
        return store_bytes(store, data, chunk_size)
    # laid out by another writer: leaves of another size
    return store_bytes(store, data, chunk_size + 3) if len(data) > chunk_size + 3 else PendingFile(data)


@settings(max_examples=120, deadline=None)
@given(
    st.lists(small_operation, max_size=10),
    st.sampled_from([7, 64]),
    base_kind,
    st.integers(0, 12_000),
)
def test_small_leaves_match_model(
    ops: list[tuple[str, int, int]], chunk_size: int, kind: str, base_size: int
) -> None:
    """Tiny leaves make two and three levels of nodes cheap: every write, hole, truncate and
    store() in between gives exactly the CID of the same bytes written afresh."""
    store = MemoryBlockstore()
    original = bytes((i * 7 + 3) % 256 for i in range(base_size)) if kind != "none" else b""
    buffer = open_buffer(store, chunk_size, _base(store, kind, original, chunk_size))
    model = bytearray(original)
    for number, (op, offset, length) in enumerate(ops):
        if op in ("write", "zeros"):
            data = bytes(length) if op == "zeros" else bytes([number % 251 + 1]) * length
            buffer.write(offset, data)
            _model_write(model, offset, data)
        elif op == "truncate":
            buffer.truncate(offset)
            del model[offset:]
            model.extend(bytes(offset - len(model)))
        else:
            assert buffer.store().cid == store_bytes(MemoryBlockstore(), bytes(model), chunk_size).cid
    _check(buffer, model, chunk_size)
    buffer.close()


def test_a_hole_of_2_gib_costs_one_zero_leaf_and_matches_explicit_zeros() -> None:
    store = MemoryBlockstore()
    buffer = open_buffer(store, BLOCK_LIMIT)
    buffer.truncate(2 << 30)
    assert buffer.read(5 << 20, 10) == bytes(10) and buffer.read_is_cheap(0, MIB)
    stored = buffer.store()
    assert len(store) == 3, "one zero leaf, one node of 1024 of them, the root with two entries"
    written = MemoryBlockstore()
    expected = store_chunks(written, (bytes(MIB) for _ in range(2048)), BLOCK_LIMIT)
    assert stored.cid == expected.cid and stored.size_in(store) == 2 << 30
    buffer.write((2 << 30) - 1, b"x")  # appending at the end of the hole stays cheap too
    buffer.write(2 << 30, b"y")
    again = buffer.store()
    assert again.reader(store).read((2 << 30) - 2, 4) == b"\0xy"
    # the two leaves written, the nodes above them and the root; the first 1 GiB's node is reused
    assert len(store) == 3 + 5


def test_one_byte_at_one_gib_is_a_hole_then_a_leaf() -> None:
    store = MemoryBlockstore()
    buffer = open_buffer(store, BLOCK_LIMIT)
    buffer.write(1 << 30, b"!")
    stored = buffer.store()
    reader = stored.reader(store)
    assert reader.size == (1 << 30) + 1
    assert reader.read((1 << 30) - 3, 10) == b"\0\0\0!"
    assert len(store) == 5, "zero leaf, zero node, the 1-byte leaf, its node, the root"


def test_a_petabyte_hole_is_instant_and_exact_in_structure() -> None:
    store = MemoryBlockstore()
    buffer = open_buffer(store, BLOCK_LIMIT)
    buffer.truncate(999_999_999_999_999)
    stored = buffer.store()
    reader = stored.reader(store)
    assert reader.size == 999_999_999_999_999
    assert reader.read(999_999_999_999_990, 100) == bytes(9)
    assert len(store) < 12, "one block per level for the hole, plus the cut-off tail"


def test_the_largest_file_size(tmp_path: Path) -> None:
    buffer = open_buffer(MemoryBlockstore(), BLOCK_LIMIT)
    buffer.truncate(MAX_FILE_SIZE)
    assert buffer.store().size_in(MemoryBlockstore()) == MAX_FILE_SIZE
    with pytest.raises(FileTooLargeError):
        buffer.truncate(MAX_FILE_SIZE + 1)
    with pytest.raises(FileTooLargeError):
        buffer.write(MAX_FILE_SIZE, b"x")
    whole = open_buffer(MemoryBlockstore(), None, None, tmp_path)
    with pytest.raises(FileTooLargeError):
        whole.truncate(MAX_WHOLE_FILE_SIZE + 1)
    whole.truncate(3 * MIB)  # a sparse temporary file, not memory
    assert whole.read(2 * MIB, 4) == bytes(4)
    assert whole.store().cid == store_bytes(MemoryBlockstore(), bytes(3 * MIB), None).cid
    whole.close()


def test_editing_one_leaf_of_a_large_file_costs_one_path() -> None:
    store = MemoryBlockstore()
    data = bytes(i % 249 for i in range(16 * 3000 + 5))  # 3001 leaves of 16 bytes: two levels of nodes
    base = store_bytes(store, data, 16)
    before = set(store)
    buffer = open_buffer(store, 16, base)
    buffer.write(16 * 1500 + 3, b"changed")
    stored = buffer.store()
    model = bytearray(data)
    model[16 * 1500 + 3 : 16 * 1500 + 10] = b"changed"
    assert stored.cid == store_bytes(MemoryBlockstore(), bytes(model), 16).cid
    assert len(set(store) - before) == 3, "the leaf, its node and the root"


def test_zeros_written_into_a_hole_are_not_kept(tmp_path: Path) -> None:
    store = MemoryBlockstore()
    buffer = open_buffer(store, BLOCK_LIMIT)
    for offset in range(0, 64 * MIB, 4096):  # what glibc's posix_fallocate emulation does
        buffer.write(offset, b"\0")
    assert buffer.read_is_cheap(0, 64 * MIB), "nothing was kept in memory or handed off"
    assert buffer.size == 64 * MIB - 4095
    assert buffer.store().cid == store_bytes(MemoryBlockstore(), bytes(64 * MIB - 4095)).cid


def test_a_buffer_closed_without_storing_leaves_nothing(tmp_path: Path) -> None:
    store = DirectoryBlockstore(tmp_path / "store")
    buffer = open_buffer(store, BLOCK_LIMIT)
    buffer.write(0, random.Random(1).randbytes(5 * MIB + 3))
    buffer.close()
    assert list(store) == [] and os.listdir(store.tmp_dir) == []


def test_a_full_disk_while_writing_keeps_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = DirectoryBlockstore(tmp_path / "store")
    buffer = open_buffer(store, BLOCK_LIMIT)
    real_write = os.write
    calls = 0

    def fill_up(fd: int, data: bytes) -> int:
        nonlocal calls
        calls += 1
        if calls > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", fill_up)
    with pytest.raises(StoreFullError):
        for offset in range(0, 20 * MIB, MIB):
            buffer.write(offset, random.Random(offset).randbytes(MIB))
        buffer.store()
    monkeypatch.undo()
    buffer.close()
    assert list(store) == [] and os.listdir(store.tmp_dir) == []


def test_staged_leaves_are_committed_only_when_used(tmp_path: Path) -> None:
    store = DirectoryBlockstore(tmp_path / "store")
    buffer = open_buffer(store, BLOCK_LIMIT)
    first = random.Random(2).randbytes(3 * MIB)
    buffer.write(0, first)
    buffer.write(0, b"x" * MIB)  # the first leaf is replaced after it was staged
    buffer.truncate(2 * MIB)
    stored = buffer.store()
    expected = store_bytes(MemoryBlockstore(), b"x" * MIB + first[MIB : 2 * MIB], BLOCK_LIMIT)
    assert stored.cid == expected.cid
    assert len(store) == 3 and os.listdir(store.tmp_dir) == []
    buffer.close()
