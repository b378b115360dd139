"""A session driven directly, without FUSE or an event loop: its requests run in place
(session/runner.py), as a mount runs them with worker threads. Changes by name, the life of
open files, sync, and the journal replayed after a crash (a session dropped without closing);
then OpenFiles, what the session keeps of its open files, alone."""

from __future__ import annotations

import logging
import stat
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ipldmount.blocks import DirectoryBlockstore
from ipldmount.errors import (
    IpldmountError,
    IsDirectoryError,
    NotFoundError,
    ReadOnlyError,
    StoreFullError,
)
from ipldmount.format.files import BLOCK_LIMIT, PendingFile, StoredFile
from ipldmount.ipld import cid as cids
from ipldmount.repo.repository import Repository
from ipldmount.session.openfiles import FileHandle, OpenFile, OpenFiles
from ipldmount.session.runner import run_in_place
from ipldmount.session.session import PendingChangesError, Session
from ipldmount.tree.model import Directory, File, Tree

T = TypeVar("T")


def run(request: Coroutine[Any, Any, T]) -> T:
    return run_in_place(request)


def new_session(tmp_path: Path, root: bytes | None = None, **options: Any) -> Session:
    store = DirectoryBlockstore(tmp_path / "store", durable=False)
    return Session(Repository(store), tmp_path / "mnt", root, **options)


def crash(session: Session) -> None:
    """What kill -9 leaves: the files as they are; the process's descriptors closed by the kernel."""
    session.journal.close()


def write_file(session: Session, directory: Directory, name: str, data: bytes) -> File:
    """create, write, close (flush then release), as cp does."""
    file = run(session.create(directory, name))
    handle = run(session.open(file, writable=True))
    assert run(session.write(handle, 0, data)) == len(data)
    run(session.flush(handle))
    run(session.release(handle))
    return file


def read_all(session: Session, file: File) -> bytes:
    handle = run(session.open(file, writable=False))
    try:
        return run(session.read(handle, 0, 1 << 30))
    finally:
        run(session.release(handle))


def stored(session: Session, root: str) -> Tree:
    return Tree(session.store, cids.parse_cid(root))


def test_changes_by_name_then_sync(tmp_path: Path) -> None:
    session = new_session(tmp_path)
    root = session.tree.root
    data = run(session.mkdir(root, "data", mode=0o750))
    write_file(session, data, "a", b"alpha")
    write_file(session, data, "b", b"beta")
    write_file(session, root, "top", b"top")
    run(session.rename(data, "a", root, "moved"))
    run(session.unlink(data, "b"))
    assert session.dirty and session.journal.pending == 9  # mkdir, 3 x (create, write), rename, unlink
    result = run(session.sync())
    assert result.changed and not session.dirty and session.journal.pending == 0
    tree = stored(session, result.root)
    assert sorted(tree.listdir("")) == ["data", "moved", "top"]
    assert tree.listdir("data") == []
    assert tree.read_file("moved") == b"alpha" and tree.read_file("top") == b"top"
    assert session.meta(data).mode == stat.S_IFDIR | 0o750
    assert run(session.sync()).changed is False, "nothing new: the same root"
    session.close(clean=True)
    assert not session.journal.path.exists(), "a clean close after a sync leaves no journal"


