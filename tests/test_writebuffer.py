"""WriteBuffer against a bytearray model: whatever the write pattern, the stored content
is exactly what store_bytes makes of the final bytes."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipldmount.blockstore import MemoryBlockstore
from ipldmount.files import BLOCK_LIMIT, BytesReader, store_bytes
from ipldmount.writebuffer import WriteBuffer

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


@pytest.mark.parametrize("chunk_size", [BLOCK_LIMIT, None])
def test_sequential_large_file_streams_leaves(tmp_path: Path, chunk_size: int | None) -> None:
    store = MemoryBlockstore()
    buffer = WriteBuffer(store, tmp_path, chunk_size)
    model = bytearray()
    piece = bytes(range(256)) * 512  # 128 KiB
    for index in range(30):  # 3.75 MiB in 128 KiB writes, like the kernel sends them
        data = bytes([index]) + piece[1:]
        buffer.write(len(model), data)
        model += data
    if chunk_size is not None:
        assert not buffer.read_is_cheap(0), "the full leaves were handed off while the data arrived"
    _check(buffer, model, chunk_size)
    if chunk_size is not None:
        assert len(store) == 5, "three full leaves, the tail leaf and the layout root"
    buffer.close()


def test_forward_writes_are_memory_copies(tmp_path: Path) -> None:
    store = MemoryBlockstore()
    buffer = WriteBuffer(store, tmp_path, BLOCK_LIMIT)
    assert buffer.write_is_cheap(0, 64 * 1024)
    buffer.write(0, b"x" * 65536)
    assert len(store) == 0 and buffer.read_is_cheap(0)
    assert buffer.write_is_cheap(65536, MIB), "completing a leaf only hands it to the pool"
    buffer.write(65536, b"y" * (MIB - 65536))
    assert not buffer.read_is_cheap(0)
    assert buffer.write_is_cheap(MIB, MIB + 10)
    assert not buffer.write_is_cheap(10, 20), "going back into a stored leaf needs the disk"
    _check(buffer, bytearray(b"x" * 65536 + b"y" * (MIB - 65536)), BLOCK_LIMIT)


def test_overwriting_a_stored_leaf_falls_back_to_the_whole_file(tmp_path: Path) -> None:
    buffer = WriteBuffer(MemoryBlockstore(), tmp_path, BLOCK_LIMIT)
    model = bytearray(b"a" * (3 * MIB))
    buffer.write(0, bytes(model))
    buffer.write(10, b"changed")
    _model_write(model, 10, b"changed")
    _check(buffer, model, BLOCK_LIMIT)


def test_from_reader_and_truncate(tmp_path: Path) -> None:
    original = bytes(range(256)) * 10_000
    buffer = WriteBuffer.from_reader(MemoryBlockstore(), tmp_path, BLOCK_LIMIT, BytesReader(original))
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
    buffer = WriteBuffer(MemoryBlockstore(), tmp, chunk_size)
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
