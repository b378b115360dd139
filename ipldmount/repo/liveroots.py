"""Roots that live in-process stores rely on: published in ``STORE/live/``, kept by gc.

An :class:`~ipldmount.adapters.zarr_store.IPLDStore` on a store on disk reads the tree it opened and, after
each ``freeze()``, the root it made. The history keeps only the newest roots of each origin, and
every in-process store of one store shares an origin, so a store in another process could see
its tree collected under it. Each such store therefore publishes its root in a file of its own,
locked for as long as the store (and its process) lives (:func:`~ipldmount.blocks.lease.
publish_locked`); garbage collection keeps every root a locked file names.

A new root is published in a new file before the old file goes, so a collector reading the
folder sees one or the other; one that finds a file gone while it reads looks again.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from ipldmount.blocks.lease import OpenFile, publish_locked, read_if_locked
from ipldmount.errors import IpldmountError

log = logging.getLogger(__name__)

MAX_ROOTS_FILE = 1 << 16  # bytes read of one published file: a few roots' CIDs
MAX_RESCANS = 1000  # passes over the folder before a collector gives up on a churning writer


class LiveRoots:
    """This store's published roots: replaced by :meth:`publish`, gone at :meth:`close` or exit."""

    def __init__(self, folder: Path, open_file: OpenFile, make_dir: Callable[[Path], Path]) -> None:
        self.folder = folder
        self._open_file = open_file
        self._make_dir = make_dir
        self._held: list[tuple[int, Path]] = []  # a one-item list, shared with the finalizer
        self._said: list[str] = []  # the roots the held file names
        self._finalizer = weakref.finalize(self, _retire, self._held)

    def publish(self, roots: list[str]) -> None:
        """Say that *roots* are in use, then stop saying what was said before (nothing to do when
        they are what is said already: a freeze that changed nothing)."""
        if self._held and roots == self._said:
            return
        self._said = list(roots)
        data = "".join(f"{root}\n" for root in roots).encode()
        published = publish_locked(self.folder, data, self._open_file, self._make_dir)
        old = list(self._held)
        self._held[:] = [published]
        _retire(old)

    def close(self) -> None:
        self._finalizer()


def _retire(held: list[tuple[int, Path]]) -> None:
    for fd, path in held:
        with suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)
    held.clear()


def live_roots(folder: Path) -> list[str]:
    """Every root a live store has published; files of stores that are gone are removed."""
    if not folder.is_dir():
        return []
    seen: set[str] = set()
    found: list[str] = []
    for _ in range(MAX_RESCANS):
        fresh = [name for name in sorted(os.listdir(folder)) if name not in seen]
        vanished = False
        for name in fresh:
            seen.add(name)
            if name.startswith("."):
                read_if_locked(folder / name, 0)  # not published yet, or left by a writer that died
                continue
            data = read_if_locked(folder / name, MAX_ROOTS_FILE)
            if data is None:
                vanished = True  # retired (its replacement may be newer than our listing) or dead
                continue
            found += data.decode(errors="replace").split()
        if not vanished:
            return found
    raise IpldmountError(f"the roots live stores publish in {folder} change too fast to be read")
