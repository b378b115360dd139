"""The store's history: every root a sync, an import or ``IPLDStore.freeze()`` made, and tags.

The registry is one append-only file of JSON lines, each appended with a single
``write`` and fsynced: readers in other processes see whole lines, and a crash
can at worst tear the last line, which readers skip. Tags are one small JSON map,
replaced atomically (temporary file, fsync, rename). :class:`~ipldmount.repo.home.StoreHome`
says where both live.
"""

from __future__ import annotations

import fcntl
import hashlib
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

from ipldmount.blocks import fsync_dir, replacing
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
    commit: str | None = None  # the commit of this version (None: a line from before commits)
    branch: str | None = None  # the branch this line moved to *commit* (the reflog)
    previous: str | None = None  # the branch's head before, if it had one

    @staticmethod
    def now() -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    @classmethod
    def made(
        cls,
        root: bytes,
        source: str,
        where: str,
        parent: bytes | None = None,
        message: str | None = None,
        car: Path | None = None,
        *,
        commit: bytes | None = None,
        branch: str | None = None,
        previous: bytes | None = None,
    ) -> RootRecord:
        """The record of *root*, made now."""
        return cls(
            cids.cid_to_str(root),
            cls.now(),
            source,
            where,
            _shown(parent),
            message,
            str(car) if car is not None else None,
            _shown(commit),
            branch,
            _shown(previous),
        )

    def as_json(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value not in (None, "")}


def _shown(cid: bytes | None) -> str | None:
    return cids.cid_to_str(cid) if cid is not None else None


class HistoryDamagedError(IpldmountError):
    """The history cannot be read whole: what it no longer names would look collectable."""


@dataclass(frozen=True)
class History:
    """The history read whole: every root record, oldest first, and the roots gc dropped since."""

    records: list[RootRecord]
    live: list[RootRecord]  # the records no later `dropped` line let go, newest first
    damaged: list[str]  # "line N: why", for each line that could not be read
    dropped: set[str]  # roots a collection let go (and no later record made again)

    def check(self, path: Path) -> None:
        """Refuse to go on from a damaged history, saying what is wrong and how to mend it."""
        if not self.damaged:
            return
        shown = "; ".join(self.damaged[:3]) + (
            f"; and {len(self.damaged) - 3} more" if len(self.damaged) > 3 else ""
        )
        raise HistoryDamagedError(
            f"{path} cannot be read whole ({shown}): nothing was collected. `ipldmount log --repair` "
            f"sets the damaged lines aside (tagging every root they still name) and seals the rest"
        )


class Registry:
    """The roots of a store, oldest first on disk (``history`` gives newest first).

    Each line carries a checksum of itself (``sum``), and the *head* file says how long the file
    was after the last append and that line's checksum: a changed byte, a torn line or a cut
    tail is found (:meth:`read_whole`), so garbage collection refuses rather than take the
    blocks of roots it can no longer see. Lines from before checksums are read as they are.
    """

    def __init__(self, path: Path, open_private: OpenPrivate, head: Path, set_aside: Path) -> None:
        self.path = path
        self.head = head  # the log's size after the last append, and that line's checksum
        self.set_aside = set_aside  # where `log --repair` puts damaged lines
        self._open = open_private

    def record(self, record: RootRecord) -> None:
        self._append([record.as_json()])

    def drop(self, roots: list[str], reason: str) -> None:
        """Say that garbage collection lets *roots* go: from now on they are partial, not kept.
        Written before the first block goes, so a collection cut short leaves no half root
        that looks whole (a later record of the same root makes it count again)."""
        if roots:
            when = RootRecord.now()
            self._append([{"dropped": root, "time": when, "reason": reason} for root in roots])

    def records(self) -> list[RootRecord]:
        """Every root record that can be read, oldest first; damaged lines are said and skipped."""
        history = self.read_whole()
        for damage in history.damaged:
            log.warning("%s: %s; skipped", self.path, damage)
        return history.records

    def history(self, where: str | None = None) -> list[RootRecord]:
        """Newest first; only a mountpoint's syncs if *where* is given."""
        records = self.records()
        if where is not None:
            records = [record for record in records if record.source == "mount" and record.where == where]
        return records[::-1]

    def read_whole(self) -> History:
        """The whole history, with every line that cannot be trusted named."""
        head = self._read_head()  # before the log: an append between the two only adds lines
        data = self._read_bytes()
        records, dropped_at, damaged = _parse_history(data)
        damaged += _head_damage(head, data)
        live = [record for index, record in records if dropped_at.get(record.root, -1) < index]
        dropped = set(dropped_at) - {record.root for record in live}
        return History([record for _, record in records], live[::-1], damaged, dropped)

    def _read_head(self) -> dict[str, Any] | None:
        try:
            value = json.loads(self.head.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError:
            return {"unreadable": True}
        return value if isinstance(value, dict) else {"unreadable": True}

    def _append(self, values: list[dict[str, Any]]) -> None:
        """Append sealed lines with one write and fsync, then say so in the head (one writer at a
        time: the store's folder is locked, as for tags)."""
        lines = [_sealed(value) for value in values]
        with _locked_folder(self.path.parent):
            size = _append_lines(self.path, self._open, b"".join(lines))
            self._write_head(size, _line_sum(lines[-1]) or "")

    def _write_head(self, size: int, last_sum: str) -> None:
        temporary = self.head.with_name(f".{self.head.name}.{os.getpid()}")
        fd = self._open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            os.write(fd, json.dumps({"size": size, "sum": last_sum}).encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.head)

    def repair(self, tags: Tags, has: Callable[[str], bool]) -> tuple[int, list[str]]:
        """Set the damaged lines aside (in *set_aside*), tag every stored root they still
        name (``recovered-N``), and seal the rest anew. Returns (lines set aside, tags made)."""
        _, bad = _split_damaged(self._read_bytes())
        made = _tag_recovered(tags, bad, has)  # first: tags lock the same folder
        with _locked_folder(self.path.parent):
            good, bad = _split_damaged(self._read_bytes())
            if bad:
                _append_lines(self.set_aside, self._open, b"".join(bad))
            self._replace(b"".join(good))
        return len(bad), made

    def fill(self, change: Callable[[RootRecord], RootRecord]) -> int:
        """Rewrite the history whole with *change* applied to each root record (an upgrade), under
        the lock, atomically; ``dropped`` lines stay as they are. How many records changed."""
        changed = 0
        with _locked_folder(self.path.parent):
            lines: list[bytes] = []
            for line in self._read_bytes().split(b"\n"):
                if not line.strip():
                    continue
                record, _ = _line_damage(line)
                if isinstance(record, RootRecord) and (new := change(record)) != record:
                    line, changed = _sealed(new.as_json()).rstrip(b"\n"), changed + 1
                lines.append(line + b"\n")
            if changed:
                self._replace(b"".join(lines))
        return changed

    def _read_bytes(self) -> bytes:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return b""

    def _replace(self, data: bytes) -> None:
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        fd = self._open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.path)
        fsync_dir(self.path.parent)
        last = data.rstrip(b"\n").rsplit(b"\n", 1)[-1]
        self._write_head(len(data), _line_sum(last) or "")


