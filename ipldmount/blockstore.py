"""Where blocks live: a content-addressed store keyed by binary CIDs.

Two implementations share one contract (:class:`Blockstore`):

* :class:`MemoryBlockstore` keeps blocks in a dict (tests, in-process stores);
* :class:`DirectoryBlockstore` keeps one file per block under a directory, laid
  out like go-ds-flatfs (``blocks/<shard>/<cid>``, shard "next-to-last/2").

Every put is idempotent and content addressed, so two writers racing on the
same block write the same bytes: the loser's rename replaces a file with an
identical one. :meth:`Blockstore.batch` groups puts so that they become durable
together, or (when the ``with`` body raises) not visible at all; a batch belongs
to the thread that opened it.
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
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Generic, TypeVar

from .cid import DAG_CBOR, RAW, block_cid, cid_to_str, digest_cid, is_supported, parse_cid, verify
from .errors import BlockNotFoundError, CorruptBlockError, InvalidCIDError, IpldmountError, StoreFullError

log = logging.getLogger(__name__)

Chunk = bytes | bytearray | memoryview

STORE_FORMAT = "ipldmount-blockstore"
STORE_VERSION = 1
MARKER_NAME = "STORE"
STALE_TEMP_AGE = 24 * 3600  # seconds; a temp file this old belongs to no live writer
STALE_TEMP_SCAN_LIMIT = 10_000  # entries of tmp/ looked at on open, to keep opening cheap
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


class _ThreadStaging(Generic[T]):
    """The blocks staged by the current thread's open batch (``None`` outside a batch)."""

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def current(self) -> dict[bytes, T] | None:
        staged: dict[bytes, T] | None = getattr(self._local, "staged", None)
        return staged

    def open(self) -> None:
        self._local.staged = {}

    def close(self) -> dict[bytes, T]:
        staged = self.current
        self._local.staged = None
        return staged if staged is not None else {}


