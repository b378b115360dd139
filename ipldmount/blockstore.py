"""Where blocks live: a content-addressed store keyed by binary CIDs.

Two implementations share one contract (:class:`Blockstore`):

* :class:`MemoryBlockstore` keeps blocks in a dict (tests, in-process stores);
* :class:`DirectoryBlockstore` keeps one file per block under a directory, laid
  out like go-ds-flatfs (``blocks/<shard>/<cid>``, shard "next-to-last/2").

Every put is idempotent and content addressed, so two writers racing on the
same block write the same bytes: the loser's rename replaces a file with an
identical one. A :class:`Staging` holds blocks aside until they are committed
(all at once) or discarded (all of them); :meth:`Blockstore.batch` is a staging
for the current thread's puts, made durable together, or (when the ``with`` body
raises) never visible at all.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import json
import logging
import os
import secrets
import stat
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from .cid import DAG_CBOR, RAW, block_cid, cid_to_str, digest_cid, is_supported, parse_cid, verify
from .errors import BlockNotFoundError, CorruptBlockError, InvalidCIDError, IpldmountError, StoreFullError

log = logging.getLogger(__name__)

Chunk = bytes | bytearray | memoryview

STORE_FORMAT = "ipldmount-blockstore"
STORE_VERSION = 1
MARKER_NAME = "STORE"
STALE_TEMP_AGE = 24 * 3600  # seconds; a temp file this old belongs to no live writer
STALE_TEMP_SCAN_LIMIT = 100_000  # entries of tmp/ looked at on open, to keep opening cheap
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


class NotAStoreError(IpldmountError):
    """A directory given as a blockstore is not one (and is not empty, so not made one)."""


def default_store_path() -> Path:
    """The blockstore used when none is named: ``$IPLDMOUNT_STORE``, else the XDG data dir."""
    explicit = os.environ.get("IPLDMOUNT_STORE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    # The XDG spec says to ignore relative values.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "share"
    return base / "ipldmount"


def _check_codec(codec: int) -> int:
    if codec not in (RAW, DAG_CBOR):
        raise InvalidCIDError(f"unsupported codec 0x{codec:x} (only raw 0x55 and dag-cbor 0x71)")
    return codec


def _check_range(offset: int, size: int) -> None:
    if offset < 0 or size < 0:
        raise ValueError(f"negative offset or size: offset={offset}, size={size}")


T = TypeVar("T")


class BlockSink(Protocol):
    """Where new blocks go: a blockstore, a staging over one, or a sink that only computes CIDs."""

    def put(self, data: bytes, codec: int) -> bytes: ...

    def has(self, cid: bytes) -> bool: ...


class CidOnly:
    """A :class:`BlockSink` that stores nothing: for computing what a commit would give."""

    def put(self, data: bytes, codec: int) -> bytes:
        return block_cid(_check_codec(codec), data)

    def has(self, cid: bytes) -> bool:
        return True


class Staging(ABC, Generic[T]):
    """Blocks written aside: hashed and kept, but visible only through this object until committed.

    Work that builds many blocks before it knows it will succeed (a file's leaves
    while it is being written, a commit's nodes, a CAR being imported) stages
    them here: :meth:`commit` makes them part of the store at once, :meth:`discard`
    takes every one of them back, so a failure or a full disk never leaves blocks
    nothing refers to. Safe to use from several threads. An implementation keeps
    one handle of type ``T`` per staged block (its bytes, or its temporary file).
    """

    def __init__(self, store: Blockstore) -> None:
        self.store = store
        self._items: dict[bytes, T] = {}
        self._lock = threading.Lock()

    # --- writing ------------------------------------------------------------------

    def put(self, data: Chunk, codec: int) -> bytes:
        """Stage *data* unless the store or this staging already holds it; return its CID."""
        cid = block_cid(_check_codec(codec), data)
        self.put_verified(cid, data)
        return cid

    def put_verified(self, cid: bytes, data: Chunk) -> None:
        """Stage a block whose bytes are known to hash to *cid*."""
        if not self.has(cid):
            self._keep(cid, self._stage(data))

    def put_stream(self, chunks: Iterable[Chunk], codec: int) -> bytes:
        """Stage one block given piecewise (hashed while written); return its CID."""
        cid, handle = self._stage_stream(chunks, _check_codec(codec))
        if self.has(cid):
            self._release(handle)
        else:
            self._keep(cid, handle)
        return cid

    def _keep(self, cid: bytes, handle: T) -> None:
        with self._lock:
            old = self._items.get(cid)
            self._items[cid] = handle
        if old is not None:  # two threads staged the same block: keep one
            self._release(old)

    # --- reading (staged blocks first, then the store) ----------------------------------

    def holds(self, cid: bytes) -> bool:
        """True when the block is staged here (not yet in the store)."""
        return cid in self._items

    def has(self, cid: bytes) -> bool:
        return cid in self._items or self.store._contains(cid)

    def staged(self) -> list[bytes]:
        with self._lock:
            return list(self._items)

    def lookup(self, cid: bytes) -> bytes | None:
        """A staged block's bytes (our own, written moments ago: not hash-checked), or None."""
        handle = self._items.get(cid)
        return None if handle is None else self._read(handle, 0, -1)

    def read_range(self, cid: bytes, offset: int, size: int) -> bytes | None:
        handle = self._items.get(cid)
        return None if handle is None else self._read(handle, offset, size)

    def block_size(self, cid: bytes) -> int | None:
        handle = self._items.get(cid)
        return None if handle is None else self._size(handle)

    def get(self, cid: bytes) -> bytes:
        data = self.lookup(cid)
        return data if data is not None else self.store.get(cid)

    def read(self, cid: bytes, offset: int, size: int) -> bytes:
        _check_range(offset, size)
        data = self.read_range(cid, offset, size)
        return data if data is not None else self.store.read(cid, offset, size)

    # --- ending -------------------------------------------------------------------

    def forget(self, cid: bytes) -> None:
        """Drop one staged block (no-op if it is not staged here)."""
        with self._lock:
            handle = self._items.pop(cid, None)
        if handle is not None:
            self._release(handle)

    def commit(self, keep: Collection[bytes] | None = None, *, durable: bool = False) -> None:
        """Make the staged blocks (only those in *keep*, if given) part of the store; drop the rest.

        With *durable* they survive a machine crash once this returns. If the
        commit fails, whatever was not yet in place is dropped.
        """
        with self._lock:
            items, self._items = self._items, {}
        if keep is not None:
            for cid in [cid for cid in items if cid not in keep]:
                self._release(items.pop(cid))
        if items:
            self._install(items, durable)

    def discard(self) -> None:
        """Drop everything staged."""
        with self._lock:
            items, self._items = self._items, {}
        for handle in items.values():
            self._release(handle)

    # --- what an implementation provides -------------------------------------------

    @abstractmethod
    def _stage(self, data: Chunk) -> T:
        """Keep a copy of *data* aside."""

    @abstractmethod
    def _stage_stream(self, chunks: Iterable[Chunk], codec: int) -> tuple[bytes, T]: ...

    @abstractmethod
    def _read(self, handle: T, offset: int, size: int) -> bytes:
        """*size* bytes at *offset* of a staged block (``-1``: to its end)."""

    @abstractmethod
    def _size(self, handle: T) -> int: ...

    @abstractmethod
    def _release(self, handle: T) -> None:
        """Let go of a staged copy that will not be installed."""

    @abstractmethod
    def _install(self, items: dict[bytes, T], durable: bool) -> None:
        """Put these staged blocks in the store (removed from *items* as they go in);
        release every one not installed if this fails."""


class _ThreadBatches:
    """The staging of the current thread's open batch (``None`` outside a batch)."""

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def current(self) -> Staging[Any] | None:
        staging: Staging[Any] | None = getattr(self._local, "staging", None)
        return staging

    def open(self, staging: Staging[Any]) -> None:
        self._local.staging = staging

    def close(self) -> Staging[Any] | None:
        staging = self.current
        self._local.staging = None
        return staging


class Blockstore(ABC):
    """A content-addressed block store.

    The public methods (verification, idempotence, batching) live here once;
    an implementation supplies the storage primitives below and its
    :class:`Staging`. Inside a :meth:`batch`, the current thread's puts are
    staged and its reads see them.
    """

    def __init__(self) -> None:
        self._batches = _ThreadBatches()

    # --- reading ----------------------------------------------------------------

    def has(self, cid: bytes) -> bool:
        """True when the block is stored (or staged by this thread's batch)."""
        if not is_supported(cid):
            return False
        batch = self._batches.current
        return (batch is not None and batch.holds(cid)) or self._contains(cid)

    def get(self, cid: bytes) -> bytes:
        """The block's bytes, checked against the CID so corruption never passes silently."""
        data = self._batch_lookup(cid)
        if data is None:
            data = self._lookup(cid) if is_supported(cid) else None
        if data is None:
            raise self._not_found(cid)
        if not verify(cid, data):
            actual = cid_to_str(block_cid(cid[1], data))
            message = f"block {cid_to_str(cid)} in {self!r} is corrupt: the bytes hash to {actual}"
            raise CorruptBlockError(message)
        return data

    def read(self, cid: bytes, offset: int, size: int) -> bytes:
        """Up to *size* bytes at *offset*, unverified: for reading large raw blocks piecewise."""
        _check_range(offset, size)
        batch = self._batches.current
        data = batch.read_range(cid, offset, size) if batch is not None else None
        if data is None:
            data = self._read_range(cid, offset, size) if is_supported(cid) else None
        if data is None:
            raise self._not_found(cid)
        return data

    def size(self, cid: bytes) -> int:
        """The block's length in bytes, without reading it."""
        batch = self._batches.current
        length = batch.block_size(cid) if batch is not None else None
        if length is None:
            length = self._block_size(cid) if is_supported(cid) else None
        if length is None:
            raise self._not_found(cid)
        return length

    def __iter__(self) -> Iterator[bytes]:
        """Every stored CID (and those staged by this thread's batch), in no particular order."""
        batch = self._batches.current
        staged = set(batch.staged()) if batch is not None else set()
        for cid in self._stored_cids():
            staged.discard(cid)
            yield cid
        yield from staged

    def __len__(self) -> int:
        """How many blocks are stored (a full scan for an on-disk store)."""
        return sum(1 for _ in self)

    def __bool__(self) -> bool:
        """Always true: an empty store is still a store, and a truth test must not count blocks."""
        return True

    def _batch_lookup(self, cid: bytes) -> bytes | None:
        batch = self._batches.current
        return batch.lookup(cid) if batch is not None else None

    # --- writing ----------------------------------------------------------------

    def put(self, data: bytes, codec: int) -> bytes:
        """Store *data* under its CID and return the CID; an existing block is left alone."""
        batch = self._batches.current
        if batch is not None:
            return batch.put(data, codec)
        cid = block_cid(_check_codec(codec), data)
        if not self._contains(cid):
            self._add(cid, data)
        return cid

    def put_block(self, cid: bytes, data: bytes) -> None:
        """Store a block that came from outside (CAR, network), refusing bytes that lie."""
        if not is_supported(cid):
            raise InvalidCIDError(f"cannot store {cid_to_str(cid)}: only CIDv1 raw/dag-cbor with sha2-256")
        if not verify(cid, data):
            raise CorruptBlockError(f"refusing block {cid_to_str(cid)}: its bytes do not hash to the CID")
        batch = self._batches.current
        if batch is not None:
            batch.put_verified(cid, data)
        elif not self._contains(cid):
            self._add(cid, bytes(data))

    def put_stream(self, chunks: Iterable[Chunk], codec: int = RAW) -> bytes:
        """Store one block given piecewise (hashed while written) and return its CID."""
        batch = self._batches.current
        if batch is not None:
            return batch.put_stream(chunks, _check_codec(codec))
        return self._add_stream(chunks, _check_codec(codec))

    @abstractmethod
    def staging(self) -> Staging[Any]:
        """A new, empty :class:`Staging` over this store."""

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Stage this thread's puts and make them durable together on normal exit.

        If the body raises, nothing staged becomes visible. A nested ``batch()``
        joins the outer one. The batch belongs to the calling thread.
        """
        if self._batches.current is not None:
            yield
            return
        staging = self.staging()
        self._batches.open(staging)
        try:
            yield
        except BaseException:
            self._batches.close()
            staging.discard()
            raise
        self._batches.close()
        staging.commit(durable=True)

    def sync(self) -> None:
        """Make every block put so far durable (a no-op where puts already are, or nothing is on disk)."""
        return

    def _not_found(self, cid: bytes) -> BlockNotFoundError:
        return BlockNotFoundError(f"block {cid_to_str(cid)} not found in {self!r}")

    # --- what an implementation provides -----------------------------------------

    @abstractmethod
    def _contains(self, cid: bytes) -> bool: ...

    @abstractmethod
    def _lookup(self, cid: bytes) -> bytes | None:
        """The stored bytes, or None."""

    @abstractmethod
    def _read_range(self, cid: bytes, offset: int, size: int) -> bytes | None: ...

    @abstractmethod
    def _block_size(self, cid: bytes) -> int | None: ...

    @abstractmethod
    def _stored_cids(self) -> Iterator[bytes]: ...

    @abstractmethod
    def _add(self, cid: bytes, data: bytes) -> None:
        """Store a block known to be absent, at once (durably if the store is durable)."""

    @abstractmethod
    def _add_stream(self, chunks: Iterable[Chunk], codec: int) -> bytes: ...


# --- in memory ------------------------------------------------------------------


class MemoryStaging(Staging[bytes]):
    """Staged blocks as bytes; committing adds them to the store's dict."""

    store: MemoryBlockstore

    def _stage(self, data: Chunk) -> bytes:
        return bytes(data)

    def _stage_stream(self, chunks: Iterable[Chunk], codec: int) -> tuple[bytes, bytes]:
        data = b"".join(bytes(chunk) for chunk in chunks)
        return block_cid(codec, data), data

    def _read(self, handle: bytes, offset: int, size: int) -> bytes:
        return handle[offset:] if size < 0 else handle[offset : offset + size]

    def _size(self, handle: bytes) -> int:
        return len(handle)

    def _release(self, handle: bytes) -> None:
        return

    def _install(self, items: dict[bytes, bytes], durable: bool) -> None:
        for cid in list(items):
            self.store._blocks.setdefault(cid, items.pop(cid))


class MemoryBlockstore(Blockstore):
    """Blocks in a dict."""

    def __init__(self) -> None:
        super().__init__()
        self._blocks: dict[bytes, bytes] = {}

    def __repr__(self) -> str:
        return f"<MemoryBlockstore of {len(self._blocks)} blocks>"

    def __getstate__(self) -> dict[str, dict[bytes, bytes]]:
        """Pickle the committed blocks only: staging is per thread and per process."""
        return {"blocks": self._blocks}

    def __setstate__(self, state: dict[str, dict[bytes, bytes]]) -> None:
        Blockstore.__init__(self)
        self._blocks = state["blocks"]

    def staging(self) -> MemoryStaging:
        return MemoryStaging(self)

    def _contains(self, cid: bytes) -> bool:
        return cid in self._blocks

    def _lookup(self, cid: bytes) -> bytes | None:
        return self._blocks.get(cid)

    def _read_range(self, cid: bytes, offset: int, size: int) -> bytes | None:
        data = self._blocks.get(cid)
        return None if data is None else data[offset : offset + size]

    def _block_size(self, cid: bytes) -> int | None:
        data = self._blocks.get(cid)
        return None if data is None else len(data)

    def _stored_cids(self) -> Iterator[bytes]:
        yield from list(self._blocks)

    def __len__(self) -> int:
        batch = self._batches.current
        staged = batch.staged() if batch is not None else []
        return len(self._blocks) + sum(1 for cid in staged if cid not in self._blocks)

    def _add(self, cid: bytes, data: bytes) -> None:
        self._blocks[cid] = bytes(data)

    def _add_stream(self, chunks: Iterable[Chunk], codec: int) -> bytes:
        hasher = hashlib.sha256()
        parts = []
        for chunk in chunks:
            hasher.update(chunk)
            parts.append(bytes(chunk))
        cid = digest_cid(codec, hasher.digest())
        if not self._contains(cid):
            self._add(cid, b"".join(parts))
        return cid


# --- on disk --------------------------------------------------------------------


def _load_syncfs() -> Callable[[int], int] | None:
    """libc's ``syncfs`` (Linux), or None where there is none."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    function = getattr(libc, "syncfs", None)
    if function is None:
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    syncfs: Callable[[int], int] = function
    return syncfs


_SYNCFS = _load_syncfs()


def _sync_filesystem(path: Path) -> None:
    """Flush everything written to the filesystem holding *path* (``syncfs``, else ``sync``)."""
    if _SYNCFS is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if _SYNCFS(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), str(path))
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in *path* durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, chunk: Chunk) -> None:
    view = memoryview(chunk).cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _unlink_quietly(path: Path) -> None:
    with suppress(FileNotFoundError):
        os.unlink(path)


def _read_file(path: Path, offset: int = 0, size: int = -1) -> bytes | None:
    try:
        with open(path, "rb") as file:
            if offset:
                file.seek(offset)
            return file.read(size)
    except FileNotFoundError:
        return None


def _temp_name(prefix: str = "") -> str:
    """A name no other writer (process or thread) will pick; it starts with our pid."""
    return f"{prefix}{os.getpid()}-{secrets.token_hex(8)}.tmp"


def _temp_owner(name: str) -> int | None:
    """The pid a temp name (``[.STORE.]PID-HEX.tmp``) was made by, or None if it is not ours."""
    if not name.endswith(".tmp"):
        return None
    pid, dash, _ = name.removeprefix(f".{MARKER_NAME}.").partition("-")
    return int(pid) if dash and pid.isdigit() else None


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


class DirectoryStaging(Staging[Path]):
    """Staged blocks as finished temporary files in ``tmp/``; committing renames them into place."""

    store: DirectoryBlockstore

    def _stage(self, data: Chunk) -> Path:
        return self.store._write_temp([data], sync=False)

    def _stage_stream(self, chunks: Iterable[Chunk], codec: int) -> tuple[bytes, Path]:
        hasher = hashlib.sha256()
        temp = self.store._write_temp(chunks, sync=False, hasher=hasher)
        return digest_cid(codec, hasher.digest()), temp

    def _read(self, handle: Path, offset: int, size: int) -> bytes:
        data = _read_file(handle, offset, size)
        if data is None:
            raise IpldmountError(f"staged block file {handle} vanished (was tmp/ cleaned by hand?)")
        return data

    def _size(self, handle: Path) -> int:
        return os.stat(handle).st_size

    def _release(self, handle: Path) -> None:
        _unlink_quietly(handle)

    def _install(self, items: dict[bytes, Path], durable: bool) -> None:
        """syncfs, rename everything into place, syncfs (or just the renames when not durable).

        A commit that fails midway may leave some complete blocks in place; they
        are valid (content-addressed) and are never deleted here, since another
        process may have stored the same block meanwhile.
        """
        store = self.store
        try:
            with store._full_disk_is_store_full("committing staged blocks"):
                if durable:
                    _sync_filesystem(store.root)
                for cid in list(items):
                    store._install(items.pop(cid), cid, sync=False)
                if durable:
                    _sync_filesystem(store.root)
        except BaseException:
            for temp in items.values():
                _unlink_quietly(temp)
            raise
        log.debug("committed staged blocks to %s", store.root)


class DirectoryBlockstore(Blockstore):
    """One file per block: ``root/blocks/<shard>/<cid>``, written atomically.

    A block file is written in ``root/tmp/``, fsynced and renamed into place, so
    any file under ``blocks/`` is complete. Several processes may share a store.

    With ``durable=False`` single puts are still atomic (temp file + rename) but
    not fsynced one by one; :meth:`sync` (one ``syncfs``) makes them durable.
    The daemon uses this: ``close`` must be fast, and ``fsync``/sync call sync().

    A new store is private to its owner (folders 0700, files 0600). A store whose
    folder was made beforehand with other permissions (``mkdir -m 2770`` for a
    group) keeps them: what the store creates inside follows the folder's mode.
    """

    def __init__(self, root: str | os.PathLike[str], *, durable: bool = True) -> None:
        super().__init__()
        self.root = Path(root)
        self.durable = durable
        self._blocks = self.root / "blocks"
        self._tmp = self.root / "tmp"
        self._shards: set[str] = set()
        self._open()

    def __repr__(self) -> str:
        return f"<DirectoryBlockstore at {str(self.root)!r}>"

    def __eq__(self, other: object) -> bool:
        """Two handles on the same directory are the same store."""
        return isinstance(other, DirectoryBlockstore) and self._identity == other._identity

    def __hash__(self) -> int:
        return hash(self._identity)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as the path: the copy (maybe in another process) reopens the same store."""
        return (functools.partial(DirectoryBlockstore, durable=self.durable), (str(self.root),))

    def staging(self) -> DirectoryStaging:
        return DirectoryStaging(self)

    def sync(self) -> None:
        """Flush the store's filesystem, for callers that promise durability (``fsync``)."""
        _sync_filesystem(self.root)

    def block_path(self, cid: bytes) -> Path:
        """Where the block with this CID lives (or would live)."""
        name = cid_to_str(cid)
        return self._blocks / name[-3:-1] / name

    @property
    def tmp_dir(self) -> Path:
        """Where temporaries live (on the store's filesystem, so renames into place are atomic)."""
        return self._tmp

    # --- permissions ----------------------------------------------------------------

    def make_dir(self, path: Path) -> Path:
        """Create *path* (and missing parents inside the store) with the store's folder mode.

        Not ``os.makedirs(mode=...)``: that gives the mode to the last folder only.
        """
        if not path.is_dir():
            if path.parent != self.root:
                self.make_dir(path.parent)
            with suppress(FileExistsError):
                os.mkdir(path, self.dir_mode)
        return path

    def open_file(self, path: Path, flags: int) -> int:
        """``os.open`` a file in the store with the store's file mode (O_CLOEXEC added)."""
        return os.open(path, flags | os.O_CLOEXEC, self.file_mode)

    # --- opening ----------------------------------------------------------------

    def _open(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise NotAStoreError(f"{self.root} is not a directory, so it cannot be an ipldmount blockstore")
        if not self.root.exists():
            os.makedirs(self.root.parent, exist_ok=True)
            with suppress(FileExistsError):  # another process may be creating it right now
                os.mkdir(self.root, 0o700)
        status = os.stat(self.root)
        self.dir_mode = stat.S_IMODE(status.st_mode) | 0o700
        self.file_mode = self.dir_mode & 0o666
        marker = self.root / MARKER_NAME
        if marker.exists():
            self._check_marker(marker)
        else:
            self._create(marker)
        self.make_dir(self._blocks)
        self.make_dir(self._tmp)
        self._identity = (status.st_dev, status.st_ino)
        self._remove_stale_temps()

    def _check_marker(self, marker: Path) -> None:
        try:
            content = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise NotAStoreError(f"{marker} is not a readable ipldmount blockstore marker: {exc}") from None
        if not isinstance(content, dict) or content.get("format") != STORE_FORMAT:
            raise NotAStoreError(f"{self.root} is not an ipldmount blockstore ({marker} is foreign)")
        if content.get("version") != STORE_VERSION:
            raise NotAStoreError(
                f"{self.root} is an ipldmount blockstore of version {content.get('version')!r};"
                f" this ipldmount handles version {STORE_VERSION}"
            )

    def _create(self, marker: Path) -> None:
        """Make a new or empty directory a store; refuse one that holds anything else."""
        # Marker temps mean another process is creating the store right now.
        names = [name for name in os.listdir(self.root) if not name.startswith(f".{MARKER_NAME}.")]
        if MARKER_NAME in names:  # ... and it has just finished
            self._check_marker(marker)
            return
        if names:
            raise NotAStoreError(
                f"{self.root} is not an ipldmount blockstore: it is not empty and has no {MARKER_NAME} marker"
            )
        temp = self.root / _temp_name(f".{MARKER_NAME}.")
        marker_text = json.dumps({"format": STORE_FORMAT, "version": STORE_VERSION}) + "\n"
        fd = self.open_file(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(marker_text)
        os.replace(temp, marker)
        _fsync_dir(self.root)
        log.debug("created blockstore at %s", self.root)

    def _remove_stale_temps(self) -> None:
        """Delete temp files (``PID-HEX.tmp``) of writers that died: their process is gone, or the
        file is a day old. Bounded, so opening a store stays cheap."""
        cutoff = time.time() - STALE_TEMP_AGE
        removed = 0
        alive: dict[int, bool] = {}
        with os.scandir(self._tmp) as entries:
            for count, entry in enumerate(entries):
                if count >= STALE_TEMP_SCAN_LIMIT:
                    break
                pid = _temp_owner(entry.name)
                if pid is None:
                    continue
                try:
                    if pid not in alive:
                        alive[pid] = pid == os.getpid() or _process_exists(pid)
                    if entry.is_file(follow_symlinks=False) and (
                        not alive[pid] or entry.stat().st_mtime < cutoff
                    ):
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    continue  # another process cleaned it first
        if removed:
            log.info("removed %d temporary files left by writers that died, from %s", removed, self._tmp)

    # --- reading ----------------------------------------------------------------

    def _contains(self, cid: bytes) -> bool:
        return os.path.exists(self.block_path(cid))

    def _lookup(self, cid: bytes) -> bytes | None:
        return _read_file(self.block_path(cid))

    def _read_range(self, cid: bytes, offset: int, size: int) -> bytes | None:
        return _read_file(self.block_path(cid), offset, size)

    def _block_size(self, cid: bytes) -> int | None:
        try:
            return os.stat(self.block_path(cid)).st_size
        except FileNotFoundError:
            return None

    def _stored_cids(self) -> Iterator[bytes]:
        with os.scandir(self._blocks) as shards:
            shard_paths = [entry.path for entry in shards if entry.is_dir(follow_symlinks=False)]
        for shard in shard_paths:
            for name in os.listdir(shard):
                try:
                    yield parse_cid(name)
                except InvalidCIDError:
                    log.debug("ignoring stray file %s in %s", name, shard)

    # --- writing ----------------------------------------------------------------

    def _add(self, cid: bytes, data: bytes) -> None:
        temp = self._write_temp([data], sync=self.durable)
        self._install(temp, cid, sync=self.durable)

    def _add_stream(self, chunks: Iterable[Chunk], codec: int) -> bytes:
        hasher = hashlib.sha256()
        temp = self._write_temp(chunks, sync=self.durable, hasher=hasher)
        cid = digest_cid(codec, hasher.digest())
        if self._contains(cid):
            _unlink_quietly(temp)
        else:
            self._install(temp, cid, sync=self.durable)
        return cid

    @contextmanager
    def _full_disk_is_store_full(self, doing: str) -> Iterator[None]:
        """Turn ENOSPC/EDQUOT into StoreFullError (the caller has removed its partial file)."""
        try:
            yield
        except OSError as exc:
            if exc.errno in _DISK_FULL:
                raise StoreFullError(
                    f"blockstore {self.root} is full ({exc.strerror}) while {doing}; nothing partial was kept"
                ) from exc
            raise

    def _write_temp(self, chunks: Iterable[Chunk], sync: bool, hasher: hashlib._Hash | None = None) -> Path:
        """Write *chunks* to a new file in tmp/ (fsynced if *sync*); removed again on any error."""
        path = self._tmp / _temp_name()
        with self._full_disk_is_store_full("writing a block"):
            fd = self.open_file(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            try:
                try:
                    for chunk in chunks:
                        if hasher is not None:
                            hasher.update(chunk)
                        _write_all(fd, chunk)
                    if sync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
            except BaseException:
                _unlink_quietly(path)
                raise
        return path

    def _install(self, temp: Path, cid: bytes, sync: bool) -> None:
        """Rename a finished temp file into place (removing it if that fails)."""
        final = self.block_path(cid)
        with self._full_disk_is_store_full(f"storing block {cid_to_str(cid)}"):
            try:
                self._ensure_shard(final.parent, sync)
                os.rename(temp, final)
            except BaseException:
                _unlink_quietly(temp)
                raise
            if sync:
                _fsync_dir(final.parent)

    def _ensure_shard(self, shard: Path, sync: bool) -> None:
        """Create a shard folder once; only a durable put pays for making its entry durable now
        (otherwise the next sync()'s syncfs does)."""
        if shard.name in self._shards:
            return
        os.makedirs(shard, mode=self.dir_mode, exist_ok=True)
        if sync:
            _fsync_dir(self._blocks)
        self._shards.add(shard.name)
