"""ipfs: push, pull and a lazy mount's first read, against the IPFS node's own import and export.

The node is the test suite's (tests/ipfs_node.py: Kubo on loopback, in the private network
namespace `make bench` runs in). Each round pushes a fresh array (every chunk stamped with the
round, so nothing is on the node already) and, interleaved, has the node `dag/import` the CAR
of another fresh array: the baseline moves the same bytes by the node's own path. Pull is
timed into an empty store beside the node's `dag/export` of the same root read to the end.
"""

from __future__ import annotations

import itertools
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import MB, Context, MiB, Mount, Row, Timer, log, random_block, stamp

from ipldmount.blocks import DirectoryBlockstore, car
from ipldmount.blocks.car import read_car
from ipldmount.blocks.directory import _sync_filesystem as sync_filesystem
from ipldmount.ipld.cid import cid_to_str, parse_cid
from ipldmount.remote.exchange import PieceStream, pull, push
from ipldmount.remote.kubo import KuboNode
from ipldmount.tree.model import Tree

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import ipfs_node  # the test suite's node runner

CHUNK = MiB  # one zarr chunk per block: the largest block an IPFS node takes


def _array(store: DirectoryBlockstore, chunks: int, round_: int) -> bytes:
    """An array of *chunks* 1 MiB chunks unique to *round_*; its root."""
    tree = Tree(store)
    block = random_block(CHUNK, seed=round_)
    with store.batch():
        tree.write_file("arr/.zarray", b'{"zarr_format": 2}')
        for index in range(chunks):
            tree.write_file(f"arr/{index}", bytes(stamp(block, round_ * chunks + index)))
        return tree.commit()


def _car_pieces(path: Path) -> Iterator[bytes]:
    with path.open("rb") as stream:
        while piece := stream.read(MiB):
            yield piece


def run(ctx: Context) -> None:
    reason = ipfs_node.node_missing()
    if reason is not None:
        log(f"ipfs: skipped: {reason}")
        return
    chunks = 32 if ctx.quick else 128
    rounds = max(ctx.repeats, 3)
    node = ipfs_node.start_node()
    try:
        _measure(ctx, node, chunks, rounds)
    finally:
        node.stop()


def _measure(ctx: Context, node: ipfs_node.IpfsNode, chunks: int, rounds: int) -> None:
    kubo = KuboNode(node.url)
    times: dict[str, list[float]] = {}
    nbytes = chunks * CHUNK
    last_root = b""
    for round_ in range(rounds):
        seconds, last_root = _round(ctx, kubo, chunks, round_)
        for step, value in seconds.items():
            times.setdefault(step, []).append(value)
        shown = ", ".join(f"{step} {value:.2f} s" for step, value in seconds.items())
        log(f"ipfs: round {round_ + 1}/{rounds}: {shown}")
    label = f"{nbytes // MiB} MiB in {chunks} chunks"
    median = {key: statistics.median(values) for key, values in times.items()}
    note = f"median of {rounds}, interleaved"
    rows = (
        ("push", "import", "node dag/import of its CAR", note),
        ("pull", "export", "node dag/export, read to the end", note),
        ("pull", "files", "ext4: write them as block files", "the floor on disk: a file per block, synced"),
        ("pull", "receive", "receive + verify its CAR, store nothing", "what a pull does before storing"),
    )
    for step, baseline, name, why in rows:
        ours, theirs = nbytes / MB / median[step], nbytes / MB / median[baseline]
        ctx.add(Row("ipfs", f"{step} {label}", ours, "MB/s", theirs, name, why))
    _lazy_read(ctx, node, last_root)
    files = [f"arr/{index}" for index in range(chunks)]
    what = f"every chunk of that array ({nbytes // MiB} MiB)"
    _lazy_sequential(ctx, node, kubo, last_root, files, what, rounds)
    _lazy_sequential(ctx, node, kubo, last_root, files, what, rounds, readers=8)
    unixfs_root, unixfs_size = _unixfs_file(node, nbytes)
    what = f"a {unixfs_size // MiB} MiB UnixFS file (ipfs add, 256 KiB raw leaves)"
    _lazy_sequential(ctx, node, kubo, unixfs_root, ["big.bin"], what, rounds)


def _round(ctx: Context, kubo: KuboNode, chunks: int, round_: int) -> tuple[dict[str, float], bytes]:
    """One round on fresh arrays: seconds by step, and the root pushed."""
    ours = DirectoryBlockstore(ctx.path("ipfs", f"ours-{round_}"), durable=False)
    theirs = DirectoryBlockstore(ctx.path("ipfs", f"theirs-{round_}"), durable=False)
    fresh = DirectoryBlockstore(ctx.path("ipfs", f"pulled-{round_}"), durable=False)
    root, other = _array(ours, chunks, 2 * round_), _array(theirs, chunks, 2 * round_ + 1)
    car_path = ctx.path("ipfs") / f"other-{round_}.car"
    car.write_car_file(theirs, other, car_path)
    steps: dict[str, Callable[[], object]] = {
        "push": lambda: push(ours, root, kubo),
        "import": lambda: kubo.import_car(_car_pieces(car_path), pin_roots=False),
        "export": lambda: sum(len(piece) for piece in kubo.export_car(root)),
        "pull": lambda: pull(fresh, root, [kubo]),
        "receive": lambda: _receive(kubo, root),
    }
    order = ["push", "import", "export", "receive", "pull"]
    if round_ % 2:  # who goes first alternates (the export reads the root the push sent)
        order = ["import", "push", "pull", "receive", "export"]
    seconds = {}
    for step in order:
        with Timer() as timer:
            steps[step]()
        seconds[step] = timer.seconds
    seconds["files"] = _write_block_files(ours, root, ctx.path("ipfs", f"files-{round_}"))
    return seconds, root


