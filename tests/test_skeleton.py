"""Opening a remote zarr hierarchy: its metadata fetched a tree level at a time (format.skeleton).

A store that records what it is asked for stands for a remote one: the walk must ask for every
block that opening the hierarchy reads, a level per request round, and never a chunk.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import zarr

from ipldmount.adapters.zarr_store import IPLDStore
from ipldmount.blocks import MemoryBlockstore
from ipldmount.format.skeleton import fetch_metadata_ahead
from ipldmount.ipld import cid as cids
from ipldmount.tree.model import Tree


class Recording(MemoryBlockstore):
    """A store that says it fetches missing blocks, and records each round of prefetches and each
    block read."""

    def __init__(self) -> None:
        super().__init__()
        self.rounds: list[list[bytes]] = []
        self.reads: set[bytes] = set()

    @property
    def fetches_missing(self) -> bool:
        return True

    def prefetch(self, wanted: Iterable[bytes], *, wait: bool = True) -> None:
        self.rounds.append(list(wanted))

    def get(self, cid: bytes) -> bytes:
        self.reads.add(cid)
        return super().get(cid)


def _meta(shape: list[int], chunks: list[int]) -> bytes:
    return json.dumps(
        {"chunks": chunks, "compressor": None, "dtype": "<f4", "fill_value": 0, "filters": None,
         "order": "C", "shape": shape, "zarr_format": 2}
    ).encode()  # fmt: skip


def _dataset(store: Recording, arrays: int, chunks: int, big_attrs: bool = False) -> bytes:
    """A group of *arrays* v2 arrays of *chunks* chunks each (enough to shard at 30,000)."""
    tree = Tree(store)
    tree.write_file(".zgroup", b'{"zarr_format": 2}')
    tree.write_file(".zattrs", json.dumps({"note": "x" * (300_000 if big_attrs else 10)}).encode())
    for a in range(arrays):
        tree.write_file(f"sub/v{a}/.zarray", _meta([chunks], [1]))
        tree.write_file(f"sub/v{a}/.zattrs", b'{"_ARRAY_DIMENSIONS": ["t"]}')
        for c in range(chunks):
            tree.write_file(f"sub/v{a}/{c}", c.to_bytes(4, "little"))
    tree.write_file("sub/.zgroup", b'{"zarr_format": 2}')
    return tree.commit()


def _chunk_blocks(chunks: int) -> set[bytes]:
    """The raw blocks of the chunks _dataset writes (the same in every array)."""
    return {cids.block_cid(cids.RAW, c.to_bytes(4, "little")) for c in range(chunks)}


def test_every_metadata_block_is_asked_for_a_level_at_a_time_and_no_chunk() -> None:
    store = Recording()
    root = _dataset(store, arrays=12, chunks=3000)
    store.reads.clear()
    fetch_metadata_ahead(store, root)
    asked = {cid for level in store.rounds for cid in level}
    walk_rounds = len(store.rounds)
    # What zarr itself then reads to open every array: all of it was asked for, in few rounds.
    store.reads.clear()
    group = zarr.open_group(IPLDStore(store, root, read_only=True), mode="r")
    for name in group["sub"].array_keys():
        assert group["sub"][name].shape == (3000,)
    assert store.reads <= asked, "zarr read blocks the walk did not ask for"
    assert walk_rounds <= 5  # root, sub, arrays (sharded: HAMT root), a HAMT level or two
    # Opening the tree asks again for what a plain directory links to (the store skips held
    # blocks); it asks for nothing the walk did not, and never a chunk.
    assert {cid for level in store.rounds for cid in level} <= asked
    assert not asked & _chunk_blocks(3000)


def test_a_metadata_file_too_big_to_inline_is_fetched_and_a_plain_chunk_directory_is_not() -> None:
    store = Recording()
    root = _dataset(store, arrays=2, chunks=40, big_attrs=True)
    fetch_metadata_ahead(store, root)
    asked = {cid for level in store.rounds for cid in level}
    attrs = Tree(store, root).read_file(".zattrs")
    assert cids.block_cid(cids.RAW, attrs) in asked
    assert not asked & _chunk_blocks(40)


def test_files_outside_arrays_are_not_fetched() -> None:
    """A group's own files (a README, a script) are bytes, not metadata: none is asked for."""
    store = Recording()
    tree = Tree(store)
    tree.write_file(".zgroup", b'{"zarr_format": 2}')
    tree.write_file("README", b"about this dataset " * 100)
    tree.write_file("big.bin", bytes(3 << 20))  # a chunked file: only its node may be read
    tree.write_file("sub/notes.txt", b"x" * 5000)
    root = tree.commit()
    fetch_metadata_ahead(store, root)
    asked = {cid for level in store.rounds for cid in level}
    metadata = cids.block_cid(cids.RAW, b'{"zarr_format": 2}')  # not zarr's rendering: a block
    assert {cid for cid in asked if cids.codec_of(cid) == cids.RAW} == {metadata}


def test_the_walk_stops_when_asked_and_at_its_bound() -> None:
    store = Recording()
    root = _dataset(store, arrays=3, chunks=10)
    assert fetch_metadata_ahead(store, root, stop=lambda: True) == 0
    assert store.rounds == []


def test_a_walk_over_broken_blocks_gives_up_quietly() -> None:
    """A block that cannot be read is its reader's to report: the walk skips it."""
    store = Recording()
    missing = cids.block_cid(cids.DAG_CBOR, b"\xa0")  # never stored
    assert fetch_metadata_ahead(store, missing) == 1
    garbage = store.put(b"\xff\xff", cids.DAG_CBOR)
    assert fetch_metadata_ahead(store, garbage) == 1


def test_in_a_sharded_array_only_the_metadata_lookup_paths_are_asked_for() -> None:
    store = Recording()
    root = _dataset(store, arrays=1, chunks=30_000)  # sharded: a HAMT of 30,000 names
    fetch_metadata_ahead(store, root)
    asked = {cid for level in store.rounds for cid in level}
    store.reads.clear()
    array = zarr.open_group(IPLDStore(store, root, read_only=True), mode="r")["sub/v0"]
    assert array.attrs["_ARRAY_DIMENSIONS"] == ["t"] and array.shape == (30_000,)
    assert store.reads <= asked
    assert len(asked) < 20  # a few HAMT nodes, not the hundreds of the directory
    assert not asked & _chunk_blocks(30_000)