@contextmanager
def _locked_folder(folder: Path) -> Iterator[None]:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


_SUM_KEY = b'"sum": "'
_SUM_WIDTH = 16  # hex digits of a line's checksum
_SUM_BLANK = b"0" * _SUM_WIDTH


def _sealed(value: dict[str, Any]) -> bytes:
    """*value* as a JSON line whose ``sum`` is the checksum of the line with a blank sum in its place
    (so a reader checks the bytes as they are, without encoding anything again)."""
    blank = json.dumps(value | {"sum": _SUM_BLANK.decode()}, sort_keys=True).encode()
    return blank.replace(_SUM_KEY + _SUM_BLANK, _SUM_KEY + _checksum(blank), 1) + b"\n"


def _checksum(line: bytes) -> bytes:
    return hashlib.sha256(line).hexdigest()[:_SUM_WIDTH].encode()


def _line_sum(line: bytes) -> str | None:
    """The checksum a line carries (None: a line from before checksums, or no key at all)."""
    at = line.find(_SUM_KEY)
    return (
        None
        if at < 0
        else line[at + len(_SUM_KEY) : at + len(_SUM_KEY) + _SUM_WIDTH].decode(errors="replace")
    )


def _seal_holds(line: bytes) -> bool:
    at = line.find(_SUM_KEY) + len(_SUM_KEY)
    carried = line[at : at + _SUM_WIDTH]
    return _checksum(line[:at] + _SUM_BLANK + line[at + _SUM_WIDTH :]) == carried


def _line_damage(line: bytes) -> tuple[RootRecord | str | None, str | None]:
    """A line's record (a root record, or the root of a ``dropped`` line), or why it cannot be
    trusted."""
    try:
        value = json.loads(line.decode())
    except (ValueError, UnicodeDecodeError):
        return None, "not a JSON record"
    if not isinstance(value, dict):
        return None, "not a JSON record"
    sealed = "sum" in value
    if sealed and not _seal_holds(line.rstrip()):
        return None, "its checksum does not match (changed since it was written)"
    if "dropped" in value:
        return (
            (value["dropped"], None) if isinstance(value["dropped"], str) else (None, "not a history record")
        )
    value.pop("sum", None)
    try:
        record = RootRecord(**value)
        if not sealed:  # a sealed line is as it was written, and what was written was checked
            cids.parse_cid(record.root)
    except (TypeError, InvalidCIDError, ValueError):
        return None, "not a root record"
    return record, None


def _parse_history(data: bytes) -> tuple[list[tuple[int, RootRecord]], dict[str, int], list[str]]:
    """(index, record) of each root record, the index of each root's last `dropped` line, damage."""
    records: list[tuple[int, RootRecord]] = []
    dropped_at: dict[str, int] = {}
    damaged: list[str] = []
    for number, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        record, damage = _line_damage(line)
        if record is None:
            damaged.append(f"line {number}: {damage}")
        elif isinstance(record, str):
            dropped_at[record] = number
        else:
            records.append((number, record))
    return records, dropped_at, damaged


