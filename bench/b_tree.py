"""sync and commit_scaling: committing trees, through the daemon and in-process."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
from b_fuse import SmallFixture
from common import IPLDMOUNT, Context, Row, Timer, log, random_block, stamp, write_all
from zarr.core.buffer import default_buffer_prototype

from ipldmount.adapters.zarr_store import IPLDStore
from ipldmount.blocks import Blockstore, DirectoryBlockstore, MemoryBlockstore
from ipldmount.format.files import StoredFile
from ipldmount.ipld import cid as cids
from ipldmount.tree.model import Tree

# --- sync -----------------------------------------------------------------------------


def tar_seconds(source: Path, target: Path | None) -> float:
    """``tar -cf`` of *source* into *target* plus its fsync, or into memory when *target* is None."""
    with Timer() as timer:
        if target is None:
            subprocess.run(["tar", "-cf", "-", "-C", str(source), "."], check=True, capture_output=True)
        else:
            subprocess.run(["tar", "-cf", str(target), "-C", str(source), "."], check=True)
            fd = os.open(target, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    return timer.seconds


def cli_seconds(*arguments: str) -> float:
    with Timer() as timer:
        subprocess.run([*IPLDMOUNT, *arguments], check=True, capture_output=True, timeout=300)
    return timer.seconds


def sync(ctx: Context) -> None:
    fixture: SmallFixture = ctx.fixture("small", lambda: SmallFixture.make(ctx))
    fixture.write()  # untimed here if fuse_small_files already did it
    mount, size, repeats = fixture.mount, fixture.size, ctx.repeats
    keys = fixture.all_keys
    what = f"{len(keys)} x {size // 1024} KiB files"
    # The floor for any CLI command: start Python, import, one control-socket round trip.
    floor = min(cli_seconds("status", str(mount.mountpoint)) for _ in range(repeats))

    os.sync()
    first = mount.sync()
    tar = min(tar_seconds(fixture.plain, ctx.path("sync") / f"plain{rep}.tar") for rep in range(repeats))
    ctx.add(
        Row(
            "sync",
            f"ipldmount sync (CLI): commit + CAR of {what}",
            first,
            "s",
            tar,
            "tar -cf + fsync of the ext4 copy",
        )
    )

    # One file changed: does the cost follow the change or the tree?
    changed = []
    for rep in range(repeats):
        fd = os.open(mount.mountpoint / keys[rep], os.O_WRONLY | os.O_TRUNC)
        try:
            write_all(fd, random_block(size, seed=100 + rep))
        finally:
            os.close(fd)
        os.sync()
        changed.append(mount.sync())
    ctx.add(
        Row(
            "sync",
            "ipldmount sync after changing 1 file",
            min(changed),
            "s",
            first,
            "first sync",
            "rewrites the whole CAR",
        )
    )
    idle = min(mount.sync() for _ in range(repeats))
    ctx.add(
        Row("sync", "ipldmount sync with nothing changed", idle, "s", floor, "ipldmount status (CLI floor)")
    )
    mount.stop()
    if mount.unmount_seconds is not None:
        ctx.add(
            Row(
                "sync",
                "ipldmount unmount right after a sync",
                mount.unmount_seconds,
                "s",
                floor,
                "ipldmount status (CLI floor)",
                "unmount syncs (and exports) again",
            )
        )

    # The same tree in-process: IPLDStore over a DirectoryBlockstore on the same disk.
    store = IPLDStore(DirectoryBlockstore(ctx.path("sync", "ipldstore")))
    buffer = default_buffer_prototype().buffer
    data = random_block(size, seed=2)
    os.sync()
    with Timer() as setting:
        for index, key in enumerate(keys):
            store.set_sync(key, buffer.from_bytes(bytes(stamp(data, index))))
    os.sync()
    ext4_seconds = min(fixture.seconds["ext4"]) * fixture.repeats
    ctx.add(
        Row(
            "sync",
            f"IPLDStore(DirectoryBlockstore).set_sync x {len(keys)}",
            len(keys) / setting.seconds,
            "ops/s",
            len(keys) / ext4_seconds,
            "ext4 file writes",
            "DirectoryBlockstore() default: durable",
        )
    )
    with Timer() as freezing:
        store.freeze()
    exports = []
    for _ in range(repeats):
        with Timer() as exporting:
            archive = store.to_car()
        exports.append(exporting.seconds)
        del archive
    in_memory_tar = min(tar_seconds(fixture.plain, None) for _ in range(repeats))
    ctx.add(Row("sync", "IPLDStore.freeze() (commit)", freezing.seconds, "s", note="informational"))
    ctx.add(
        Row(
            "sync",
            "IPLDStore.to_car() (CAR bytes in memory)",
            min(exports),
            "s",
            in_memory_tar,
            "tar -cf - into memory",
        )
    )


# --- commit_scaling -------------------------------------------------------------------


def populate(tree: Tree, files: int, directories: int, seed: int) -> list[str]:
    """*files* entries spread over *directories* directories, linking to random raw CIDs.

    The CIDs point nowhere: a commit never reads file blocks, and this keeps the
    setup from writing 100,000 blocks.
    """
    digests = np.random.default_rng(seed).bytes(32 * files)
    per_directory = files // directories
    paths = []
    for index in range(files):
        path = f"d{index // per_directory:03d}/{index % per_directory // 100}.{index % 100}"
        tree.write_file(
            path, StoredFile(cids.digest_cid(cids.RAW, digests[32 * index : 32 * index + 32]), 65536)
        )
        paths.append(path)
    return paths


def count_blocks(store: Blockstore) -> int:
    return len(store)


def commit_scaling(ctx: Context) -> None:
    files, directories = (40_000, 40) if ctx.quick else (100_000, 100)
    what = f"{files // 1000}k files / {directories} dirs"
    for kind in ("MemoryBlockstore", "DirectoryBlockstore"):
        store: Blockstore = (
            MemoryBlockstore()
            if kind == "MemoryBlockstore"
            else DirectoryBlockstore(ctx.path("commit", "store"))
        )
        tree = Tree(store)
        log(f"building a tree of {files} files ({kind})")
        paths = populate(tree, files, directories, seed=3)
        before = count_blocks(store)
        with Timer() as full:
            root = tree.commit()
        full_blocks = count_blocks(store) - before

        # Change a different file each time (new content, so there is always something to store).
        step = files // (2 * ctx.repeats + 1)
        incremental, new_blocks = [], 0
        for rep in range(ctx.repeats):
            tree.write_file(paths[step * (rep + 1)], StoredFile(cids.block_cid(cids.RAW, b"a%d" % rep), 7))
            before = count_blocks(store)
            with Timer() as timer:
                root = tree.commit()
            incremental.append(timer.seconds)
            new_blocks = count_blocks(store) - before
        ctx.add(
            Row(
                "commit_scaling",
                f"{kind}: commit after changing 1 file, {what}",
                min(incremental) * 1e3,
                "ms",
                full.seconds * 1e3,
                "first full commit",
                f"{new_blocks} new blocks vs {full_blocks}",
            )
        )

        # As a fresh process would: open the root lazily, change one file, commit.
        reopened = []
        for rep in range(ctx.repeats):
            with Timer() as timer:
                fresh = Tree(store, root)
                fresh.write_file(
                    paths[step * (ctx.repeats + rep + 1)],
                    StoredFile(cids.block_cid(cids.RAW, b"b%d" % rep), 7),
                )
                root = fresh.commit()
            reopened.append(timer.seconds)
        ctx.add(
            Row(
                "commit_scaling",
                f"{kind}: open root + change 1 file + commit",
                min(reopened) * 1e3,
                "ms",
                full.seconds * 1e3,
                "first full commit",
            )
        )
