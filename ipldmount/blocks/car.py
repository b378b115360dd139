"""CARv1 archives (https://ipld.io/specs/transport/car/carv1/), streamed both ways.

A CAR is ``varint(len) + DAG-CBOR header`` followed by sections
``varint(len(cid) + len(data)) + cid + data``. Reading never holds more than one
block in memory and checks every block against its CID; importing goes through
a blockstore batch, so a CAR that turns out to be bad imports nothing.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple, Protocol

from multiformats import multicodec

from ipldmount.blocks import Blockstore
from ipldmount.blocks.dag import block_links, iter_closure, iter_new_blocks
from ipldmount.blocks.directory import process_exists, replacing
from ipldmount.errors import (
    BlockNotFoundError,
    CarError,
    CorruptBlockError,
    IncompleteDagError,
    InvalidCIDError,
    IpldmountError,
)
from ipldmount.ipld import codec
from ipldmount.ipld.cid import (
    DAG_CBOR,
    DAG_PB,
    IDENTITY,
    RAW,
    SHA2_256,
    cid_to_str,
    inline_data,
    normalize,
    verify,
)
from ipldmount.ipld.codec import Link
from ipldmount.ipld.varint import MULTIFORMATS_MAX_BYTES, TruncatedVarint, decode_varint, encode_varint

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called as ``progress(blocks, nbytes)``: blocks done, CAR bytes written or read so far."""
LinksOfBlock = Callable[[bytes, bytes], Iterable[bytes]]  # (CID, block) -> the CIDs it links to

MAX_VARINT_BYTES = MULTIFORMATS_MAX_BYTES  # multiformats unsigned varints carry at most 63 bits
MAX_HEADER_SIZE = 1 << 20
MAX_SECTION_SIZE = 1 << 36  # far beyond any block; only stops absurd lengths early
_READ_CHUNK = 4 << 20  # a section of one 1 MiB block (plus its CID) is read in one piece, not joined
_DIGEST_LENGTH = 32


# --- writing --------------------------------------------------------------------


class Writable(Protocol):
    """Where a CAR goes: a file, stdout, an HTTP response."""

    def write(self, data: bytes, /) -> object: ...


def write_car(
    out: Writable,
    roots: Sequence[bytes],
    blocks: Iterable[tuple[bytes, bytes]],
    *,
    progress: Progress | None = None,
) -> int:
    """Write a CARv1 of *blocks* (as given, unchecked) under *roots*; return the bytes written."""
    written = _write(out, car_header(roots))
    for count, (cid, data) in enumerate(blocks, 1):
        written += _write(out, section_head(cid, len(data)))
        written += _write(out, data)
        if progress is not None:
            progress(count, written)
    return written


def car_header(roots: Sequence[bytes]) -> bytes:
    """A CARv1's opening bytes: the length-prefixed DAG-CBOR header naming *roots*."""
    if not roots:
        raise ValueError("a CAR needs at least one root")
    header = codec.encode({"roots": [Link(root) for root in roots], "version": 1})
    return encode_varint(len(header)) + header


def section_head(cid: bytes, size: int) -> bytes:
    """What precedes a block of *size* bytes in a CAR section: the section's length, the CID."""
    return encode_varint(len(cid) + size) + cid


def _write(out: Writable, data: bytes) -> int:
    out.write(data)
    return len(data)


def export_car(
    store: Blockstore,
    root: bytes,
    out: BinaryIO,
    progress: Progress | None = None,
    missing: list[bytes] | None = None,
    since: bytes | None = None,
    lead: Iterable[tuple[bytes, bytes]] = (),
    dag: bytes | None = None,
) -> int:
    """Write the DAG under *root* as a CARv1; return the bytes written.

    With *since* (an earlier root), only the blocks *root* adds to it
    (:func:`~ipldmount.blocks.dag.iter_new_blocks`): a CAR of the change, which
    rebuilds *root* in a store that holds *since*. With a *missing* list, blocks
    that cannot be read are noted there and left out (the archive is then
    incomplete: the caller must not present it as the DAG). *lead*: blocks written
    first, as given, and then the DAG under *dag* instead of *root*'s (a commit's
    CAR: its chain of commits, then its tree, not every older tree its chain links).
    """
    under = root if dag is None else dag
    if since is None:
        blocks = iter_closure(store, under, missing)
    else:
        blocks = iter_new_blocks(store, under, since, missing)
    return write_car(out, [root], itertools.chain(lead, blocks), progress=progress)


