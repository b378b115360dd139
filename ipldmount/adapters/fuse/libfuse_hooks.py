"""What pyfuse3 (3.5, the latest) does not pass on, added to the libfuse session it made.

* ``fallocate``: pyfuse3 registers no handler, so libfuse answers ENOSYS and the
  kernel turns every fallocate(2) on the mount into EOPNOTSUPP. :func:`install_fallocate`
  fills that empty slot of the operation table with a C-callable that hands the
  request to the trio loop and answers with ``fuse_reply_err``.
* ``getxattr`` of names outside ``user.``: the kernel asks for ``security.capability`` before
  every write (to drop file capabilities), a FUSE round trip through trio per ``write(2)``:
  one request in seven of a small file's create+write+close. :func:`install_xattr_shortcut`
  answers such names ENOTSUP (what the daemon answers them) in libfuse's own thread of
  control, before pyfuse3 makes a task of them; ``user.`` names go to pyfuse3 as before.
* Not a hook but a mount option: :func:`fsname` names the mount's source after its root CID.
* Open flags: pyfuse3's ``FileInfo`` carries only ``keep_cache``, ``direct_io`` and
  ``nonseekable``. :func:`install_open_flags` wraps pyfuse3's ``open`` and ``opendir``
  entries so that a read-only open asks for no FLUSH on close (``noflush``: one
  round trip less per open+read+close) and a directory keeps its entries in the
  kernel's cache between listings (``cache_readdir`` and ``keep_cache``). pyfuse3
  copies the request's ``fuse_file_info`` (these bits included) into its reply,
  so setting them before it runs is enough.

pyfuse3 keeps its session pointer and operation table in static variables, found
here through the symbol table of its extension module; libfuse works from its own
copy of the table (``struct fuse_session.op``). Every step is checked (the table
found must equal pyfuse3's own, the slots must hold what pyfuse3 puts there); if
anything does not match, nothing is written and the mount works as plain pyfuse3
would. Remove what pyfuse3 comes to pass on itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import mmap
import os
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import pyfuse3
import trio

log = logging.getLogger(__name__)

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

# struct fuse_lowlevel_ops (libfuse 3.x, fuse_lowlevel.h): pointers in declaration order;
# libfuse only ever appends to it, so these indexes hold for every 3.x release.
_OPEN_SLOT = 14
_OPENDIR_SLOT = 20
_GETXATTR_SLOT = 26
_FALLOCATE_SLOT = 40
_READDIRPLUS_SLOT = 41  # set by pyfuse3: proves the table is laid out as we think
_POINTER = ctypes.sizeof(ctypes.c_void_p)
_SEARCH_LIMIT = 256  # bytes into struct fuse_session where its `op` copy may start (it is near the top)

# struct fuse_file_info (libfuse 3.x, fuse_common.h): `int flags`, then a word of one-bit fields in
# declaration order (libfuse only appends bits): keep_cache is bit 2, cache_readdir 6, noflush 7.
_FILE_INFO_BITS = 4
_KEEP_CACHE, _CACHE_READDIR, _NOFLUSH = 1 << 2, 1 << 6, 1 << 7

_SESSION, _OPS, _ANCHOR = "__pyx_v_7pyfuse3_session", "__pyx_v_7pyfuse3_fuse_ops", "PyInit_pyfuse3"

FallocateHandler = Callable[[int, int, int, int], Awaitable[None]]
_FALLOCATE = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p
)
_OPEN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_void_p)  # (req, ino, fi)
_PYFUSE3_OPEN = ctypes.PYFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_void_p)  # keeps the GIL
_XATTR_ARGS = (ctypes.c_void_p, ctypes.c_uint64, ctypes.c_void_p, ctypes.c_size_t)  # (req, ino, name, size)
_GETXATTR = ctypes.CFUNCTYPE(None, *_XATTR_ARGS)
_PYFUSE3_GETXATTR = ctypes.PYFUNCTYPE(None, *_XATTR_ARGS)  # keeps the GIL


class _FallocateHook:
    """The installed callback and what it needs; kept alive as long as the session."""

    def __init__(self, handler: FallocateHandler, reply_err: Callable[[int, int], int]) -> None:
        self.handler = handler
        self.reply_err = reply_err
        self.callback = _FALLOCATE(self._on_request)

    def _on_request(self, req: int, ino: int, mode: int, offset: int, length: int, fi: int) -> None:
        """Called by libfuse inside pyfuse3's request loop (the trio thread): start the answer."""
        try:
            trio.lowlevel.spawn_system_task(self._answer, req, ino, mode, offset, length)
        except Exception:
            log.exception("fallocate: could not start the request")
            self.reply_err(req, errno.EIO)

    async def _answer(self, req: int, ino: int, mode: int, offset: int, length: int) -> None:
        code = errno.EIO
        try:
            await self.handler(ino, mode, offset, length)
            code = 0
        except pyfuse3.FUSEError as exc:
            code = exc.errno
        except trio.Cancelled:
            code = errno.EINTR
            raise
        except Exception:
            log.exception("fallocate(inode %d, mode %#x) failed unexpectedly", ino, mode)
        finally:
            self.reply_err(req, code)


