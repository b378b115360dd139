"""The FUSE handlers called directly, without a mount: a duck-typed request context stands in
for the kernel's. These reach the branches the kernel's own checks never let through (rename of
a directory into itself, unlink of a directory, ...) and check what each answers."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pyfuse3
import pytest

from ipldmount.adapters.fuse import libfuse_hooks
from ipldmount.adapters.fuse.ops import Operations
from ipldmount.blocks import DirectoryBlockstore
from ipldmount.format.files import MAX_FILE_SIZE, MAX_WHOLE_FILE_SIZE, StoredFile
from ipldmount.ipld import cid as cids
from ipldmount.ipld import codec
from ipldmount.repo.repository import Repository
from ipldmount.session.session import Session
from ipldmount.tree.model import File, Tree

pytestmark = pytest.mark.trio

ROOT = pyfuse3.ROOT_INODE


class Context:
    """What a handler reads of pyfuse3.RequestContext."""

    uid = os.getuid()
    gid = os.getgid()
    pid = os.getpid()
    umask = 0o022


CTX: Any = Context()


class SizeOnly:
    """What a handler reads of pyfuse3.SetattrFields, for a truncate."""

    update_size = True
    update_mode = update_uid = update_gid = update_atime = update_mtime = update_ctime = False


def size_attrs(size: int) -> pyfuse3.EntryAttributes:
    attrs = pyfuse3.EntryAttributes()
    attrs.st_size = size
    return attrs


def _ops(tmp_path: Path, root: bytes | None = None, **options: Any) -> Operations:
    store = DirectoryBlockstore(tmp_path / "store", durable=False)
    return Operations(Session(Repository(store), tmp_path / "mnt", root, **options))


@pytest.fixture
def ops(tmp_path: Path) -> Operations:
    return _ops(tmp_path)


async def errno_of(call: Callable[..., Awaitable[Any]], *args: Any) -> int:
    with pytest.raises(pyfuse3.FUSEError) as caught:
        await call(*args)
    return caught.value.errno


async def mkdir(ops: Operations, parent: int, name: bytes) -> int:
    return (await ops.mkdir(parent, name, 0o755, CTX)).st_ino


async def create(ops: Operations, parent: int, name: bytes, data: bytes = b"") -> tuple[int, int]:
    info, attrs = await ops.create(parent, name, 0o644, os.O_RDWR, CTX)
    if data:
        await ops.write(info.fh, 0, data)
    return attrs.st_ino, info.fh


async def close(ops: Operations, fh: int) -> None:
    await ops.flush(fh)
    await ops.release(fh)


async def test_rename_of_a_directory_into_itself_is_einval(ops: Operations) -> None:
    outer = await mkdir(ops, ROOT, b"outer")
    inner = await mkdir(ops, outer, b"inner")
    assert await errno_of(ops.rename, ROOT, b"outer", inner, b"moved", 0, CTX) == errno.EINVAL
    assert await errno_of(ops.rename, ROOT, b"outer", outer, b"self", 0, CTX) == errno.EINVAL


async def test_rename_between_kinds(ops: Operations) -> None:
    await mkdir(ops, ROOT, b"dir")
    full = await mkdir(ops, ROOT, b"full")
    await mkdir(ops, full, b"child")
    _, fh = await create(ops, ROOT, b"file")
    await close(ops, fh)
    assert await errno_of(ops.rename, ROOT, b"file", ROOT, b"dir", 0, CTX) == errno.EISDIR
    assert await errno_of(ops.rename, ROOT, b"dir", ROOT, b"file", 0, CTX) == errno.ENOTDIR
    assert await errno_of(ops.rename, ROOT, b"dir", ROOT, b"full", 0, CTX) == errno.ENOTEMPTY
    flags = pyfuse3.RENAME_NOREPLACE
    assert await errno_of(ops.rename, ROOT, b"dir", ROOT, b"full", flags, CTX) == errno.EEXIST
    assert await errno_of(ops.rename, ROOT, b"nothing", ROOT, b"x", 0, CTX) == errno.ENOENT


async def test_unlink_and_rmdir_of_the_wrong_kind(ops: Operations) -> None:
    full = await mkdir(ops, ROOT, b"dir")
    await mkdir(ops, full, b"child")
    _, fh = await create(ops, ROOT, b"file")
    await close(ops, fh)
    assert await errno_of(ops.unlink, ROOT, b"dir", CTX) == errno.EISDIR
    assert await errno_of(ops.rmdir, ROOT, b"file", CTX) == errno.ENOTDIR
    assert await errno_of(ops.rmdir, ROOT, b"dir", CTX) == errno.ENOTEMPTY
    assert await errno_of(ops.unlink, ROOT, b"gone", CTX) == errno.ENOENT


async def test_names_the_format_cannot_hold(ops: Operations) -> None:
    assert await errno_of(ops.mkdir, ROOT, b"x" * 256, 0o755, CTX) == errno.ENAMETOOLONG
    assert await errno_of(ops.mkdir, ROOT, b"\xff\xfe", 0o755, CTX) == errno.EINVAL
    assert await errno_of(ops.mkdir, ROOT, b"a/b", 0o755, CTX) == errno.EINVAL
    assert await errno_of(ops.lookup, ROOT, b"\xff", CTX) == errno.EINVAL


async def test_lookup_below_a_file_and_setattr_size_of_a_directory(ops: Operations) -> None:
    ino, fh = await create(ops, ROOT, b"file")
    await close(ops, fh)
    assert await errno_of(ops.lookup, ino, b"x", CTX) == errno.ENOTDIR
    assert await errno_of(ops.setattr, ROOT, size_attrs(10), SizeOnly(), None, CTX) == errno.EISDIR


async def test_write_on_a_read_only_handle_is_ebadf(ops: Operations) -> None:
    ino, fh = await create(ops, ROOT, b"file", b"data")
    await close(ops, fh)
    info = await ops.open(ino, os.O_RDONLY, CTX)
    assert await errno_of(ops.write, info.fh, 0, b"x") == errno.EBADF
    await ops.release(info.fh)


async def test_a_read_only_mount_refuses_changes(tmp_path: Path) -> None:
    ops = _ops(tmp_path, None, read_only=True)
    assert await errno_of(ops.mkdir, ROOT, b"d", 0o755, CTX) == errno.EROFS
    assert await errno_of(ops.create, ROOT, b"f", 0o644, os.O_WRONLY, CTX) == errno.EROFS


async def test_link_counts(ops: Operations) -> None:
    """2 + subdirectories for a directory; a file's names, 0 once unlinked while open."""
    parent = await mkdir(ops, ROOT, b"parent")
    await mkdir(ops, parent, b"a")
    await mkdir(ops, parent, b"b")
    assert (await ops.getattr(parent, CTX)).st_nlink == 4
    assert (await ops.getattr(ROOT, CTX)).st_nlink == 3
    ino, fh = await create(ops, parent, b"file", b"x")
    assert (await ops.getattr(ino, CTX)).st_nlink == 1
    await ops.link(ino, ROOT, b"second", CTX)
    assert (await ops.getattr(ino, CTX)).st_nlink == 2
    await ops.unlink(parent, b"file", CTX)
    await ops.unlink(ROOT, b"second", CTX)
    assert (await ops.getattr(ino, CTX)).st_nlink == 0
    await close(ops, fh)
    await ops.rename(parent, b"a", ROOT, b"moved", 0, CTX)
    assert (await ops.getattr(parent, CTX)).st_nlink == 3
    assert (await ops.getattr(ROOT, CTX)).st_nlink == 4


