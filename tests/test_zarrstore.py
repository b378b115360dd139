"""IPLDStore: zarr's store conformance suite, the seed README's doctest flow, and xarray round trips.

zarr's ``StoreTests`` is written for pytest-asyncio. The project also runs
pytest-trio, so asyncio is not switched on globally (auto mode would claim every
``async def`` test, trio ones included): this module marks its own coroutine
tests with ``@pytest.mark.asyncio`` and uses ``pytest_asyncio.fixture`` for the
async fixtures, which is what pytest-asyncio's default strict mode wants.
"""

from __future__ import annotations

import functools
import inspect
import io
import pickle
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import cbor2
import numpy as np
import pandas as pd
import pytest
import pytest_asyncio
import xarray as xr
import zarr.storage._common as zarr_common
from multiformats import CID
from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import Buffer, default_buffer_prototype
from zarr.core.buffer.cpu import Buffer as CPUBuffer
from zarr.core.sync import _collect_aiterator, sync
from zarr.testing.store import StoreTests

from ipldmount.adapters.zarr_store import IPLDStore
from ipldmount.blocks import Blockstore, DirectoryBlockstore, MemoryBlockstore, car, dag
from ipldmount.errors import BlockNotFoundError, CarError, FileTooLargeError, FormatError, ReadOnlyError
from ipldmount.format.files import BLOCK_LIMIT, MAX_FILE_SIZE
from ipldmount.ipld import cid as cids

SEED_DIR = Path(__file__).parent / "data" / "seed_example"
SEED_ROOT = "bafyreidn66mk3fktszrfwayonvpq6y3agtnb5e5o22ivof5tgikbxt7k6u"
SEED_CHUNK = "bafkreihc4ibtvz7btvualgou5mfbgwncwshmlovmoudgyml7x6crlhcu54"
SEED_CHUNK_BYTES = np.array([1, 2, 3], "<i8").tobytes()
# The root block exactly as the seed README's ``pprint(backend)`` shows it.
SEED_ROOT_BLOCK = (
    b"\xa3aa\xa3a0\xd8*X%\x00\x01U\x12 \xe2\xe2\x03:\xe7"
    b"\xe1\x9dh\x05\x99\xd4\xeb\n\x13Y\xa2\xb4"
    b"\x8e\xc5\xba\xacu\x06l1\x7f\xbf\x85\x15\x9cT\xefg.zar"
    b"ray\xa8edtypec<i8eorderaCeshape\x81\x03fchunk"
    b"s\x81\x03gfilters\xf6jcompressor\xf6jfill_value\xf6"
    b"kzarr_format\x02g.zattrs\xa1q_ARRAY_DIMENSIONS\x81aag"
    b".zattrs\xa0g.zgroup\xa1kzarr_format\x02"
)

READ_ONLY = "store was opened in read-only mode and does not support writing"

T = TypeVar("T")


def _buf(data: bytes) -> Buffer:
    return CPUBuffer.from_bytes(data)


def await_(awaitable: Coroutine[Any, Any, T]) -> T:
    """Run a store coroutine from a plain test, on zarr's own loop (as zarr's sync API does)."""
    return sync(awaitable)


async def _get_bytes(store: IPLDStore, key: str, byte_range: Any = None) -> bytes | None:
    value = await store.get(key, default_buffer_prototype(), byte_range=byte_range)
    return None if value is None else value.to_bytes()


# --- zarr's conformance suite ---------------------------------------------------------


def _mark_coroutine_tests_asyncio(cls: type[T]) -> type[T]:
    """Mark each inherited ``async def test_*`` for pytest-asyncio, leaving the sync ones unmarked.

    Each is wrapped in a new function, so the marks land on this class only and
    not on zarr's ``StoreTests`` (which would leak into any other subclass).
    """
    for name in dir(cls):
        func = getattr(cls, name)
        if name.startswith("test_") and inspect.iscoroutinefunction(func):

            def bind(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., Any]:
                @functools.wraps(test)
                async def wrapper(*args: Any, **kwargs: Any) -> None:
                    await test(*args, **kwargs)

                return pytest.mark.asyncio(wrapper)

            setattr(cls, name, bind(func))
    return cls