class _OpenFlagsHook:
    """pyfuse3's open or opendir entry, run after setting reply bits in the request's file info."""

    def __init__(self, pyfuse3_entry: int, bits: Callable[[int], int]) -> None:
        self.pyfuse3_entry = _PYFUSE3_OPEN(pyfuse3_entry)
        self.bits = bits  # open flags -> the bits to add
        self.callback = _OPEN(self._on_request)

    def _on_request(self, req: int, ino: int, fi: int) -> None:
        try:
            word = ctypes.c_uint32.from_address(fi + _FILE_INFO_BITS)
            word.value |= self.bits(ctypes.c_int32.from_address(fi).value)
        except Exception:
            log.exception("inode %d: opened without the extra flags", ino)
        self.pyfuse3_entry(req, ino, fi)  # whatever happened above, pyfuse3 answers the request


class _XattrShortcut:
    """getxattr: a name outside the served namespace is answered here, the others by pyfuse3."""

    def __init__(self, pyfuse3_entry: int, served: bytes, reply_err: Callable[[int, int], int]) -> None:
        self.pyfuse3_entry = _PYFUSE3_GETXATTR(pyfuse3_entry)
        self.served = served
        self.reply_err = reply_err
        self.callback = _GETXATTR(self._on_request)

    def _on_request(self, req: int, ino: int, name: int | None, size: int) -> None:
        try:
            foreign = name is not None and not ctypes.string_at(name).startswith(self.served)
        except Exception:
            foreign = False  # pyfuse3 answers it, as it would without the hook
        if foreign:
            self.reply_err(req, errno.ENOTSUP)  # as Operations.getxattr answers it, one hop sooner
            return
        self.pyfuse3_entry(req, ino, name, size)


def _open_bits(flags: int) -> int:
    """A read-only open needs no FLUSH on close: it has nothing to store."""
    return _NOFLUSH if flags & os.O_ACCMODE == os.O_RDONLY else 0


def _opendir_bits(flags: int) -> int:
    """Listings stay in the kernel's cache, across opens too; it drops them when the directory
    changes (every change goes through the kernel: the daemon is the only writer)."""
    return _CACHE_READDIR | _KEEP_CACHE


FSNAME_MAX = 255  # bytes; the kernel would take a page, but this keeps /proc/mounts lines readable


def fsname(root: str) -> str:
    """The mount's ``fsname`` option, its source in /proc/mounts and df: ``ipldmount:ROOT``, the
    root CID it was mounted at, to tell mounts apart (plain ``ipldmount`` said nothing).

    libfuse splits options at commas and /proc/mounts fields at whitespace, so anything but a
    short ASCII letters-and-digits CID (as base32 and base58 ones are) gives plain ``ipldmount``.
    """
    name = f"ipldmount:{root}"
    if not (root.isascii() and root.isalnum()) or len(name) > FSNAME_MAX:
        return "ipldmount"
    return name


_installed: list[object] = []  # the callbacks libfuse points to: alive as long as the process
_tables: dict[int, int] = {}  # libfuse session -> its operation table


def install_fallocate(handler: FallocateHandler) -> bool:
    """Route the kernel's fallocate requests to *handler* (after ``pyfuse3.init``).

    *handler(inode, mode, offset, length)* raises ``pyfuse3.FUSEError`` to fail.
    Returns whether the hook is in place; if not, says why in the log.
    """
    found = _table_and_reply_err("fallocate(2) stays unsupported on this mount")
    if found is None:
        return False
    table, reply_err = found
    slot = _slot(table, _FALLOCATE_SLOT)
    if slot.value:
        log.warning("fallocate(2) is left to pyfuse3: it registers a handler of its own")
        return False
    hook = _FallocateHook(handler, reply_err)
    _installed.append(hook)
    slot.value = ctypes.cast(hook.callback, ctypes.c_void_p).value
    log.debug("fallocate handler added to the libfuse session")
    return True


def install_open_flags() -> bool:
    """Ask for no FLUSH after read-only opens and for cached directory listings (after ``pyfuse3.init``).

    Returns whether the hooks are in place; if not, says why in the log (the mount
    then works as plain pyfuse3 would, one round trip slower per read-only close).
    """
    try:
        table = _session_table()
    except (OSError, LookupError, ValueError) as exc:
        log.warning("open and opendir stay as pyfuse3 answers them: %s", exc)
        return False
    for index, bits in ((_OPEN_SLOT, _open_bits), (_OPENDIR_SLOT, _opendir_bits)):
        slot = _slot(table, index)
        hook = _OpenFlagsHook(slot.value or 0, bits)
        _installed.append(hook)
        slot.value = ctypes.cast(hook.callback, ctypes.c_void_p).value
    log.debug("open and opendir flags added to the libfuse session")
    return True