def incomplete_dag(
    root: bytes, missing: list[bytes], shown: int = 5, consequence: str = "no CAR was written"
) -> IncompleteDagError:
    """The error for a DAG whose *missing* blocks cannot be read, naming them."""
    names = ", ".join(cid_to_str(cid) for cid in missing[:shown])
    more = f" and {len(missing) - shown} more" if len(missing) > shown else ""
    return IncompleteDagError(
        f"{len(missing)} block{'s' * (len(missing) != 1)} under {cid_to_str(root)} cannot be read "
        f"(not found in the store, or corrupt): {names}{more}; {consequence}",
        root,
        missing,
    )


class CarTarget(NamedTuple):
    """Where a CAR for a path goes: the *path* to write, and whether it is *streamed* into.

    A device or a pipe is written into as opened (what ``> path`` does in a shell):
    replacing it by a file would destroy it (``/dev/null``) or leave its reader
    waiting forever (a FIFO). A regular file, or none yet, is replaced atomically;
    through a symlink, the file it points to is (never the link itself: ``/dev/stdout``).
    """

    path: Path
    streamed: bool


def car_target(path: Path) -> CarTarget:
    """How a CAR is written to *path* (:class:`CarTarget`); refuses a directory, socket or the like.

    Raises IpldmountError (one line, naming *path*) for what no CAR can be written to,
    and OSError for a path that cannot even be looked at.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode)):
        return CarTarget(path, streamed=True)
    if mode is None or stat.S_ISREG(mode):
        return CarTarget(Path(os.path.realpath(path)) if os.path.islink(path) else path, streamed=False)
    what = "a directory" if stat.S_ISDIR(mode) else "a socket" if stat.S_ISSOCK(mode) else "of another kind"
    raise IpldmountError(f"cannot write a CAR to {path}: it is {what} (not a file, device or pipe)")


def write_car_file(
    store: Blockstore,
    root: bytes,
    path: Path,
    progress: Progress | None = None,
    since: bytes | None = None,
    lead: Iterable[tuple[bytes, bytes]] = (),
    dag: bytes | None = None,
) -> int:
    """Write a root's CAR (of the change since *since*, if given; *lead* and *dag* as in
    :func:`export_car`) to *path*; return its size.

    A regular file (or a new one) is written atomically and durably, never half-written;
    a device or pipe is streamed into (:func:`car_target`). Raises IncompleteDagError,
    naming every block that cannot be read: then no file was written, or what went
    into the device or pipe is incomplete.
    """
    target = car_target(path)
    export = functools.partial(export_car, store, root, progress=progress, since=since, lead=lead, dag=dag)
    if target.streamed:
        return _stream_car_file(export, root, target.path)
    return _replace_car_file(export, root, target.path)


Export = Callable[..., int]  # export_car with all but the stream and the missing list given


def _stream_car_file(export: Export, root: bytes, path: Path) -> int:
    """Write into a device or pipe as it is: no O_CREAT (a node that vanished is not made a
    file), no temporary. Opening a FIFO waits for its reader, as any writer does."""
    missing: list[bytes] = []
    with open(os.open(path, os.O_WRONLY | os.O_CLOEXEC), "wb") as stream:
        size = export(stream, missing=missing)
        stream.flush()
        if stat.S_ISBLK(os.fstat(stream.fileno()).st_mode):
            os.fsync(stream.fileno())  # a disk keeps it; a pipe or character device cannot be synced
    if missing:
        raise incomplete_dag(root, missing, consequence=f"the CAR written to {path} is incomplete")
    return size


def _replace_car_file(export: Export, root: bytes, path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    handle, temporary = _open_temporary(path)
    missing: list[bytes] = []
    with replacing(handle, temporary, path) as stream:
        size = export(stream, missing=missing)
        if missing:
            raise incomplete_dag(root, missing)
    return size


# A CAR's temporary is ``.NAME.ipldmount-PID-HEX.tmp`` beside it: hidden, saying whose it is (the
# pid) so that one a killed writer left can be told from anyone else's file, and removed.
_TEMPORARY = re.compile(r"\..*\.ipldmount-([1-9][0-9]{0,6})-[0-9a-f]{16}\.tmp", re.DOTALL)  # pid_max <= 2**22
_TEMPORARY_NAME_BYTES = 200  # of NAME in it: with the rest (at most 40 bytes) within NAME_MAX, 255
STALE_SCAN_LIMIT = 100_000  # entries of a folder looked at before each CAR written into it


def temporary_name(name: str, pid: int | None = None) -> str:
    """The name of a CAR temporary for a target called *name*, made by process *pid* (us)."""
    short = os.fsdecode(os.fsencode(name)[:_TEMPORARY_NAME_BYTES])
    return f".{short}.ipldmount-{os.getpid() if pid is None else pid}-{secrets.token_hex(8)}.tmp"


def temporary_owner(name: str) -> int | None:
    """The pid that made a CAR temporary called *name*, or None if *name* is not one of ours."""
    match = _TEMPORARY.fullmatch(name)
    return int(match.group(1)) if match else None


def _open_temporary(path: Path) -> tuple[int, Path]:
    """A new file beside *path* for its CAR, readable by the owner only until renamed."""
    temporary = path.parent / temporary_name(path.name)
    return os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), temporary


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete the CAR temporaries in *directory* whose writer is gone (killed mid-write: -9, a
    crash, a power cut), and return them. Only names of our exact pattern, whose pid names
    no live process (checked per file, not cached: pids are reused); never our own."""
    removed: list[Path] = []
    try:
        with os.scandir(directory) as entries:
            removed = [
                Path(entry.path)
                for entry in itertools.islice(entries, STALE_SCAN_LIMIT)
                if _remove_stale(entry)
            ]
    except OSError as exc:  # a folder we may write to but not list, say: the new CAR matters more
        log.debug("could not look for stale CAR temporaries in %s: %s", directory, exc)
    return removed