@_mark_coroutine_tests_asyncio
class TestStoreConformance(StoreTests[IPLDStore, CPUBuffer]):
    """zarr.testing.store.StoreTests over an on-disk blockstore."""

    store_cls = IPLDStore
    buffer_cls = CPUBuffer

    async def set(self, store: IPLDStore, key: str, value: Buffer) -> None:
        store.tree.write_file(key, value.to_bytes())

    async def get(self, store: IPLDStore, key: str) -> Buffer:
        return self.buffer_cls.from_bytes(store.tree.read_file(key))

    @pytest.fixture
    def store_kwargs(self, tmp_path: Path) -> dict[str, Any]:
        return {"blockstore": DirectoryBlockstore(tmp_path / "blocks")}

    # StoreTests declares these two as plain async fixtures (zarr runs pytest-asyncio in auto mode).
    @pytest_asyncio.fixture(loop_scope="function")
    async def store(self, open_kwargs: dict[str, Any]) -> IPLDStore:
        return await self.store_cls.open(**open_kwargs)

    @pytest_asyncio.fixture(loop_scope="function")
    async def store_not_open(self, store_kwargs: dict[str, Any]) -> IPLDStore:
        return self.store_cls(**store_kwargs)

    def test_store_repr(self, store: IPLDStore) -> None:
        assert repr(store) == f"IPLDStore({store.blockstore!r}, root=empty)"
        root = store.freeze()
        assert repr(store) == f"IPLDStore({store.blockstore!r}, root={root})"

    def test_store_supports_writes(self, store: IPLDStore) -> None:
        assert store.supports_writes
        assert store.supports_deletes

    def test_store_supports_listing(self, store: IPLDStore) -> None:
        assert store.supports_listing

    def test_sync_protocols_implemented(self, store: IPLDStore) -> None:
        """None of the suite's *_sync tests may skip: the store implements all three."""
        try:
            from zarr.abc.store import SupportsSyncStore
        except ImportError:  # zarr < 3.1.6 has no such protocol: check the methods themselves
            assert all(
                callable(getattr(store, name, None)) for name in ("get_sync", "set_sync", "delete_sync")
            )
        else:
            assert isinstance(store, SupportsSyncStore)


# --- the seed README, with today's API ----------------------------------------------


def _seed_files() -> dict[str, bytes]:
    tree = SEED_DIR / "tree"
    files = (path for path in tree.rglob("*") if path.is_file())
    return {path.relative_to(tree).as_posix(): path.read_bytes() for path in files}


async def _write_seed(store: IPLDStore) -> None:
    files = _seed_files()
    assert sorted(files) == [".zattrs", ".zgroup", "a/.zarray", "a/.zattrs", "a/0"]
    for key, data in files.items():
        await store.set(key, _buf(data))


@pytest.mark.asyncio
async def test_seed_doctest_flow() -> None:
    m = IPLDStore(MemoryBlockstore())
    await _write_seed(m)
    assert m.freeze() == SEED_ROOT

    archive = m.to_car()
    assert type(archive) is bytes
    assert len(archive) == 356
    assert archive == (SEED_DIR / "seed_example.car").read_bytes()

    new_backend = MemoryBlockstore()
    new_m = IPLDStore(new_backend)
    assert len(new_backend) == 0
    assert new_m.import_car(archive) is None  # as in the seed's doctest: no output
    assert new_m.root == SEED_ROOT
    assert new_m.freeze() == SEED_ROOT
    new_ds = xr.open_zarr(new_m, consolidated=False, chunks=None)
    np.testing.assert_array_equal(new_ds.a.values, [1, 2, 3])
    assert new_ds.a.dims == ("a",)


@pytest.mark.asyncio
async def test_seed_look_inside() -> None:
    backend = MemoryBlockstore()
    m = IPLDStore(backend)
    await _write_seed(m)
    assert m.freeze() == SEED_ROOT

    # Exactly two objects: the raw chunk and the root node with all metadata inlined.
    assert sorted(cids.cid_to_str(cid) for cid in backend) == [SEED_CHUNK, SEED_ROOT]
    rawdata = backend.get(cids.parse_cid(SEED_CHUNK))
    assert rawdata == SEED_CHUNK_BYTES
    np.testing.assert_array_equal(np.frombuffer(rawdata, "int"), [1, 2, 3])

    root_data = backend.get(cids.parse_cid(SEED_ROOT))
    assert root_data == SEED_ROOT_BLOCK
    root_object = cbor2.loads(root_data)
    link = root_object["a"]["0"]
    assert root_object == {
        ".zattrs": {},
        ".zgroup": {"zarr_format": 2},
        "a": {
            ".zarray": {
                "chunks": [3],
                "compressor": None,
                "dtype": "<i8",
                "fill_value": None,
                "filters": None,
                "order": "C",
                "shape": [3],
                "zarr_format": 2,
            },
            ".zattrs": {"_ARRAY_DIMENSIONS": ["a"]},
            "0": cbor2.CBORTag(
                42,
                b"\x00\x01U\x12 \xe2\xe2\x03:\xe7\xe1\x9dh\x05\x99\xd4\xeb\n\x13Y\xa2\xb4\x8e\xc5\xba\xacu"
                b"\x06l1\x7f\xbf\x85\x15\x9cT\xef",
            ),
        },
    }
    assert str(CID.decode(link.value[1:]).set(base="base32")) == SEED_CHUNK