def install_xattr_shortcut(served: bytes) -> bool:
    """Answer getxattr of names not starting with *served* ENOTSUP before pyfuse3 sees them
    (after ``pyfuse3.init``); the daemon's own handler must answer them so too (it does, for
    a mount where the hook is not in place). Returns whether the hook is in place."""
    found = _table_and_reply_err("getxattr requests all go through pyfuse3")
    if found is None:
        return False
    table, reply_err = found
    slot = _slot(table, _GETXATTR_SLOT)
    if not slot.value:
        log.warning("getxattr is not served by pyfuse3: left as it is")
        return False
    hook = _XattrShortcut(slot.value, served, reply_err)
    _installed.append(hook)
    slot.value = ctypes.cast(hook.callback, ctypes.c_void_p).value
    log.debug("getxattr shortcut added to the libfuse session")
    return True


def _table_and_reply_err(otherwise: str) -> tuple[int, Callable[[int, int], int]] | None:
    """The session's operation table and libfuse's ``fuse_reply_err``; None (and *otherwise*
    logged, with why) when either cannot be found."""
    try:
        table = _session_table()
        libfuse = ctypes.CDLL(ctypes.util.find_library("fuse3") or "libfuse3.so.3")
    except (OSError, LookupError, ValueError) as exc:
        log.warning("%s: %s", otherwise, exc)
        return None
    reply_err = libfuse.fuse_reply_err
    reply_err.argtypes, reply_err.restype = [ctypes.c_void_p, ctypes.c_int], ctypes.c_int
    return table, reply_err


def _slot(table: int, index: int) -> ctypes.c_void_p:
    return ctypes.c_void_p.from_address(table + index * _POINTER)


def _session_table() -> int:
    """The address of the live libfuse session's copy of pyfuse3's operation table."""
    module = Path(pyfuse3.__file__)
    symbols = _static_symbols(module, {_SESSION, _OPS, _ANCHOR})
    missing = {_SESSION, _OPS, _ANCHOR} - symbols.keys()
    if missing:
        raise LookupError(f"{module.name} has no symbol table entry for {', '.join(sorted(missing))}")
    exported = ctypes.cast(getattr(ctypes.CDLL(str(module)), _ANCHOR), ctypes.c_void_p).value
    assert exported is not None
    base = exported - symbols[_ANCHOR][0]
    session = ctypes.c_void_p.from_address(base + symbols[_SESSION][0]).value
    if not session:
        raise LookupError("pyfuse3 has no session (call after pyfuse3.init)")
    if session in _tables:  # found before: it no longer equals pyfuse3's once a slot is filled
        return _tables[session]
    ops_address, ops_size = base + symbols[_OPS][0], symbols[_OPS][1]
    table = ctypes.string_at(ops_address, ops_size)
    pointers = struct.unpack(f"{ops_size // _POINTER}P", table)
    if len(pointers) <= _READDIRPLUS_SLOT or not all(
        pointers[i] for i in (_OPEN_SLOT, _OPENDIR_SLOT, _READDIRPLUS_SLOT)
    ):
        raise LookupError("pyfuse3's operation table is not laid out as expected")
    for offset in range(0, _SEARCH_LIMIT + 1, _POINTER):
        if ctypes.string_at(session + offset, ops_size) == table:
            _tables[session] = session + offset
            return session + offset
    raise LookupError("the libfuse session holds no copy of pyfuse3's operation table")


def _static_symbols(path: Path, wanted: set[str]) -> dict[str, tuple[int, int]]:
    """``name -> (value, size)`` from an ELF64 little-endian file's ``.symtab`` (static symbols too)."""
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if data[:6] != b"\x7fELF\x02\x01":
            raise ValueError(f"{path.name} is not a 64-bit little-endian ELF file")
        (section_offset,) = struct.unpack_from("<Q", data, 0x28)
        entry_size, count = struct.unpack_from("<HH", data, 0x3A)
        sections = [
            struct.unpack_from("<IIQQQQIIQQ", data, section_offset + i * entry_size) for i in range(count)
        ]
        found: dict[str, tuple[int, int]] = {}
        for _, kind, _, _, offset, size, link, _, _, symbol_size in sections:
            if kind != 2 or not symbol_size:  # SHT_SYMTAB
                continue
            strings = sections[link][4]
            for entry in range(offset, offset + size, symbol_size):
                name_at, _, _, _, value, length = struct.unpack_from("<IBBHQQ", data, entry)
                start = strings + name_at
                name = data[start : data.find(b"\0", start)].decode(errors="replace")
                if name in wanted:
                    found[name] = (value, length)
        return found