def _receive(kubo: KuboNode, root: bytes) -> int:
    """The node's CAR of *root*, read and every block verified as a pull does, nothing stored."""
    _, sections = read_car(PieceStream(kubo.export_car(root)).as_binary())
    return sum(len(data) for _, data in sections)


def _write_block_files(store: DirectoryBlockstore, root: bytes, folder: Path) -> float:
    """Seconds to write the DAG's blocks as files of their own into *folder* and sync them: what
    any store keeping a file per block (this one, Kubo's flatfs) must do with what it pulls."""
    blocks = list(car.iter_closure(store, root))
    with Timer() as writing:
        for index, (_, data) in enumerate(blocks):
            with open(folder / str(index), "wb") as out:
                out.write(data)
        sync_filesystem(folder)
    return writing.seconds


def _unixfs_file(node: ipfs_node.IpfsNode, size: int) -> tuple[bytes, int]:
    """A file of *size* random bytes added to the node by its own UnixFS importer: the root
    directory's CID, and the size."""
    added = node.add({"d/big.bin": bytes(random_block(size, seed=4242))}, cid_version="1", raw_leaves="true")
    return parse_cid(added["d"]), size


_RUNS = itertools.count()


def _lazy_sequential(
    ctx: Context,
    node: ipfs_node.IpfsNode,
    kubo: KuboNode,
    root: bytes,
    paths: list[str],
    what: str,
    rounds: int,
    readers: int = 1,
) -> None:
    """Read *paths* in order through a fresh lazy mount of *root* (an empty store each round),
    *readers* files at a time, beside the node's dag/export of the same root read to the end,
    interleaved."""
    ours: list[float] = []
    theirs: list[float] = []
    nbytes = 0
    for round_ in range(rounds):
        folder = ctx.path("ipfs", f"sequential-{next(_RUNS)}")  # nothing left by another row
        store, where = folder / "store", folder / "mnt"
        mount = Mount(store, where, root=cid_to_str(root), extra=("--ipfs", node.url)).start()
        try:
            with Timer() as exporting:
                if round_ % 2:  # who goes first alternates
                    sum(len(piece) for piece in kubo.export_car(root))
            files = [mount.mountpoint / path for path in paths]
            with Timer() as reading, ThreadPoolExecutor(readers) as pool:
                nbytes = sum(pool.map(_size_read, files))
            with Timer() as exporting_after:
                if not round_ % 2:
                    sum(len(piece) for piece in kubo.export_car(root))
        finally:
            mount.stop()
        ours.append(reading.seconds)
        theirs.append(exporting.seconds + exporting_after.seconds)
    note = f"median of {rounds}; a fresh mount and empty store each round"
    row = Row(
        "ipfs",
        f"lazy mount: read {what} in order"
        + (f", {readers} at a time (as zarr does)" if readers > 1 else ""),
        nbytes / MB / statistics.median(ours),
        "MB/s",
        nbytes / MB / statistics.median(theirs),
        "node dag/export of the same root",
        note,
    )
    ctx.add(row)


def _size_read(path: Path) -> int:
    return len(path.read_bytes())


def _lazy_read(ctx: Context, node: ipfs_node.IpfsNode, root: bytes) -> None:
    """Mount *root* over an empty store and read one chunk: seconds, and blocks fetched."""
    store = ctx.workdir / "ipfs" / "lazy-store"
    mount = Mount(store, ctx.workdir / "ipfs" / "lazy", root=cid_to_str(root), extra=("--ipfs", node.url))
    with Timer() as mounting:
        mount.start()
    try:
        started = time.perf_counter()
        with open(mount.mountpoint / "arr" / "7", "rb") as chunk:
            got = len(chunk.read())
        first_read = time.perf_counter() - started
        fetched = sum(len(names) for _, _, names in os.walk(store / "blocks"))
    finally:
        mount.stop()
    if got != CHUNK:
        raise RuntimeError(f"read {got} bytes of a {CHUNK}-byte chunk through the lazy mount")
    ctx.add(Row("ipfs", "lazy mount: mount a root only the node has", mounting.seconds, "s", note="one run"))
    ctx.add(Row("ipfs", "lazy mount: first open+read of one 1 MiB chunk", first_read, "s", note="one run"))
    ctx.add(
        Row(
            "ipfs",
            "lazy mount: blocks fetched for mount + that chunk",
            fetched,
            "blocks",
            note="the blocks on its path, and the chunk",
        )
    )
