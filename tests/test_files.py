"""File contents: one raw block up to 1 MiB, a Flexible Byte Layout list beyond; exact reads."""

from __future__ import annotations

import io
import random
from collections.abc import Iterable
from pathlib import Path

import pytest

from ipldmount.blocks import Blockstore, DirectoryBlockstore, MemoryBlockstore
from ipldmount.errors import CorruptBlockError, FormatError
from ipldmount.format import files
from ipldmount.format.files import (
    BLOCK_LIMIT,
    FBL_WIDTH,
    FblReader,
    FileReader,
    StoredFile,
    decode_fbl,
    fbl_size,
    store_bytes,
    store_chunks,
    store_stream,
)
from ipldmount.ipld import cid as cids
from ipldmount.ipld import codec

MIB = 1 << 20


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def fbl_entries(store: Blockstore, cid: bytes) -> list[tuple[bytes, int]]:
    return decode_fbl(store.get(cid))


def assert_random_reads(reader: FileReader, data: bytes, count: int = 300, seed: int = 1) -> None:
    rng = random.Random(seed)
    size = len(data)
    for _ in range(count):
        offset = rng.randrange(0, size + 100)
        length = rng.choice([0, 1, 2, 17, 4096, rng.randrange(0, size + 1), size + 10])
        assert reader.read(offset, length) == data[offset : offset + length], (offset, length)


def open_reader(store: Blockstore, cid: bytes) -> FileReader:
    """A reader on a StoredFile that has to find its own size (as after a reload)."""
    return StoredFile(cid).reader(store)


# --- raw and chunked layout --------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 1000, MIB - 1, MIB])
def test_small_file_is_one_raw_block(store: Blockstore, size: int) -> None:
    data = payload(size)
    stored = store_bytes(store, data)
    assert stored.cid == cids.block_cid(cids.RAW, data)
    assert store.get(stored.cid) == data
    assert stored.size_in(store) == size
    assert StoredFile(stored.cid).size_in(store) == size
    reader = open_reader(store, stored.cid)
    assert reader.size == size
    assert reader.read(0, size + 1) == data
    assert reader.read(size, 10) == b""
    assert reader.read(size + 5, 10) == b""


