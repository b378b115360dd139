"""Blocks on disk: one file per block under a directory, laid out like go-ds-flatfs
(``blocks/<shard>/<cid>``, shard "next-to-last/2"), written atomically (temporary
file, then rename), so two writers racing on a block replace a file with an
identical one.
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
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO

from ipldmount.blocks.base import Blockstore, Chunk, Staging
from ipldmount.blocks.lease import SweepLock, WriterLease, live_horizons
from ipldmount.blocks.writeback import WritebackAhead
from ipldmount.errors import (
    InvalidCIDError,
    IpldmountError,
    StoreFullError,
)
from ipldmount.ipld.cid import (
    RAW,
    block_cid,
    cid_to_str,
    digest_cid,
    is_supported,
    parse_cid,
)

log = logging.getLogger(__name__)

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


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in *path* durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def replacing(handle: int, temporary: Path, path: Path) -> Iterator[BinaryIO]:
    """Write *path* anew through *temporary* (opened as *handle*): what the block writes is
    fsynced and renamed over *path*, then the folder is fsynced; if the block fails, the
    temporary goes and *path* is as it was. A reader sees the old file or the new one whole."""
    try:
        with os.fdopen(handle, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _write_all(fd: int, chunk: Chunk) -> None:
    view = memoryview(chunk).cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _unlink_quietly(path: str | Path) -> None:
    with suppress(FileNotFoundError):
        os.unlink(path)


def _read_file(path: str | Path, offset: int = 0, size: int = -1) -> bytes | None:
    """*size* bytes at *offset* (-1: to the end), or None if there is no such file.

    Plain ``os`` calls, one read of the length the file has: half the cost of ``open().read()``
    (whose buffered reader reads to the end in steps) for the small blocks a zarr store reads.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        if size < 0:
            size = max(os.fstat(fd).st_size - offset, 0)
        data = os.pread(fd, size, offset)
        if len(data) == size or not data:
            return data
        parts = [data]  # a short read (the file grew, or a signal): go on to *size* or the end
        while (got := sum(map(len, parts))) < size:
            more = os.pread(fd, size - got, offset + got)
            if not more:
                break
            parts.append(more)
        return b"".join(parts)
    finally:
        os.close(fd)


def _temp_name(prefix: str = "") -> str:
    """A name no other writer (process or thread) will pick; it starts with our pid."""
    return f"{prefix}{os.getpid()}-{secrets.token_hex(8)}.tmp"


def _temp_owner(name: str) -> int | None:
    """The pid a temp name (``[.STORE.]PID-HEX.tmp``) was made by, or None if it is not ours."""
    if not name.endswith(".tmp"):
        return None
    pid, dash, _ = name.removeprefix(f".{MARKER_NAME}.").partition("-")
    return int(pid) if dash and pid.isdigit() else None