class Blockstore(ABC):
    """A content-addressed block store.

    The public methods (verification, idempotence, batching) live here once;
    an implementation supplies the storage primitives below, each of which sees
    the committed blocks plus the current thread's staged ones.
    """

    # --- reading ----------------------------------------------------------------

    def has(self, cid: bytes) -> bool:
        """True when the block is stored (or staged by this thread's batch)."""
        return is_supported(cid) and self._contains(cid)

    def get(self, cid: bytes) -> bytes:
        """The block's bytes, checked against the CID so corruption never passes silently."""
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
        data = self._read_range(cid, offset, size) if is_supported(cid) else None
        if data is None:
            raise self._not_found(cid)
        return data

    def size(self, cid: bytes) -> int:
        """The block's length in bytes, without reading it."""
        length = self._block_size(cid) if is_supported(cid) else None
        if length is None:
            raise self._not_found(cid)
        return length

    def __iter__(self) -> Iterator[bytes]:
        """Every stored CID (in no particular order)."""
        return self._stored_cids()

    def __len__(self) -> int:
        """How many blocks are stored (a full scan for an on-disk store)."""
        return sum(1 for _ in self)

    def __bool__(self) -> bool:
        """Always true: an empty store is still a store, and a truth test must not count blocks."""
        return True

    # --- writing ----------------------------------------------------------------

    def put(self, data: bytes, codec: int) -> bytes:
        """Store *data* under its CID and return the CID; an existing block is left alone."""
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
        if not self._contains(cid):
            self._add(cid, bytes(data))

    def put_stream(self, chunks: Iterable[Chunk], codec: int = RAW) -> bytes:
        """Store one block given piecewise (hashed while written) and return its CID."""
        return self._add_stream(chunks, _check_codec(codec))

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Stage puts and make them durable together on normal exit.

        If the body raises, nothing staged becomes visible. A nested ``batch()``
        joins the outer one. The batch belongs to the calling thread.
        """
        if self._batch_open():
            yield
            return
        self._begin_batch()
        try:
            yield
        except BaseException:
            self._end_batch(commit=False)
            raise
        self._end_batch(commit=True)

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
        """Store a block known to be absent: staged inside a batch, durable outside."""

    @abstractmethod
    def _add_stream(self, chunks: Iterable[Chunk], codec: int) -> bytes: ...

    @abstractmethod
    def _batch_open(self) -> bool: ...

    @abstractmethod
    def _begin_batch(self) -> None: ...

    @abstractmethod
    def _end_batch(self, commit: bool) -> None:
        """Make the staged blocks durable (commit) or drop them."""


# --- in memory ------------------------------------------------------------------


class MemoryBlockstore(Blockstore):
    """Blocks in a dict; batches stage into a per-thread dict merged on success."""

    def __init__(self) -> None:
        self._blocks: dict[bytes, bytes] = {}
        self._staging = _ThreadStaging[bytes]()

    def __repr__(self) -> str:
        return f"<MemoryBlockstore of {len(self._blocks)} blocks>"

    def __getstate__(self) -> dict[str, dict[bytes, bytes]]:
        """Pickle the committed blocks only: staging is per thread and per process."""
        return {"blocks": self._blocks}

    def __setstate__(self, state: dict[str, dict[bytes, bytes]]) -> None:
        self._blocks = state["blocks"]
        self._staging = _ThreadStaging[bytes]()

    def _find(self, cid: bytes) -> bytes | None:
        staged = self._staging.current
        if staged is not None and cid in staged:
            return staged[cid]
        return self._blocks.get(cid)

    def _contains(self, cid: bytes) -> bool:
        return self._find(cid) is not None

    def _lookup(self, cid: bytes) -> bytes | None:
        return self._find(cid)

    def _read_range(self, cid: bytes, offset: int, size: int) -> bytes | None:
        data = self._find(cid)
        return None if data is None else data[offset : offset + size]

    def _block_size(self, cid: bytes) -> int | None:
        data = self._find(cid)
        return None if data is None else len(data)

    def _stored_cids(self) -> Iterator[bytes]:
        staged = dict(self._staging.current or {})
        for cid in list(self._blocks):
            staged.pop(cid, None)
            yield cid
        yield from staged

    def __len__(self) -> int:
        staged = self._staging.current or {}
        return len(self._blocks) + sum(1 for cid in staged if cid not in self._blocks)

    def _add(self, cid: bytes, data: bytes) -> None:
        staged = self._staging.current
        (self._blocks if staged is None else staged)[cid] = bytes(data)

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

    def _batch_open(self) -> bool:
        return self._staging.current is not None

    def _begin_batch(self) -> None:
        self._staging.open()

    def _end_batch(self, commit: bool) -> None:
        staged = self._staging.close()
        if commit:
            self._blocks.update(staged)


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
    """A name no other writer (process or thread) will pick."""
    return f"{prefix}{os.getpid()}-{secrets.token_hex(8)}.tmp"


class DirectoryBlockstore(Blockstore):
    """One file per block: ``root/blocks/<shard>/<cid>``, written atomically.

    A block file is written in ``root/tmp/``, fsynced and renamed into place, so
    any file under ``blocks/`` is complete. Several processes may share a store.

    With ``durable=False`` single puts are still atomic (temp file + rename) but
    not fsynced one by one; :meth:`sync` (one ``syncfs``) makes them durable.
    The daemon uses this: ``close`` must be fast, and ``fsync``/sync call sync().
    """

    def __init__(self, root: str | os.PathLike[str], *, durable: bool = True) -> None:
        self.root = Path(root)
        self.durable = durable
        self._blocks = self.root / "blocks"
        self._tmp = self.root / "tmp"
        self._shards: set[str] = set()
        self._staging = _ThreadStaging[Path]()
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

    def sync(self) -> None:
        """Flush the store's filesystem, for callers that promise durability (``fsync``)."""
        _sync_filesystem(self.root)

    def block_path(self, cid: bytes) -> Path:
        """Where the block with this CID lives (or would live)."""
        name = cid_to_str(cid)
        return self._blocks / name[-3:-1] / name

    # --- opening ----------------------------------------------------------------

    def _open(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise NotAStoreError(f"{self.root} is not a directory, so it cannot be an ipldmount blockstore")
        marker = self.root / MARKER_NAME
        if marker.exists():
            self._check_marker(marker)
        else:
            self._create(marker)
        os.makedirs(self._blocks, exist_ok=True)
        os.makedirs(self._tmp, exist_ok=True)
        status = os.stat(self.root)
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
        os.makedirs(self.root, exist_ok=True)
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
        temp.write_text(marker_text, encoding="utf-8")
        os.replace(temp, marker)
        _fsync_dir(self.root)
        log.debug("created blockstore at %s", self.root)

    def _remove_stale_temps(self) -> None:
        """Delete our temp files (``*.tmp``) left by crashed writers; bounded, so opening stays cheap."""
        cutoff = time.time() - STALE_TEMP_AGE
        removed = 0
        with os.scandir(self._tmp) as entries:
            for count, entry in enumerate(entries):
                if count >= STALE_TEMP_SCAN_LIMIT:
                    break
                try:
                    if (
                        entry.name.endswith(".tmp")
                        and entry.is_file(follow_symlinks=False)
                        and entry.stat().st_mtime < cutoff
                    ):
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    continue  # another process cleaned it first
        if removed:
            log.debug("removed %d stale temp files from %s", removed, self._tmp)

    # --- reading ----------------------------------------------------------------

    def _location(self, cid: bytes) -> Path:
        staged = self._staging.current
        if staged is not None and cid in staged:
            return staged[cid]
        return self.block_path(cid)

    def _contains(self, cid: bytes) -> bool:
        return os.path.exists(self._location(cid))

    def _lookup(self, cid: bytes) -> bytes | None:
        return _read_file(self._location(cid))

    def _read_range(self, cid: bytes, offset: int, size: int) -> bytes | None:
        return _read_file(self._location(cid), offset, size)

    def _block_size(self, cid: bytes) -> int | None:
        try:
            return os.stat(self._location(cid)).st_size
        except FileNotFoundError:
            return None

    def _stored_cids(self) -> Iterator[bytes]:
        yield from self._committed_cids()
        for cid in list(self._staging.current or {}):
            if not os.path.exists(self.block_path(cid)):
                yield cid

    def _committed_cids(self) -> Iterator[bytes]:
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
        staged = self._staging.current
        temp = self._write_temp([data], sync=staged is None and self.durable)
        if staged is None:
            self._install(temp, cid, sync=self.durable)
        else:
            staged[cid] = temp

    def _add_stream(self, chunks: Iterable[Chunk], codec: int) -> bytes:
        staged = self._staging.current
        hasher = hashlib.sha256()
        temp = self._write_temp(chunks, sync=staged is None and self.durable, hasher=hasher)
        cid = digest_cid(codec, hasher.digest())
        if self._contains(cid):
            _unlink_quietly(temp)
        elif staged is None:
            self._install(temp, cid, sync=self.durable)
        else:
            staged[cid] = temp
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
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
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
                self._ensure_shard(final.parent)
                os.rename(temp, final)
            except BaseException:
                _unlink_quietly(temp)
                raise
            if sync:
                _fsync_dir(final.parent)

    def _ensure_shard(self, shard: Path) -> None:
        if shard.name in self._shards:
            return
        os.makedirs(shard, exist_ok=True)
        _fsync_dir(self._blocks)
        self._shards.add(shard.name)

    # --- batches ----------------------------------------------------------------

    def _batch_open(self) -> bool:
        return self._staging.current is not None

    def _begin_batch(self) -> None:
        self._staging.open()

    def _end_batch(self, commit: bool) -> None:
        """Commit: syncfs, rename everything into place, syncfs. Else delete the temps.

        A commit that fails midway may leave some complete blocks in place; they
        are valid (content-addressed) and are never deleted, since another
        process may have stored the same block meanwhile.
        """
        staged = self._staging.close()
        if not commit:
            self._discard(staged.values())
            return
        if not staged:
            return
        pending = dict(staged)
        try:
            with self._full_disk_is_store_full("committing a batch"):
                _sync_filesystem(self.root)
                for cid, temp in staged.items():
                    del pending[cid]
                    self._install(temp, cid, sync=False)
                _sync_filesystem(self.root)
        except BaseException:
            self._discard(pending.values())
            raise
        log.debug("committed a batch of %d blocks to %s", len(staged), self.root)

    @staticmethod
    def _discard(temps: Iterable[Path]) -> None:
        for temp in temps:
            _unlink_quietly(temp)
