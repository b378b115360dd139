"""gc: remove the blocks no kept root reaches, and say what was kept and why."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from ipldmount.adapters.cli.common import (
    Command,
    count,
    count_of,
    megabytes,
    open_existing_store,
    parse_duration,
    progress_line,
    remotes_named,
    resolve_remotes,
)
from ipldmount.blocks.gc import Collection
from ipldmount.errors import IpldmountError
from ipldmount.ipld import cid as cids
from ipldmount.repo.retention import DEFAULT_GRACE, GcReport, Retention

if TYPE_CHECKING:
    from ipldmount.remote.kubo import KuboNode


def cmd_gc(args: argparse.Namespace) -> int:
    repository = open_existing_store(args)
    retention = Retention(args.keep_last, args.keep_within, args.grace)
    node = _evicting_for(args)
    total = len(repository.blocks) if sys.stderr.isatty() else None  # a listing, for the % only
    with (
        progress_line("gc: marking") as marking,
        progress_line("gc: sweeping", total_blocks=total) as sweeping,
    ):
        report = repository.collect(
            retention,
            dry_run=args.dry_run,
            marking=marking,
            sweeping=sweeping,
            pinned_remotely=node.is_pinned if node is not None else None,
        )
    found = report.collection
    if args.json:
        print(json.dumps(_gc_json(report), indent=2))
        if found.missing_blocks:
            _report_missing(found, args.ipfs)
        return 0
    verb = "would remove" if args.dry_run else "removed"
    print(f"kept {count_of(len(report.kept), 'root')} ({count_of(found.kept_blocks, 'block')})")
    for root, reasons in sorted(report.kept.items()):
        print(f"  {root}  {'; '.join(reasons)}")
    if node is not None:
        print(f"left {count_of(len(report.left_to_node), 'root')} to {node.url}, which has them pinned:")
        print(
            "".join(f"  {root}  (read it with --ipfs {node.url})\n" for root in report.left_to_node), end=""
        )
    print(f"{verb} {count_of(found.removed_blocks, 'block')} ({megabytes(found.removed_bytes)})")
    if found.recent_blocks:
        print(
            f"kept {found.recent_blocks} unreferenced blocks written in the last {args.grace:g} s "
            f"or held by a running writer"
        )
    if report.cars_removed:
        folder = report.cars_removed[0].parent
        print(f"{verb} {len(report.cars_removed)} CARs of roots not kept from {folder}")
    if report.attribute_rows_removed:
        rows = count_of(report.attribute_rows_removed, "attribute row")
        print(f"{verb} {rows} (modes and times) of file contents not kept")
    if found.missing_blocks:
        _report_missing(found, args.ipfs)
    return 0


def _report_missing(found: Collection, ipfs: str | None) -> None:
    """Blocks kept roots reach that the store lacks: expected of a cache of a configured node or
    gateway (a lazy mount reads only what it needs), an error otherwise."""
    remotes = resolve_remotes(ipfs)
    first = ", ".join(cids.cid_to_str(cid) for cid in found.missing[:3])
    number = count_of(found.missing_blocks, "block")
    if remotes:
        print(
            f"{number} that kept roots reach are not here (first: {first}): reads fetch them from "
            f"{remotes_named(remotes)}",
            file=sys.stderr,
        )
        return
    raise IpldmountError(
        f"{number} that kept roots reach cannot be read here (not in the store, or corrupt; first: "
        f"{first}); nothing they reach was removed. If they are on an IPFS node or gateway, say so "
        "with --ipfs URL (or IPLDMOUNT_IPFS, IPLDMOUNT_GATEWAYS, the config file)"
    )


def _evicting_for(args: argparse.Namespace) -> KuboNode | None:
    """The node `gc --evict-pinned` leaves pinned roots to (checked to answer first), or None."""
    if not args.evict_pinned:
        return None
    from ipldmount.remote.kubo import KuboNode

    url = resolve_remotes(args.ipfs).ipfs
    if url is None:
        raise IpldmountError(
            "gc --evict-pinned needs an IPFS node: --ipfs URL (or IPLDMOUNT_IPFS, or the config)"
        )
    node = KuboNode(url)
    node.version()  # a node that is not there fails here, before anything is removed
    return node


def _gc_json(report: GcReport) -> dict[str, object]:
    found = report.collection
    return {
        "dry_run": found.dry_run,
        "kept_roots": report.kept,
        "kept_blocks": found.kept_blocks,
        "removed_blocks": found.removed_blocks,
        "removed_bytes": found.removed_bytes,
        "recent_blocks": found.recent_blocks,
        "cars_removed": [str(path) for path in report.cars_removed],
        "left_to_node": report.left_to_node,
        "attribute_rows_removed": report.attribute_rows_removed,
        "missing_blocks": found.missing_blocks,
        "missing": [cids.cid_to_str(cid) for cid in found.missing],  # the first gc.MISSING_NAMED
    }


COMMANDS: dict[str, tuple[Command, str]] = {
    "gc": (cmd_gc, "remove the blocks no kept root reaches (tags, recent history, mounts, live stores)"),
}


def add_arguments(parsers: dict[str, argparse.ArgumentParser]) -> None:
    gc = parsers["gc"]
    gc.add_argument("--dry-run", action="store_true", help="remove nothing; say what would go")
    gc.add_argument(
        "--keep-last",
        type=count,
        default=1,
        metavar="N",
        help="keep the newest N roots of each mountpoint, imported CAR and in-process store (default 1)",
    )
    gc.add_argument(
        "--keep-within",
        type=parse_duration,
        metavar="DURATION",
        help="also keep every root made within DURATION (90, 45s, 10m, 12h, 30d, 2w)",
    )
    gc.add_argument(
        "--grace",
        type=parse_duration,
        default=DEFAULT_GRACE,
        metavar="DURATION",
        help=f"never remove blocks written this recently (default {DEFAULT_GRACE:g}s)",
    )
    gc.add_argument(
        "--evict-pinned",
        action="store_true",
        help="also remove the blocks of kept roots the IPFS node has pinned (asked root by root), unless "
        "a root that is not pinned there, or a mount, needs them: the store as the node's cache",
    )
    gc.add_argument(
        "--ipfs",
        metavar="URL",
        help="the node for --evict-pinned, and where blocks kept roots reach but the store lacks are "
        "read from, so their absence is no error (default: $IPLDMOUNT_IPFS, config file)",
    )
    gc.add_argument("--json", action="store_true", help="print the summary as JSON")
