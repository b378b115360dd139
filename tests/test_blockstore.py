"""The blockstore contract, for both implementations and for a store that fetches into either,
plus what only the on-disk store promises."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import pickle
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipldmount.blocks import (
    Blockstore,
    DirectoryBlockstore,
    MemoryBlockstore,
    NotAStoreError,
    default_store_path,
)
from ipldmount.blocks import directory as blockstore_module
from ipldmount.errors import (
    BlockNotFoundError,
    CorruptBlockError,
    InvalidCIDError,
    RemoteError,
    StoreFullError,
)
from ipldmount.ipld.cid import DAG_CBOR, DAG_PB, RAW, block_cid, cid_to_str
from ipldmount.remote.fetching import BlockFetcher, FetchingBlockstore


class Boom(Exception):
    pass


class Nowhere:
    """A source that has no block at all: a store fetching from it keeps the contract to the letter."""

    def get_block(self, cid: bytes) -> bytes:
        raise RemoteError(f"nowhere has {cid_to_str(cid)}")


@pytest.fixture(params=["memory", "directory", "fetching into memory", "fetching into directory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Blockstore]:
    """An empty blockstore (conftest's), or a FetchingBlockstore over one (overrides conftest's)."""
    kind = request.param
    local = MemoryBlockstore() if kind.endswith("memory") else DirectoryBlockstore(tmp_path / "store")
    if not kind.startswith("fetching"):
        yield local
        return
    with FetchingBlockstore(local, BlockFetcher([Nowhere()])) as fetching:
        yield fetching


def local_of(store: Blockstore) -> Blockstore:
    """The store that holds the blocks: *store*, or the one a fetching store keeps them in."""
    return store.local if isinstance(store, FetchingBlockstore) else store


def temp_files(store: Blockstore) -> list[str]:
    """Leftover temporaries of an on-disk store (none for a memory store)."""
    local = local_of(store)
    if isinstance(local, DirectoryBlockstore):
        return os.listdir(local.root / "tmp")
    return []


def chunks_of(data: bytes, size: int) -> Iterator[memoryview]:
    view = memoryview(data)
    for start in range(0, len(data), size):
        yield view[start : start + size]


# --- the contract, on both stores ------------------------------------------------


def test_put_get_has_size_read(store: Blockstore) -> None:
    data = b"hello, blocks"
    cid = store.put(data, RAW)
    assert cid == block_cid(RAW, data)
    assert store.has(cid)
    assert store.get(cid) == data
    assert store.size(cid) == len(data)
    assert store.read(cid, 7, 3) == b"blo"
    assert store.read(cid, 7, 1000) == b"blocks"  # short read at the end
    assert store.read(cid, 1000, 5) == b""
    assert store.read(cid, 0, 0) == b""


def test_empty_block(store: Blockstore) -> None:
    cid = store.put(b"", RAW)
    assert store.get(cid) == b""
    assert store.size(cid) == 0


def test_dag_cbor_codec_gives_its_own_cid(store: Blockstore) -> None:
    data = b"\xa0"  # the empty map
    assert store.put(data, DAG_CBOR) == block_cid(DAG_CBOR, data)
    assert store.put(data, RAW) != block_cid(DAG_CBOR, data)
    assert len(store) == 2


def test_read_rejects_negative_range(store: Blockstore) -> None:
    cid = store.put(b"abc", RAW)
    with pytest.raises(ValueError):
        store.read(cid, -1, 2)
    with pytest.raises(ValueError):
        store.read(cid, 0, -2)


def test_missing_block(store: Blockstore) -> None:
    cid = block_cid(RAW, b"never stored")
    assert not store.has(cid)
    for call in (lambda: store.get(cid), lambda: store.size(cid), lambda: store.read(cid, 0, 1)):
        with pytest.raises(BlockNotFoundError, match=cid_to_str(cid)):
            call()


def test_unsupported_cid_is_simply_absent(store: Blockstore) -> None:
    dag_pb = bytes([0x01, 0x70, 0x12, 0x20]) + bytes(32)
    assert not store.has(dag_pb)
    assert not store.has(b"")
    with pytest.raises(BlockNotFoundError):
        store.get(dag_pb)


def test_put_is_idempotent(store: Blockstore) -> None:
    first = store.put(b"same", RAW)
    assert store.put(b"same", RAW) == first
    assert list(store) == [first]
    assert len(store) == 1


def test_put_rejects_an_unknown_codec(store: Blockstore) -> None:
    with pytest.raises(InvalidCIDError, match="codec"):
        store.put(b"x", 0x70)
    with pytest.raises(InvalidCIDError):
        store.put_stream([b"x"], 0x70)
    assert list(store) == []


def test_put_block_accepts_a_correct_block(store: Blockstore) -> None:
    cid = block_cid(DAG_CBOR, b"\x80")
    store.put_block(cid, b"\x80")
    store.put_block(cid, b"\x80")  # idempotent too
    assert store.get(cid) == b"\x80"


def test_put_block_rejects_a_wrong_hash(store: Blockstore) -> None:
    cid = block_cid(RAW, b"the real bytes")
    with pytest.raises(CorruptBlockError, match=cid_to_str(cid)):
        store.put_block(cid, b"other bytes")
    assert not store.has(cid)
    assert list(store) == []


@pytest.mark.parametrize(
    "cid",
    [
        bytes([0x12, 0x20]) + bytes(32),  # CIDv0 (dag-pb)
        bytes([0x01, 0x78, 0x12, 0x20]) + bytes(32),  # CIDv1 git-raw
        bytes([0x01, 0x55, 0x13, 0x40]) + bytes(64),  # sha2-512
        b"",
    ],
)
def test_put_block_rejects_unsupported_cids(store: Blockstore, cid: bytes) -> None:
    with pytest.raises(InvalidCIDError):
        store.put_block(cid, b"")
    assert list(store) == []


def test_a_dag_pb_block_is_kept_like_any_other(store: Blockstore) -> None:
    block = b"\x0a\x02\x08\x01"  # UnixFS: an empty directory
    cid = block_cid(DAG_PB, block)
    store.put_block(cid, block)
    assert store.get(cid) == block and list(store) == [cid]


def test_an_identity_cid_is_its_own_block(store: Blockstore) -> None:
    cid = bytes([0x01, RAW, 0x00, 0x03]) + b"abc"
    assert store.has(cid) and store.get(cid) == b"abc" and store.read(cid, 1, 5) == b"bc"
    assert store.size(cid) == 3 and list(store) == []


def test_iteration_lists_every_block(store: Blockstore) -> None:
    cids = {store.put(bytes([i]) * i, RAW) for i in range(50)}
    assert set(store) == cids
    assert len(store) == 50


def test_an_empty_store_is_truthy(store: Blockstore) -> None:
    assert store
    assert len(store) == 0


def test_put_stream_equals_put(store: Blockstore) -> None:
    data = os.urandom(5 * 1024 * 1024)
    streamed = store.put_stream(chunks_of(data, 65536))
    assert streamed == block_cid(RAW, data)
    assert store.get(streamed) == data
    assert store.size(streamed) == len(data)
    assert store.read(streamed, 3 * 1024 * 1024, 10) == data[3 * 1024 * 1024 : 3 * 1024 * 1024 + 10]
    assert store.put(data, RAW) == streamed
    assert list(store) == [streamed]
    assert temp_files(store) == []


def test_put_stream_of_an_existing_block(store: Blockstore) -> None:
    cid = store.put(b"abcdef", DAG_CBOR)
    assert store.put_stream([b"abc", b"", bytearray(b"def")], DAG_CBOR) == cid
    assert list(store) == [cid]
    assert temp_files(store) == []


def test_put_stream_failing_midway_keeps_nothing(store: Blockstore) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"part one"
        raise Boom

    with pytest.raises(Boom):
        store.put_stream(chunks())
    assert list(store) == []
    assert temp_files(store) == []


def test_sync(store: Blockstore, monkeypatch: pytest.MonkeyPatch) -> None:
    """sync() is what fsync relies on: a directory store flushes its own filesystem, once."""
    flushed: list[Path] = []
    monkeypatch.setattr(blockstore_module, "_sync_filesystem", flushed.append)
    cid = store.put(b"x", RAW)
    store.sync()
    assert store.get(cid) == b"x"
    local = local_of(store)
    if isinstance(local, DirectoryBlockstore):
        assert flushed == [local.root]
    else:
        assert flushed == []  # nothing on disk to flush


# --- batches ----------------------------------------------------------------------


def test_batch_commits_on_normal_exit(store: Blockstore) -> None:
    with store.batch():
        first = store.put(b"one", RAW)
        second = store.put_stream([b"tw", b"o"])
        assert store.has(first) and store.get(second) == b"two"  # visible to the batch itself
        assert store.read(first, 1, 5) == b"ne"
        assert store.size(second) == 3
        assert set(store) == {first, second}
    assert set(store) == {first, second}
    assert store.get(first) == b"one"
    assert temp_files(store) == []


def test_batch_rolls_back_on_exception(store: Blockstore) -> None:
    kept = store.put(b"before", RAW)
    with pytest.raises(Boom), store.batch():
        store.put(b"one", RAW)
        store.put_stream([b"two"])
        store.put_block(block_cid(RAW, b"three"), b"three")
        store.put(b"before", RAW)  # already stored: must survive the rollback
        raise Boom
    assert list(store) == [kept]
    assert not store.has(block_cid(RAW, b"one"))
    assert temp_files(store) == []


def test_nested_batches_join_the_outer_one(store: Blockstore) -> None:
    with pytest.raises(Boom), store.batch():
        with store.batch():
            store.put(b"inner", RAW)
        assert store.has(block_cid(RAW, b"inner"))
        raise Boom
    assert list(store) == []

    with store.batch():
        try:
            with store.batch():
                store.put(b"inner", RAW)
                raise Boom
        except Boom:
            pass
        store.put(b"outer", RAW)
    assert set(store) == {block_cid(RAW, b"inner"), block_cid(RAW, b"outer")}


def test_a_batch_can_be_reused_after_rollback(store: Blockstore) -> None:
    with pytest.raises(Boom), store.batch():
        store.put(b"a", RAW)
        raise Boom
    with store.batch():
        cid = store.put(b"a", RAW)
    assert list(store) == [cid]


def test_staged_blocks_are_private_to_the_batch_thread(store: Blockstore) -> None:
    seen: list[bool] = []
    cid = block_cid(RAW, b"staged")
    with store.batch():
        store.put(b"staged", RAW)
        thread = threading.Thread(target=lambda: seen.append(store.has(cid)))
        thread.start()
        thread.join()
    assert seen == [False]
    assert store.has(cid)


def test_puts_of_other_threads_survive_a_rollback(store: Blockstore) -> None:
    with pytest.raises(Boom), store.batch():
        thread = threading.Thread(target=lambda: store.put(b"other thread", RAW))
        thread.start()
        thread.join()
        raise Boom
    assert store.has(block_cid(RAW, b"other thread"))


# --- the memory store ---------------------------------------------------------------


def test_memory_store_pickles_its_blocks() -> None:
    store = MemoryBlockstore()
    cid = store.put(b"kept", RAW)
    copy = pickle.loads(pickle.dumps(store))
    assert copy.get(cid) == b"kept"
    with copy.batch():
        copy.put(b"new", RAW)
    assert len(copy) == 2 and len(store) == 1


# --- the directory store --------------------------------------------------------------


def test_layout_is_flatfs_next_to_last_2(tmp_path: Path) -> None:
    store = DirectoryBlockstore(tmp_path / "s")
    cid = store.put(b"layout", RAW)
    name = cid_to_str(cid)
    path = tmp_path / "s" / "blocks" / name[-3:-1] / name
    assert store.block_path(cid) == path
    assert path.read_bytes() == b"layout"
    marker = json.loads((tmp_path / "s" / "STORE").read_text())
    assert marker == {"format": "ipldmount-blockstore", "version": 1}
    assert os.listdir(tmp_path / "s" / "tmp") == []


def test_an_existing_block_is_not_rewritten(tmp_path: Path) -> None:
    store = DirectoryBlockstore(tmp_path)
    cid = store.put(b"once", RAW)
    before = os.stat(store.block_path(cid))
    store.put(b"once", RAW)
    store.put_block(cid, b"once")
    assert os.stat(store.block_path(cid)).st_ino == before.st_ino


def test_corruption_on_disk_is_detected(tmp_path: Path) -> None:
    store = DirectoryBlockstore(tmp_path)
    cid = store.put(b"pristine", RAW)
    store.block_path(cid).write_bytes(b"tampered")
    with pytest.raises(CorruptBlockError, match=cid_to_str(cid)):
        store.get(cid)
    assert store.read(cid, 0, 3) == b"tam"  # unverified reads see the bytes as they are


def test_blocks_persist_across_handles(tmp_path: Path) -> None:
    cid = DirectoryBlockstore(tmp_path).put(b"durable", RAW)
    reopened = DirectoryBlockstore(tmp_path)
    assert reopened.get(cid) == b"durable"
    assert list(reopened) == [cid]


def test_another_handle_sees_a_batch_only_after_commit(tmp_path: Path) -> None:
    writer, reader = DirectoryBlockstore(tmp_path), DirectoryBlockstore(tmp_path)
    with writer.batch():
        cid = writer.put(b"batched", RAW)
        assert not reader.has(cid)
        assert list(reader) == []
    assert reader.get(cid) == b"batched"


def test_stray_files_are_not_listed(tmp_path: Path) -> None:
    store = DirectoryBlockstore(tmp_path)
    cid = store.put(b"real", RAW)
    (store.block_path(cid).parent / "notes.txt").write_text("hi")
    assert list(store) == [cid]


def test_batch_commit_syncs_the_filesystem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = DirectoryBlockstore(tmp_path)
    calls: list[Path] = []
    monkeypatch.setattr(blockstore_module, "_sync_filesystem", calls.append)
    fsyncs: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        fsyncs.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    with store.batch():
        cids = [store.put(bytes([i]), RAW) for i in range(20)]
        assert calls == []
    assert calls == [tmp_path, tmp_path]
    shards = {store.block_path(cid).parent for cid in cids}
    # never per block file, nor per new shard folder: the two syncfs calls cover the renames
    assert len(fsyncs) <= len(shards) and fsyncs == []
    assert len(store) == 20


def test_syncfs_works_here(tmp_path: Path) -> None:
    """The real syncfs(2) is found and accepts a store's folder (else sync() would fall back to sync(2))."""
    assert blockstore_module._SYNCFS is not None, "syncfs not found in libc"
    blockstore_module._sync_filesystem(tmp_path)  # raises OSError if syncfs fails
    with pytest.raises(OSError) as caught:
        blockstore_module._sync_filesystem(tmp_path / "missing")
    assert caught.value.errno == errno.ENOENT