@pytest.mark.asyncio
async def test_seed_reads_back_every_file_byte_for_byte() -> None:
    """Metadata is inlined as CBOR, yet reads back exactly as written, before and after reopening."""
    backend = MemoryBlockstore()
    store = IPLDStore(backend)
    await _write_seed(store)
    reopened = IPLDStore(backend, store.freeze(), read_only=True)
    for key, data in _seed_files().items():
        assert await _get_bytes(store, key) == data
        assert await _get_bytes(reopened, key) == data
        assert await reopened.getsize(key) == len(data)


def test_seed_import_car_from_stream_and_path() -> None:
    path = SEED_DIR / "seed_example.car"
    for source in (path, path.open("rb")):
        store = IPLDStore(MemoryBlockstore())
        store.import_car(source)
        assert store.root == SEED_ROOT
        assert store.root == SEED_ROOT
        assert store.tree.read_file("a/0") == SEED_CHUNK_BYTES
        if not isinstance(source, Path):
            source.close()


def test_whole_files_matches_seed_too() -> None:
    """Small files are one raw block either way, so whole_files gives the same root."""
    store = IPLDStore(MemoryBlockstore(), whole_files=True)
    for key, data in _seed_files().items():
        store.set_sync(key, _buf(data))
    assert store.freeze() == SEED_ROOT


# --- import_car edge cases -------------------------------------------------------------


def test_import_car_replaces_content_and_drops_unfrozen_writes() -> None:
    store = IPLDStore(MemoryBlockstore())
    store.set_sync("x/zarr.json", _buf(b"{}"))
    store.import_car((SEED_DIR / "seed_example.car").read_bytes())
    assert store.root == SEED_ROOT
    assert store.get_sync("x/zarr.json") is None
    assert store.freeze() == SEED_ROOT


def test_import_car_refuses_multiple_roots() -> None:
    source = IPLDStore(MemoryBlockstore())
    source.import_car((SEED_DIR / "seed_example.car").read_bytes())
    root = cids.parse_cid(SEED_ROOT)
    other = IPLDStore(source.blockstore)
    other.set_sync("b/zarr.json", _buf(b"{}"))
    other_root = cids.parse_cid(other.freeze())
    blocks = [*dag.iter_closure(source.blockstore, root), *dag.iter_closure(source.blockstore, other_root)]
    archive = _car_bytes([root, other_root], blocks)

    store = IPLDStore(MemoryBlockstore())
    with pytest.raises(ValueError, match="single root"):
        store.import_car(archive)
    assert store.root is None


def test_import_car_refuses_a_root_that_is_not_a_directory_and_keeps_the_store() -> None:
    data = b"just bytes"
    raw = cids.block_cid(cids.RAW, data)
    store = IPLDStore(MemoryBlockstore())
    store.set_sync("keep", _buf(b"me"))
    with pytest.raises(FormatError):
        store.import_car(_car_bytes([raw], [(raw, data)]))
    assert store.root is None
    assert store.get_sync("keep") is not None


def test_import_car_refuses_a_bad_archive() -> None:
    archive = (SEED_DIR / "seed_example.car").read_bytes()
    backend = MemoryBlockstore()
    store = IPLDStore(backend)
    with pytest.raises(CarError):
        store.import_car(archive[:-5])
    assert len(backend) == 0
    assert store.root is None


def test_read_only_store_refuses_import_car() -> None:
    store = IPLDStore(MemoryBlockstore(), read_only=True)
    with pytest.raises(ValueError, match=READ_ONLY):
        store.import_car((SEED_DIR / "seed_example.car").read_bytes())


def _car_bytes(roots: list[bytes], blocks: list[tuple[bytes, bytes]]) -> bytes:
    out = io.BytesIO()
    car.write_car(out, roots, blocks)
    return out.getvalue()


# --- xarray round trips ----------------------------------------------------------------