def _head_damage(head: dict[str, Any] | None, data: bytes) -> list[str]:
    """What the head says is missing or changed at the end of the log (nothing if it agrees)."""
    if head is None:
        return []
    size, last_sum = head.get("size"), head.get("sum")
    if not isinstance(size, int) or not isinstance(last_sum, str):
        return ["its head file is unreadable"]
    if len(data) < size:
        return [f"the file is {len(data)} bytes, {size - len(data)} fewer than last written (cut short)"]
    last = data[:size].rstrip(b"\n").rsplit(b"\n", 1)[-1]
    if _line_sum(last) != last_sum:
        return [f"the line ending at byte {size} is not the one last written"]
    return []


def _split_damaged(data: bytes) -> tuple[list[bytes], list[bytes]]:
    """The log's lines that read as whole, and the rest."""
    good: list[bytes] = []
    bad: list[bytes] = []
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        value, _ = _line_damage(line)
        if value is None:
            bad.append(line + b"\n")
        else:
            good.append(line + b"\n")
    return good, bad


def _tag_recovered(tags: Tags, lines: list[bytes], has: Callable[[str], bool]) -> list[str]:
    """Tag every stored root a damaged line still names, so nothing it kept is collected."""
    made: list[str] = []
    known = set(tags.all().values())
    for line in lines:
        for word in re.findall(rb"[A-Za-z0-9]{40,}", line):
            text = word.decode()
            try:
                cids.parse_cid(text)
            except InvalidCIDError:
                continue
            if text not in known and has(text):
                name = free_tag_name(tags, "recovered")
                tags.set(name, cids.parse_cid(text))
                known.add(text)
                made.append(name)
    return made


def free_tag_name(tags: Tags, prefix: str) -> str:
    """``PREFIX-N`` for the smallest N no tag has."""
    taken = tags.all()
    number = 1
    while f"{prefix}-{number}" in taken:
        number += 1
    return f"{prefix}-{number}"


def _append_lines(path: Path, open_private: OpenPrivate, data: bytes) -> int:
    """Append whole lines with a single write and fsync them; the file's size after."""
    fd = open_private(path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data  # after a line a crash tore: keep ours whole
        if os.write(fd, data) != len(data):
            raise OSError(f"short write to {path}")
        os.fsync(fd)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def _append_line(path: Path, open_private: OpenPrivate, value: dict[str, Any]) -> None:
    """Append *value* as one JSON line with a single write, and fsync it."""
    _append_lines(path, open_private, (json.dumps(value, sort_keys=True) + "\n").encode())


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
    commit: str | None = None  # the commit pushed with its history, *root* its tree (None: a tree alone)


class PushLedger:
    """The roots pushed to IPFS nodes, oldest first on disk: bases for the next push's difference."""

    def __init__(self, path: Path, open_private: OpenPrivate) -> None:
        self.path = path
        self._open = open_private

    def record(self, record: PushRecord) -> None:
        """Append *record* (without the fields it leaves empty: a tree's line reads as before)."""
        _append_line(
            self.path, self._open, {key: value for key, value in asdict(record).items() if value is not None}
        )

    def roots_on(self, node: str, limit: int = 8) -> list[bytes]:
        """The newest *limit* distinct roots pushed to *node*, newest first."""
        return self._newest(node, limit, lambda record: record.root)

    def commits_on(self, node: str, limit: int = 8, *, pinned: bool = False) -> list[bytes]:
        """The newest *limit* distinct commits pushed to *node* with their history (only those
        pinned there, if *pinned*), newest first."""
        return self._newest(
            node, limit, lambda record: record.commit if record.pinned or not pinned else None
        )

    def _newest(self, node: str, limit: int, field: Callable[[PushRecord], str | None]) -> list[bytes]:
        found: list[bytes] = []
        for number, value in reversed(list(_read_lines(self.path))):
            try:
                record = PushRecord(**value)
                text = field(record)
                cid = cids.parse_cid(text) if text is not None else None
            except (TypeError, InvalidCIDError):
                log.warning("%s: line %d is not a push record; skipped", self.path, number)
                continue
            if record.node == node and cid is not None and cid not in found:
                found.append(cid)
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
        replace_json(self.path, self._tmp_dir, self._open, tags)


def replace_json(path: Path, tmp_dir: Path, open_private: OpenPrivate, value: dict[str, str]) -> None:
    """Replace *path* by *value* as JSON whole: a temporary file in *tmp_dir*, fsynced, renamed
    over it, the folder fsynced. A reader sees the old file or the new one, never a mix."""
    temporary = tmp_dir / f"{os.getpid()}-{secrets.token_hex(8)}.tmp"
    fd = open_private(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    with replacing(fd, temporary, path) as stream:
        stream.write(json.dumps(value, indent=1, sort_keys=True).encode() + b"\n")


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