def test_directory_store_pickles_as_its_path(tmp_path: Path) -> None:
    store = DirectoryBlockstore(tmp_path)
    cid = store.put(b"pickled", RAW)
    copy = pickle.loads(pickle.dumps(store))
    assert copy == store and hash(copy) == hash(store)
    assert copy.get(cid) == b"pickled"
    assert store != DirectoryBlockstore(tmp_path / "other")
    assert store != MemoryBlockstore()


# --- opening ------------------------------------------------------------------------


def test_new_directories_are_created(tmp_path: Path) -> None:
    DirectoryBlockstore(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b" / "STORE").is_file()


def test_concurrent_creation_of_one_store(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            DirectoryBlockstore(tmp_path / "new").put(b"x", RAW)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(os.listdir(tmp_path / "new")) == ["STORE", "blocks", "gc.lock", "leases", "tmp"]


def test_an_empty_directory_becomes_a_store(tmp_path: Path) -> None:
    DirectoryBlockstore(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["STORE", "blocks", "tmp"]


def test_a_store_may_hold_other_things_beside_blocks(tmp_path: Path) -> None:
    """Mount state lives in the same folder: reopening neither refuses nor touches it."""
    cid = DirectoryBlockstore(tmp_path).put(b"kept", RAW)
    (tmp_path / "mounts").mkdir()
    (tmp_path / "mounts" / "journal").write_text("state")
    again = DirectoryBlockstore(tmp_path)
    assert again.get(cid) == b"kept" and list(again) == [cid]
    assert (tmp_path / "mounts" / "journal").read_text() == "state"


def test_a_foreign_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(NotAStoreError, match="not an ipldmount blockstore"):
        DirectoryBlockstore(tmp_path)
    assert os.listdir(tmp_path) == ["thesis.tex"]


def test_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotAStoreError, match="not a directory"):
        DirectoryBlockstore(tmp_path / "f")


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ('{"format": "something-else", "version": 1}', "not an ipldmount blockstore"),
        ('{"format": "ipldmount-blockstore", "version": 2}', "version 2"),
        ("garbage{", "marker"),
    ],
)
def test_a_wrong_marker_is_refused(tmp_path: Path, marker: str, message: str) -> None:
    (tmp_path / "STORE").write_text(marker)
    with pytest.raises(NotAStoreError, match=message):
        DirectoryBlockstore(tmp_path)


