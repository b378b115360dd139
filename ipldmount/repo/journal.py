"""The journal of unsynced changes, so a killed daemon loses nothing that was closed.

One file of JSON lines per mount: a header naming the root the changes apply
to, then one record per tree change, in path terms. File contents are already
in the blockstore when their record is written (or, for small metadata files,
inside the record), so replaying the records on the base root rebuilds the
tree exactly. A sync replaces the file atomically with a bare header.

Each record is one ``write(2)`` to an ``O_APPEND`` file, which survives the
process being killed; :meth:`Journal.flush` adds ``fdatasync`` for ``fsync``
requests and syncs, which survives the machine going down.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipldmount.blocks import fsync_dir
from ipldmount.errors import IpldmountError
from ipldmount.ipld import cid as cids

log = logging.getLogger(__name__)

FORMAT = "ipldmount-journal"
VERSION = 1


class JournalError(IpldmountError):
    """The journal file cannot be read as a journal."""


@dataclass
class Pending:
    """What a journal holds: the base root and the changes made on top of it."""

    root: bytes | None
    records: list[dict[str, Any]] = field(default_factory=list)
    commit: bytes | None = None  # the commit *root* is the tree of (None: none yet)
    branch: str | None = None  # the branch the next sync moves (None: detached)


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self.pending = 0  # records since the base root

    # --- reading -------------------------------------------------------------

    def read(self) -> Pending | None:
        """The pending changes on disk, or None when there is no journal."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        *lines, torn = data.split(b"\n")  # every complete record ends with a newline
        if torn:
            log.warning("%s: ignoring a torn last record (the daemon died mid-write)", self.path)
        if not lines:
            raise JournalError(f"{self.path} has no header")
        header = _parse_line(lines[0], self.path)
        if header.get("format") != FORMAT or header.get("version") != VERSION:
            raise JournalError(f"{self.path} is not an ipldmount journal (version {VERSION})")
        root = cids.parse_cid(header["root"]) if header.get("root") else None
        commit = cids.parse_cid(header["commit"]) if header.get("commit") else None
        branch = header.get("branch")
        if branch is not None and not isinstance(branch, str):
            raise JournalError(f"{self.path}: its header's branch is not a name")
        records = [_parse_line(line, self.path) for line in lines[1:] if line]
        return Pending(root, records, commit, branch)

    # --- writing -------------------------------------------------------------

    def start(
        self,
        root: bytes | None,
        keep: bool = False,
        *,
        commit: bytes | None = None,
        branch: str | None = None,
    ) -> None:
        """Begin (or with *keep*, continue) the journal on base *root* (the tree of *commit*)."""
        if not keep:
            self.reset(root, commit=commit, branch=branch)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def append(self, op: str, **fields: Any) -> None:
        if self._fd is None:
            raise JournalError("journal is not open")
        record = {"op": op, **fields}
        os.write(self._fd, json.dumps(record, separators=(",", ":")).encode() + b"\n")
        self.pending += 1

    def flush(self) -> None:
        """Make every appended record survive a machine crash."""
        if self._fd is not None:
            os.fdatasync(self._fd)

    def reset(self, root: bytes | None, *, commit: bytes | None = None, branch: str | None = None) -> None:
        """Atomically replace the journal by an empty one based on *root* (the tree of *commit*,
        on *branch*: what a recovery goes on from)."""
        header: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "root": cids.cid_to_str(root) if root else None,
        }
        if commit is not None:
            header["commit"] = cids.cid_to_str(commit)
        if branch is not None:
            header["branch"] = branch
        temporary = self.path.with_name(self.path.name + ".new")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as stream:  # names are private too: 0600 whatever the umask allows
            stream.write(json.dumps(header).encode() + b"\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, self.path)
        fsync_dir(self.path.parent)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self.pending = 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        """Drop the journal once a clean exit has synced everything."""
        self.close()
        self.path.unlink(missing_ok=True)


def encode_data(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_data(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _parse_line(line: bytes, path: Path) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError:
        raise JournalError(f"{path}: unreadable journal record") from None
    if not isinstance(value, dict):
        raise JournalError(f"{path}: journal record is not an object")
    return value
