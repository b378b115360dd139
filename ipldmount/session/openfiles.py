"""Files being written: each inode's write buffer and the counters that keep its stores in order.

Mount state a sync needs (everything written so far, closed or not, is committed by it), so it
lives here with the session rather than in the FUSE adapter. It is used from one thread (the
event loop); the blocking work on a buffer (its I/O, :meth:`OpenFiles.new_buffer`) runs
wherever the caller runs it, while ``busy`` keeps the buffer open.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ipldmount.blocks import Blockstore
from ipldmount.format.files import FileContent
from ipldmount.session.writebuffer import WriteBuffer, open_buffer


@dataclass
class OpenFile:
    """An inode's content being written, shared by all its handles."""

    data: WriteBuffer
    handles: int = 0
    generation: int = 0  # bumped by every write; a store only clears `dirty` if none came meanwhile
    dirty: bool = False
    busy: int = 0  # requests using `data` in a worker thread right now: it stays open until they finish
    applied: int = -1  # the generation whose content the tree holds: an older store never overwrites it

    def changed(self) -> None:
        """A write or truncate went into `data`."""
        self.generation += 1
        self.dirty = True


class OpenFiles:
    """The open files of one mount, by inode number."""

    def __init__(self, store: Blockstore, chunk_size: int | None, tmp_dir: Path | None) -> None:
        self._store = store
        self._chunk_size = chunk_size
        self._tmp_dir = tmp_dir
        self._files: dict[int, OpenFile] = {}

    def new_buffer(self, content: FileContent | None) -> WriteBuffer:
        """A write buffer over *content*: reads its root node, so a worker thread's job."""
        return open_buffer(self._store, self._chunk_size, content, self._tmp_dir)

    def get(self, ino: int) -> OpenFile | None:
        return self._files.get(ino)

    def add(self, ino: int, file: OpenFile) -> OpenFile:
        self._files[ino] = file
        return file

    def close(self, ino: int) -> None:
        """Forget *ino*'s buffer and let go of what it holds unstored."""
        self._files.pop(ino).data.close()

    def __contains__(self, ino: object) -> bool:
        return ino in self._files

    def __iter__(self) -> Iterator[int]:
        return iter(list(self._files))  # a copy: callers store files (and so may close them) meanwhile

    def __len__(self) -> int:
        return len(self._files)

    def unsaved(self) -> int:
        """How many open files hold writes not yet in the tree."""
        return sum(file.dirty for file in self._files.values())
