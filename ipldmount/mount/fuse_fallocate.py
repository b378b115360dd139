"""fallocate(2) for the mount: a handler added to the libfuse session that pyfuse3 created.

pyfuse3 (3.5, the latest) registers no ``fallocate`` operation, so libfuse answers
ENOSYS and the kernel turns every fallocate(2) on the mount into EOPNOTSUPP. This
module fills the one missing slot of the operation table libfuse copied from
pyfuse3 (``struct fuse_session.op.fallocate``), with a C-callable that hands the
request to the trio loop and answers with ``fuse_reply_err``.

pyfuse3 keeps its session pointer and operation table in static variables, found
here through the symbol table of its extension module. Every step is checked (the
table found must equal pyfuse3's own, the slot must be empty and its neighbour the
one pyfuse3 fills); if anything does not match, nothing is written and fallocate
stays unsupported, as before. Remove this module once pyfuse3 passes fallocate on.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import mmap
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
_FALLOCATE_SLOT = 40
_READDIRPLUS_SLOT = 41  # set by pyfuse3: proves the table is laid out as we think
_POINTER = ctypes.sizeof(ctypes.c_void_p)
_SEARCH_LIMIT = 256  # bytes into struct fuse_session where its `op` copy may start (it is near the top)

_SESSION, _OPS, _ANCHOR = "__pyx_v_7pyfuse3_session", "__pyx_v_7pyfuse3_fuse_ops", "PyInit_pyfuse3"

FallocateHandler = Callable[[int, int, int, int], Awaitable[None]]
_CALLBACK = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p
)


class _Hook:
    """The installed callback and what it needs; kept alive as long as the session."""

    def __init__(self, handler: FallocateHandler, reply_err: Callable[[int, int], int]) -> None:
        self.handler = handler
        self.reply_err = reply_err
        self.callback = _CALLBACK(self._on_request)

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


_installed: list[_Hook] = []


def install(handler: FallocateHandler) -> bool:
    """Route the kernel's fallocate requests to *handler* (after ``pyfuse3.init``).

    *handler(inode, mode, offset, length)* raises ``pyfuse3.FUSEError`` to fail.
    Returns whether the hook is in place; if not, says why in the log.
    """
    try:
        slot = _fallocate_slot()
        libfuse = ctypes.CDLL(ctypes.util.find_library("fuse3") or "libfuse3.so.3")
    except (OSError, LookupError, ValueError) as exc:
        log.warning("fallocate(2) stays unsupported on this mount: %s", exc)
        return False
    reply_err = libfuse.fuse_reply_err
    reply_err.argtypes, reply_err.restype = [ctypes.c_void_p, ctypes.c_int], ctypes.c_int
    hook = _Hook(handler, reply_err)
    _installed[:] = [hook]  # one session per process
    slot.value = ctypes.cast(hook.callback, ctypes.c_void_p).value
    log.debug("fallocate handler added to the libfuse session")
    return True


def _fallocate_slot() -> ctypes.c_void_p:
    """The empty ``op.fallocate`` pointer of pyfuse3's live libfuse session."""
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
    ops_address, ops_size = base + symbols[_OPS][0], symbols[_OPS][1]
    table = ctypes.string_at(ops_address, ops_size)
    pointers = struct.unpack(f"{ops_size // _POINTER}P", table)
    if len(pointers) <= _READDIRPLUS_SLOT or pointers[_FALLOCATE_SLOT] or not pointers[_READDIRPLUS_SLOT]:
        raise LookupError("pyfuse3's operation table is not laid out as expected")
    for offset in range(0, _SEARCH_LIMIT + 1, _POINTER):
        if ctypes.string_at(session + offset, ops_size) == table:
            return ctypes.c_void_p.from_address(session + offset + _FALLOCATE_SLOT * _POINTER)
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