def _dataset() -> xr.Dataset:
    rng = np.random.default_rng(42)
    temperature = rng.standard_normal((4, 40, 30)).astype("float32")
    temperature[0, 0, :5] = np.nan
    return xr.Dataset(
        {
            "temperature": (("time", "x", "y"), temperature, {"units": "K", "long_name": "temperature"}),
            "count": (("x", "y"), rng.integers(-1000, 1000, (40, 30)).astype("int16")),
            "mask": ("x", np.arange(40) % 3 == 0),
            "level": ("time", np.array([1.5, 2.5, 3.5, 4.5])),
        },
        coords={
            "time": pd.date_range("2000-01-01", periods=4, freq="D"),
            "x": np.arange(40) * 0.25,
            "y": np.arange(30, dtype="int64"),
        },
        attrs={"title": "ipldmount round trip", "version": 3},
    )


def _encoding(ds: xr.Dataset, compressed: bool) -> dict[str, dict[str, Any]]:
    chunks = {"time": 2, "x": 16, "y": 7}
    encoding: dict[str, dict[str, Any]] = {}
    for name, variable in ds.variables.items():
        encoding[name] = {"chunks": tuple(chunks[dim] for dim in variable.dims)}
        if not compressed:
            encoding[name]["compressors"] = None
    return encoding


def _write(store: IPLDStore, ds: xr.Dataset, zarr_format: int, compressed: bool, **kwargs: Any) -> None:
    ds.to_zarr(
        store, zarr_format=zarr_format, encoding=_encoding(ds, compressed), consolidated=False, **kwargs
    )


@pytest.mark.parametrize("compressed", [True, False], ids=["compressed", "uncompressed"])
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_xarray_round_trip(tmp_path: Path, zarr_format: int, compressed: bool) -> None:
    ds = _dataset()
    store = IPLDStore(DirectoryBlockstore(tmp_path / "blocks"))
    _write(store, ds, zarr_format, compressed)
    root = store.freeze()
    assert root.startswith("bafy")

    # A fresh handle on the same on-disk blockstore, opened at the frozen root.
    reopened = IPLDStore(DirectoryBlockstore(tmp_path / "blocks"), root, read_only=True)
    assert reopened.root == root
    back = xr.open_zarr(reopened, consolidated=False, zarr_format=zarr_format, chunks=None).load()
    xr.testing.assert_identical(back, ds)
    # Chunking survived: temperature is split into time 2 x 16 x 7 chunks (3 x 5 along x and y).
    chunk_key = "temperature/1.2.4" if zarr_format == 2 else "temperature/c/1/2/4"
    assert await_(reopened.exists(chunk_key))


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_layout_of_a_written_dataset(zarr_format: int) -> None:
    """Directories nest as in the key space and chunks are links to raw blocks.

    zarr-python 3 indents its JSON by two and keeps insertion order, which no
    inlining rule renders back byte for byte, so its metadata files stay raw
    blocks (links) here; metadata in zarr-python 2's form is inlined (see the
    seed tests). Either way every file reads back exactly as zarr wrote it.
    """
    backend = MemoryBlockstore()
    store = IPLDStore(backend)
    _write(store, _dataset(), zarr_format, compressed=False)
    root = cbor2.loads(backend.get(cids.parse_cid(store.freeze())))
    if zarr_format == 2:
        assert {".zattrs", ".zgroup", "temperature", "count"} <= set(root)
        assert {".zarray", ".zattrs", "0.0", "2.4"} <= set(root["count"])
        metadata, chunk = root["count"][".zarray"], root["count"]["0.0"]
    else:
        assert {"zarr.json", "temperature", "count"} <= set(root)
        assert set(root["count"]) == {"zarr.json", "c"}
        metadata, chunk = root["count"]["zarr.json"], root["count"]["c"]["0"]["0"]
    assert isinstance(chunk, cbor2.CBORTag) and chunk.tag == 42
    assert cids.codec_of(chunk.value[1:]) == cids.RAW
    assert isinstance(metadata, dict | cbor2.CBORTag)
    assert (
        backend.get(chunk.value[1:])
        == store.get_sync("count/0.0" if zarr_format == 2 else "count/c/0/0").to_bytes()
    )


def test_consolidated_metadata_round_trip() -> None:
    ds = _dataset()
    store = IPLDStore(MemoryBlockstore())
    ds.to_zarr(store, zarr_format=2, consolidated=True)
    reopened = IPLDStore(store.blockstore, store.freeze(), read_only=True)
    assert reopened.tree.exists(".zmetadata")
    back = xr.open_zarr(reopened, consolidated=True, chunks=None).load()
    xr.testing.assert_identical(back, ds)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_same_dataset_same_root(zarr_format: int) -> None:
    """Chunks arrive in whatever order zarr's concurrent writes produce; the root does not care."""
    roots = set()
    for _ in range(3):
        store = IPLDStore(MemoryBlockstore())
        _write(store, _dataset(), zarr_format, compressed=True)
        roots.add(store.freeze())
    assert len(roots) == 1


