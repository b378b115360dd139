"""The store's history: every root a sync, an import or ``IPLDStore.freeze()`` made, and tags.

The registry is one append-only file of JSON lines, each appended with a single
``write`` and fsynced: readers in other processes see whole lines, and a crash
can at worst tear the last line, which readers skip. Tags are one small JSON map,
replaced atomically (temporary file, fsync, rename). :class:`~ipldmount.state.home.StoreHome`
says where both live.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ipldmount.blocks import fsync_dir
from ipldmount.errors import InvalidCIDError, IpldmountError
from ipldmount.ipld import cid as cids

log = logging.getLogger(__name__)

OpenPrivate = Callable[[Path, int], int]  # os.open with the store's file mode
TAG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}")
RESERVED_TAGS = frozenset({"empty", "resume"})  # ROOT words of `ipldmount ROOT MOUNTPOINT`


@dataclass(frozen=True)
class RootRecord:
    """One root made in this store."""

    root: str  # its CID
    time: str  # UTC, ISO 8601, to the second
    source: str  # "mount" (a sync or unmount), "import" (a CAR), "api" (IPLDStore.freeze)
    where: str = ""  # the mountpoint, the CAR's path, or the store's folder
    parent: str | None = None  # the root it was made from (a mount's previous root), if any
    message: str | None = None  # `ipldmount sync -m`
    car: str | None = None  # the CAR a sync wrote

    @staticmethod
    def now() -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def as_json(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value not in (None, "")}


class Registry:
    """The roots of a store, oldest first on disk (``history`` gives newest first)."""

    def __init__(self, path: Path, open_private: OpenPrivate) -> None:
        self.path = path
        self._open = open_private

    def record(self, record: RootRecord) -> None:
        _append_line(self.path, self._open, record.as_json())

    def records(self) -> list[RootRecord]:
        found = []
        for number, value in _read_lines(self.path):
            try:
                found.append(RootRecord(**value))
            except TypeError:  # a foreign line: skipped, said
                log.warning("%s: line %d is not a root record; skipped", self.path, number)
        return found

    def history(self, where: str | None = None) -> list[RootRecord]:
        """Newest first; only a mountpoint's syncs if *where* is given."""
        records = self.records()
        if where is not None:
            records = [record for record in records if record.source == "mount" and record.where == where]
        return records[::-1]


def _append_line(path: Path, open_private: OpenPrivate, value: dict[str, Any]) -> None:
    """Append *value* as one JSON line with a single write, and fsync it."""
    line = (json.dumps(value, sort_keys=True) + "\n").encode()
    fd = open_private(path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line  # after a line a crash tore: keep ours whole
        if os.write(fd, line) != len(line):
            raise OSError(f"short write to {path}")
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, value) of each JSON object line; torn or foreign lines are skipped, said."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            value = None
        if isinstance(value, dict):
            yield number, value
        else:
            log.warning("%s: line %d is not a JSON record; skipped", path, number)


@dataclass(frozen=True)
class PushRecord:
    """A root sent to an IPFS node."""

    node: str  # the node's RPC URL
    root: str  # the CID sent
    pinned: bool  # pinned there after sending
    time: str
    blocks: int = 0  # blocks sent


class PushLedger:
    """The roots pushed to IPFS nodes, oldest first on disk: bases for the next push's difference."""

    def __init__(self, path: Path, open_private: OpenPrivate) -> None:
        self.path = path
        self._open = open_private

    def record(self, record: PushRecord) -> None:
        _append_line(self.path, self._open, asdict(record))

    def roots_on(self, node: str, limit: int = 8) -> list[bytes]:
        """The newest *limit* distinct roots pushed to *node*, newest first."""
        found: list[bytes] = []
        for number, value in reversed(list(_read_lines(self.path))):
            try:
                record = PushRecord(**value)
                root = cids.parse_cid(record.root)
            except (TypeError, InvalidCIDError):
                log.warning("%s: line %d is not a push record; skipped", self.path, number)
                continue
            if record.node == node and root not in found:
                found.append(root)
            if len(found) == limit:
                break
        return found


class Tags:
    """Names for roots: ``{"name": "CID", ...}`` in one file, replaced atomically."""

    def __init__(self, path: Path, tmp_dir: Path, open_private: OpenPrivate) -> None:
        self.path = path
        self._tmp_dir = tmp_dir
        self._open = open_private

    def all(self) -> dict[str, str]:
        try:
            value = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise IpldmountError(f"{self.path} is not a tag file: {exc}") from None
        if not isinstance(value, dict):
            raise IpldmountError(f"{self.path} is not a tag file")
        return {str(name): str(cid) for name, cid in value.items()}

    def get(self, name: str) -> bytes | None:
        text = self.all().get(name)
        return cids.parse_cid(text) if text is not None else None

    def set(self, name: str, root: bytes) -> None:
        check_tag_name(name)
        with self._changing() as tags:
            tags[name] = cids.cid_to_str(root)

    def delete(self, name: str) -> None:
        with self._changing() as tags:
            if tags.pop(name, None) is None:
                raise IpldmountError(f"no tag named {name!r}")

    @contextmanager
    def _changing(self) -> Iterator[dict[str, str]]:
        """Read, change and replace the tags as one writer: two `tag` commands at once both count."""
        folder = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(folder, fcntl.LOCK_EX)
            tags = self.all()
            yield tags
            self._replace(tags)
        finally:
            os.close(folder)  # and the lock with it

    def _replace(self, tags: dict[str, str]) -> None:
        temporary = self._tmp_dir / f"{os.getpid()}-{secrets.token_hex(8)}.tmp"
        fd = self._open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            with os.fdopen(fd, "w") as stream:
                json.dump(tags, stream, indent=1, sort_keys=True)
                stream.write("\n")
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        fsync_dir(self.path.parent)


def check_tag_name(name: str) -> None:
    """A tag name must not be mistaken for anything else a ROOT can be."""
    if not TAG_NAME.fullmatch(name) or name in RESERVED_TAGS or name.endswith(".car"):
        raise IpldmountError(
            f"{name!r} cannot be a tag name: use letters, digits and . _ @ + - (at most 100, starting "
            f"with a letter or digit), not 'empty', 'resume' or a name ending in .car"
        )
    try:
        cids.parse_cid(name)
    except InvalidCIDError:
        return
    raise IpldmountError(f"{name!r} cannot be a tag name: it reads as a CID")