def test_a_crash_loses_nothing_closed_or_fsynced(tmp_path: Path) -> None:
    """Closed and fsynced files, directories, renames and unlinks come back from the journal
    when the next session opens the same root; writes nobody closed or fsynced do not."""
    session = new_session(tmp_path)
    base = cids.parse_cid(session.root)
    root = session.tree.root
    sub = run(session.mkdir(root, "sub"))
    write_file(session, sub, "closed", b"closed bytes")
    write_file(session, root, "renamed", b"r")
    run(session.rename(root, "renamed", sub, "there"))
    write_file(session, root, "gone", b"g")
    run(session.unlink(root, "gone"))
    big = bytes(range(256)) * (3 * BLOCK_LIMIT // 256 + 7)  # stored as leaves and a layout
    write_file(session, root, "big", big)
    synced = run(session.create(root, "fsynced"))
    handle = run(session.open(synced, writable=True))
    run(session.write(handle, 0, b"made durable"))
    run(session.fsync(handle))
    run(session.write(handle, 0, b"MADE"))  # after the fsync, never closed: lost
    open_only = run(session.create(root, "open"))
    other = run(session.open(open_only, writable=True))
    run(session.write(other, 0, b"never closed"))
    crash(session)

    again = new_session(tmp_path, base)
    assert again.recovered == session.journal.pending
    tree = again.tree
    assert sorted(tree.listdir("")) == ["big", "fsynced", "open", "sub"]
    assert sorted(tree.listdir("sub")) == ["closed", "there"]
    assert tree.read_file("sub/closed") == b"closed bytes" and tree.read_file("sub/there") == b"r"
    assert tree.read_file("big") == big
    assert tree.read_file("fsynced") == b"made durable"
    assert tree.read_file("open") == b"", "created (journaled), its writes never closed"
    result = run(again.sync())
    assert stored(again, result.root).read_file("big") == big
    again.close(clean=True)


def test_a_journal_replays_only_on_its_own_root(tmp_path: Path) -> None:
    session = new_session(tmp_path)
    write_file(session, session.tree.root, "f", b"x")
    first = run(session.sync()).root
    write_file(session, session.tree.root, "g", b"y")
    crash(session)
    with pytest.raises(PendingChangesError, match="unsynced changes"):
        new_session(tmp_path, None)  # the empty root, not the one the journal is on
    again = new_session(tmp_path, cids.parse_cid(first))
    assert again.recovered == 2 and again.tree.read_file("g") == b"y"
    again.close(clean=False)


def test_the_journal_keeps_the_order_of_changes(tmp_path: Path) -> None:
    session = new_session(tmp_path)
    root = session.tree.root
    write_file(session, root, "a", b"1")
    run(session.rename(root, "a", root, "b"))
    write_file(session, root, "a", b"2")
    run(session.link(run(session.create(root, "c")), root, "d"))
    pending = session.journal.read()
    assert pending is not None
    assert [(r["op"], r.get("path") or r.get("dst")) for r in pending.records] == [
        ("write", "a"),
        ("write", "a"),
        ("rename", "b"),
        ("write", "a"),
        ("write", "a"),
        ("write", "c"),
        ("link", "d"),
    ]
    crash(session)
    again = new_session(tmp_path, cids.parse_cid(session.root))
    assert again.tree.read_file("a") == b"2" and again.tree.read_file("b") == b"1"
    again.close(clean=False)


def test_an_open_file_is_read_and_written_through_its_handles(tmp_path: Path) -> None:
    session = new_session(tmp_path)
    file = run(session.create(session.tree.root, "f"))
    writer = run(session.open(file, writable=True))
    reader = run(session.open(file, writable=False))
    run(session.write(writer, 0, b"hello world"))
    assert run(session.read(reader, 6, 100)) == b"world", "another handle sees the buffer"
    assert session.size(file) == 11 and session.open_files.unsaved() == 1
    assert session.describe(file).changed and session.describe(session.tree.root).changed
    with pytest.raises(OSError, match="not open for writing"):
        run(session.write(reader, 0, b"x"))
    run(session.flush(writer))
    assert session.open_files.unsaved() == 0 and session.tree.read_file("f") == b"hello world"
    run(session.release(writer))
    assert file in session.open_files, "a handle is still open: the buffer stays"
    assert run(session.release(reader)) is False, "it was written: not handed back as unchanged"
    assert file not in session.open_files and not session.open_files.in_use(file)


def test_a_sync_takes_in_open_files_and_publishes_what_they_read(tmp_path: Path) -> None:
    session = new_session(tmp_path)
    root = session.tree.root
    old = write_file(session, root, "data", b"old content")
    run(session.sync())
    reading = run(session.open(old, writable=False))
    write_file(session, root, "new", b"new")
    run(session.rename(root, "new", root, "data"))  # replaces what `reading` reads
    writing = run(session.open(run(session.create(root, "w")), writable=True))
    run(session.write(writing, 0, b"unsaved"))
    status = run(session.status())
    assert status["open_unsaved_files"] == 1 and status["sync_changes_root"] is True
    session.home.write_pid(session.files)
    result = run(session.sync())
    assert stored(session, result.root).read_file("w") == b"unsaved", "an open file's writes are in"
    assert isinstance(old.content, StoredFile)
    served = session.home.served_roots(session.files)
    assert served[0] == result.root
    assert cids.cid_to_str(old.content.cid) in served[1:], "replaced, still read: kept from gc"
    assert run(session.read(reading, 0, 100)) == b"old content"
    run(session.release(reading))
    run(session.release(writing))
    status = run(session.status())
    assert status["open_unsaved_files"] == 0 and status["sync_changes_root"] is False
    session.home.forget_pid(session.files)
    session.close(clean=True)


def test_a_truncate_with_no_handle_open_is_stored_at_once(tmp_path: Path) -> None:
    session = new_session(tmp_path)
    file = write_file(session, session.tree.root, "f", b"0123456789")
    pending = session.journal.pending
    run(session.set_attributes(file, size=4, mode=0o600))
    assert session.tree.read_file("f") == b"0123" and session.journal.pending == pending + 1
    assert file not in session.open_files, "settled: no buffer kept"
    assert session.meta(file).mode == stat.S_IFREG | 0o600
    run(session.allocate(file, 0, 100, keep_size=True))
    assert session.size(file) == 4
    run(session.allocate(file, 10, 10, keep_size=False))
    assert session.tree.read_file("f") == b"0123" + bytes(16)
    with pytest.raises(IsDirectoryError):
        run(session.set_attributes(session.tree.root, size=0))


def test_a_failed_last_close_is_said_and_the_file_keeps_its_earlier_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    session = new_session(tmp_path)
    file = write_file(session, session.tree.root, "f", b"earlier")
    handle = run(session.open(file, writable=True))
    run(session.write(handle, 0, b"LATER!!"))

    def full(buffer: object, name: str) -> object:
        raise StoreFullError("disk full")

    monkeypatch.setattr(session, "content_of_buffer", full)
    with caplog.at_level(logging.ERROR), pytest.raises(StoreFullError):
        run(session.release(handle))  # no flush first: the release stores, and fails
    assert file not in session.open_files, "a buffer nobody can retry is let go"
    assert session.tree.read_file("f") == b"earlier"
    assert run(session.status())["failed_closes"] == ["f"]
    assert any("failed close" in warning for warning in session.warnings())
    assert session.warnings() == [], "said once"


def test_a_read_only_session_refuses_changes(tmp_path: Path) -> None:
    writable = new_session(tmp_path)
    write_file(writable, writable.tree.root, "f", b"x")
    root = run(writable.sync()).root
    writable.close(clean=True)
    session = new_session(tmp_path, cids.parse_cid(root), read_only=True)
    file = session.tree.resolve("f")
    assert isinstance(file, File)
    for request in (
        session.mkdir(session.tree.root, "d"),
        session.create(session.tree.root, "g"),
        session.unlink(session.tree.root, "f"),
        session.open(file, writable=True),
        session.sync(),
    ):
        with pytest.raises(ReadOnlyError):
            run(request)
    assert read_all(session, file) == b"x"
    assert run(session.status())["sync_changes_root"] is False


def test_opening_what_is_not_a_readable_file_fails_at_open(tmp_path: Path) -> None:
    session = new_session(tmp_path)
    sub = run(session.mkdir(session.tree.root, "sub"))
    with pytest.raises(IsDirectoryError):
        run(session.open(sub, writable=False))
    with pytest.raises(NotFoundError):
        run(session.unlink(session.tree.root, "nothing"))
    file = write_file(session, session.tree.root, "f", b"x")
    file.content = StoredFile(cids.block_cid(cids.RAW, b"never stored"))  # a block gone missing
    with pytest.raises(IpldmountError):
        run(session.open(file, writable=False))
    assert not session.open_files.in_use(file), "no handle left behind"


def test_an_unchanged_file_released_may_go_back_to_its_row(tmp_path: Path) -> None:
    first = new_session(tmp_path)
    write_file(first, first.tree.root, "f", b"x")
    root = run(first.sync()).root
    first.close(clean=True)
    session = new_session(tmp_path, cids.parse_cid(root))
    file = session.tree.resolve("f")  # default attributes: nothing a packed row would lose
    assert isinstance(file, File)
    one, two = (run(session.open(file, writable=False)) for _ in range(2))
    assert run(session.release(one)) is False, "another handle is open"
    assert run(session.release(two)) is True
    written = run(session.open(file, writable=True))
    assert run(session.release(written)) is False, "opened for writing"


def test_closing_the_session_stops_the_leaf_pool(tmp_path: Path) -> None:
    session = new_session(tmp_path)
    pool = session.open_files.pool
    assert not pool.started, "no thread before the first full leaf"
    file = run(session.create(session.tree.root, "f"))
    handle: FileHandle = run(session.open(file, writable=True))
    run(session.write(handle, 0, bytes(2 * BLOCK_LIMIT)))
    run(session.write(handle, 0, b"\1" * BLOCK_LIMIT))
    assert pool.started
    session.close(clean=False)
    assert not pool.started and file not in session.open_files, "buffers let go, threads stopped"
    with pytest.raises(IpldmountError, match="shut down"):
        pool.submit(bytes, bytearray())


# --- OpenFiles: what the session keeps track of ------------------------------------------


def open_files(tmp_path: Path) -> tuple[OpenFiles, DirectoryBlockstore]:
    store = DirectoryBlockstore(tmp_path / "store", durable=False)
    return OpenFiles(store, BLOCK_LIMIT, tmp_path), store


def test_open_files_count_handles_per_file(tmp_path: Path) -> None:
    files, _ = open_files(tmp_path)
    node, other = File(PendingFile(b"")), File(PendingFile(b""))
    first, second = files.open(node, writable=True), files.open(node, writable=False)
    assert first.node is node and first.writable and not second.writable
    assert files.handles(node) == 2 and files.handles(other) == 0
    assert files.in_use(node) and not files.in_use(other)
    files.release(first)
    assert files.handles(node) == 1 and files.in_use(node)
    files.release(second)
    assert files.handles(node) == 0 and not files.in_use(node)
    with pytest.raises(KeyError):
        files.release(second)  # released twice: a bug of the caller's, not a count below zero


def test_open_files_hold_the_stored_contents_their_handles_read(tmp_path: Path) -> None:
    files, store = open_files(tmp_path)
    a, b = (StoredFile(store.put(data, cids.RAW), 1) for data in (b"a", b"b"))
    for content in (b, a, a):
        files.open(File(content), writable=False)
    files.open(File(PendingFile(b"in memory")), writable=True)
    assert files.held_contents() == sorted({a.cid, b.cid})


def test_open_files_buffers_by_file(tmp_path: Path) -> None:
    files, _ = open_files(tmp_path)
    node, other = File(PendingFile(b"base")), File(PendingFile(b""))
    buffer = files.add(node, OpenFile(files.new_buffer(node.content)))
    files.add(other, OpenFile(files.new_buffer(None)))
    assert files.get(node) is buffer and node in files and len(files) == 2
    assert buffer.data.read(0, 10) == b"base" and files.in_use(node)
    assert files.unsaved() == 0
    buffer.changed()
    assert buffer.dirty and buffer.generation == 1 and files.unsaved() == 1
    for each in files:  # a copy: closing while iterating is fine
        files.close(each)
    assert len(files) == 0 and files.get(node) is None and not files.in_use(node)


def test_open_files_share_one_leaf_pool_stopped_at_shut_down(tmp_path: Path) -> None:
    files, _ = open_files(tmp_path)
    node = File(PendingFile(b""))
    buffer = files.add(node, OpenFile(files.new_buffer(None)))
    assert not files.pool.started
    buffer.data.write(0, b"\1" * BLOCK_LIMIT)  # a full leaf: handed to the pool
    assert files.pool.started
    files.shut_down()
    assert len(files) == 0 and not files.pool.started
