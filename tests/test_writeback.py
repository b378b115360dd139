"""Writing back ahead of the commit: a flush follows writes, one for all the writes of a moment.

No timings are asserted: the flushes are counted, and a flush that blocks until released
shows which writes it can still cover.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from ipldmount.blocks import DirectoryBlockstore
from ipldmount.blocks import directory as directory_module
from ipldmount.blocks.writeback import WritebackAhead
from ipldmount.ipld import cid as cids

WAIT = 30.0  # seconds: a bound on waiting for the background thread, never a measurement


class Flushes:
    """A flush that says when it starts and waits to be let go."""

    def __init__(self) -> None:
        self.started = threading.Semaphore(0)
        self.release = threading.Semaphore(0)
        self.count = 0

    def __call__(self) -> None:
        self.count += 1
        self.started.release()
        assert self.release.acquire(timeout=WAIT)


def test_a_write_is_followed_by_a_flush() -> None:
    flushes = Flushes()
    writeback = WritebackAhead(flushes, delay=0.0)
    writeback.written()
    assert flushes.started.acquire(timeout=WAIT)
    flushes.release.release()


def test_writes_during_a_flush_call_for_exactly_one_more() -> None:
    flushes = Flushes()
    writeback = WritebackAhead(flushes, delay=0.0, idle=WAIT)
    writeback.written()
    assert flushes.started.acquire(timeout=WAIT)  # the first flush runs, held
    for _ in range(100):  # written after it began: it may not cover them
        writeback.written()
    flushes.release.release()
    assert flushes.started.acquire(timeout=WAIT)  # so one more flush comes, for all hundred
    flushes.release.release()
    assert not flushes.started.acquire(timeout=0.5)  # and no third: nothing was written since
    assert flushes.count == 2


def test_a_failing_flush_is_logged_and_the_next_write_flushes_again(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []
    done = threading.Semaphore(0)

    def flush() -> None:
        calls.append(1)
        done.release()
        if len(calls) == 1:
            raise OSError(5, "Input/output error")

    writeback = WritebackAhead(flush, delay=0.0)
    writeback.written()
    assert done.acquire(timeout=WAIT)
    writeback.written()
    assert done.acquire(timeout=WAIT)
    assert len(calls) == 2
    assert "flushing ahead of the commit failed" in caplog.text


def test_the_thread_ends_when_writes_stop_and_a_new_write_starts_another() -> None:
    flushes = Flushes()
    writeback = WritebackAhead(flushes, delay=0.0, idle=0.0)
    writeback.written()
    assert flushes.started.acquire(timeout=WAIT)
    first = writeback._thread
    assert first is not None
    flushes.release.release()
    first.join(timeout=WAIT)
    assert not first.is_alive()
    writeback.written()
    assert flushes.started.acquire(timeout=WAIT)
    flushes.release.release()


def test_a_directory_store_flushes_what_it_wrote_without_an_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A block put without an fsync (durable=False) is followed by a flush of its filesystem;
    one fsynced as it is written (durable) calls for none."""
    flushed = threading.Semaphore(0)
    real = directory_module._sync_filesystem

    def counting(path: Path) -> None:
        real(path)
        flushed.release()

    monkeypatch.setattr(directory_module, "_sync_filesystem", counting)
    durable = DirectoryBlockstore(tmp_path / "durable")
    durable.put(b"fsynced as written", cids.RAW)
    assert not flushed.acquire(timeout=1.0)
    store = DirectoryBlockstore(tmp_path / "store", durable=False)
    cid = store.put(b"written without an fsync", cids.RAW)
    assert flushed.acquire(timeout=WAIT)
    assert store.get(cid) == b"written without an fsync"