def test_different_data_different_root() -> None:
    ds = _dataset()
    first, second = IPLDStore(MemoryBlockstore()), IPLDStore(MemoryBlockstore())
    _write(first, ds, 3, compressed=True)
    changed = ds.copy(deep=True)
    changed["count"][0, 0] += 1
    _write(second, changed, 3, compressed=True)
    assert first.freeze() != second.freeze()


def test_freeze_is_stable_and_tracks_changes() -> None:
    store = IPLDStore(MemoryBlockstore())
    _write(store, _dataset(), 3, compressed=True)
    root = store.freeze()
    assert store.freeze() == root
    store.set_sync("extra/zarr.json", _buf(b"{}"))
    changed = store.freeze()
    assert changed != root
    store.delete_sync("extra/zarr.json")
    assert store.freeze() == root  # the emptied directory is pruned, so the tree is as before


@pytest.mark.parametrize("blockstore", ["memory", "directory"])
def test_pickle_reopens_the_same_content(tmp_path: Path, blockstore: str) -> None:
    backend: Blockstore
    backend = MemoryBlockstore() if blockstore == "memory" else DirectoryBlockstore(tmp_path / "b")
    store = IPLDStore(backend)
    ds = _dataset()
    _write(store, ds, 3, compressed=True)  # not frozen: pickling commits first

    copy = pickle.loads(pickle.dumps(store))
    assert isinstance(copy, IPLDStore)
    assert copy.root == store.root is not None
    assert copy.read_only == store.read_only
    xr.testing.assert_identical(xr.open_zarr(copy, consolidated=False, chunks=None).load(), ds)
    if blockstore == "directory":
        assert copy == store  # same directory, same root

    read_only = pickle.loads(pickle.dumps(IPLDStore(backend, store.root, read_only=True)))
    assert read_only.read_only
    with pytest.raises(ValueError, match=READ_ONLY):
        read_only.set_sync("x", _buf(b"y"))


def test_append_along_a_dimension(tmp_path: Path) -> None:
    ds = _dataset()
    store = IPLDStore(DirectoryBlockstore(tmp_path / "b"))
    first, rest = ds.isel(time=slice(0, 2)), ds.isel(time=slice(2, None))
    _write(store, first, 3, compressed=True)
    rest.to_zarr(store, append_dim="time", consolidated=False)
    back = xr.open_zarr(IPLDStore(store.blockstore, store.freeze()), consolidated=False, chunks=None)
    xr.testing.assert_identical(back.load(), ds)


# --- byte ranges, sizes, listing, deleting ------------------------------------------------


BIG = np.random.default_rng(7).integers(0, 256, 3 * BLOCK_LIMIT + 12345, dtype=np.uint8).tobytes()


@pytest.mark.parametrize("whole_files", [False, True], ids=["chunked", "whole"])
@pytest.mark.asyncio
async def test_partial_reads_of_a_large_value(whole_files: bool) -> None:
    backend = MemoryBlockstore()
    store = IPLDStore(backend, whole_files=whole_files)
    await store.set("big/c/0", _buf(BIG))
    stores = [store, IPLDStore(backend, store.freeze(), read_only=True, whole_files=whole_files)]

    file_cid = stores[1].tree.describe(stores[1].tree.resolve("big/c/0")).cid
    assert file_cid is not None
    if whole_files:  # one raw block, as ipldstore stores it
        assert file_cid == cids.block_cid(cids.RAW, BIG)
    else:  # split into 1 MiB raw blocks under a dag-cbor node
        assert cids.codec_of(file_cid) == cids.DAG_CBOR
        assert len(backend) > 4

    size = len(BIG)
    cases = [
        (None, BIG),
        (RangeByteRequest(0, 10), BIG[:10]),
        (RangeByteRequest(BLOCK_LIMIT - 7, BLOCK_LIMIT + 9), BIG[BLOCK_LIMIT - 7 : BLOCK_LIMIT + 9]),
        (RangeByteRequest(10, 2 * BLOCK_LIMIT + 5), BIG[10 : 2 * BLOCK_LIMIT + 5]),
        (RangeByteRequest(size - 3, size + 100), BIG[-3:]),
        (RangeByteRequest(size + 10, size + 20), b""),
        (OffsetByteRequest(BLOCK_LIMIT * 3), BIG[BLOCK_LIMIT * 3 :]),
        (OffsetByteRequest(size), b""),
        (SuffixByteRequest(BLOCK_LIMIT + 1), BIG[-(BLOCK_LIMIT + 1) :]),
        (SuffixByteRequest(size + 5), BIG),
    ]
    for current in stores:
        for byte_range, expected in cases:
            assert await _get_bytes(current, "big/c/0", byte_range) == expected, byte_range
            assert current.get_sync("big/c/0", byte_range=byte_range).to_bytes() == expected
        partial = await current.get_partial_values(
            default_buffer_prototype(), [("big/c/0", byte_range) for byte_range, _ in cases]
        )
        assert [value.to_bytes() for value in partial] == [expected for _, expected in cases]
        assert await current.getsize("big/c/0") == size
        assert await current.getsize_prefix("big") == size


