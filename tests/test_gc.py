"""Garbage collection without a mount: the block stores' delete, the collector against both
stores, the leases and claims that keep it from racing writers, and `ipldmount gc`."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from zarr.core.buffer import Buffer, default_buffer_prototype

from ipldmount.adapters import cli
from ipldmount.adapters.zarr_store import IPLDStore
from ipldmount.blocks import Blockstore, DirectoryBlockstore, MemoryBlockstore, gc
from ipldmount.blocks.dag import iter_closure
from ipldmount.blocks.gc import MarkSet, collect_garbage
from ipldmount.format.commit import read_commit
from ipldmount.ipld import cid as cids
from ipldmount.repo.home import StoreHome
from ipldmount.repo.retention import Retention, collect, kept_roots
from ipldmount.tree.model import Tree

RAW = cids.RAW


def buffer(data: bytes) -> Buffer:
    return default_buffer_prototype().buffer.from_bytes(data)


@pytest.fixture(params=["memory", "directory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Blockstore:
    return MemoryBlockstore() if request.param == "memory" else DirectoryBlockstore(tmp_path / "store")


def build(store: Blockstore, files: dict[str, bytes]) -> bytes:
    tree = Tree(store)
    for path, data in files.items():
        tree.write_file(path, data)
    return tree.commit()


def closure(store: Blockstore, root: bytes) -> set[bytes]:
    return {cid for cid, _ in iter_closure(store, root)}


def trees_of(store: Blockstore) -> set[bytes]:
    """The store's blocks but its commits (gc keeps every commit of a kept line: FORMAT.md 13)."""
    return {cid for cid in store if read_commit(store, cid) is None}


def age(store: Blockstore, seconds: float = 3600) -> None:
    """Date every block of an on-disk store back, as if written long ago (and end this process's lease)."""
    if isinstance(store, DirectoryBlockstore):
        store.settle(time.time() + 1)
        then = time.time() - seconds
        for cid in store:
            os.utime(store.block_path(cid), (then, then))


# --- the block stores ----------------------------------------------------------------


def test_delete_removes_a_block_and_says_whether_it_was_there(store: Blockstore) -> None:
    cid = store.put(b"doomed", RAW)
    assert store.delete(cid) is True
    assert not store.has(cid)
    assert store.delete(cid) is False
    assert store.put(b"doomed", RAW) == cid and store.get(cid) == b"doomed"  # and comes back when put


def test_a_claim_keeps_an_old_block_from_the_collector(tmp_path: Path) -> None:
    store = DirectoryBlockstore(tmp_path / "store")
    cid = store.put(b"old but wanted", RAW)
    age(store)
    started = time.time()
    assert store.claim(cid)  # a writer relies on it: dated now
    assert store.remove_unused(cid, started - 1) is None
    assert store.has(cid)
    assert store.remove_unused(cid, time.time() + 1) == len(b"old but wanted")
    assert not store.claim(cid)  # gone: a writer that claims it now writes it again


def test_putting_an_existing_block_claims_it(tmp_path: Path) -> None:
    store = DirectoryBlockstore(tmp_path / "store")
    cid = store.put(b"dedup", RAW)
    age(store)
    before = os.stat(store.block_path(cid)).st_mtime
    assert store.put(b"dedup", RAW) == cid
    assert os.stat(store.block_path(cid)).st_mtime > before + 1000


# --- the collector -------------------------------------------------------------------


def test_it_keeps_what_kept_roots_reach_and_removes_the_rest(store: Blockstore) -> None:
    old = build(store, {"a": b"only old" * 100, "shared": b"in both" * 100})
    new = build(store, {"b": b"only new" * 100, "shared": b"in both" * 100})
    stray = store.put(b"reached by nothing", RAW)
    age(store)
    keep = closure(store, new)
    dry = collect_garbage(store, [new], dry_run=True)
    assert dry.removed_blocks == len(closure(store, old) - keep) + 1
    assert store.has(stray) and closure(store, old)  # a dry run removes nothing
    found = collect_garbage(store, [new])
    assert found.removed_blocks == dry.removed_blocks and found.removed_bytes == dry.removed_bytes
    assert set(store) == keep and found.kept_blocks == len(keep) and found.missing == []
    assert closure(store, new) == keep  # complete, every block verified


