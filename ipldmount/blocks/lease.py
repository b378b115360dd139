"""What keeps garbage collection from racing writers of a store on disk.

Two mechanisms, both advisory file locks (``flock``), so they hold across processes and
vanish with a process that dies:

- **The sweep lock.** A writer that finds a block already stored and relies on it instead
  of writing it (a *claim*) refreshes the block's mtime under a shared lock; the collector
  removes blocks in batches under the exclusive lock, each only if its mtime is older than
  the protection time. So a claim either lands before the collector looks at the block (and
  the block is kept) or after it is gone (and the writer writes it again).
- **Writer leases.** A process that writes or claims blocks holds a lease file, locked for
  as long as it lives, that says since when it has held blocks no root or journal refers to
  yet (its *horizon*). The collector keeps every block written or claimed since the oldest
  live horizon. A writer ends its lease (:meth:`WriterLease.settle`) once what it stored is
  referenced: a mount at each sync, ``IPLDStore.freeze``, an import once recorded. Work that
  stores blocks and then links them in (a value set by another thread while a freeze runs, a
  file closed while a sync runs) is *held* (:meth:`WriterLease.holding`): a settle never ends
  the lease past the start of a hold still open, whose blocks no root names yet.

A lease file is written under a hidden name, locked, and only then renamed into the folder,
so a collector never finds a live writer's lease unlocked (it would take it for a dead one's).
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

log = logging.getLogger(__name__)

CLOCK_MARGIN = 0.1  # seconds a horizon is moved back: mtimes lag time.time() by up to a tick

_LEASE_WIDTH = 32  # bytes: a horizon, or blanks for none
_STALE_HIDDEN = 60.0  # seconds: a hidden (unrenamed) lease this old and unlocked is a dead writer's

OpenFile = Callable[[Path, int], int]


class SweepLock:
    """Shared for claims (any number of threads), exclusive for a batch of removals."""

    def __init__(self, path: Path, open_file: OpenFile) -> None:
        self.path = path
        self._open_file = open_file
        self._fd: int | None = None
        self._holders = 0
        self._guard = threading.Lock()

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._guard:
            if self._holders == 0:
                if self._fd is None:
                    self._fd = self._open_file(self.path, os.O_RDWR | os.O_CREAT)
                fcntl.flock(self._fd, fcntl.LOCK_SH)  # waits for a batch of removals to end
            self._holders += 1
        try:
            yield
        finally:
            with self._guard:
                self._holders -= 1
                if self._holders == 0 and self._fd is not None:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """A lock of its own (a new open file), so it excludes this process's claims as well."""
        fd = self._open_file(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


class WriterLease:
    """This process's lease over the blocks it wrote or claimed and has not settled yet."""

    def __init__(self, folder: Path, open_file: OpenFile, make_dir: Callable[[Path], Path]) -> None:
        self.folder = folder
        self._open_file = open_file
        self._make_dir = make_dir
        self._fd: int | None = None
        self._pid = 0
        self.horizon: float | None = None
        self.latest = 0.0  # when the last write or claim began
        self._holds: dict[int, float] = {}  # open holds: token -> when it began
        self._next_hold = 0
        self._guard = threading.Lock()

    @contextmanager
    def holding(self) -> Iterator[None]:
        """Around work that stores blocks and then links them into a tree or journal: until it
        ends, no :meth:`settle` ends the lease over what it stored (see the module)."""
        with self._guard:
            token, self._next_hold = self._next_hold, self._next_hold + 1
            self._holds[token] = time.time()
        try:
            yield
        finally:
            with self._guard:
                del self._holds[token]

    def begin(self) -> None:
        """Called before each write or claim: starts the horizon if none is running."""
        self.latest = time.time()
        if self.horizon is not None and self._pid == os.getpid():
            return
        with self._guard:
            if self._pid != os.getpid():  # a forked child must hold its own lease
                self._fd, self._pid = None, os.getpid()
            if self.horizon is None:
                self.horizon = time.time() - CLOCK_MARGIN
                self._write(f"{self.horizon:.3f}")

    def settle(self, before: float) -> None:
        """Everything written or claimed before *before* (``time.time()``) is referenced by a
        kept root or a journal; what began later, or within a hold still open, stays leased."""
        with self._guard:
            if self._holds:
                before = min(before, *self._holds.values())
            if self.horizon is None or self._fd is None or self._pid != os.getpid():
                return
            if self.latest >= before:
                self.horizon = max(self.horizon, before - CLOCK_MARGIN)
                self._write(f"{self.horizon:.3f}")
            else:
                self.horizon = None
                self._write("")

    def _write(self, text: str) -> None:
        """One fixed-width write, so a reader never sees the file half changed."""
        if self._fd is None:
            data = text.ljust(_LEASE_WIDTH).encode()
            self._fd, _ = publish_locked(self.folder, data, self._open_file, self._make_dir)
            return
        os.pwrite(self._fd, text.ljust(_LEASE_WIDTH).encode(), 0)


def publish_locked(
    folder: Path, data: bytes, open_file: OpenFile, make_dir: Callable[[Path], Path]
) -> tuple[int, Path]:
    """A new file in *folder* holding *data*, shared-locked before it gets its name there (a
    reader that finds it unlocked knows its writer is gone): its locked descriptor, and path."""
    make_dir(folder)
    name = f"{os.getpid()}-{secrets.token_hex(8)}"
    hidden = folder / f".{name}"
    fd = open_file(hidden, os.O_RDWR | os.O_CREAT | os.O_EXCL)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # held until the descriptor is closed (or the process ends)
        os.pwrite(fd, data, 0)
        os.rename(hidden, folder / name)
    except BaseException:
        os.close(fd)
        hidden.unlink(missing_ok=True)
        raise
    return fd, folder / name


def read_if_locked(path: Path, size: int) -> bytes | None:
    """The first *size* bytes of a published file whose writer lives; None (and the file removed)
    once its writer is gone. Hidden files not renamed yet are skipped, and removed when stale."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held: its writer lives
            return os.pread(fd, size, 0)
        hidden = path.name.startswith(".")
        if not hidden or time.time() - os.fstat(fd).st_mtime > _STALE_HIDDEN:
            with suppress(FileNotFoundError):
                path.unlink()  # its writer is gone (a name is never reused: no one else's file)
        return None
    finally:
        os.close(fd)


def live_horizons(folder: Path) -> list[float]:
    """The horizons of live writers' leases; leases of writers that died are removed."""
    horizons: list[float] = []
    if not folder.is_dir():
        return horizons
    for entry in os.scandir(folder):
        path = Path(entry.path)
        if entry.name.startswith("."):
            read_if_locked(path, 0)  # not published yet (its writer holds nothing yet), or stale
            continue
        horizon = _horizon(path, read_if_locked(path, _LEASE_WIDTH))
        if horizon is not None:
            horizons.append(horizon)
    return horizons


def _horizon(path: Path, data: bytes | None) -> float | None:
    if data is None:
        return None
    text = data.decode(errors="replace").strip()
    try:
        return float(text) if text else None
    except ValueError:
        log.warning("unreadable lease %s: keeping every block written or claimed", path)
        return 0.0