@pytest.mark.asyncio
async def test_get_of_a_missing_key_is_none_and_of_a_bad_range_raises() -> None:
    store = IPLDStore(MemoryBlockstore())
    await store.set("a/b", _buf(b"data"))
    assert await store.get("a/c", default_buffer_prototype()) is None
    assert await store.get("a", default_buffer_prototype()) is None  # a directory is no key
    assert await store.get("a/b/c", default_buffer_prototype()) is None  # nor is a path below a file
    with pytest.raises(TypeError, match="Unexpected byte_range"):
        await store.get("a/b", default_buffer_prototype(), byte_range=(0, 1))  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_getsize() -> None:
    backend = MemoryBlockstore()
    store = IPLDStore(backend)
    files = _seed_files()
    await _write_seed(store)
    reopened = IPLDStore(backend, store.freeze())
    for current in (store, reopened):
        for key, data in files.items():
            assert await current.getsize(key) == len(data)
        for missing in ("nope", "a", "a/0/x", ""):
            with pytest.raises(FileNotFoundError):
                await current.getsize(missing)
        in_a = sum(len(data) for key, data in files.items() if key.startswith("a/"))
        assert await current.getsize_prefix("a") == in_a


def test_list_dir() -> None:
    def listed(listing: Any) -> list[str]:
        return sorted(await_(_collect_aiterator(listing)))

    store = IPLDStore(MemoryBlockstore())
    _write(store, _dataset(), 2, compressed=True)
    reopened = IPLDStore(store.blockstore, store.freeze(), read_only=True)
    for current in (store, reopened):
        assert listed(current.list_dir("")) == sorted(
            [".zattrs", ".zgroup", "count", "level", "mask", "temperature", "time", "x", "y"]
        )
        assert listed(current.list_dir("mask/")) == [".zarray", ".zattrs", "0", "1", "2"]
        assert listed(current.list_dir("mask")) == [".zarray", ".zattrs", "0", "1", "2"]
        assert listed(current.list_dir("nothing")) == []
        assert listed(current.list_dir("mask/0")) == []  # a key, not a directory
        prefixed = listed(current.list_prefix("temperature/0."))
        assert prefixed == [f"temperature/0.{x}.{y}" for x in range(3) for y in range(5)]
        assert listed(current.list()) == listed(current.list_prefix(""))


@pytest.mark.asyncio
async def test_delete_dir_removes_a_tree_nested_deeper_than_python_recurses() -> None:
    store = IPLDStore(MemoryBlockstore())
    deep = "/".join(["d"] * 1_200)
    await store.set(f"top/{deep}/leaf", _buf(b"x"))
    await store.set("kept", _buf(b"k"))
    await store.delete_dir("top")
    assert sorted(await _collect_aiterator(store.list())) == ["kept"]


@pytest.mark.asyncio
async def test_delete_dir_prunes_back_to_the_same_tree() -> None:
    keys = {"x/zarr.json": b"{}", "x/c/0": b"0", "x/c/1": b"1", "xy/zarr.json": b"{}"}
    only_x = IPLDStore(MemoryBlockstore())
    for key, value in keys.items():
        await only_x.set(key, _buf(value))

    store = IPLDStore(MemoryBlockstore())
    for key, value in {**keys, "y/zarr.json": b"{}", "y/deep/c/0/0": b"00"}.items():
        await store.set(key, _buf(value))
    await store.delete_dir("y")
    assert not await store.exists("y/zarr.json")
    assert not await store.exists("y/deep/c/0/0")
    assert await _collect_aiterator(store.list_dir("y")) == ()
    assert store.freeze() == only_x.freeze()

    await store.delete_dir("x/c/")
    assert sorted(await _collect_aiterator(store.list())) == ["x/zarr.json", "xy/zarr.json"]
    await store.delete_dir("missing/prefix")  # nothing there: no error
    await store.delete_dir("x/zarr.json")  # a key, not a prefix: kept, as zarr's own stores do
    assert await store.exists("x/zarr.json")

    await store.clear()
    assert await store.is_empty("")
    assert store.freeze() == IPLDStore(MemoryBlockstore()).freeze()