def test_stale_temp_files_are_removed_on_open(tmp_path: Path) -> None:
    DirectoryBlockstore(tmp_path)
    stale, fresh = tmp_path / "tmp" / "1-dead.tmp", tmp_path / "tmp" / "2-live.tmp"
    not_ours = tmp_path / "tmp" / "someone-elses"
    for path in (stale, fresh, not_ours):
        path.write_bytes(b"data")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(stale, (two_days_ago, two_days_ago))
    os.utime(not_ours, (two_days_ago, two_days_ago))
    DirectoryBlockstore(tmp_path)
    assert sorted(os.listdir(tmp_path / "tmp")) == ["2-live.tmp", "someone-elses"]


def test_temp_files_of_dead_writers_are_removed_at_once(tmp_path: Path) -> None:
    """A killed import leaves fresh temps; the next open removes them (its pid is gone), not ours."""
    DirectoryBlockstore(tmp_path)
    writer = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead_pid = int(writer.stdout)
    dead = tmp_path / "tmp" / f"{dead_pid}-0123456789abcdef.tmp"
    ours = tmp_path / "tmp" / f"{os.getpid()}-0123456789abcdef.tmp"
    for path in (dead, ours):
        path.write_bytes(b"half a block")
    DirectoryBlockstore(tmp_path)
    assert os.listdir(tmp_path / "tmp") == [ours.name]