def test_empty_file_cid(store: Blockstore) -> None:
    assert cids.cid_to_str(store_bytes(store, b"").cid) == (
        "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    )


def test_one_mib_plus_one_is_two_leaves(store: Blockstore) -> None:
    data = payload(MIB + 1)
    stored = store_bytes(store, data)
    assert cids.codec_of(stored.cid) == cids.DAG_CBOR
    node = codec.decode(store.get(stored.cid))
    assert node == [
        [MIB, codec.Link(cids.block_cid(cids.RAW, data[:MIB]))],
        [1, codec.Link(cids.block_cid(cids.RAW, data[MIB:]))],
    ]
    assert stored.size_in(store) == MIB + 1
    assert StoredFile(stored.cid).size_in(store) == MIB + 1
    assert fbl_size(store, stored.cid) == MIB + 1
    reader = open_reader(store, stored.cid)
    assert isinstance(reader, FblReader)
    assert reader.read(0, MIB + 1) == data
    assert reader.read(MIB - 1, 2) == data[MIB - 1 : MIB + 1]
    assert reader.read(MIB, 5) == data[MIB:]


def test_three_and_a_half_mib(store: Blockstore) -> None:
    size = 3 * MIB + MIB // 2
    data = payload(size, seed=35)
    stored = store_bytes(store, data)
    entries = fbl_entries(store, stored.cid)
    assert [length for _, length in entries] == [MIB, MIB, MIB, MIB // 2]
    for index, (cid, length) in enumerate(entries):
        assert cid == cids.block_cid(cids.RAW, data[index * MIB : index * MIB + length])
    reader = open_reader(store, stored.cid)
    assert reader.size == size
    assert reader.read(0, size) == data
    for boundary in (MIB, 2 * MIB, 3 * MIB):
        assert reader.read(boundary - 3, 6) == data[boundary - 3 : boundary + 3]
    assert_random_reads(reader, data)


@pytest.mark.parametrize("size", [0, 1, 1000, MIB, MIB + 1, 2 * MIB, 3 * MIB + 7])
def test_random_reads(store: Blockstore, size: int) -> None:
    data = payload(size, seed=size)
    stored = store_bytes(store, data)
    assert_random_reads(stored.reader(store), data)
    assert_random_reads(open_reader(store, stored.cid), data, seed=2)


@pytest.mark.parametrize("size", [0, 1, MIB - 1, MIB, MIB + 1, 2 * MIB, 3 * MIB + MIB // 2])
def test_store_stream_matches_store_bytes(store: Blockstore, size: int) -> None:
    data = payload(size, seed=size + 1)
    expected = store_bytes(store, data)
    streamed = store_stream(store, io.BytesIO(data))
    assert streamed.cid == expected.cid
    assert streamed.size_in(store) == size


@pytest.mark.parametrize("size", [0, 1, MIB + 1, 3 * MIB + 5])
def test_store_stream_whole_file(store: Blockstore, size: int) -> None:
    data = payload(size, seed=3)
    stored = store_stream(store, io.BytesIO(data), chunk_size=None)
    assert stored.cid == cids.block_cid(cids.RAW, data)
    assert stored.size_in(store) == size
    assert store.get(stored.cid) == data
    assert store_bytes(store, data, chunk_size=None).cid == stored.cid


class TrickleStream(io.RawIOBase):
    """A stream that hands out at most *step* bytes per read, as pipes and sockets may."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.step, self.position = data, step, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        piece = self.data[self.position : self.position + min(len(buffer), self.step)]
        memoryview(buffer).cast("B")[: len(piece)] = piece
        self.position += len(piece)
        return len(piece)


@pytest.mark.parametrize("size", [MIB, MIB + 1, 2 * MIB + 3])
def test_store_stream_with_short_reads(store: Blockstore, size: int) -> None:
    """The chunking must not depend on how the stream happens to split its reads."""
    data = payload(size, seed=7)
    stored = store_stream(store, TrickleStream(data, 100_000))  # type: ignore[arg-type]
    assert stored.cid == store_bytes(store, data).cid
    assert stored.reader(store).read(0, size) == data


def test_custom_chunk_size(store: Blockstore) -> None:
    data = payload(1000)
    stored = store_bytes(store, data, chunk_size=100)
    assert [length for _, length in fbl_entries(store, stored.cid)] == [100] * 10
    assert store_stream(store, io.BytesIO(data), chunk_size=100).cid == stored.cid
    assert open_reader(store, stored.cid).read(0, 2000) == data


# --- nested FBL nodes ---------------------------------------------------------------


def test_nested_fbl(store: Blockstore) -> None:
    chunk, leaves = 16, 3000
    data = payload(chunk * leaves - 5, seed=16)  # the last leaf is short
    with store.batch():
        stored = store_chunks(store, (data[i : i + chunk] for i in range(0, len(data), chunk)), chunk)
        assert stored.cid == store_bytes(store, data, chunk_size=chunk).cid

    top = fbl_entries(store, stored.cid)
    assert [length for _, length in top] == [
        FBL_WIDTH * chunk,
        FBL_WIDTH * chunk,
        len(data) - 2 * FBL_WIDTH * chunk,
    ]
    middle = [fbl_entries(store, cid) for cid, _ in top]
    assert [len(node) for node in middle] == [FBL_WIDTH, FBL_WIDTH, leaves - 2 * FBL_WIDTH]
    assert all(cids.codec_of(cid) == cids.RAW for node in middle for cid, _ in node)

    reader = open_reader(store, stored.cid)
    assert reader.size == len(data)
    assert reader.read(0, len(data)) == data
    assert reader.read(0, len(data) + 100) == data
    for boundary in range(0, len(data) + 1, chunk):  # every leaf boundary, so every node boundary too
        assert reader.read(boundary, 1) == data[boundary : boundary + 1]
        if boundary:
            assert reader.read(boundary - 1, 2) == data[boundary - 1 : boundary + 1]
    node_span = FBL_WIDTH * chunk
    for boundary in (node_span, 2 * node_span):
        assert reader.read(boundary - 40, 80) == data[boundary - 40 : boundary + 40]
        assert reader.read(boundary - node_span, node_span) == data[boundary - node_span : boundary]
    assert reader.read(len(data) - 3, 10) == data[-3:]
    assert_random_reads(reader, data, count=500)


def test_deeply_nested_fbl(store: Blockstore, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a narrow FBL width the same code builds four levels; reads cross every node boundary."""
    monkeypatch.setattr(files, "FBL_WIDTH", 4)
    chunk, leaves = 3, 100
    data = payload(chunk * leaves - 1, seed=4)
    stored = store_chunks(store, (data[i : i + chunk] for i in range(0, len(data), chunk)), chunk)

    def depth(cid: bytes) -> int:
        if cids.codec_of(cid) == cids.RAW:
            return 0
        children = fbl_entries(store, cid)
        assert 1 <= len(children) <= 4
        child_depths = {depth(child) for child, _ in children}
        assert len(child_depths) == 1  # balanced: every leaf at the same depth
        return 1 + child_depths.pop()

    assert depth(stored.cid) == 4  # 100 leaves -> 25 -> 7 -> 2 -> 1 nodes
    reader = open_reader(store, stored.cid)
    assert reader.size == len(data)
    for offset in range(len(data) + 2):
        for length in (1, 2, 4, 13, 49):
            assert reader.read(offset, length) == data[offset : offset + length], (offset, length)


def test_store_chunks_edge_cases(store: Blockstore) -> None:
    assert store_chunks(store, [], 16).cid == cids.block_cid(cids.RAW, b"")
    assert store_chunks(store, [b"abc"], 16).cid == cids.block_cid(cids.RAW, b"abc")
    assert store_chunks(store, [b"", b"abc", b""], 16).cid == cids.block_cid(cids.RAW, b"abc")


# --- malformed FBL nodes -------------------------------------------------------------

LEAF = cids.block_cid(cids.RAW, b"leaf")


@pytest.mark.parametrize(
    "node",
    [
        {},
        {"a": 1},
        [],
        "list",
        5,
        [1, 2],
        [[codec.Link(LEAF)]],
        [[4, codec.Link(LEAF), 0]],
        [[4, LEAF]],  # bytes, not a link
        [[-1, codec.Link(LEAF)]],
        [[1.5, codec.Link(LEAF)]],
        [[True, codec.Link(LEAF)]],
        [["4", codec.Link(LEAF)]],
        [[None, codec.Link(LEAF)]],
        [[codec.Link(LEAF), 4]],  # [link, length]: the order the FBL spec does not use
        [[4, codec.Link(LEAF)], {"length": 4, "link": codec.Link(LEAF)}],
    ],
    ids=repr,
)
def test_malformed_fbl_node(store: Blockstore, node: object) -> None:
    data = codec.encode(node)
    with pytest.raises(FormatError):
        decode_fbl(data)
    root = store.put(data, cids.DAG_CBOR)
    with pytest.raises(FormatError):
        StoredFile(root).reader(store)
    with pytest.raises(FormatError):
        StoredFile(root).size_in(store)


def test_fbl_node_that_is_not_cbor() -> None:
    with pytest.raises(CorruptBlockError):
        decode_fbl(b"\xff\xff")


def test_fbl_lengths_longer_than_leaves(store: Blockstore) -> None:
    leaf = store.put(b"0123456789", cids.RAW)
    root = store.put(codec.encode([[10, codec.Link(leaf)], [20, codec.Link(leaf)]]), cids.DAG_CBOR)
    reader = open_reader(store, root)
    assert reader.size == 30
    assert reader.read(0, 10) == b"0123456789"
    with pytest.raises(FormatError):
        reader.read(0, 30)
    with pytest.raises(FormatError):
        reader.read(25, 1)


def test_fbl_lengths_shorter_than_leaves(store: Blockstore) -> None:
    """A part never reads past its stated length: every byte of the file has one value."""
    first = store.put(b"AAAAAAAAAA", cids.RAW)
    second = store.put(b"BBBBB", cids.RAW)
    root = store.put(codec.encode([[4, codec.Link(first)], [5, codec.Link(second)]]), cids.DAG_CBOR)
    reader = open_reader(store, root)
    assert reader.size == 9
    expected = b"AAAABBBBB"
    assert reader.read(0, 9) == expected
    for offset in range(9):
        for length in range(10):
            assert reader.read(offset, length) == expected[offset : offset + length], (offset, length)


@pytest.mark.parametrize(
    "part", [{"a": 1}, [], "text", [[1, 2]]], ids=["map", "empty list", "string", "not a pair"]
)
def test_a_part_of_length_0_that_is_not_a_file_part_is_refused_before_any_read(
    store: Blockstore, part: object
) -> None:
    """No read reaches a part of length 0, so it is checked when its node is decoded: the file
    ``[[10, raw], [0, link to a map]]`` is malformed, as FORMAT.md 5 says, not 10 good bytes."""
    leaf = store.put(b"0123456789", cids.RAW)
    bad = store.put(codec.encode(part), cids.DAG_CBOR)
    root = store.put(codec.encode([[10, codec.Link(leaf)], [0, codec.Link(bad)]]), cids.DAG_CBOR)
    assert StoredFile(root).size_in(store) == 10  # the top node's sum: known without reading parts
    with pytest.raises(FormatError, match="length 0"):
        open_reader(store, root)
    nested = store.put(codec.encode([[10, codec.Link(root)]]), cids.DAG_CBOR)
    reader = open_reader(store, nested)  # the bad part is a level down: found by the first read
    with pytest.raises(FormatError, match="length 0"):
        reader.read(0, 1)


def test_parts_of_length_0_that_are_file_parts_read_as_nothing(store: Blockstore) -> None:
    leaf = store.put(b"0123456789", cids.RAW)
    node = store.put(codec.encode([[3, codec.Link(leaf)]]), cids.DAG_CBOR)
    parts = [[0, codec.Link(node)], [10, codec.Link(leaf)], [0, codec.Link(leaf)]]
    root = store.put(codec.encode(parts), cids.DAG_CBOR)
    reader = open_reader(store, root)
    assert reader.size == 10 and reader.read(0, 20) == b"0123456789"


# --- the block limit ------------------------------------------------------------------


def test_no_block_over_the_limit(store: Blockstore) -> None:
    data = payload(5 * MIB + 123, seed=5)
    stored = store_bytes(store, data)
    sizes = {cid: store.size(cid) for cid in store}
    assert len(sizes) == 7  # six leaves and the root
    assert max(sizes.values()) <= BLOCK_LIMIT
    assert open_reader(store, stored.cid).read(0, len(data)) == data


def test_whole_file_may_exceed_the_limit(store: Blockstore) -> None:
    data = payload(2 * MIB, seed=9)
    stored = store_bytes(store, data, chunk_size=None)
    assert store.size(stored.cid) == 2 * MIB
    reader = open_reader(store, stored.cid)
    assert_random_reads(reader, data, count=50)


def test_a_chunked_file_loads_different_leaves_side_by_side_and_each_once() -> None:
    """The kernel's read-ahead asks for several leaves at once (from several threads): they load
    together, requests for one leaf share its load, and a failed load fails all who waited."""
    import threading
    import time

    from ipldmount.blocks import MemoryBlockstore

    store = MemoryBlockstore()
    data = payload(6 * MIB, seed=6)
    stored = store_bytes(store, data)
    reader = open_reader(store, stored.cid)
    assert isinstance(reader, FblReader)
    lock, loads, active, most = threading.Lock(), [], [0], [0]
    real_get = store.get
    leaves = {cid for cid, _ in fbl_entries(store, stored.cid)}

    def slow_get(cid: bytes) -> bytes:
        if cid in leaves:
            with lock:
                loads.append(cid)
                active[0] += 1
                most[0] = max(most[0], active[0])
            time.sleep(0.05)
            with lock:
                active[0] -= 1
        return real_get(cid)

    store.get = slow_get  # type: ignore[method-assign]
    results: dict[int, bytes] = {}
    offsets = [k * MIB + part * (MIB // 4) for k in range(6) for part in range(4)]
    threads = [
        threading.Thread(target=lambda o=o: results.__setitem__(o, reader.read(o, MIB // 4))) for o in offsets
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(results[o] == data[o : o + MIB // 4] for o in offsets)
    assert sorted(loads) == sorted(leaves), "each leaf loaded once"
    assert most[0] >= 2, "leaves load side by side"

    broken = open_reader(store, stored.cid)

    def failing_get(cid: bytes) -> bytes:
        time.sleep(0.05)
        raise CorruptBlockError("bad leaf")

    store.get = failing_get  # type: ignore[method-assign]
    errors: list[Exception] = []

    def read_first() -> None:
        try:
            broken.read(0, 10)
        except CorruptBlockError as exc:
            errors.append(exc)

    assert isinstance(broken, FblReader)
    waiters = [threading.Thread(target=read_first) for _ in range(3)]
    for thread in waiters:
        thread.start()
    for thread in waiters:
        thread.join()
    assert len(errors) == 3


# --- reading ahead on a local store ------------------------------------------------


class Hinted(MemoryBlockstore):
    """A local store that records what a reader says it will read soon, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.soon: list[bytes] = []

    def read_soon(self, wanted: Iterable[bytes]) -> None:
        self.soon.extend(wanted)


def test_a_reader_going_forward_names_its_next_leaves_once_each_ahead_of_need() -> None:
    store = Hinted()
    data = payload(20 * MIB + 5, seed=4)
    stored = store_bytes(store, data)
    leaves = [cid for cid, _ in _leaves_in_order(store, stored.cid)]
    reader = open_reader(store, stored.cid)
    step = 128 << 10
    for offset in range(0, len(data), step):
        if offset:  # the first read names what follows it
            wanted = leaves[: offset // MIB + 1]
            assert set(wanted) <= set(store.soon), f"leaf at {offset} read before it was named"
        assert reader.read(offset, step) == data[offset : offset + step]
        # the leaves of the READ_AHEAD bytes after the furthest read, and no further
        assert len(store.soon) <= -(-(offset + step + files.READ_AHEAD) // MIB)
    assert store.soon == leaves  # each once, in order: nothing named twice, nothing past the end


def test_a_reader_that_jumps_ahead_names_nothing() -> None:
    store = Hinted()
    data = payload(24 * MIB, seed=5)
    reader = open_reader(store, store_bytes(store, data).cid)
    assert reader.read(0, 100) == data[:100]
    named = list(store.soon)
    assert len(named) == files.READ_AHEAD // MIB + 1
    assert reader.read(20 * MIB, 100) == data[20 * MIB : 20 * MIB + 100]  # a jump: zarr's selection
    assert store.soon == named


def test_a_directory_store_takes_the_hint_for_held_missing_and_inline_blocks(tmp_path: Path) -> None:
    store = DirectoryBlockstore(tmp_path / "store")
    held = store.put(b"x" * 5000, cids.RAW)
    missing = cids.block_cid(cids.RAW, b"never stored")
    store.read_soon([held, missing, b"\x01garbage"])  # a hint: never an error
    assert store.get(held) == b"x" * 5000


def _leaves_in_order(store: Blockstore, cid: bytes) -> list[tuple[bytes, int]]:
    """The raw leaves of a stored file, depth first (file order)."""
    if cids.codec_of(cid) == cids.RAW:
        return [(cid, len(store.get(cid)))]
    return [leaf for child, _ in fbl_entries(store, cid) for leaf in _leaves_in_order(store, child)]