def _remove_stale(entry: os.DirEntry[str]) -> bool:
    """Remove *entry* if it is a CAR temporary of a dead writer; whether it was."""
    pid = temporary_owner(entry.name)
    if pid is None or pid == os.getpid() or process_exists(pid):
        return False
    try:
        if not entry.is_file(follow_symlinks=False):
            return False
        os.unlink(entry.path)
    except OSError as exc:  # gone already, or another user's in a sticky folder such as /tmp
        log.debug("left %s in place: %s", entry.path, exc)
        return False
    log.info("removed %s, left by process %d (no longer running)", entry.path, pid)
    return True


# --- reading --------------------------------------------------------------------


class _Reader:
    """A stream that counts its offset, for error messages that say where."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.offset = 0

    def read(self, size: int) -> bytes:
        """Up to *size* bytes (fewer only at end of stream), read piecewise.

        Piecewise so that a corrupt huge length hits the end of the stream
        instead of allocating the whole claimed size at once.
        """
        parts = []
        remaining = size
        while remaining:
            part = self.stream.read(min(remaining, _READ_CHUNK))
            if not part:
                break
            parts.append(part)
            remaining -= len(part)
        data = b"".join(parts)
        self.offset += len(data)
        return data

    def varint(self, what: str) -> int | None:
        """The next varint, or None at a clean end of stream."""
        start = self.offset
        raw = bytearray()
        while True:
            byte = self.read(1)
            if not byte:
                if not raw:
                    return None
                raise CarError(f"truncated {what} varint at byte {start}")
            raw += byte
            if not byte[0] & 0x80 or len(raw) == MAX_VARINT_BYTES:
                break
        try:
            return decode_varint(raw)[0]
        except ValueError as exc:
            raise CarError(f"bad {what} varint at byte {start}: {exc}") from None


def read_car(stream: BinaryIO) -> tuple[list[bytes], Iterator[tuple[bytes, bytes]]]:
    """Read a CARv1's roots now and return them with a lazy iterator of verified ``(cid, data)``.

    Raises CarError (saying what and at which byte) for anything malformed,
    unsupported or corrupt, from this call or from the iterator.
    """
    reader = _Reader(stream)
    roots = _read_header(reader)
    return roots, _sections(reader)


def _read_header(reader: _Reader) -> list[bytes]:
    length = reader.varint("header length")
    if length is None:
        raise CarError("not a CAR: the stream is empty")
    if not 0 < length <= MAX_HEADER_SIZE:
        raise CarError(f"implausible CAR header length {length} at byte 0 (allowed: 1 to {MAX_HEADER_SIZE})")
    start = reader.offset
    raw = reader.read(length)
    if len(raw) < length:
        raise CarError(f"truncated CAR header at byte {start}: expected {length} bytes, got {len(raw)}")
    try:
        header = codec.decode(raw)
    except CorruptBlockError as exc:
        raise CarError(f"CAR header at byte {start} is not DAG-CBOR ({exc})") from None
    return _header_roots(header)


def _header_roots(header: object) -> list[bytes]:
    if not isinstance(header, dict):
        raise CarError(f"CAR header is not a map but a {type(header).__name__}")
    version = header.get("version")
    if type(version) is not int or version != 1:
        hint = " (CARv2 is not supported; only CARv1)" if version == 2 else ""
        raise CarError(f"unsupported CAR version {version!r}{hint}")
    roots = header.get("roots")
    if not isinstance(roots, list) or not roots:
        raise CarError(f"CAR header needs 'roots', a non-empty list of links; it has {roots!r}")
    if not all(isinstance(root, Link) for root in roots):
        raise CarError("CAR header 'roots' holds something other than links")
    return [normalize(root.cid) for root in roots]


def _sections(reader: _Reader) -> Iterator[tuple[bytes, bytes]]:
    while True:
        start = reader.offset
        length = reader.varint("section length")
        if length is None:
            return
        if length > MAX_SECTION_SIZE:
            raise CarError(f"implausible section length {length} at byte {start}")
        body = reader.read(length)
        if len(body) < length:
            raise CarError(f"truncated section at byte {start}: expected {length} bytes, got {len(body)}")
        cid_end = _cid_length(body, start)
        cid, data = normalize(body[:cid_end]), body[cid_end:]
        if not verify(cid, data):
            raise CarError(f"block {cid_to_str(cid)} in the section at byte {start} does not hash to its CID")
        if inline_data(cid) is None:  # an identity CID's block is the CID itself: nothing to keep
            yield cid, data


def _cid_length(body: bytes, start: int) -> int:
    """Length of the CID that opens a section, which must be one this project reads."""
    too_short = CarError(f"section at byte {start}: its length {len(body)} is smaller than its CID")
    if body[:2] == b"\x12\x20":  # a CIDv0 is a bare sha2-256 multihash, always dag-pb
        if len(body) < 34:
            raise too_short
        return 34
    try:
        version, pos = decode_varint(body)
        codec_code, pos = decode_varint(body, pos)
        hash_code, pos = decode_varint(body, pos)
        digest_length, pos = decode_varint(body, pos)
    except TruncatedVarint:
        raise too_short from None
    except ValueError as exc:
        raise CarError(f"section at byte {start}: bad varint in its CID: {exc}") from None
    if pos + digest_length > len(body):
        raise too_short
    if version != 1:
        raise CarError(f"section at byte {start}: unsupported CID version {version}")
    sha256 = hash_code == SHA2_256 and digest_length == _DIGEST_LENGTH
    if codec_code not in (RAW, DAG_CBOR, DAG_PB) or not (sha256 or hash_code == IDENTITY):
        raise CarError(
            f"section at byte {start}: unsupported CID (codec {_codec_name(codec_code)},"
            f" hash {_codec_name(hash_code)}, {digest_length}-byte digest);"
            " only raw, dag-cbor or dag-pb with sha2-256 (or identity)"
        )
    return pos + digest_length


def _codec_name(code: int) -> str:
    try:
        return f"{multicodec.get(code=code).name} (0x{code:x})"
    except (KeyError, ValueError):
        return f"0x{code:x}"


# --- importing ------------------------------------------------------------------


def import_car(
    store: Blockstore,
    stream: BinaryIO,
    progress: Progress | None = None,
    check_roots: Callable[[list[bytes]], None] | None = None,
    required_links: LinksOfBlock = block_links,
) -> list[bytes]:
    """Import a CARv1 into *store* in one batch and return its roots.

    Every block is verified, every root must end up in the store, and every link
    of an imported block that *required_links* names (default: all) must point into
    the CAR or the store (a commit's parents and older trees need not: its CAR
    carries the chain the exporting store had, and the head's tree alone). On any problem
    this raises CarError and imports nothing (StoreFullError and I/O errors of
    the stream pass through as they are, also importing nothing). *check_roots*
    may refuse the roots once every block is in (it sees them, not yet committed);
    what it raises also imports nothing. Inside an already open batch, rolling
    back is up to that outer batch.
    """
    try:
        with store.batch():
            reader = _Reader(stream)
            roots = _read_header(reader)
            _import_sections(store, reader, roots, progress, required_links)
            if check_roots is not None:
                check_roots(roots)
    except (BlockNotFoundError, CorruptBlockError, InvalidCIDError) as exc:
        raise CarError(f"bad CAR: {exc}") from exc
    return roots


def _import_sections(
    store: Blockstore,
    reader: _Reader,
    roots: list[bytes],
    progress: Progress | None,
    required_links: LinksOfBlock,
) -> None:
    present: set[bytes] = set()
    dangling: set[bytes] = set()  # linked to, not seen yet
    for count, (cid, data) in enumerate(_sections(reader), 1):
        store.put_block(cid, data)
        present.add(cid)
        dangling.discard(cid)
        dangling.update(link for link in required_links(cid, data) if link not in present)
        if progress is not None:
            progress(count, reader.offset)
    _check_complete(store, roots, present, dangling)


def _check_complete(store: Blockstore, roots: list[bytes], present: set[bytes], dangling: set[bytes]) -> None:
    for root in roots:
        if root not in present and not store.has(root):
            raise CarError(f"root {cid_to_str(root)} is neither in the CAR nor in the store")
    missing = sorted(link for link in dangling if not store.has(link))
    if missing:
        shown = ", ".join(cid_to_str(link) for link in missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise CarError(f"incomplete DAG: {len(missing)} linked blocks are in neither CAR nor store: {shown}")