def test_delete_dir_through_zarr_mode_w() -> None:
    """to_zarr(mode="w") clears the group first: the old variables must vanish."""
    store = IPLDStore(MemoryBlockstore())
    ds = _dataset()
    _write(store, ds, 3, compressed=True)
    smaller = ds[["mask"]]
    smaller.to_zarr(store, mode="w", consolidated=False)
    assert not await_(store.exists("temperature/zarr.json"))
    xr.testing.assert_identical(xr.open_zarr(store, consolidated=False, chunks=None).load(), smaller)


def test_missing_blocks_raise_instead_of_looking_empty(tmp_path: Path) -> None:
    """A lost block is an error, never an absent key or an empty listing."""
    backend = DirectoryBlockstore(tmp_path / "b")
    store = IPLDStore(backend)
    store.set_sync("g/sub/zarr.json", _buf(b'{"a": 1}'))
    store.set_sync("g/sub/c/0", _buf(b"chunk"))
    root = store.freeze()
    inner = cbor2.loads(backend.get(cids.parse_cid(root)))["g"]["sub"]["c"]["0"]
    backend.block_path(inner.value[1:]).unlink()

    reopened = IPLDStore(DirectoryBlockstore(tmp_path / "b"), root, read_only=True)
    with pytest.raises(BlockNotFoundError):
        reopened.get_sync("g/sub/c/0")
    with pytest.raises(BlockNotFoundError):
        await_(reopened.get("g/sub/c/0", default_buffer_prototype()))
    assert reopened.get_sync("g/sub/zarr.json") is not None  # the rest still reads


def test_missing_directory_block_raises_in_listings(tmp_path: Path) -> None:
    backend = DirectoryBlockstore(tmp_path / "b")
    store = IPLDStore(backend)
    # A directory node over 1 MiB is not inlined into its parent but linked (and sharded).
    for index in range(13_000):
        store.set_sync(f"g/c/{index:05d}-" + "x" * 60, _buf(b"v"))
    root = store.freeze()
    link = cbor2.loads(backend.get(cids.parse_cid(root)))["g"]["c"]
    assert isinstance(link, cbor2.CBORTag), "expected the big directory to be its own block"
    backend.block_path(link.value[1:]).unlink()

    reopened = IPLDStore(DirectoryBlockstore(tmp_path / "b"), root, read_only=True)
    for listing in (reopened.list_prefix("g/c/"), reopened.list_dir("g/c"), reopened.list()):
        with pytest.raises(BlockNotFoundError):
            await_(_collect_aiterator(listing))


# --- read-only stores and with_read_only --------------------------------------------------


@pytest.mark.asyncio
async def test_read_only_store_refuses_writes() -> None:
    backend = MemoryBlockstore()
    writer = IPLDStore(backend)
    await _write_seed(writer)
    store = IPLDStore(backend, writer.freeze(), read_only=True)
    assert store.read_only
    attempts = [
        store.set("a/1", _buf(b"x")),
        store.set_if_not_exists("a/1", _buf(b"x")),
        store.delete("a/0"),
        store.delete_dir("a"),
        store.clear(),
    ]
    for attempt in attempts:
        with pytest.raises(ValueError, match=READ_ONLY):
            await attempt
    with pytest.raises(ValueError, match=READ_ONLY):
        store.set_sync("a/1", _buf(b"x"))
    with pytest.raises(ValueError, match=READ_ONLY):
        store.delete_sync("a/0")
    with pytest.raises(ReadOnlyError):
        store.tree.write_file("a/1", b"x")
    with pytest.raises(ValueError):
        xr.Dataset({"b": ("b", [1])}).to_zarr(store, consolidated=False, mode="a")
    # Nothing changed, and reading still works.
    assert store.freeze() == SEED_ROOT
    assert store.get_sync("a/0").to_bytes() == SEED_CHUNK_BYTES
    np.testing.assert_array_equal(xr.open_zarr(store, consolidated=False, chunks=None).a.values, [1, 2, 3])


@pytest.mark.asyncio
async def test_with_read_only() -> None:
    backend = MemoryBlockstore()
    writer = IPLDStore(backend)
    await _write_seed(writer)

    reader = writer.with_read_only(True)  # commits the writer's changes first
    assert reader.read_only and not reader._is_open
    assert writer.root == reader.root == SEED_ROOT
    assert await _get_bytes(reader, "a/0") == SEED_CHUNK_BYTES
    with pytest.raises(ValueError, match=READ_ONLY):
        await reader.set("a/1", _buf(b"x"))
    await writer.set("a/2", _buf(b"w"))  # the writer stays writable; the reader keeps its root
    assert await _get_bytes(writer, "a/2") == b"w" and not await reader.exists("a/2")

    second = reader.with_read_only(False)
    assert not second.read_only
    await second.set("a/1", _buf(b"x"))
    assert await second.exists("a/1")
    # Each store has its own tree: the new key exists only where it was written, until frozen and opened.
    assert not await reader.exists("a/1")
    assert IPLDStore(backend, second.freeze()).get_sync("a/1") is not None