async def test_readdir_lists_dot_and_dotdot_without_taking_references(
    ops: Operations, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = await mkdir(ops, ROOT, b"sub")
    created, fh = await create(ops, sub, b"f")
    await close(ops, fh)
    listed: list[tuple[bytes, int]] = []

    def reply(token: object, name: bytes, attrs: pyfuse3.EntryAttributes, next_id: int) -> bool:
        listed.append((name, attrs.st_ino))
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    handle = await ops.opendir(sub, CTX)
    before = {ino: ops.inodes.lookups(ino) for ino in (sub, ROOT, created)}
    await ops.readdir(handle, 0, object())  # type: ignore[arg-type]
    await ops.releasedir(handle)
    assert [name for name, _ in listed] == [b".", b"..", b"f"]
    assert listed[0][1] == sub and listed[1][1] == ROOT
    file_ino = listed[2][1]
    assert file_ino == created and ops.inodes.lookups(file_ino) == before[created] + 1
    assert ops.inodes.lookups(sub) == before[sub], "no reference for '.'"
    assert ops.inodes.lookups(ROOT) == before[ROOT], "none for '..'"


async def test_attributes_say_what_a_node_is_made_of(ops: Operations) -> None:
    names = await ops.listxattr(ROOT, CTX)
    assert b"user.ipld.cid" in names and b"user.ipld.dirty" not in names  # an empty mount, synced
    sub = await mkdir(ops, ROOT, b"sub")
    meta_ino, fh = await create(ops, sub, b".zattrs", b"{}")
    assert await ops.getxattr(meta_ino, b"user.ipld.dirty", CTX) == b"1"
    await close(ops, fh)
    assert await ops.getxattr(sub, b"user.ipld.dirty", CTX) == b"1"
    assert await ops.getxattr(ROOT, b"user.ipld.dirty", CTX) == b"1"
    assert await errno_of(ops.getxattr, ROOT, b"user.ipld.cid", CTX) == pyfuse3.ENOATTR
    root = await ops.session.sync()
    assert await ops.getxattr(ROOT, b"user.ipld.cid", CTX) == root.root.encode()
    assert await ops.getxattr(sub, b"user.ipld.inline", CTX) == b"1"
    assert await ops.getxattr(meta_ino, b"user.ipld.inline", CTX) == b"1"
    assert await errno_of(ops.getxattr, meta_ino, b"user.ipld.cid", CTX) == pyfuse3.ENOATTR
    assert await errno_of(ops.getxattr, meta_ino, b"user.other", CTX) == pyfuse3.ENOATTR
    for name in (b"security.selinux", b"system.posix_acl_access", b"trusted.x"):
        assert await errno_of(ops.getxattr, meta_ino, name, CTX) == errno.ENOTSUP


async def test_a_broken_directory_answers_eio(tmp_path: Path) -> None:
    store = DirectoryBlockstore(tmp_path / "store", durable=False)
    missing = cids.block_cid(cids.DAG_CBOR, codec.encode({"gone": {}}))
    root = store.put(codec.encode({"broken": codec.Link(missing)}), cids.DAG_CBOR)
    ops = Operations(Session(Repository(store), tmp_path / "mnt", root))
    broken = (await ops.lookup(ROOT, b"broken", CTX)).st_ino
    assert await errno_of(ops.lookup, broken, b"x", CTX) == errno.EIO
    assert await errno_of(ops.opendir, broken, CTX) == errno.EIO
    assert await errno_of(ops.mkdir, broken, b"x", 0o755, CTX) == errno.EIO
    assert (await ops.getxattr(broken, b"user.ipld.cid", CTX)).decode() == cids.cid_to_str(missing)
    assert b"not found" in await ops.getxattr(broken, b"user.ipld.broken", CTX)


async def test_whole_files_beyond_the_limit_is_efbig(tmp_path: Path) -> None:
    ops = _ops(tmp_path, None, whole_files=True)
    ino, fh = await create(ops, ROOT, b"f", b"x")
    assert await errno_of(ops.write, fh, MAX_WHOLE_FILE_SIZE, b"y") == errno.EFBIG
    too_big = size_attrs(MAX_WHOLE_FILE_SIZE + 1)
    assert await errno_of(ops.setattr, ino, too_big, SizeOnly(), fh, CTX) == errno.EFBIG
    await close(ops, fh)


async def test_failed_requests_are_logged_without_file_contents(
    ops: Operations, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ipldmount.errors import StoreFullError

    _, fh = await create(ops, ROOT, b"secret-file")
    buffer = await ops.session._buffer(ops.handles[fh].node)

    def full(offset: int, data: bytes) -> int:
        raise StoreFullError("disk full")

    monkeypatch.setattr(buffer.data, "write", full)
    monkeypatch.setattr(buffer.data, "write_is_cheap", lambda offset, end: True)
    with caplog.at_level(logging.DEBUG, logger="ipldmount"):
        assert await errno_of(ops.write, fh, 0, b"TOP-SECRET-CONTENT") == errno.ENOSPC
    assert "TOP-SECRET" not in caplog.text
    assert "<18 bytes>" in caplog.text and "write" in caplog.text


async def test_fallocate_answers(tmp_path: Path) -> None:
    """Every branch of fallocate, including those the kernel filters (negative ranges, directories)."""
    ops = _ops(tmp_path)
    ino, fh = await create(ops, ROOT, b"file", b"abc")
    await ops.fallocate(ino, 0, 0, 1 << 30)
    assert (await ops.getattr(ino, CTX)).st_size == 1 << 30
    await ops.fallocate(ino, 0, 5, 10)  # inside the file: no change
    await ops.fallocate(ino, libfuse_hooks.FALLOC_FL_KEEP_SIZE, 0, 1 << 40)  # reserves nothing
    assert (await ops.getattr(ino, CTX)).st_size == 1 << 30
    assert await ops.read(fh, 0, 5) == b"abc\0\0"
    punch = libfuse_hooks.FALLOC_FL_PUNCH_HOLE | libfuse_hooks.FALLOC_FL_KEEP_SIZE
    assert await errno_of(ops.fallocate, ino, punch, 0, 1) == errno.EOPNOTSUPP
    assert await errno_of(ops.fallocate, ino, 0, -1, 1) == errno.EINVAL
    assert await errno_of(ops.fallocate, ino, 0, 0, 0) == errno.EINVAL
    assert await errno_of(ops.fallocate, ino, 0, MAX_FILE_SIZE, 1) == errno.EFBIG
    assert await errno_of(ops.fallocate, ROOT, 0, 0, 1) == errno.ENODEV
    await close(ops, fh)
    whole = _ops(tmp_path / "whole", None, whole_files=True)
    ino, fh = await create(whole, ROOT, b"file")
    assert await errno_of(whole.fallocate, ino, 0, MAX_WHOLE_FILE_SIZE, 1) == errno.EFBIG
    await close(whole, fh)


async def test_fallocate_on_a_read_only_mount(tmp_path: Path) -> None:
    writable = _ops(tmp_path)
    _, fh = await create(writable, ROOT, b"file", b"abc")
    await close(writable, fh)
    root = (await writable.session.sync()).root
    ops = _ops(tmp_path, cids.parse_cid(root), read_only=True)
    entry = await ops.lookup(ROOT, b"file", CTX)
    assert await errno_of(ops.fallocate, entry.st_ino, 0, 0, 10) == errno.EROFS


async def test_the_fallocate_hook_writes_nothing_without_a_session(caplog: pytest.LogCaptureFixture) -> None:
    """Before pyfuse3.init (here: never) there is no session to add to: refused, and said why."""
    symbols = libfuse_hooks._static_symbols(Path(pyfuse3.__file__), {"PyInit_pyfuse3", "no such symbol"})
    assert set(symbols) == {"PyInit_pyfuse3"}

    async def handler(inode: int, mode: int, offset: int, length: int) -> None:
        raise AssertionError("never called")

    with caplog.at_level(logging.WARNING, logger="ipldmount.adapters.fuse.libfuse_hooks"):
        assert libfuse_hooks.install_fallocate(handler) is False
    assert "pyfuse3 has no session" in caplog.text


async def test_open_files_are_session_state(tmp_path: Path) -> None:
    """What is written but not yet closed belongs to the session: a sync (and status) sees it."""
    ops = _ops(tmp_path)
    _, fh = await create(ops, ROOT, b"file")
    await ops.flush(fh)
    root = (await ops.session.sync()).root
    assert not ops.session.dirty
    await ops.write(fh, 0, b"unsaved")
    assert ops.session.open_files.unsaved() == 1 and ops.session.dirty
    assert (await ops.session.status())["open_unsaved_files"] == 1
    assert (await ops.session.sync()).root != root  # the open file's writes are committed
    assert ops.session.open_files.unsaved() == 0 and not ops.session.dirty
    node = ops.handles[fh].node
    await ops.release(fh)
    assert node not in ops.session.open_files


async def test_open_flags_are_set_before_pyfuse3_answers() -> None:
    """The open/opendir hooks set reply bits in the request's fuse_file_info, then always call pyfuse3."""
    seen: list[tuple[int, int, int]] = []

    def pyfuse3_open(req: int, ino: int, fi: int) -> None:
        seen.append((req, ino, ctypes.c_uint32.from_address(fi + 4).value))

    entry = ctypes.PYFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_void_p)(pyfuse3_open)
    address = ctypes.cast(entry, ctypes.c_void_p).value or 0
    info = (ctypes.c_uint32 * 16)()  # a struct fuse_file_info: int flags, then its bit fields
    for flags, hook_bits, expected in (
        (os.O_RDONLY, libfuse_hooks._open_bits, 1 << 7),  # noflush
        (os.O_RDWR, libfuse_hooks._open_bits, 0),
        (os.O_WRONLY, libfuse_hooks._open_bits, 0),
        (
            os.O_RDONLY | os.O_DIRECTORY,
            libfuse_hooks._opendir_bits,
            (1 << 6) | (1 << 2),
        ),  # cache_readdir, keep_cache
    ):
        info[0], info[1] = flags, 0
        libfuse_hooks._OpenFlagsHook(address, hook_bits).callback(7, 42, ctypes.addressof(info))
        assert seen.pop() == (7, 42, expected)

    def broken(flags: int) -> int:
        raise RuntimeError("boom")

    info[1] = 0
    libfuse_hooks._OpenFlagsHook(address, broken).callback(8, 43, ctypes.addressof(info))
    assert seen == [(8, 43, 0)], "pyfuse3 still answers the request"


async def test_getxattr_of_a_foreign_namespace_is_answered_before_pyfuse3() -> None:
    """security.capability (asked before every write), ACLs and labels: ENOTSUP from the hook,
    never a task of pyfuse3's; a user. name, or one the hook cannot read, goes to pyfuse3."""
    passed: list[tuple[int, int, bytes, int]] = []
    replied: list[tuple[int, int]] = []

    def pyfuse3_getxattr(req: int, ino: int, name: int, size: int) -> None:
        passed.append((req, ino, ctypes.string_at(name), size))

    entry = libfuse_hooks._PYFUSE3_GETXATTR(pyfuse3_getxattr)
    address = ctypes.cast(entry, ctypes.c_void_p).value or 0

    def reply_err(req: int, code: int) -> int:
        replied.append((req, code))
        return 0

    hook = libfuse_hooks._XattrShortcut(address, b"user.", reply_err)
    names = [b"security.capability", b"system.posix_acl_access", b"user.ipld.cid", b"user.other"]
    buffers = [ctypes.create_string_buffer(name) for name in names]
    for req, buffer in enumerate(buffers, start=1):
        hook.callback(req, 42, ctypes.addressof(buffer), 0)
    assert replied == [(1, errno.ENOTSUP), (2, errno.ENOTSUP)]
    assert passed == [(3, 42, b"user.ipld.cid", 0), (4, 42, b"user.other", 0)]


async def test_a_listing_finds_sizes_of_stored_blocks_in_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sizes of blocks nobody has read come from the blockstore, many at a time; a missing block
    is size 0 and not cached (the listing goes on), the others are exact."""
    store = DirectoryBlockstore(tmp_path / "store", durable=False)
    tree = Tree(store)
    for i in range(1200):
        tree.write_file(f"arr/{i}", b"%05d" % i * (i % 7 + 1))
    root = tree.commit()
    gone = Tree(store, root).resolve("arr/555")
    assert isinstance(gone, File) and isinstance(gone.content, StoredFile)
    store.block_path(gone.content.cid).unlink()
    ops = Operations(Session(Repository(store), tmp_path / "mnt", root))
    listed: dict[bytes, pyfuse3.EntryAttributes] = {}

    def reply(token: object, name: bytes, attrs: pyfuse3.EntryAttributes, next_id: int) -> bool:
        listed[name] = attrs
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    arr = (await ops.lookup(ROOT, b"arr", CTX)).st_ino
    handle = await ops.opendir(arr, CTX)
    await ops.readdir(handle, 0, object())  # type: ignore[arg-type]
    await ops.releasedir(handle)
    assert len(listed) == 1202
    for i in range(1200):
        attrs = listed[str(i).encode()]
        if i == 555:
            assert attrs.st_size == 0 and attrs.attr_timeout == 0
        else:
            assert attrs.st_size == 5 * (i % 7 + 1) and attrs.attr_timeout > 0, i


async def test_a_listing_in_progress_skips_names_removed_meanwhile(
    ops: Operations, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = await mkdir(ops, ROOT, b"sub")
    for name in (b"a", b"b", b"c"):
        _, fh = await create(ops, sub, name)
        await close(ops, fh)
    listed: list[tuple[bytes, int]] = []
    room = [3]  # the kernel's buffer holds ".", ".." and "a"

    def reply(token: object, name: bytes, attrs: pyfuse3.EntryAttributes, next_id: int) -> bool:
        if not room[0]:
            return False
        room[0] -= 1
        listed.append((name, next_id))
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    handle = await ops.opendir(sub, CTX)
    await ops.readdir(handle, 0, object())  # type: ignore[arg-type]
    assert [name for name, _ in listed] == [b".", b"..", b"a"]
    await ops.unlink(sub, b"b", CTX)
    room[0] = 10
    await ops.readdir(handle, listed[-1][1], object())  # type: ignore[arg-type]
    await ops.releasedir(handle)
    assert [name for name, _ in listed] == [b".", b"..", b"a", b"c"]


def _stored_array(tmp_path: Path, count: int) -> tuple[Operations, dict[bytes, bytes]]:
    """A mount over a stored root whose "arr" holds *count* chunks, each a packed row once listed."""
    store = DirectoryBlockstore(tmp_path / "store", durable=False)
    tree = Tree(store)
    files = {str(i).encode(): b"%06d" % i for i in range(count)}
    for name, data in files.items():
        tree.write_file(f"arr/{name.decode()}", data)
    root = tree.commit()
    return Operations(Session(Repository(store), tmp_path / "mnt", root)), files


class Replies:
    """Stands in for pyfuse3.readdir_reply: records (name, inode, next_id), room for *room* entries."""

    def __init__(self, room: int = 1 << 30) -> None:
        self.room = room
        self.listed: list[tuple[bytes, int, int]] = []

    def __call__(self, token: object, name: bytes, attrs: pyfuse3.EntryAttributes, next_id: int) -> bool:
        if not self.room:
            return False
        self.room -= 1
        self.listed.append((name, attrs.st_ino, next_id))
        return True


async def _list_arr(ops: Operations, monkeypatch: pytest.MonkeyPatch) -> tuple[int, dict[bytes, int]]:
    """List "arr" through the handlers: its inode, and the inode each entry was listed with."""
    replies = Replies()
    monkeypatch.setattr(pyfuse3, "readdir_reply", replies)
    arr = (await ops.lookup(ROOT, b"arr", CTX)).st_ino
    handle = await ops.opendir(arr, CTX)
    await ops.readdir(handle, 0, object())  # type: ignore[arg-type]
    await ops.releasedir(handle)
    return arr, {name: ino for name, ino, _ in replies.listed[2:]}


async def test_a_listing_hands_out_rows_without_making_nodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each chunk of a listed directory gets an inode number and a kernel reference, but no tree
    node: lookup, getattr and forget answer from the row; the same name keeps the same number."""
    ops, files = _stored_array(tmp_path, 2000)
    arr, inos = await _list_arr(ops, monkeypatch)
    assert sorted(inos) == sorted(files) and len(set(inos.values())) == len(files)
    directory = ops.tree.resolve_dir("arr")
    assert directory._entries == {}, "no node for any chunk"
    ino = inos[b"42"]
    assert ops.inodes.lookups(ino) == 1
    attrs = await ops.lookup(arr, b"42", CTX)
    assert attrs.st_ino == ino and attrs.st_size == 6 and attrs.st_nlink == 1
    assert ops.inodes.lookups(ino) == 2
    assert (await ops.getattr(ino, CTX)).st_size == 6
    await ops.forget([(ino, 2)])
    assert ops.inodes.lookups(ino) == 0 and (await ops.getattr(ino, CTX)).st_ino == ino
    assert directory._entries == {}


async def test_a_row_used_becomes_a_node_under_its_inode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops, files = _stored_array(tmp_path, 300)
    arr, inos = await _list_arr(ops, monkeypatch)
    ino = inos[b"7"]
    info = await ops.open(ino, os.O_RDWR, CTX)
    assert await ops.read(info.fh, 0, 100) == files[b"7"]
    node = ops.inodes.node(ino)
    assert isinstance(node, File) and ops.inodes.ino(node) == ino and ops.inodes.lookups(ino) == 1
    await ops.write(info.fh, 0, b"written")
    await close(ops, info.fh)
    await ops.rename(arr, b"7", ROOT, b"moved", 0, CTX)
    assert (await ops.lookup(ROOT, b"moved", CTX)).st_ino == ino and ops.inodes.lookups(ino) == 2
    assert (await ops.getattr(ino, CTX)).st_size == 7
    await ops.unlink(ROOT, b"moved", CTX)
    assert (await ops.getattr(ino, CTX)).st_nlink == 0, "unlinked, still referenced by the kernel"
    await ops.forget([(ino, 2)])
    assert await errno_of(ops.getattr, ino, CTX) == errno.ESTALE
    other = inos[b"8"]
    await ops.unlink(arr, b"8", CTX)  # a row unlinked by name: its number goes with its node
    assert (await ops.getattr(other, CTX)).st_nlink == 0
    await ops.forget([(other, 1)])
    assert await errno_of(ops.getattr, other, CTX) == errno.ESTALE
    assert sorted(ops.tree.listdir("arr")) == sorted(
        name.decode() for name in files if name not in (b"7", b"8")
    )


async def test_a_listing_names_each_entry_once_while_rows_become_nodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row made a node before the listing began is listed by its node; one made meanwhile, under
    its row's place; one renamed away meanwhile, not at all; each name exactly once."""
    ops, files = _stored_array(tmp_path, 40)
    arr = (await ops.lookup(ROOT, b"arr", CTX)).st_ino
    first = await ops.lookup(arr, b"1", CTX)
    info = await ops.open(first.st_ino, os.O_RDONLY, CTX)  # a node now
    await ops.release(info.fh)
    replies = Replies(room=5)
    monkeypatch.setattr(pyfuse3, "readdir_reply", replies)
    handle = await ops.opendir(arr, CTX)
    await ops.readdir(handle, 0, object())  # type: ignore[arg-type]
    seen = [name for name, _, _ in replies.listed]
    later = [name for name in files if name not in seen]
    taken, moved = later[0], later[1]
    ops.inodes.node((await ops.lookup(arr, taken, CTX)).st_ino)  # a node made during the listing
    await ops.rename(arr, moved, ROOT, b"away", 0, CTX)
    replies.room = 1 << 30
    await ops.readdir(handle, replies.listed[-1][2], object())  # type: ignore[arg-type]
    await ops.releasedir(handle)
    names = [name for name, _, _ in replies.listed]
    assert names[:2] == [b".", b".."]
    assert sorted(names[2:]) == sorted(name for name in files if name != moved)
    assert names.count(b"1") == 1 and names.count(taken) == 1


async def test_a_chunk_read_and_closed_goes_back_to_its_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading every chunk of a listed directory once leaves no node behind: a node made from a
    row returns to it on the last close, with its inode number and the kernel's references."""
    ops, files = _stored_array(tmp_path, 500)
    arr, inos = await _list_arr(ops, monkeypatch)
    directory = ops.tree.resolve_dir("arr")
    for name, ino in inos.items():
        info = await ops.open(ino, os.O_RDONLY, CTX)
        assert await ops.read(info.fh, 0, 100) == files[name]
        await ops.release(info.fh)
    assert directory._entries == {} and directory.table is not None and directory.table.live == 500
    ino = inos[b"9"]
    assert ops.inodes.lookups(ino) == 1 and (await ops.getattr(ino, CTX)).st_size == 6
    first = await ops.open(ino, os.O_RDONLY, CTX)
    second = await ops.open(ino, os.O_RDONLY, CTX)
    await ops.release(first.fh)
    assert "9" in directory._entries, "still open"
    assert await ops.read(second.fh, 0, 100) == files[b"9"]
    await ops.release(second.fh)
    assert "9" not in directory._entries and (await ops.lookup(arr, b"9", CTX)).st_ino == ino
    assert ops.inodes.lookups(ino) == 2
    await ops.forget([(ino, 2)])
    assert ops.inodes.lookups(ino) == 0 and (await ops.getattr(ino, CTX)).st_ino == ino


async def test_a_chunk_changed_keeps_its_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Written, or given attributes of its own: the node stays (it holds what the row does not)."""
    ops, files = _stored_array(tmp_path, 50)
    _, inos = await _list_arr(ops, monkeypatch)
    directory = ops.tree.resolve_dir("arr")
    written = await ops.open(inos[b"1"], os.O_RDWR, CTX)
    await ops.write(written.fh, 0, b"new")
    await close(ops, written.fh)
    attrs = pyfuse3.EntryAttributes()
    attrs.st_mode = 0o600
    fields = SizeOnly()
    fields.update_size, fields.update_mode = False, True
    await ops.setattr(inos[b"2"], attrs, fields, None, CTX)  # type: ignore[arg-type]
    read = await ops.open(inos[b"2"], os.O_RDONLY, CTX)
    await ops.release(read.fh)
    assert {"1", "2"} <= set(directory._entries)
    assert (await ops.getattr(inos[b"2"], CTX)).st_mode & 0o777 == 0o600
    root = await ops.session.sync()
    assert root is not None
    assert ops.tree.read_file("arr/1") == b"new" + files[b"1"][3:]


async def test_a_chunk_the_kernel_knows_by_another_number_keeps_its_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node made from a row while the kernel held no reference to the row gets a number of its
    own when the kernel looks it up: it must stay, or that number would go stale."""
    ops, files = _stored_array(tmp_path, 20)
    arr, inos = await _list_arr(ops, monkeypatch)
    await ops.forget([(inos[b"3"], 1)])
    node = ops.tree.get_entry(ops.tree.resolve_dir("arr"), "3")  # made with no kernel reference
    ino = (await ops.lookup(arr, b"3", CTX)).st_ino
    assert ino != inos[b"3"] and ops.inodes.node(ino) is node
    info = await ops.open(ino, os.O_RDONLY, CTX)
    assert await ops.read(info.fh, 0, 100) == files[b"3"]
    await ops.release(info.fh)
    assert ops.inodes.node(ino) is node and (await ops.getattr(ino, CTX)).st_size == 6
    await ops.forget([(ino, 1)])
    assert await errno_of(ops.getattr, ino, CTX) == errno.ESTALE


async def test_a_chunk_given_back_during_a_listing_is_listed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk open when the listing began is listed by its node; closed meanwhile, it is a row
    again by the time the listing reaches the rows: it must not be listed a second time."""
    ops, files = _stored_array(tmp_path, 30)
    arr, inos = await _list_arr(ops, monkeypatch)  # the kernel knows every chunk by its row's number
    opened = await ops.open(inos[b"7"], os.O_RDONLY, CTX)
    replies = Replies(room=3)  # ".", "..", then "7" (the only name with a node)
    monkeypatch.setattr(pyfuse3, "readdir_reply", replies)
    handle = await ops.opendir(arr, CTX)
    await ops.readdir(handle, 0, object())  # type: ignore[arg-type]
    assert [name for name, _, _ in replies.listed] == [b".", b"..", b"7"]
    await ops.release(opened.fh)
    assert "7" not in ops.tree.resolve_dir("arr")._entries, "given back to its row"  # type: ignore[operator]
    replies.room = 1 << 30
    await ops.readdir(handle, replies.listed[-1][2], object())  # type: ignore[arg-type]
    await ops.releasedir(handle)
    names = [name for name, _, _ in replies.listed[2:]]
    assert sorted(names) == sorted(files) and names.count(b"7") == 1
