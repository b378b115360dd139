"""The journal of unsynced changes alone (repo/journal.py): what it writes, what it reads back,
and what it refuses; tests/test_session.py replays one after a crash."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from ipldmount.ipld import cid as cids
from ipldmount.repo.journal import FORMAT, VERSION, Journal, JournalError, decode_data, encode_data

ROOT = cids.block_cid(cids.DAG_CBOR, b"\xa0")
OTHER = cids.block_cid(cids.DAG_CBOR, b"\xa1\x61a\xa0")


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "journal")


def test_records_read_back_in_order_on_their_root(journal: Journal) -> None:
    assert journal.read() is None, "no file: no journal"
    journal.start(ROOT)
    journal.append("mkdir", path="d")
    journal.append("write", path="d/f", data=encode_data(b"\0bytes"))
    journal.append("rename", src="d/f", dst="g")
    journal.flush()
    assert journal.pending == 3
    pending = journal.read()
    assert pending is not None and pending.root == ROOT
    assert pending.records == [
        {"op": "mkdir", "path": "d"},
        {"op": "write", "path": "d/f", "data": encode_data(b"\0bytes")},
        {"op": "rename", "src": "d/f", "dst": "g"},
    ]
    assert decode_data(pending.records[1]["data"]) == b"\0bytes"
    assert stat.S_IMODE(os.stat(journal.path).st_mode) == 0o600, "paths are private"
    journal.close()


def test_each_record_is_one_line_after_a_header(journal: Journal) -> None:
    journal.start(None)
    journal.append("unlink", path="a\nb")  # a newline in a name stays inside its record
    lines = journal.path.read_bytes().split(b"\n")
    assert len(lines) == 3 and lines[-1] == b""
    assert FORMAT.encode() in lines[0] and str(VERSION).encode() in lines[0]
    pending = journal.read()
    assert (
        pending is not None and pending.root is None and pending.records == [{"op": "unlink", "path": "a\nb"}]
    )
    journal.close()


def test_a_reset_starts_over_on_the_new_root_and_appends_go_on(journal: Journal) -> None:
    journal.start(ROOT)
    journal.append("mkdir", path="d")
    journal.reset(OTHER)
    assert journal.pending == 0
    pending = journal.read()
    assert pending is not None and pending.root == OTHER and pending.records == []
    journal.append("rmdir", path="d")  # into the new file, not the replaced one
    pending = journal.read()
    assert pending is not None and pending.records == [{"op": "rmdir", "path": "d"}]
    assert not journal.path.with_name(journal.path.name + ".new").exists()
    journal.close()


def test_start_with_keep_continues_a_journal(journal: Journal) -> None:
    journal.start(ROOT)
    journal.append("mkdir", path="a")
    journal.close()
    again = Journal(journal.path)
    again.start(ROOT, keep=True)
    again.append("mkdir", path="b")
    pending = again.read()
    assert pending is not None and [record["path"] for record in pending.records] == ["a", "b"]
    again.remove()
    assert not journal.path.exists() and again.read() is None


def test_append_needs_a_started_journal(journal: Journal) -> None:
    with pytest.raises(JournalError, match="not open"):
        journal.append("mkdir", path="d")
    journal.flush()  # nothing open: nothing to do


def test_a_torn_last_line_is_ignored(journal: Journal, caplog: pytest.LogCaptureFixture) -> None:
    """A daemon killed in the middle of a write leaves a last line without its newline: that
    record never finished (its request was never answered), the others are whole."""
    journal.start(ROOT)
    journal.append("mkdir", path="d")
    journal.close()
    with open(journal.path, "ab") as stream:
        stream.write(b'{"op":"mkdir","pa')
    with caplog.at_level(logging.WARNING, logger="ipldmount.repo.journal"):
        pending = Journal(journal.path).read()
    assert pending is not None and pending.records == [{"op": "mkdir", "path": "d"}]
    assert "torn last record" in caplog.text


def test_a_torn_header_alone_is_no_journal(journal: Journal) -> None:
    journal.path.write_bytes(b'{"format": "ipldmount-jour')
    with pytest.raises(JournalError, match="no header"):
        journal.read()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (b"not json at all\n", "unreadable journal record"),
        (b"[1, 2]\n", "not an object"),
    ],
)
def test_a_damaged_line_is_refused(journal: Journal, damage: bytes, message: str) -> None:
    """A complete line that is not a record means the file is not what was written: refused,
    never skipped (a record skipped would replay the others on the wrong tree)."""
    journal.start(ROOT)
    journal.append("mkdir", path="a")
    journal.close()
    with open(journal.path, "ab") as stream:
        stream.write(damage)
        stream.write(b'{"op":"mkdir","path":"b"}\n')
    with pytest.raises(JournalError, match=message):
        journal.read()


def test_a_file_that_is_not_a_journal_is_refused(journal: Journal) -> None:
    journal.path.write_bytes(b'{"format": "something else", "version": 1}\n')
    with pytest.raises(JournalError, match="not an ipldmount journal"):
        journal.read()
    journal.path.write_bytes(b'{"format": "%s", "version": %d}\n' % (FORMAT.encode(), VERSION + 1))
    with pytest.raises(JournalError, match="not an ipldmount journal"):
        journal.read()
