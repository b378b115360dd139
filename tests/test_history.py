"""The store's history (STORE/roots.log) and tags: recorded by imports, syncs and freezes; read by
``ipldmount log``; names accepted wherever a root is."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from ipldmount.adapters import cli
from ipldmount.adapters.zarr_store import IPLDStore
from ipldmount.blocks import DirectoryBlockstore, MemoryBlockstore
from ipldmount.errors import IpldmountError
from ipldmount.ipld import cid as cids
from ipldmount.repo.home import StoreHome
from ipldmount.repo.registry import RootRecord, check_tag_name

SEED_DIR = Path(__file__).parent / "data" / "seed_example"
SEED_CAR = SEED_DIR / "seed_example.car"
SEED_ROOT = "bafyreidn66mk3fktszrfwayonvpq6y3agtnb5e5o22ivof5tgikbxt7k6u"


def fake_root(name: str) -> str:
    """A well-formed CID nobody stored: the history names roots by CID."""
    return cids.cid_to_str(cids.digest_cid(cids.DAG_CBOR, hashlib.sha256(name.encode()).digest()))


@pytest.fixture
def home(tmp_path: Path) -> StoreHome:
    return StoreHome(DirectoryBlockstore(tmp_path / "store"))


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = cli.main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return code, out, err


# --- the registry ----------------------------------------------------------------------


def test_records_come_back_newest_first_and_by_mountpoint(home: StoreHome) -> None:
    registry = home.registry
    registry.record(RootRecord(fake_root("a"), "2026-01-01T00:00:00Z", "import", "/x.car"))
    registry.record(
        RootRecord(fake_root("b"), "2026-01-02T00:00:00Z", "mount", "/mnt/a", fake_root("a"), "first")
    )
    registry.record(RootRecord(fake_root("c"), "2026-01-03T00:00:00Z", "mount", "/mnt/b"))
    assert [record.root for record in registry.history()] == [fake_root("c"), fake_root("b"), fake_root("a")]
    (only,) = registry.history("/mnt/a")
    assert (only.parent, only.message) == (fake_root("a"), "first")
    assert os.stat(registry.path).st_mode & 0o077 == 0


def test_a_line_torn_by_a_crash_is_skipped_and_the_next_record_kept(home: StoreHome) -> None:
    registry = home.registry
    registry.record(RootRecord(fake_root("a"), "2026-01-01T00:00:00Z", "import"))
    with open(registry.path, "ab") as stream:
        stream.write(b'{"root": fake_root("torn"), "ti')  # the process died mid-write
    registry.record(RootRecord(fake_root("b"), "2026-01-02T00:00:00Z", "import"))
    assert [record.root for record in registry.records()] == [fake_root("a"), fake_root("b")]


# --- tags ------------------------------------------------------------------------------


def test_tags_set_get_delete(home: StoreHome) -> None:
    root = home.blocks.put(b"\xa0", 0x71)
    tags = home.tags
    tags.set("v1", root)
    tags.set("v1.1-final", root)
    assert tags.get("v1") == root and set(tags.all()) == {"v1", "v1.1-final"}
    tags.delete("v1")
    assert tags.get("v1") is None
    with pytest.raises(IpldmountError, match="no tag named"):
        tags.delete("v1")
    assert os.listdir(home.tmp_dir) == []


@pytest.mark.parametrize("name", ["", "empty", "resume", "a/b", "x.car", "-v", SEED_ROOT, "a" * 101, "é"])
def test_tag_names_that_would_mean_something_else_are_refused(name: str) -> None:
    with pytest.raises(IpldmountError, match="cannot be a tag name"):
        check_tag_name(name)


# --- IPLDStore.freeze ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_freeze_records_new_roots_of_a_store_on_disk(tmp_path: Path) -> None:
    from zarr.core.buffer import default_buffer_prototype

    blocks = DirectoryBlockstore(tmp_path / "store")
    store = IPLDStore(blocks)
    buffer = default_buffer_prototype().buffer
    await store.set("a/0", buffer.from_bytes(b"one"))
    first = store.freeze()
    store.to_car()  # freezes again: nothing new, nothing recorded
    await store.set("a/1", buffer.from_bytes(b"two"))
    second = store.freeze()
    history = StoreHome(blocks).registry.history()
    assert [(r.root, r.parent, r.source) for r in history] == [(second, first, "api"), (first, None, "api")]
    memory = IPLDStore(MemoryBlockstore())
    made = memory.freeze()  # in memory: no folder, so no history to record the root in
    assert cids.parse_cid(made) and memory.freeze() == made and not memory.repository.on_disk
    with pytest.raises(IpldmountError, match="in memory"):
        memory.repository.history()
    assert StoreHome(blocks).registry.history() == history  # nothing reached the store on disk


# --- the CLI ---------------------------------------------------------------------------------


def test_import_is_recorded_and_log_shows_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    store = tmp_path / "store"
    assert run(capsys, "import", SEED_CAR, "--store", store)[0] == 0
    code, out, _ = run(capsys, "log", "--json", "--store", store)
    (record,) = json.loads(out)
    assert code == 0 and record["tree"] == SEED_ROOT and record["parents"] == []
    assert record["changed"] is None  # an import has no parent to compare with
    assert record["message"] == f"import {SEED_CAR.resolve()}"  # a tree imported gets a commit of its own
    code, out, _ = run(capsys, "log", "--store", store)
    assert code == 0 and SEED_ROOT in out and "import" in out
    (line,) = [json.loads(text) for text in (store / "roots.log").read_text().splitlines()]
    assert line["source"] == "import" and line["commit"] == record["commit"]


def test_tags_work_wherever_a_root_does(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    store = tmp_path / "store"
    run(capsys, "import", SEED_CAR, "--store", store)
    assert run(capsys, "tag", "seed", SEED_ROOT, "--store", store)[1] == f"seed {SEED_ROOT}\n"
    newest = run(capsys, "tag", "newest", "--store", store)[1].split()[1]  # the import's commit
    assert newest != SEED_ROOT
    assert run(capsys, "tags", "--store", store)[1] == f"newest {newest}\nseed {SEED_ROOT}\n"
    assert json.loads(run(capsys, "tags", "--json", "--store", store)[1]) == {
        "newest": newest,
        "seed": SEED_ROOT,
    }
    assert run(capsys, "ls", "newest/a", "--store", store)[1] == ".zarray\n.zattrs\n0\n"
    assert run(capsys, "ls", "seed/a", "--store", store)[1] == ".zarray\n.zattrs\n0\n"
    assert (
        run(capsys, "cat", "seed/.zattrs", "--store", store)[1] == (SEED_DIR / "tree" / ".zattrs").read_text()
    )
    code, _, _ = run(capsys, "export", "seed", "-o", tmp_path / "seed.car", "--store", store)
    assert code == 0 and (tmp_path / "seed.car").read_bytes() == SEED_CAR.read_bytes()
    assert "(tag: newest, tag: seed)" in run(capsys, "log", "--store", store)[1]
    assert run(capsys, "tag", "-d", "seed", "--store", store)[0] == 0
    code, _, err = run(capsys, "ls", "seed", "--store", store)
    assert code == 1 and "not a valid CID" in err and "nor is it a branch, a tag" in err


@pytest.mark.parametrize("name", ["log", "empty", SEED_ROOT])
def test_bad_tags_are_one_line_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str) -> None:
    store = tmp_path / "store"
    run(capsys, "import", SEED_CAR, "--store", store)
    code, _, err = run(capsys, "tag", name, SEED_ROOT, "--store", store)
    assert code == 1 and len(err.splitlines()) == 1 and "cannot be a tag name" in err


def test_a_tag_must_name_a_stored_tree(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    store = tmp_path / "store"
    run(capsys, "import", SEED_CAR, "--store", store)
    missing = "bafyreigbtj4x7ip5legnfznufuopl4sg4knzc2cof6duas4b3q2fy6swua"
    code, _, err = run(capsys, "tag", "gone", missing, "--store", store)
    assert code == 1 and "not in the store" in err
    chunk = "bafkreihc4ibtvz7btvualgou5mfbgwncwshmlovmoudgyml7x6crlhcu54"
    code, _, err = run(capsys, "tag", "chunk", chunk, "--store", store)
    assert code == 1 and "not a dag-cbor directory node" in err
    assert run(capsys, "tags", "--store", store)[1] == ""


def test_tags_set_at_once_by_many_processes_all_count(home: StoreHome) -> None:
    """Each `tag` reads, changes and replaces the file under a lock: no update is lost."""
    import multiprocessing

    root = home.blocks.put(b"\xa0", 0x71)
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_tag_in_child, args=(home.root, f"t{i}", root)) for i in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [worker.exitcode for worker in workers] == [0] * 8
    assert sorted(home.tags.all()) == sorted(f"t{i}" for i in range(8))
    assert os.listdir(home.tmp_dir) == []


def _tag_in_child(store: Path, name: str, root: bytes) -> None:
    StoreHome(DirectoryBlockstore(store)).tags.set(name, root)
