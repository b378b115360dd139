"""The floor: a bare pyfuse3 + trio file system that does no work, to measure what any request costs.

It serves one directory, ``arr``, of ``SIDE * SIDE`` files named ``i.j`` holding 8 bytes
each, all made up on the fly from the name (no storage, no tree, no locks), a file ``big`` of
BIG bytes (zeros; default 0), and an empty directory, ``new``, where files can be created and
written (and are forgotten), with the
same kernel settings as the ipldmount daemon: readdirplus, long entry and attribute
timeouts, ``keep_cache``, cached listings and no FLUSH after a read-only open. Whatever
ipldmount costs beyond it is ipldmount's; what it costs itself is the price of a Python
FUSE request, which no Python daemon goes under.

    python bench/floorfs.py MOUNTPOINT SIDE [BIG]    # serves until unmounted (fusermount3 -u)
"""

from __future__ import annotations

import errno
import os
import stat
import sys

import pyfuse3
import trio

from ipldmount.adapters.fuse import libfuse_hooks

TIMEOUT = 300.0
ARR = pyfuse3.ROOT_INODE + 1
NEW = ARR + 1
BIG = NEW + 1
FIRST = BIG + 1  # file (i, j) is inode FIRST + i * side + j
ZEROS = bytes(1 << 20)  # what big holds, served without a copy per request


class FloorFS(pyfuse3.Operations):
    def __init__(self, side: int, big: int = 0) -> None:
        super().__init__()
        self.side = side
        self.big = big
        self.zeros = {len(ZEROS): ZEROS}  # by request size: one slice each
        self.created = FIRST + side * side  # the next inode for a created file

    def _attrs(self, ino: int) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = ino
        attrs.entry_timeout = attrs.attr_timeout = TIMEOUT
        directory = ino in (pyfuse3.ROOT_INODE, ARR, NEW)
        attrs.st_mode = (stat.S_IFDIR | 0o755) if directory else (stat.S_IFREG | 0o644)
        attrs.st_nlink = 2 if directory else 1
        attrs.st_size = 0 if directory else self.big if ino == BIG else 8
        attrs.st_uid, attrs.st_gid = os.getuid(), os.getgid()
        return attrs

    def _file(self, name: bytes) -> int:
        try:
            i, j = (int(part) for part in name.split(b"."))
        except ValueError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        if not (0 <= i < self.side and 0 <= j < self.side):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return FIRST + i * self.side + j

    async def lookup(self, parent: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if parent == pyfuse3.ROOT_INODE and name in (b"arr", b"new", b"big"):
            return self._attrs({b"arr": ARR, b"new": NEW, b"big": BIG}[name])
        if parent == ARR:
            return self._attrs(self._file(name))
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attrs(inode)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        count = {pyfuse3.ROOT_INODE: 3, ARR: self.side * self.side}.get(fh, 0)
        for index in range(start_id, count):
            if fh == pyfuse3.ROOT_INODE:
                name, ino = ((b"arr", ARR), (b"new", NEW), (b"big", BIG))[index]
            else:
                i, j = divmod(index, self.side)
                name, ino = b"%d.%d" % (i, j), FIRST + index
            if not pyfuse3.readdir_reply(token, name, self._attrs(ino), index + 1):
                return

    async def create(
        self, parent: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        if parent != NEW:
            raise pyfuse3.FUSEError(errno.EACCES)
        self.created += 1
        return pyfuse3.FileInfo(fh=self.created), self._attrs(self.created)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return len(buf)

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        if fh == BIG:
            size = max(0, min(size, self.big - off))
            zeros = self.zeros.get(size)
            if zeros is None:
                zeros = self.zeros[size] = ZEROS[:size] if size <= len(ZEROS) else bytes(size)
            return zeros
        return (fh - FIRST).to_bytes(8, "little")[off : off + size]

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        raise pyfuse3.FUSEError(errno.ENOTSUP)


def main() -> None:
    mountpoint, side = sys.argv[1], int(sys.argv[2])
    big = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    options = set(pyfuse3.default_options) | {"fsname=floorfs"}
    pyfuse3.init(FloorFS(side, big), mountpoint, options)
    libfuse_hooks.install_open_flags()  # as the daemon does: cached listings, no FLUSH after reads
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