def test_open_zarr_on_a_writable_store_goes_through_with_read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    store = IPLDStore(MemoryBlockstore())
    ds = _dataset()
    _write(store, ds, 3, compressed=True)
    copies: list[IPLDStore] = []
    with_read_only = store.with_read_only

    def recording(read_only: bool = False) -> IPLDStore:
        copies.append(with_read_only(read_only))
        return copies[-1]

    monkeypatch.setattr(store, "with_read_only", recording)
    xr.testing.assert_identical(xr.open_zarr(store, consolidated=False, chunks=None).load(), ds)
    if "with_read_only" not in inspect.getsource(zarr_common):
        assert not copies  # older zarr (3.0.8, the oldest we support) opens the store as it is
        copies.append(store.with_read_only(True))
    assert copies and all(copy.read_only for copy in copies)  # zarr read through read-only copies
    copy = copies[0]
    # Both read the same: every key, every value.
    keys = sorted(sync(_collect_aiterator(store.list())))
    assert keys and sorted(sync(_collect_aiterator(copy.list()))) == keys
    for key in keys:
        assert copy.get_sync(key) == store.get_sync(key), key
    # The copy refuses writes; the store itself stays writable.
    with pytest.raises(ValueError, match=READ_ONLY):
        copy.set_sync("more/zarr.json", _buf(b"{}"))
    with pytest.raises(ValueError, match=READ_ONLY):
        copy.delete_sync(keys[0])
    store.set_sync("more/zarr.json", _buf(b"{}"))
    assert store.get_sync("more/zarr.json") == _buf(b"{}") and copy.get_sync("more/zarr.json") is None


# --- threads -------------------------------------------------------------------------------


def test_concurrent_sync_calls_from_threads() -> None:
    """zarr's loop thread and user threads may call in at once; the store serialises them."""
    store = IPLDStore(MemoryBlockstore())

    def work(index: int) -> bytes:
        key = f"t/c/{index % 7}/{index}"
        store.set_sync(key, _buf(str(index).encode() * 100))
        value = store.get_sync(key)
        assert value is not None
        return value.to_bytes()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(200)))
    assert results == [str(index).encode() * 100 for index in range(200)]

    expected = IPLDStore(MemoryBlockstore())
    for index in range(200):
        expected.set_sync(f"t/c/{index % 7}/{index}", _buf(str(index).encode() * 100))
    assert store.freeze() == expected.freeze()


# --- partial writes and holes ------------------------------------------------------------


@pytest.mark.asyncio
async def test_set_partial_values_writes_into_values_and_makes_holes() -> None:
    store = IPLDStore(MemoryBlockstore())
    await store.set("a/b", _buf(b"abcdef"))
    await store.set_partial_values(
        [("a/b", 2, b"XY"), ("a/b", 8, bytearray(b"Z")), ("new", 3, memoryview(b"!"))]
    )
    assert await _get_bytes(store, "a/b") == b"abXYef\0\0Z"
    assert await _get_bytes(store, "new") == b"\0\0\0!"
    written = IPLDStore(MemoryBlockstore())
    await written.set("a/b", _buf(b"abXYef\0\0Z"))
    await written.set("new", _buf(b"\0\0\0!"))
    assert store.freeze() == written.freeze()


def test_a_write_past_a_terabyte_is_a_hole() -> None:
    store = IPLDStore(MemoryBlockstore())
    store.set_range_sync("big", 1 << 40, b"end")
    assert len(store.blockstore) < 10, "a hole is one zero leaf and one node per level"
    assert await_(store.getsize("big")) == (1 << 40) + 3
    tail = store.get_sync("big", byte_range=OffsetByteRequest((1 << 40) - 2))
    assert tail is not None and tail.to_bytes() == b"\0\0end"
    with pytest.raises(FileTooLargeError):
        store.set_range_sync("big", MAX_FILE_SIZE, b"x")


def test_set_partial_values_on_a_read_only_store() -> None:
    store = IPLDStore(MemoryBlockstore(), read_only=True)
    with pytest.raises(ValueError, match="read-only"):
        await_(store.set_partial_values([("k", 0, b"x")]))
