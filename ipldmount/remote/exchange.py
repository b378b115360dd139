"""Moving whole DAGs between a local blockstore and the IPFS network: push and pull.

A push sends a node only the blocks it lacks. A root the node has pinned is complete
there, so nothing is sent for it; a root pushed before and still pinned is a base:
only what the new root adds to it travels (:func:`~ipldmount.blocks.dag.iter_new_blocks`),
as one CAR streamed to ``dag/import``. A pull takes a CAR stream (``dag/export``, or a
trustless gateway's CAR) and keeps only verified blocks reachable from the root asked for,
committing as it goes: an interrupted pull keeps what arrived, and the next one fetches
only the subtrees still missing. What a CAR stream may make a pull hold is bounded: a
section is refused by its stated length, before its bytes come (:func:`_framed`), and blocks
that belong nowhere are dropped, then refused, past PARK_LIMIT.
"""

from __future__ import annotations

import io
import logging
import queue
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO, Protocol, runtime_checkable

from ipldmount.blocks.base import Blockstore
from ipldmount.blocks.car import MAX_HEADER_SIZE, car_header, incomplete_dag, read_car, section_head
from ipldmount.blocks.dag import block_links, iter_closure, iter_new_blocks
from ipldmount.errors import CarError, IncompleteDagError, RemoteError
from ipldmount.ipld.cid import MAX_IDENTITY, cid_to_str, may_link
from ipldmount.remote.limits import MAX_BLOCK, check_block_size

if TYPE_CHECKING:  # the node is built by the caller: moving DAGs loads no HTTP client
    from ipldmount.remote.kubo import KuboNode

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (blocks, bytes) so far
COMMIT_EVERY = 64 << 20  # bytes a pull stores before it makes them durable and goes on
WRITE_AHEAD = 16  # blocks received and checked but not yet stored, at most
PARK_LIMIT = 64 << 20  # bytes of blocks a pull holds that came before their parent (order=unk)
MAX_SECTION = MAX_BLOCK + 64 + MAX_IDENTITY  # a CAR section: a block and its CID (an identity CID holds one)


@dataclass
class Transfer:
    """What a push or a pull moved."""

    root: bytes
    blocks: int = 0
    nbytes: int = 0
    base: bytes | None = None  # the root a push sent the difference from
    already: bool = False  # nothing needed moving: the other side had it all
    requests: int = 0  # CAR streams a pull asked for


# --- push -------------------------------------------------------------------------


def push(
    store: Blockstore,
    root: bytes,
    node: KuboNode,
    *,
    bases: Sequence[bytes] = (),
    pin: bool = False,
    progress: Progress | None = None,
    present: Collection[bytes] = (),
) -> Transfer:
    """Send the DAG under *root* to *node*: only what the node lacks (see the module docstring).

    *bases* are earlier roots the node may have pinned, best first; those also in *present*
    are taken as whole on the node without asking (sent whole moments ago, pinned or not: the
    trees of a history, each sent as the difference from the one before). Raises
    IncompleteDagError (naming the blocks) when the local store lacks part of the DAG,
    RemoteError when the node refuses or fails.
    """
    transfer = Transfer(root)
    if root in present or node.is_pinned(root):
        transfer.already = True
        return transfer
    transfer.base = next(
        (base for base in bases if base != root and (base in present or node.is_pinned(base))), None
    )
    missing: list[bytes] = []
    if transfer.base is None:
        blocks = iter_closure(store, root, missing)
    else:
        blocks = iter_new_blocks(store, root, transfer.base, missing)
    pieces = _car_pieces(root, _counted(blocks, transfer, progress), missing)
    try:
        node.import_car(pieces, pin_roots=False)  # roots are reported only when pinned by the import
    except _Incomplete:
        raise incomplete_dag(root, missing, consequence="nothing was pinned") from None
    if node.block_size(root) is None:
        raise RemoteError(f"IPFS node {node.url}: after dag/import it does not have {cid_to_str(root)}")
    if pin:
        node.pin(root)
    return transfer


class _Incomplete(Exception):
    """Raised inside a CAR being streamed, so the upload stops when a local block is missing."""


def _counted(
    blocks: Iterable[tuple[bytes, bytes]], transfer: Transfer, progress: Progress | None
) -> Iterator[tuple[bytes, bytes]]:
    for cid, data in blocks:
        check_block_size(cid, len(data))
        transfer.blocks += 1
        transfer.nbytes += len(data)
        if progress is not None:
            progress(transfer.blocks, transfer.nbytes)
        yield cid, data


def _car_pieces(root: bytes, blocks: Iterable[tuple[bytes, bytes]], missing: list[bytes]) -> Iterator[bytes]:
    """A CARv1 of *blocks* under *root*, piece by piece (a block is never copied to be framed);
    stops the upload if a block was missing."""
    yield car_header([root])
    for cid, data in blocks:
        yield section_head(cid, len(data))
        yield data
    if missing:
        raise _Incomplete


# --- pull -------------------------------------------------------------------------