def test_a_new_store_is_private(tmp_path: Path) -> None:
    store = DirectoryBlockstore(tmp_path / "new")
    cid = store.put(b"secret", RAW)
    for path in [store.root, *store.root.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is {mode:o}"
    assert stat.S_IMODE(store.block_path(cid).stat().st_mode) == 0o600


def test_a_store_folder_made_shared_by_its_owner_stays_shared(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    root.mkdir(mode=0o750)
    root.chmod(0o750)
    store = DirectoryBlockstore(root)
    cid = store.put(b"for the group", RAW)
    assert stat.S_IMODE(store.block_path(cid).parent.stat().st_mode) == 0o750
    assert stat.S_IMODE(store.block_path(cid).stat().st_mode) == 0o640


def test_default_store_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IPLDMOUNT_STORE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_store_path() == tmp_path / "explicit"
    monkeypatch.delenv("IPLDMOUNT_STORE")
    assert default_store_path() == tmp_path / "xdg" / "ipldmount"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/is/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_store_path() == tmp_path / "home" / ".local" / "share" / "ipldmount"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_store_path() == tmp_path / "home" / ".local" / "share" / "ipldmount"


# --- a full disk ------------------------------------------------------------------------


@pytest.fixture(params=[errno.ENOSPC, errno.EDQUOT])
def full_disk(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every os.write fails as on a full disk (or exhausted quota)."""
    code = request.param

    def failing_write(fd: int, data: object) -> int:
        raise OSError(code, os.strerror(code))

    with monkeypatch.context() as patch:
        patch.setattr(os, "write", failing_write)
        yield


def test_put_on_a_full_disk(tmp_path: Path, full_disk: None) -> None:
    store = DirectoryBlockstore(tmp_path)
    with pytest.raises(StoreFullError, match="full"):
        store.put(b"too much", RAW)
    assert list(store) == []
    assert temp_files(store) == []


def test_put_stream_on_a_full_disk(tmp_path: Path, full_disk: None) -> None:
    store = DirectoryBlockstore(tmp_path)
    with pytest.raises(StoreFullError):
        store.put_stream([b"a", b"b"])
    assert temp_files(store) == []


def test_batch_on_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = DirectoryBlockstore(tmp_path)
    real_write = os.write
    writes = 0

    def write_then_fill_up(fd: int, data: bytes) -> int:
        nonlocal writes
        writes += 1
        if writes > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write_then_fill_up)
    with pytest.raises(StoreFullError), store.batch():
        for i in range(10):
            store.put(bytes([i]), RAW)
    monkeypatch.undo()
    assert list(store) == []
    assert temp_files(store) == []


def test_fsync_on_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = DirectoryBlockstore(tmp_path)

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(StoreFullError):
        store.put(b"delayed allocation", RAW)
    monkeypatch.undo()
    assert list(store) == []
    assert temp_files(store) == []


def test_batch_commit_on_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = DirectoryBlockstore(tmp_path)

    def failing_rename(source: object, target: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StoreFullError), store.batch():
        store.put(b"a", RAW)
        store.put(b"b", RAW)
        monkeypatch.setattr(os, "rename", failing_rename)
    monkeypatch.undo()
    assert list(store) == []
    assert temp_files(store) == []


def test_other_os_errors_pass_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = DirectoryBlockstore(tmp_path)

    def failing_write(fd: int, data: object) -> int:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "write", failing_write)
    with pytest.raises(OSError) as caught:
        store.put(b"x", RAW)
    monkeypatch.undo()
    assert caught.value.errno == errno.EIO
    assert temp_files(store) == []


# --- several processes on one store ----------------------------------------------------


def _shared_block(i: int) -> bytes:
    return f"shared block {i}".encode() * (i % 7 + 1)


def _own_block(worker: int, i: int) -> bytes:
    return f"worker {worker} block {i}".encode()


def _put_many(root: str, worker: int, count: int, batched: bool) -> None:
    store = DirectoryBlockstore(Path(root))
    for i in range(count):
        if batched and i % 10 == 0:
            with store.batch():
                store.put(_shared_block(i), RAW)
                store.put(_own_block(worker, i), RAW)
        else:
            store.put(_shared_block(i), RAW)
            store.put_stream(chunks_of(_own_block(worker, i), 5))


def test_processes_share_a_store(tmp_path: Path) -> None:
    count, workers = 200, 4
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_put_many, args=(str(tmp_path), worker, count, worker % 2 == 1))
        for worker in range(workers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    store = DirectoryBlockstore(tmp_path)
    expected = {block_cid(RAW, _shared_block(i)) for i in range(count)}
    expected |= {block_cid(RAW, _own_block(w, i)) for w in range(workers) for i in range(count)}
    assert set(store) == expected
    for cid in expected:
        store.get(cid)  # verifies every block is complete
    assert temp_files(store) == []


@pytest.mark.parametrize("how", ["put", "staging", "batch"])
def test_an_empty_block_file_left_by_a_crash_is_written_again(tmp_path: Path, how: str) -> None:
    """A block renamed into place without an fsync can be an empty file after a machine crash
    (its bytes never reached the disk). Writing the same bytes again must not trust it."""
    store = DirectoryBlockstore(tmp_path / "store", durable=False)
    data = b"bytes a crash cut short"
    cid = block_cid(RAW, data)
    path = store.block_path(cid)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")  # what the crash left
    assert not store.has(cid), "an empty file is not the block: a pull must fetch it again"
    if how == "put":
        assert store.put(data, RAW) == cid
    elif how == "staging":
        staging = store.staging()
        staging.put(data, RAW)
        staging.commit()
    else:
        with store.batch():
            store.put(data, RAW)
    assert path.read_bytes() == data
    assert store.get(cid) == data


@pytest.mark.parametrize("codec", [RAW, DAG_PB])  # an empty dag-pb node encodes to no bytes
def test_the_empty_block_is_kept_as_an_empty_file(tmp_path: Path, codec: int) -> None:
    store = DirectoryBlockstore(tmp_path / "store", durable=False)
    cid = block_cid(codec, b"")
    store.put_block(cid, b"")  # as a CAR import stores a dag-pb block
    assert store.has(cid) and store.claim(cid) and store.get(cid) == b""