def process_exists(pid: int) -> bool:
    """Whether a process *pid* exists (someone else's counts): temporaries it left are its own."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


_EMPTY_DIGEST = block_cid(RAW, b"")[-32:]  # a block of any codec with this digest is rightly empty


class DirectoryStaging(Staging[str]):
    """Staged blocks as finished temporary files in ``tmp/``; committing renames them into place."""

    store: DirectoryBlockstore

    def _stage(self, data: Chunk) -> str:
        return self.store._write_temp([data], sync=False)

    def _stage_stream(self, chunks: Iterable[Chunk], codec: int) -> tuple[bytes, str]:
        hasher = hashlib.sha256()
        temp = self.store._write_temp(chunks, sync=False, hasher=hasher)
        return digest_cid(codec, hasher.digest()), temp

    def _read(self, handle: str, offset: int, size: int) -> bytes:
        data = _read_file(handle, offset, size)
        if data is None:
            raise IpldmountError(f"staged block file {handle} vanished (was tmp/ cleaned by hand?)")
        return data

    def _size(self, handle: str) -> int:
        return os.stat(handle).st_size

    def _release(self, handle: str) -> None:
        _unlink_quietly(handle)

    def _install(self, items: dict[bytes, str], durable: bool) -> None:
        """syncfs, rename everything into place, syncfs (or just the renames when not durable).

        A commit that fails midway may leave some complete blocks in place; they
        are valid (content-addressed) and are never deleted here, since another
        process may have stored the same block meanwhile.
        """
        store = self.store
        store._lease.begin()
        try:
            with store._full_disk_is_store_full("committing staged blocks"), store._sweep_lock.shared():
                if durable:
                    _sync_filesystem(store.root)
                for cid in list(items):
                    # Written maybe long ago: dated now, so that a collection keeps it (lease.py).
                    store._install(items.pop(cid), cid, sync=False, touch=True)
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
    not fsynced one by one; :meth:`sync` (one ``syncfs``) makes them durable. What is written
    without an fsync starts going to disk a moment later (:mod:`~ipldmount.blocks.writeback`),
    so that sync() finds little left to wait for.
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
        self._blocks_prefix = f"{self._blocks}{os.sep}"
        self._tmp = self.root / "tmp"
        self._tmp_prefix = f"{self._tmp}{os.sep}"  # temp file names are made per block: no Path
        self._shards: set[str] = set()
        self._open()
        self._sweep_lock = SweepLock(self.root / "gc.lock", self.open_file)
        self._lease = WriterLease(self.root / "leases", self.open_file, self.make_dir)
        self._writeback = WritebackAhead(functools.partial(_sync_filesystem, self.root))
        live_horizons(self.root / "leases")  # removes the leases of writers that died

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
        return Path(self._block_file(cid))

    def read_soon(self, wanted: Iterable[bytes]) -> None:
        """Ask the kernel to read the block files in now (``POSIX_FADV_WILLNEED``: it queues the
        reads and returns), so that a reader going through a file finds its next leaves in memory."""
        for cid in wanted:
            if not is_supported(cid):
                continue
            try:
                fd = os.open(self._block_file(cid), os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue  # not here (yet): whoever reads it says so
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass  # a hint the filesystem does not take
            finally:
                os.close(fd)

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

    def open_file(self, path: str | Path, flags: int) -> int:
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
        fsync_dir(self.root)
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
                        alive[pid] = pid == os.getpid() or process_exists(pid)
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

    def _block_file(self, cid: bytes) -> str:
        """Where the block with this CID lives, as a string (made without pathlib: a listing asks
        it per entry): ``blocks/<the name's last-but-one two characters>/<name>``."""
        name = cid_to_str(cid)
        return f"{self._blocks_prefix}{name[-3:-1]}{os.sep}{name}"

    def _contains(self, cid: bytes) -> bool:
        """Whether the block's file is there, and not the empty file a crash leaves of a block
        renamed into place before its bytes reached the disk (a pull or import that took it for
        the block would never fetch it again; the next writer of its bytes replaces it)."""
        try:
            size = os.stat(self._block_file(cid)).st_size
        except OSError:
            return False
        return size > 0 or cid[-32:] == _EMPTY_DIGEST

    def _lookup(self, cid: bytes) -> bytes | None:
        return _read_file(self._block_file(cid))

    def _read_range(self, cid: bytes, offset: int, size: int) -> bytes | None:
        return _read_file(self._block_file(cid), offset, size)

    def _block_size(self, cid: bytes) -> int | None:
        try:
            return os.stat(self._block_file(cid)).st_size
        except FileNotFoundError:
            return None

    # --- garbage collection (lease.py says how it never races a writer) ---------------

    def _claim(self, cid: bytes) -> bool:
        self._lease.begin()
        path = self._block_file(cid)
        with self._sweep_lock.shared():
            try:
                if os.stat(path).st_size == 0 and cid[-32:] != _EMPTY_DIGEST:
                    return self._drop_torn(path)
                os.utime(path)
            except FileNotFoundError:
                return False
        return True

    def _drop_torn(self, path: str) -> bool:
        """An empty file where a block that is not empty should be: a machine crash caught it
        renamed into place before its bytes reached the disk (written without an fsync, for the
        next sync to make durable). It is removed, and the writer that claimed it writes it again:
        relying on it would commit a root whose block is lost. Always False (not claimed)."""
        log.warning("block file %s is empty (cut short by a crash before a sync): writing it again", path)
        _unlink_quietly(path)
        return False

    def _remove(self, cid: bytes, older_than: float | None, dry_run: bool = False) -> int | None:
        path = self.block_path(cid)
        try:
            status = os.lstat(path)
            if older_than is not None and status.st_mtime >= older_than:
                return None
            if not dry_run:
                os.unlink(path)
        except FileNotFoundError:
            return None
        return status.st_size

    def settle(self, before: float) -> None:
        self._lease.settle(before)

    @contextmanager
    def holding(self) -> Iterator[None]:
        with self._lease.holding():
            yield

    def protected_since(self) -> float | None:
        horizons = live_horizons(self.root / "leases")
        return min(horizons) if horizons else None

    @contextmanager
    def sweeping(self) -> Iterator[None]:
        with self._sweep_lock.exclusive():
            yield

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

    def _add(self, cid: bytes, data: Chunk) -> None:
        self._lease.begin()
        temp = self._write_temp([data], sync=self.durable)
        self._install(temp, cid, sync=self.durable)

    def _add_stream(self, chunks: Iterable[Chunk], codec: int) -> bytes:
        self._lease.begin()
        hasher = hashlib.sha256()
        temp = self._write_temp(chunks, sync=self.durable, hasher=hasher)
        cid = digest_cid(codec, hasher.digest())
        if self._claim(cid):
            _unlink_quietly(temp)
        else:
            self._install(temp, cid, sync=self.durable)
        return cid

    @contextmanager
    def _full_disk_is_store_full(self, doing: str | Callable[[], str]) -> Iterator[None]:
        """Turn ENOSPC/EDQUOT into StoreFullError (the caller has removed its partial file).
        *doing* may be a function that says it, for a caller that should not format it per block."""
        try:
            yield
        except OSError as exc:
            if exc.errno in _DISK_FULL:
                what = doing if isinstance(doing, str) else doing()
                raise StoreFullError(
                    f"blockstore {self.root} is full ({exc.strerror}) while {what}; nothing partial was kept"
                ) from exc
            raise

    def _write_temp(self, chunks: Iterable[Chunk], sync: bool, hasher: hashlib._Hash | None = None) -> str:
        """Write *chunks* to a new file in tmp/ (fsynced if *sync*); removed again on any error."""
        path = self._tmp_prefix + _temp_name()
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

    def _install(self, temp: str, cid: bytes, sync: bool, touch: bool = False) -> None:
        """Rename a finished temp file into place (removing it if that fails), dated now if *touch*."""
        final = self._block_file(cid)
        shard = os.path.dirname(final)
        with self._full_disk_is_store_full(lambda: f"storing block {cid_to_str(cid)}"):
            try:
                self._ensure_shard(shard, sync)
                if touch:
                    os.utime(temp)
                os.rename(temp, final)
            except BaseException:
                _unlink_quietly(temp)
                raise
            if sync:
                fsync_dir(Path(shard))
            else:  # durable at the next sync(); the flush starts now, in the background
                self._writeback.written()

    def _ensure_shard(self, shard: str, sync: bool) -> None:
        """Create a shard folder once; only a durable put pays for making its entry durable now
        (otherwise the next sync()'s syncfs does)."""
        if shard in self._shards:
            return
        os.makedirs(shard, mode=self.dir_mode, exist_ok=True)
        if sync:
            fsync_dir(self._blocks)
        self._shards.add(shard)