@runtime_checkable
class CarSource(Protocol):
    """Where a pull gets CARs: an IPFS node (``dag/export``) or a trustless gateway."""

    def get_block(self, cid: bytes) -> bytes: ...

    def export_car(self, root: bytes) -> Iterator[bytes]: ...


@dataclass
class _Wanted:
    """The blocks a pull still needs: linked from what it has, not yet stored."""

    pending: set[bytes] = field(default_factory=set)
    taken: set[bytes] = field(default_factory=set)  # handed to the writer, not in the store yet
    parked: dict[bytes, bytes] = field(default_factory=dict)  # came before their parent
    parked_bytes: int = 0
    dropped_bytes: int = 0  # blocks of no use: sent again while parked, or with no room to park
    source: object = None  # where they come from, for messages
    lock: threading.Lock = field(default_factory=threading.Lock)

    def is_taken(self, cid: bytes) -> bool:
        with self.lock:
            return cid in self.taken

    def take(self, cid: bytes) -> None:
        with self.lock:
            self.taken.add(cid)

    def stored(self, cids: list[bytes]) -> None:
        """The writer made these part of the store: ``has`` answers for them from now on."""
        with self.lock:
            self.taken.difference_update(cids)


def pull(
    store: Blockstore,
    root: bytes,
    sources: Sequence[CarSource],
    *,
    progress: Progress | None = None,
) -> Transfer:
    """Fetch what the local store lacks of the DAG under *root*, from the first source that has it.

    Every block is verified against its CID and must be reachable from *root*; others are
    dropped. Blocks are stored as they arrive and made durable every COMMIT_EVERY bytes.
    Raises IncompleteDagError if, after every source, blocks are still missing.
    """
    transfer = Transfer(root)
    gaps = missing_subtrees(store, root)
    if not gaps:
        transfer.already = True
        return transfer
    errors: list[str] = []
    for source in sources:
        for gap in gaps:
            try:
                _fetch_subtree(store, gap, source, transfer, progress)
            except (RemoteError, CarError) as exc:  # the error raised at the end says it: no warning
                log.info("pull %s: %s from %r failed: %s", cid_to_str(root), cid_to_str(gap), source, exc)
                errors.append(str(exc))
        gaps = missing_subtrees(store, root)
        if not gaps:
            return transfer
    raise unfetched(root, gaps, errors)


def unfetched(root: bytes, gaps: list[bytes], errors: list[str]) -> IncompleteDagError:
    """The error of a pull that could not fetch *gaps* under *root*, saying the last *errors*."""
    shown = "; ".join(errors[-3:]) or "no source sent them"
    return IncompleteDagError(
        f"{len(gaps)} subtree(s) under {cid_to_str(root)} could not be fetched ({shown}); what arrived "
        "is kept: pull again to fetch the rest",
        root,
        gaps,
    )


def fetch_dag_ahead(store: Blockstore, root: bytes, sources: Sequence[CarSource]) -> None:
    """One CAR of the DAG under *root* (which may be here already: its blocks below may not),
    from the first of *sources* that gives it; what the store lacks of it is kept, not made
    durable (a cache filled ahead of a reader). A failure is only logged: the reader fetches what
    is still missing block by block, meets the failure again, and reports it."""
    for source in sources:
        try:
            _fetch_subtree(store, root, source, Transfer(root), None, durable=False)
            return
        except Exception as exc:  # whatever it is, the reader meets it again, and reports it
            log.debug(
                "fetching the DAG under %s ahead of need from %r failed: %s", cid_to_str(root), source, exc
            )


def missing_subtrees(store: Blockstore, root: bytes) -> list[bytes]:
    """The CIDs under *root* that the store lacks, each the top of a missing subtree.

    Walks the blocks the store has (those with links are read; raw leaves only looked up).
    """
    missing: list[bytes] = []
    stack, seen = [root], set()
    while stack:
        cid = stack.pop()
        if cid in seen:
            continue
        seen.add(cid)
        if not store.has(cid):
            missing.append(cid)
        elif may_link(cid):
            stack.extend(block_links(cid, store.get(cid)))
    return missing


def _fetch_subtree(
    store: Blockstore,
    top: bytes,
    source: CarSource,
    transfer: Transfer,
    progress: Progress | None,
    durable: bool = True,
) -> None:
    """One CAR from *source* for the subtree under *top*: its wanted blocks stored as they come.

    The stream is read and checked here while a :class:`_BlockWriter` stores what it yields, so
    receiving, hashing and writing overlap. A failure midway still keeps what arrived verified.
    """
    source.get_block(top)  # within the source's block timeout: a CAR stream of a root it lacks may hang
    transfer.requests += 1
    stream = PieceStream(_framed(source.export_car(top), source)).as_binary()
    _, sections = read_car(stream)  # verifies each block
    wanted = _Wanted({top}, source=source)
    writer = _BlockWriter(store, wanted.stored, durable)
    try:
        for cid, data in sections:
            for taken, block in _take(store, wanted, cid, data):
                writer.put(taken, block)
                transfer.blocks += 1
                transfer.nbytes += len(block)
            if progress is not None:
                progress(transfer.blocks, transfer.nbytes)
    finally:
        writer.close()
    if top in wanted.pending:  # a node may answer a root it lacks with a CAR header alone
        raise RemoteError(f"{source!r} sent a CAR without {cid_to_str(top)}: it does not have it")


