#!/usr/bin/env python3
"""ipldmount benchmarks: every figure next to a baseline measured in the same run.

    .venv/bin/python bench/run.py               # everything (about 30 minutes, 20 of them small_keys)
    .venv/bin/python bench/run.py --quick       # smaller sizes (about a minute)
    .venv/bin/python bench/run.py --only codec  # one benchmark (repeatable)
    .venv/bin/python bench/run.py --only scale --scale 1000000   # the million-chunk array
    .venv/bin/python bench/run.py --list

See bench/README.md for what each benchmark does and how to read the table.
Needs FUSE (and root for cold reads: they drop the page cache).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import b_codec  # noqa: E402
import b_fuse  # noqa: E402
import b_history  # noqa: E402
import b_ipfs  # noqa: E402
import b_kubo  # noqa: E402
import b_layout  # noqa: E402
import b_records  # noqa: E402
import b_remote_open  # noqa: E402
import b_scale  # noqa: E402
import b_small_keys  # noqa: E402
import b_sparse  # noqa: E402
import b_tree  # noqa: E402
import b_zarr  # noqa: E402
import b_zarr_bulk  # noqa: E402
from common import Context, format_table, fs_description, log, remove_tree, sigterm_as_interrupt  # noqa: E402

# name -> (function, fixtures it uses, one-line description); run in this order.
BENCHMARKS: dict[str, tuple[Callable[[Context], None], set[str], str]] = {
    "codec": (b_codec.run, set(), "DAG-CBOR encode/decode of 10k/100k-entry maps vs dag_cbor"),
    "fuse_seq_write": (b_fuse.seq_write, {"seq"}, "1 GiB file, 1 MiB writes, through the mount vs ext4"),
    "fuse_seq_read": (b_fuse.seq_read, {"seq"}, "read that file back, cold and warm, vs ext4"),
    "fuse_small_files": (b_fuse.small_files, {"small"}, "5,000 x 64 KiB files in a/c/i/j layout vs ext4"),
    "sparse": (
        b_sparse.run,
        set(),
        "truncate to 2 GiB, pwrite at 1 GiB, fallocate 1 GiB: mount vs ext4, peak RSS",
    ),
    "sync": (b_tree.sync, {"small"}, "ipldmount sync / IPLDStore.freeze()+to_car() of the small-files tree"),
    "zarr_xarray": (b_zarr.run, set(), "~200 MB xarray dataset to/from zarr v3 on every store"),
    "zarr_bulk": (
        b_zarr_bulk.run,
        set(),
        "1 GiB of 4 MiB chunks through zarr, write and read: IPLDStore vs MemoryStore and LocalStore",
    ),
    "small_keys": (
        b_small_keys.run,
        set(),
        "100k chunks of 1 KiB through zarr: IPLDStore vs MemoryStore, py-hamt, LocalStore, icechunk",
    ),
    "layout": (
        b_layout.run,
        set(),
        "100k x 1 KiB and 1k x 1 MiB blocks: a file per block vs one append-only pack (a sketch)",
    ),
    "history": (b_history.run, set(), "diff of two roots 1 chunk apart in 100k vs a full export"),
    "records": (
        b_records.run,
        set(),
        "the history kept whole: a sealed record, a long history read, a freeze that publishes its root",
    ),
    "ipfs": (b_ipfs.run, set(), "push/pull vs the node's own dag/import/export; a lazy mount's first read"),
    "remote_open": (
        b_remote_open.run,
        set(),
        "xr.open_zarr of a 50-array dataset on Kubo (20 ms a request), cold: with and without the walk",
    ),
    "kubo": (
        b_kubo.run,
        set(),
        "the mount vs Kubo's FUSE mounts (/mfs, /ipfs); import/export/get vs Kubo's CLI",
    ),
    "scale": (
        b_scale.run,
        set(),
        "zarr v2 array of --scale N chunks in one directory: mount, ls, reads, sync vs ext4, RSS",
    ),
    "commit_scaling": (
        b_tree.commit_scaling,
        set(),
        "Tree.commit after 1 change in 100k files vs first commit",
    ),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes: the whole run in about a minute")
    parser.add_argument(
        "--only", action="append", metavar="NAME", choices=list(BENCHMARKS), help="run only NAME (repeatable)"
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument(
        "--workdir",
        metavar="DIR",
        default=os.environ.get("IPLDMOUNT_BENCH_DIR", "/var/tmp"),
        help="where the scratch directory goes; must be a real disk, not tmpfs (default /var/tmp)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        metavar="N",
        help="repetitions per measurement, best counts (default 3; 1 with --quick)",
    )
    parser.add_argument(
        "--scale",
        type=int,
        default=None,
        metavar="N",
        help="chunks in the scale benchmark's array (default 100,000; --quick: 10,000; the issue: 1,000,000)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON to FILE")
    return parser.parse_args(argv)


def source_state() -> str:
    """The ipldmount commit measured, and whether the working tree differs from it."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(HERE.parent), "status", "--porcelain", "--", "ipldmount"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "(not a git checkout)"
    return f"at {commit}" + (" + uncommitted changes in ipldmount/" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for name, (_, _, description) in BENCHMARKS.items():
            print(f"{name:18} {description}")
        return 0
    selected = [name for name in BENCHMARKS if not args.only or name in args.only]
    base = Path(args.workdir)
    base.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="ipldmount-bench-", dir=base)).resolve()
    scale = args.scale if args.scale is not None else 10_000 if args.quick else 100_000
    ctx = Context(workdir, quick=args.quick, repeats=args.repeats, scale=scale)
    # Close each fixture right after the last selected benchmark that uses it.
    last_user = {fixture: name for name in selected for fixture in BENCHMARKS[name][1]}

    print(f"ipldmount benchmarks ({'quick' if args.quick else 'full'}): {', '.join(selected)}")
    print(
        f"python {platform.python_version()}, {os.cpu_count()} CPUs, scratch {workdir} "
        f"({fs_description(workdir)}), caches "
        f"{'dropped' if ctx.caches.can_drop else 'NOT dropped (not root)'}"
    )
    print(f"ipldmount {source_state()}, load average {os.getloadavg()[0]:.2f} at start", flush=True)
    if os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1):
        print(
            "note: the machine is busy; absolute figures will be noisy (each is the best of its repetitions)"
        )
    started = time.perf_counter()
    failed: list[str] = []
    interrupted = False
    try:
        with sigterm_as_interrupt():
            for name in selected:
                function, fixtures, _ = BENCHMARKS[name]
                print(f"[{name}]", file=sys.stderr, flush=True)
                bench_start = time.perf_counter()
                try:
                    function(ctx)
                except KeyboardInterrupt:
                    raise
                except Exception as exc:
                    failed.append(name)
                    log(f"{name} FAILED: {exc!r}")
                    import traceback

                    traceback.print_exc()
                finally:
                    for fixture in fixtures:
                        if last_user.get(fixture) == name:
                            ctx.release(fixture)
                log(f"{name} took {time.perf_counter() - bench_start:.1f} s")
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: unmounting and cleaning up")
    finally:
        ctx.release_all()
        if args.keep:
            log(f"kept {workdir}")
        else:
            remove_tree(workdir)

    print()
    print(format_table(ctx.rows))
    print()
    print(
        "speed = ipldmount relative to its row's baseline, measured in this run: >1x faster, <1x slower\n"
        "(baseline/ipldmount for times, ipldmount/baseline for rates). MB = 10^6 bytes."
    )
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps([row.as_dict() for row in ctx.rows], indent=2) + "\n")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
    return 130 if interrupted else 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