def test_a_missing_block_of_a_kept_root_is_reported_and_nothing_below_it_removed(store: Blockstore) -> None:
    root = build(store, {"d/a": b"a" * 100, "d/b": b"b" * 100})
    leaf = cids.block_cid(RAW, b"a" * 100)
    store.delete(leaf)
    age(store)
    found = collect_garbage(store, [root])
    assert found.missing == [leaf] and found.removed_blocks == 0


def test_the_leaves_of_a_complete_store_are_not_looked_up_one_by_one(
    store: Blockstore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep lists every block anyway: it tells whether every raw block the roots reach is
    stored, and only if one is not does a second walk look them up, to name it."""
    root = build(store, {f"d/{index}": b"%d" % index * 50 for index in range(50)})
    looked_up: list[bytes] = []
    has = store.has
    monkeypatch.setattr(store, "has", lambda cid: looked_up.append(cid) or has(cid))
    found = collect_garbage(store, [root])
    assert found.missing_blocks == 0 and looked_up == []
    store.delete(cids.block_cid(RAW, b"7" * 50))
    found = collect_garbage(store, [root])
    assert found.missing == [cids.block_cid(RAW, b"7" * 50)] and len(looked_up) == 50


def test_missing_blocks_are_counted_and_only_the_first_named(
    store: Blockstore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gc, "MISSING_NAMED", 2)
    files = {f"d/{index}": b"%d" % index * 50 for index in range(5)}
    root = build(store, files)
    for data in files.values():
        store.delete(cids.block_cid(RAW, data))
    found = collect_garbage(store, [root])
    assert found.missing_blocks == 5 and len(found.missing) == 2 and found.removed_blocks == 0


# --- the mark set ----------------------------------------------------------------------


@given(st.lists(st.binary(min_size=1, max_size=40), max_size=3000), st.lists(st.binary(max_size=40)))
def test_the_mark_set_answers_as_a_set_of_cids(added: list[bytes], asked: list[bytes]) -> None:
    marks, model = MarkSet(capacity=4), set()  # small: it grows many times
    for cid in added:
        marks.add(cid)
        model.add(cid)
    assert len(marks) == len(model)  # no two of so few share a 64-bit hash
    assert all(cid in marks for cid in model)
    assert all((cid in marks) == (cid in model) for cid in asked)


def test_the_mark_set_takes_at_most_32_bytes_a_cid() -> None:
    marks = MarkSet()
    for index in range(100_000):
        marks.add(cids.block_cid(RAW, index.to_bytes(4, "little")))
    assert len(marks) == 100_000 and marks._slots.itemsize * len(marks._slots) <= 32 * len(marks)


def test_cids_that_share_a_hash_keep_garbage_and_never_lose_a_reachable_block(
    store: Blockstore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gc, "_key", lambda cid: (hash(cid) & 3) or 1)  # four hashes in all
    kept = build(store, {f"k/{index}": b"kept %d" % index for index in range(20)})
    build(store, {f"g/{index}": b"garbage %d" % index for index in range(20)})
    reachable = closure(store, kept)
    age(store)
    found = collect_garbage(store, [kept])
    assert reachable <= set(store)  # every reachable block stays, whatever shares its hash
    assert found.missing == [] and closure(store, kept) == reachable


def test_a_collection_keeps_what_roots_reach_and_what_is_new(tmp_path: Path) -> None:
    """What refers to blocks besides roots (attribute rows) asks this of each CID it names."""
    store = DirectoryBlockstore(tmp_path / "store")
    kept = build(store, {"a": b"reached", "b": b"reached, not stored"})
    old = store.put(b"old garbage", RAW)
    age(store)
    store.delete(cids.block_cid(RAW, b"reached, not stored"))
    found = collect_garbage(store, [kept], dry_run=True)
    new = store.put(b"written after the collection began", RAW)
    assert found.keeps(store, cids.block_cid(RAW, b"reached")) and found.keeps(store, new)
    assert found.keeps(store, cids.block_cid(RAW, b"reached, not stored"))  # a lazy mount's, say
    assert not found.keeps(store, old) and not found.keeps(store, cids.block_cid(RAW, b"never stored"))


def test_blocks_written_within_the_grace_period_are_kept(tmp_path: Path) -> None:
    store = DirectoryBlockstore(tmp_path / "store")
    fresh = store.put(b"just written", RAW)
    store.settle(time.time() + 1)
    found = collect_garbage(store, [], grace=600)
    assert store.has(fresh) and found.recent_blocks == 1 and found.removed_blocks == 0


def test_a_live_writers_lease_keeps_what_it_has_not_referenced_yet(tmp_path: Path) -> None:
    writer = DirectoryBlockstore(tmp_path / "store")  # a writer: its own handle, its own lease
    collector = DirectoryBlockstore(tmp_path / "store")
    unreferenced = writer.put(b"written, in no root yet", RAW)
    time.sleep(0.2)  # past the lease's clock margin: only the lease can keep it now
    assert collector.protected_since() is not None
    assert collect_garbage(collector, [], grace=0).recent_blocks == 1
    assert writer.has(unreferenced)
    writer.settle(time.time())  # now referenced (say, a root was recorded): no longer leased
    assert collector.protected_since() is None
    assert collect_garbage(collector, [], grace=0).removed_blocks == 1


def test_leases_of_writers_that_died_are_removed(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys; from ipldmount.blocks import DirectoryBlockstore;"
        "DirectoryBlockstore(sys.argv[1]).put(b'x', 0x55)"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "store")], check=True)
    leases = tmp_path / "store" / "leases"
    assert len(os.listdir(leases)) == 1
    assert DirectoryBlockstore(tmp_path / "store").protected_since() is None
    assert os.listdir(leases) == []


# --- the store's retention, in-process -----------------------------------------------


def test_ipldstore_collects_what_its_tree_no_longer_reaches(tmp_path: Path) -> None:
    for blockstore in (MemoryBlockstore(), DirectoryBlockstore(tmp_path / "store")):
        store = IPLDStore(blockstore)
        store.set_sync("a/c/0", buffer(b"first" * 100))
        first = cids.parse_cid(store.freeze())
        store.set_sync("a/c/0", buffer(b"second" * 100))
        second = cids.parse_cid(store.freeze())
        age(blockstore)
        if isinstance(blockstore, DirectoryBlockstore):  # the history keeps the newest of each origin
            assert cids.cid_to_str(second) in kept_roots(StoreHome(blockstore), Retention())
        found = store.collect_garbage()
        assert found.removed_blocks > 0
        assert trees_of(blockstore) == closure(blockstore, second)
        assert not blockstore.has(cids.block_cid(RAW, b"first" * 100))
        assert first not in set(blockstore)


# --- ipldmount gc ----------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = cli.main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return code, out, err


def versions(path: Path, count: int) -> list[str]:
    """*count* versions of a small zarr-like array in the store at *path*, each one recorded."""
    store = IPLDStore(DirectoryBlockstore(path))
    roots = []
    store.set_sync(".zgroup", buffer(b'{"zarr_format": 2}'))
    for version in range(count):
        for chunk in range(4):
            data = (b"v%d chunk %d " % (version if chunk == 0 else 0, chunk)) * 200
            store.set_sync(f"x/{chunk}", buffer(data))
        roots.append(store.freeze())
    age(store.blockstore)
    return roots


def test_gc_keeps_tags_and_the_newest_root(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "store"
    roots = versions(path, 4)
    assert run(capsys, "tag", "v0", roots[0], "--store", path)[0] == 0
    blocks = DirectoryBlockstore(path)
    before = len(blocks)
    expected = closure(blocks, cids.parse_cid(roots[0])) | closure(blocks, cids.parse_cid(roots[3]))
    garbage = len(trees_of(blocks)) - len(expected)  # the line's 4 commits stay
    assert garbage == 4  # versions 1 and 2: each its root block and its chunk 0
    code, out, _ = run(capsys, "gc", "--dry-run", "--grace", "0", "--store", path)
    assert code == 0 and f"would remove {garbage} blocks" in out and len(blocks) == before
    code, out, _ = run(capsys, "gc", "--grace", "0", "--store", path, "--json")
    report = json.loads(out)
    assert code == 0 and report["removed_blocks"] == garbage and report["missing"] == []
    assert set(report["kept_roots"]) == {roots[0], roots[3]}
    assert "tag v0" in report["kept_roots"][roots[0]]
    assert trees_of(blocks) == expected and len(blocks) == len(expected) + 4
    for root in (roots[0], roots[3]):
        assert run(capsys, "export", root, "-o", tmp_path / f"{root}.car", "--store", path)[0] == 0


def test_gc_keep_last_and_keep_within(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "store"
    roots = versions(path, 4)
    code, out, _ = run(capsys, "gc", "--keep-last", "2", "--grace", "0", "--json", "--store", path)
    assert code == 0 and set(json.loads(out)["kept_roots"]) == set(roots[2:])
    code, out, _ = run(capsys, "gc", "--keep-last", "0", "--keep-within", "1h", "--json", "--store", path)
    assert code == 0 and set(json.loads(out)["kept_roots"]) == set(roots[2:])  # the rest were gone
    code, out, _ = run(capsys, "gc", "--keep-last", "0", "--grace", "0", "--json", "--store", path)
    assert code == 0 and json.loads(out)["kept_roots"] == {}
    assert sorted(os.listdir(path / "blocks")) == [] or all(
        not os.listdir(path / "blocks" / shard) for shard in os.listdir(path / "blocks")
    )


@pytest.mark.parametrize("bad", ["--keep-last=-1", "--keep-within=soon", "--grace=-5s", "--keep-within=infm"])
def test_gc_refuses_bad_options(capsys: pytest.CaptureFixture[str], tmp_path: Path, bad: str) -> None:
    versions(tmp_path / "store", 1)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["gc", bad, "--store", str(tmp_path / "store")])
    assert exit_info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_gc_refuses_to_guess_when_a_journal_is_unreadable(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "store"
    versions(path, 2)
    home = StoreHome(DirectoryBlockstore(path))
    files = home.mount_files(tmp_path / "mnt")
    files.journal.write_bytes(b"this is not a journal\n")
    before = len(home.blocks)
    code, _, err = run(capsys, "gc", "--grace", "0", "--store", path)
    assert code == 1 and "journal" in err and "nothing was collected" in err
    assert len(err.strip().splitlines()) == 1 and len(home.blocks) == before


def test_gc_removes_the_sync_cars_of_roots_it_does_not_keep(tmp_path: Path) -> None:
    path = tmp_path / "store"
    roots = versions(path, 3)
    home = StoreHome(DirectoryBlockstore(path))
    for root in roots:
        (home.cars_dir / f"{root}.car").write_bytes(b"a CAR")
    (home.cars_dir / f"{roots[0]}.full.car").write_bytes(b"a CAR")
    report = collect(home, Retention(grace=0))
    assert sorted(path.name for path in report.cars_removed) == sorted(
        [f"{roots[0]}.car", f"{roots[0]}.full.car", f"{roots[1]}.car"]
    )
    assert [path.name for path in home.sync_cars()] == [f"{roots[2]}.car"]


def test_a_gc_killed_half_way_leaves_every_kept_root_complete(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    path = tmp_path / "store"
    blockstore = DirectoryBlockstore(path)
    store = IPLDStore(blockstore)
    for version in range(40):  # 40 versions of 100 chunks: all but the last are garbage
        for chunk in range(100):
            store.set_sync(f"x/{chunk}", buffer(b"v%d c%d " % (version, chunk) * 50))
        kept = store.freeze()
    age(blockstore)
    before = len(blockstore)
    gc = subprocess.Popen(
        [sys.executable, "-m", "ipldmount", "gc", "--grace", "0", "--store", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while len(blockstore) > before - 50 and gc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)  # until it has removed something
    finally:
        gc.send_signal(signal.SIGKILL)
        gc.wait()
    assert closure(blockstore, cids.parse_cid(kept)) <= set(blockstore)
    assert cli.main(["export", kept, "-o", str(tmp_path / "kept.car"), "--store", str(path)]) == 0
    assert cli.main(["gc", "--grace", "0", "--store", str(path)]) == 0  # and the next one finishes
    assert trees_of(blockstore) == closure(blockstore, cids.parse_cid(kept))


def test_gc_refuses_to_guess_when_the_tags_are_unreadable(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "store"
    versions(path, 3)
    (path / "tags.json").write_text("{not json")
    before = len(DirectoryBlockstore(path))
    code, _, err = run(capsys, "gc", "--grace", "0", "--store", path)
    assert code == 1 and "tags.json" in err and len(err.strip().splitlines()) == 1
    assert len(DirectoryBlockstore(path)) == before  # a tag it cannot read may name any root