def _take(store: Blockstore, wanted: _Wanted, cid: bytes, data: bytes) -> list[tuple[bytes, bytes]]:
    """The blocks to store now: *cid* if the pull wants it, with the parked children it unlocks."""
    if cid not in wanted.pending:
        if not wanted.is_taken(cid) and not store.has(cid):
            _park(wanted, cid, data)
        return []
    taken = []
    queue = [(cid, data)]
    while queue:
        cid, data = queue.pop()
        wanted.pending.discard(cid)
        if not wanted.is_taken(cid) and not store.has(cid):
            wanted.take(cid)
            taken.append((cid, data))
        for link in block_links(cid, data):
            if link in wanted.parked:
                child = wanted.parked.pop(link)
                wanted.parked_bytes -= len(child)
                queue.append((link, child))
            elif not wanted.is_taken(link) and not store.has(link):  # taken first: see stored()
                wanted.pending.add(link)
    return taken


def _park(wanted: _Wanted, cid: bytes, data: bytes) -> None:
    """Keep a block no parent has asked for yet (perhaps a child sent before it), while there is
    room; past PARK_LIMIT of blocks of no use, the source is sending junk: RemoteError."""
    if cid not in wanted.parked and wanted.parked_bytes + len(data) <= PARK_LIMIT:
        wanted.parked[cid] = data
        wanted.parked_bytes += len(data)
        return
    wanted.dropped_bytes += len(data)
    if wanted.dropped_bytes > PARK_LIMIT:
        raise RemoteError(
            f"{wanted.source!r} sent more than {PARK_LIMIT >> 20} MiB of blocks that are not in the DAG "
            "asked for, or that it sent before"
        )


def _framed(pieces: Iterator[bytes], source: object) -> Iterator[bytes]:
    """A CAR stream's *pieces*, passed on as they come once the length that opens each section
    is checked: one over MAX_SECTION is refused before its bytes arrive (the CAR reader gathers a
    whole section before it can judge it, so a claimed 32 GiB would be gathered first)."""
    offset, skip, limit = 0, 0, MAX_HEADER_SIZE  # the first length is the header's
    varint: list[int] = []
    for piece in pieces:
        position = 0
        while position < len(piece):
            if skip:
                step = min(skip, len(piece) - position)
                skip, position = skip - step, position + step
                continue
            varint.append(piece[position])
            position += 1
            if varint[-1] & 0x80 and len(varint) < 10:
                continue
            skip = sum((byte & 0x7F) << (7 * index) for index, byte in enumerate(varint))
            if skip > limit or varint[-1] & 0x80:
                what = "header" if limit == MAX_HEADER_SIZE else "section"
                start = offset + position - len(varint)
                raise RemoteError(
                    f"{source!r} sent a CAR whose {what} at byte {start} claims {skip:,} bytes (at most "
                    f"{limit:,}: {'a block and its CID' if what == 'section' else 'a header'})"
                )
            varint.clear()
            limit = MAX_SECTION
        offset += len(piece)
        yield piece


class _BlockWriter:
    """Stores verified blocks from a worker thread, made part of the store every COMMIT_EVERY bytes
    and at :meth:`close` (then synced to disk once); a failure there is raised to the caller.
    *stored* hears of each commit's blocks, after it."""

    def __init__(
        self, store: Blockstore, stored: Callable[[list[bytes]], None], durable: bool = True
    ) -> None:
        self._store = store
        self._stored = stored
        self._durable = durable  # sync once at the end (a cache filled ahead of a reader need not)
        self._queue: queue.Queue[tuple[bytes, bytes] | None] = queue.Queue(maxsize=WRITE_AHEAD)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ipldmount-pull-writer", daemon=True)
        self._thread.start()

    def put(self, cid: bytes, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((cid, data))

    def close(self) -> None:
        """Store what is queued, commit it, sync it; raise what went wrong in the thread."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._durable:
            self._store.sync()

    def _run(self) -> None:
        try:
            self._write()
        except BaseException as exc:
            self._error = exc
            while self._queue.get() is not None:  # let the reader finish
                pass

    def _write(self) -> None:
        staging, staged = self._store.staging(), []
        nbytes = 0
        try:
            while (item := self._queue.get()) is not None:
                staging.put_verified(*item)
                staged.append(item[0])
                nbytes += len(item[1])
                if nbytes >= COMMIT_EVERY:
                    staging.commit()
                    self._stored(staged)
                    staging, staged, nbytes = self._store.staging(), [], 0
        finally:  # also on failure: what is staged is kept, and a pull resumes from it
            staging.commit()
            self._stored(staged)


class PieceStream(io.RawIOBase):
    """A readable binary stream over an iterator of byte pieces (a streamed HTTP body)."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self._rest = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._rest:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._rest = memoryview(piece)
        count = min(len(buffer), len(self._rest))
        buffer[:count] = self._rest[:count]
        self._rest = self._rest[count:]
        return count

    def as_binary(self) -> BinaryIO:
        return io.BufferedReader(self, 1 << 20)
