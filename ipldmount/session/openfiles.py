"""The files a session has open: their handles, each file's write buffer and the counters that
keep its stores in order.

Session state a sync needs (everything written so far, closed or not, is committed by it; the
contents open files read are kept from garbage collection), so it lives with the session, not in
a front door. Files are known by their tree node (one per file, whatever its names), never by a
front door's numbers. It is used from one thread (the session's requests); the blocking work on
a buffer (its I/O, :meth:`OpenFiles.new_buffer`) runs wherever the session's runner puts it,
while ``busy`` keeps the buffer open.

What the files do over their life (write, settle, store at close or fsync) is the session's:
:class:`~ipldmount.session.session.Session`. This is what it keeps track of.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ipldmount.blocks import Blockstore
from ipldmount.format.files import FileContent, FileReader, StoredFile
from ipldmount.session.writebuffer import LeafPool, WriteBuffer, open_buffer
from ipldmount.tree.model import File


@dataclass
class OpenFile:
    """A file's content being written, shared by all its handles."""

    data: WriteBuffer
    generation: int = 0  # bumped by every write; a store only clears `dirty` if none came meanwhile
    dirty: bool = False
    busy: int = 0  # requests using `data` in a worker thread right now: it stays open until they finish
    applied: int = -1  # the generation whose content the tree holds: an older store never overwrites it

    def changed(self) -> None:
        """A write or truncate went into `data`."""
        self.generation += 1
        self.dirty = True


class FileHandle:
    """One open of a file (a front door's file handle): what it may do, and the reader of the
    stored content it last read (made again once the file's content changes)."""

    __slots__ = ("node", "reader", "reader_content", "writable")

    def __init__(self, node: File, writable: bool) -> None:
        self.node = node
        self.writable = writable
        self.reader: FileReader | None = None
        self.reader_content: object = None  # the content `reader` reads


class OpenFiles:
    """The open files of one session: handles counted per file, write buffers by file. Owns the
    pool that stages the buffers' full leaves: started on the first, shut down by :meth:`close`."""

    def __init__(self, store: Blockstore, chunk_size: int | None, tmp_dir: Path | None) -> None:
        self._store = store
        self._chunk_size = chunk_size
        self._tmp_dir = tmp_dir
        self._files: dict[File, OpenFile] = {}
        self._handles: dict[File, int] = {}  # open handles per file (a file with none is absent)
        self.pool = LeafPool()

    # --- handles -------------------------------------------------------------------

    def open(self, node: File, writable: bool) -> FileHandle:
        self._handles[node] = self._handles.get(node, 0) + 1
        return FileHandle(node, writable)

    def release(self, handle: FileHandle) -> None:
        node = handle.node
        left = self._handles[node] - 1
        if left:
            self._handles[node] = left
        else:
            del self._handles[node]

    def handles(self, node: File) -> int:
        """How many handles of *node* are open."""
        return self._handles.get(node, 0)

    def in_use(self, node: object) -> bool:
        """Whether *node* has an open handle or a write buffer."""
        return node in self._handles or node in self._files

    def held_contents(self) -> list[bytes]:
        """The stored contents that open handles read (their CIDs, sorted)."""
        return sorted({node.content.cid for node in self._handles if isinstance(node.content, StoredFile)})

    # --- write buffers ---------------------------------------------------------------

    def new_buffer(self, content: FileContent | None) -> WriteBuffer:
        """A write buffer over *content*: reads its root node, so a worker thread's job."""
        return open_buffer(self._store, self._chunk_size, content, self._tmp_dir, self.pool)

    def get(self, node: File) -> OpenFile | None:
        return self._files.get(node)

    def add(self, node: File, file: OpenFile) -> OpenFile:
        self._files[node] = file
        return file

    def close(self, node: File) -> None:
        """Forget *node*'s buffer and let go of what it holds unstored."""
        self._files.pop(node).data.close()

    def __contains__(self, node: object) -> bool:
        return node in self._files

    def __iter__(self) -> Iterator[File]:
        return iter(list(self._files))  # a copy: callers store files (and so may close them) meanwhile

    def __len__(self) -> int:
        return len(self._files)

    def unsaved(self) -> int:
        """How many open files hold writes not yet in the tree."""
        return sum(file.dirty for file in self._files.values())

    def shut_down(self) -> None:
        """The session ends: every buffer lets go of what it holds unstored, the pool stops."""
        for node in list(self._files):
            self.close(node)
        self.pool.close()
