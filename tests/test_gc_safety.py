"""gc's safety argument, attacked without a mount: a damaged history, roots a collection let go,
freezes racing writers, in-process stores in other processes, and a writer that finishes while
gc reads what to keep. Each test names the defect it stands for (README, "Why gc never takes
what is needed")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zarr
from fuse_helpers import assert_one_line_error, check, cli

from ipldmount.adapters.zarr_store import IPLDStore
from ipldmount.blocks import DirectoryBlockstore
from ipldmount.blocks.dag import iter_closure
from ipldmount.errors import BlockNotFoundError
from ipldmount.ipld import cid as cids
from ipldmount.repo import retention
from ipldmount.repo.home import StoreHome
from ipldmount.repo.registry import HistoryDamagedError
from ipldmount.repo.retention import Retention, collect

pytest_plugins = ("fuse_helpers",)


def age_blocks(store: Path, seconds: float = 3600) -> None:
    then = time.time() - seconds
    for shard in (store / "blocks").iterdir():
        for block in shard.iterdir():
            os.utime(block, (then, then))


def missing_blocks(store: DirectoryBlockstore, root: str) -> int:
    """How many blocks under *root* the store lacks (0: the root reads back whole)."""
    missing = 0
    try:
        for cid, _ in iter_closure(store, cids.parse_cid(root)):
            if not store.has(cid):
                missing += 1
    except BlockNotFoundError:
        missing += 1
    return missing


def frozen_versions(path: Path, count: int) -> list[str]:
    """*count* roots, each frozen by an in-process store, each with blocks of its own."""
    roots = []
    store = IPLDStore(DirectoryBlockstore(path))
    for index in range(count):
        store.set_sync(f"v/{index}", _buffer(os.urandom(20_000)))
        roots.append(store.freeze())
    store.close()  # as if its process had ended
    return roots


def _buffer(data: bytes) -> zarr.core.buffer.Buffer:
    return zarr.core.buffer.default_buffer_prototype().buffer.from_bytes(data)


# --- a damaged history: refuse, say how to mend, lose nothing -------------------------------------


def _damage_nul(log: Path) -> None:
    data = bytearray(log.read_bytes())
    data[20:23] = b"\0\0\0"
    log.write_bytes(bytes(data))


def _damage_cid_character(log: Path) -> None:
    lines = log.read_bytes().splitlines(keepends=True)
    record = json.loads(lines[0])
    root = record["root"]
    changed = root[:-1] + ("a" if root[-1] != "a" else "b")
    lines[0] = lines[0].replace(root.encode(), changed.encode())
    log.write_bytes(b"".join(lines))


def _damage_truncate(log: Path) -> None:
    data = log.read_bytes()
    cut = data.rstrip(b"\n").rfind(b"\n") + 1  # at a line boundary: the last record is gone whole
    log.write_bytes(data[:cut])


def _damage_tear(log: Path) -> None:
    data = log.read_bytes()
    log.write_bytes(data[: len(data) - 30])


@pytest.mark.parametrize(
    "damage", [_damage_nul, _damage_cid_character, _damage_truncate, _damage_tear], ids=lambda f: f.__name__
)
def test_gc_refuses_a_history_it_cannot_read_whole_and_repair_loses_nothing(
    tmp_path: Path, damage: object
) -> None:
    path = tmp_path / "store"
    roots = frozen_versions(path, 3)
    age_blocks(path)
    store = DirectoryBlockstore(path)
    before = set(store)
    damage(path / "roots.log")  # type: ignore[operator]

    result = cli("gc", "--grace", "0", "--keep-last", "8", "--store", path)
    line = assert_one_line_error(result, "roots.log", "nothing was collected", "log --repair")
    assert set(store) == before, line
    with pytest.raises(HistoryDamagedError):
        collect(StoreHome(store), Retention(keep_last=8, grace=0), dry_run=True)

    repaired = check(cli("log", "--repair", "--store", path))
    assert "sealed the rest anew" in repaired.stdout
    report = json.loads(
        check(cli("gc", "--grace", "0", "--keep-last", "8", "--json", "--store", path)).stdout
    )
    kept = set(report["kept_roots"])
    # Every root is kept: by the history, or by a recovered-N tag for a root a damaged line still
    # names or that nothing names any more (a line cut away whole). `tag -d` lets one go.
    survivors = set(roots)
    assert survivors <= kept
    for root in survivors:
        assert missing_blocks(store, root) == 0


def test_a_changed_history_line_is_found_and_an_intact_one_is_not(tmp_path: Path) -> None:
    path = tmp_path / "store"
    frozen_versions(path, 2)
    home = StoreHome(DirectoryBlockstore(path))
    assert home.registry.read_whole().damaged == []
    _damage_cid_character(path / "roots.log")
    damaged = home.registry.read_whole().damaged
    assert len(damaged) == 1 and "checksum" in damaged[0]


def test_a_history_from_before_checksums_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "store"
    roots = frozen_versions(path, 2)
    log = path / "roots.log"
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    log.write_text(
        "".join(json.dumps({k: v for k, v in line.items() if k != "sum"}) + "\n" for line in lines)
    )
    (path / "roots.head").unlink()
    history = StoreHome(DirectoryBlockstore(path)).registry.read_whole()
    assert history.damaged == [] and [record.root for record in history.live] == roots[::-1]


# --- a root gc let go is partial from then on -------------------------------------------------------


def test_a_root_a_collection_let_go_is_never_kept_again(tmp_path: Path) -> None:
    """gc --grace 5s --keep-last 1 took part of an older root (its newest blocks stayed); a later
    gc --keep-within 1h must not take what is left for a whole root (it said '1 block cannot be
    read', exit 1)."""
    path = tmp_path / "store"
    roots = frozen_versions(path, 2)
    store = DirectoryBlockstore(path)
    age_blocks(path)
    os.utime(store.block_path(cids.parse_cid(roots[0])))  # the older root's own block is recent
    check(cli("gc", "--grace", "5s", "--keep-last", "1", "--store", path))
    assert store.has(cids.parse_cid(roots[0]))  # left behind, partial

    report = json.loads(
        check(cli("gc", "--keep-within", "1h", "--grace", "0", "--json", "--store", path)).stdout
    )
    assert set(report["kept_roots"]) == {roots[1]}
    assert report["missing_blocks"] == 0
    assert missing_blocks(store, roots[1]) == 0


def test_a_collection_cut_short_leaves_no_root_looking_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "store"
    roots = frozen_versions(path, 4)
    age_blocks(path)
    home = StoreHome(DirectoryBlockstore(path))
    removed = 0

    def dies_after_a_few(cid: bytes, older_than: float | None, dry_run: bool = False) -> int | None:
        nonlocal removed
        if removed == 1:  # one block gone, then Ctrl-C mid-sweep
            raise KeyboardInterrupt
        removed += 1
        return original(cid, older_than, dry_run)

    original = home.blocks.remove_unused
    monkeypatch.setattr(home.blocks, "remove_unused", dies_after_a_few)
    with pytest.raises(KeyboardInterrupt):
        collect(home, Retention(keep_last=1, grace=0))
    monkeypatch.undo()

    report = json.loads(check(cli("gc", "--dry-run", "--keep-last", "8", "--json", "--store", path)).stdout)
    assert report["missing_blocks"] == 0
    assert set(report["kept_roots"]) == {roots[-1]}


# --- writers racing gc ------------------------------------------------------------------------------


def test_a_writer_that_commits_while_gc_reads_what_to_keep_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gc read the history, then a writer stored blocks, recorded a root and settled its lease,
    then gc fixed the time before which blocks may go: the new root's blocks went (a 3 MB file
    closed and synced during a long gc lost its blocks)."""
    path = tmp_path / "store"
    frozen_versions(path, 1)
    age_blocks(path)
    made: list[str] = []
    reading = retention._kept_parts

    def a_writer_commits_meanwhile(*args: object, **kwargs: object) -> object:
        parts = reading(*args, **kwargs)  # type: ignore[arg-type]
        writer = IPLDStore(DirectoryBlockstore(path))  # another store: a lease of its own
        writer.set_sync("late/0", _buffer(os.urandom(300_000)))
        made.append(writer.freeze())
        writer.close()  # and its process ends
        time.sleep(0.3)  # well past the clock margin
        return parts

    monkeypatch.setattr(retention, "_kept_parts", a_writer_commits_meanwhile)
    collect(StoreHome(DirectoryBlockstore(path)), Retention(keep_last=8, grace=0))
    assert missing_blocks(DirectoryBlockstore(path), made[0]) == 0


GC_LOOP = textwrap.dedent(
    """
    import subprocess, sys, time
    deadline = time.monotonic() + float(sys.argv[2])
    runs = 0
    while time.monotonic() < deadline:
        subprocess.run([sys.executable, "-m", "ipldmount", "gc", "--grace", "0", "--keep-last", "1",
                        "--store", sys.argv[1]], capture_output=True, check=False)
        runs += 1
    print(runs)
    """
)


@pytest.fixture
def gc_loop(tmp_path: Path) -> Iterator[object]:
    started: list[subprocess.Popen[str]] = []

    def start(store: Path, seconds: float) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-c", GC_LOOP, str(store), str(seconds)], stdout=subprocess.PIPE, text=True
        )
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
        process.communicate(timeout=30)


def test_freezes_racing_other_threads_writes_and_gc_in_a_loop_lose_nothing(
    tmp_path: Path, gc_loop: object
) -> None:
    """130 of 137 roots frozen while threads called set_sync, with gc --grace 0 --keep-last 1 in a
    loop, missed blocks: freeze settled the lease while other threads' values, stored, waited to
    be linked in."""
    path = tmp_path / "store"
    store = IPLDStore(DirectoryBlockstore(path))
    looping = gc_loop(path, 12)  # type: ignore[operator]
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(number: int) -> None:
        step = 0
        try:
            while not stop.is_set():
                store.set_sync(f"w{number}/{step % 40}", _buffer(os.urandom(5_000 + step % 7 * 3_000)))
                step += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(number,)) for number in range(4)]
    for thread in threads:
        thread.start()
    incomplete = frozen = 0
    try:
        while looping.poll() is None:
            root = store.freeze()
            frozen += 1
            incomplete += missing_blocks(store.blockstore, root) > 0  # type: ignore[arg-type]
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []
    assert int(looping.stdout.read()) >= 2 and frozen >= 10  # type: ignore[union-attr]
    assert incomplete == 0, f"{incomplete} of {frozen} frozen roots missed blocks"
    final = store.freeze()
    assert missing_blocks(store.blockstore, final) == 0  # type: ignore[arg-type]
    check(cli("export", final, "-o", tmp_path / "final.car", "--store", path))


STORE_IN_A_PROCESS = textwrap.dedent(
    """
    import os, sys
    import zarr
    from ipldmount.blocks import DirectoryBlockstore
    from ipldmount.adapters.zarr_store import IPLDStore
    buf = zarr.core.buffer.default_buffer_prototype().buffer.from_bytes
    store = IPLDStore(DirectoryBlockstore(sys.argv[1]))
    for n in range(5):
        store.set_sync(f"{sys.argv[2]}/{n}", buf(os.urandom(10_000)))
    print(store.freeze(), flush=True)
    sys.stdin.readline()  # the test runs gc meanwhile
    values = [store.get_sync(f"{sys.argv[2]}/{n}") for n in range(5)]
    assert all(value is not None and len(value) == 10_000 for value in values)
    store.set_sync(f"{sys.argv[2]}/more", buf(b"x"))
    print(store.freeze(), flush=True)
    """
)


def test_in_process_stores_of_two_processes_keep_their_trees(tmp_path: Path) -> None:
    """Two IPLDStores in two processes, 5 keys each, frozen; gc --grace 0 --keep-last 1 kept only
    the later one's root, and the first store's reads failed."""
    path = tmp_path / "store"
    DirectoryBlockstore(path)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", STORE_IN_A_PROCESS, str(path), name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("first", "second")
    ]
    try:
        firsts = [process.stdout.readline().strip() for process in processes]  # type: ignore[union-attr]
        age_blocks(path)
        report = json.loads(
            check(cli("gc", "--grace", "0", "--keep-last", "1", "--json", "--store", path)).stdout
        )
        assert set(firsts) <= set(report["kept_roots"])
        outputs = [process.communicate("go\n", timeout=60) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate(timeout=30)
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err
        assert missing_blocks(DirectoryBlockstore(path), out.split()[-1]) == 0


def test_a_store_that_is_gone_no_longer_holds_its_root(tmp_path: Path) -> None:
    path = tmp_path / "store"
    roots = frozen_versions(path, 2)  # its publication closed, as when its process ends
    assert StoreHome(DirectoryBlockstore(path)).roots_in_use() == []
    live = IPLDStore(DirectoryBlockstore(path), roots[0])
    assert StoreHome(DirectoryBlockstore(path)).roots_in_use() == [roots[0]]
    live.close()
    assert StoreHome(DirectoryBlockstore(path)).roots_in_use() == []
    IPLDStore(DirectoryBlockstore(path), roots[1])  # dropped at once: garbage-collected, finalized
    assert StoreHome(DirectoryBlockstore(path)).roots_in_use() == []


def test_zarr_through_an_in_process_store_survives_gc_in_another_process(tmp_path: Path) -> None:
    path = tmp_path / "store"
    store = IPLDStore(DirectoryBlockstore(path))
    array = zarr.create_array(store, shape=(64,), chunks=(8,), dtype="i4")
    array[:] = np.arange(64)
    store.freeze()
    other = IPLDStore(DirectoryBlockstore(path))  # the newest root of the shared origin now
    other.set_sync("x", _buffer(b"1"))
    other.freeze()
    age_blocks(path)
    check(cli("gc", "--grace", "0", "--keep-last", "1", "--store", path))
    assert list(zarr.open_array(store, mode="r")[:]) == list(range(64))


def test_a_root_gc_let_go_is_named_again_only_while_whole(tmp_path: Path) -> None:
    path = tmp_path / "store"
    writer = IPLDStore(DirectoryBlockstore(path))
    roots = []
    for _ in range(3):
        writer.set_sync("only", _buffer(os.urandom(20_000)))  # each version's own leaf
        roots.append(writer.freeze())
    writer.close()
    age_blocks(path)
    store = DirectoryBlockstore(path)
    os.utime(store.block_path(cids.parse_cid(roots[0])))  # its own block stays, its leaf goes
    check(cli("gc", "--grace", "5s", "--keep-last", "1", "--store", path))
    assert_one_line_error(cli("tag", "old", roots[0], "--store", path), "let go by gc", "import or pull")
    check(cli("tag", "last", roots[2], "--store", path))  # never let go


def test_repair_tags_no_partial_root_an_earlier_gc_left(tmp_path: Path) -> None:
    """A root block a gc from before 'dropped' lines left behind (its leaf gone, no line saying
    so) is not a root to keep: repair does not tag it, so the next gc does not call it missing."""
    path = tmp_path / "store"
    writer = IPLDStore(DirectoryBlockstore(path))
    roots = []
    for _ in range(2):
        writer.set_sync("only", _buffer(os.urandom(20_000)))
        roots.append(writer.freeze())
    writer.close()
    store = DirectoryBlockstore(path)
    (leaf,) = [cid for cid, _ in iter_closure(store, cids.parse_cid(roots[0])) if cid[1] == cids.RAW]
    store.delete(leaf)  # as an old gc would have left it
    _damage_nul(path / "roots.log")  # its line no longer names it
    assert "sealed the rest anew" in check(cli("log", "--repair", "--store", path)).stdout
    assert roots[0] not in json.loads(check(cli("tags", "--json", "--store", path)).stdout).values()
    report = json.loads(check(cli("gc", "--grace", "0", "--json", "--store", path)).stdout)
    assert report["missing_blocks"] == 0 and roots[1] in report["kept_roots"]
