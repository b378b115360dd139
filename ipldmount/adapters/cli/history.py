"""The roots of a store and what they hold: log, tag, tags, diff, ls, cat."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ipldmount.adapters.cli.common import (
    COMMAND_NAMES,
    Command,
    UsageError,
    count_of,
    fetch_arguments,
    open_existing_store,
    open_reading_store,
)
from ipldmount.errors import IpldmountError
from ipldmount.ipld import cid as cids
from ipldmount.repo.repository import HistoryRepair
from ipldmount.tree.model import Directory, File, Node, Tree


def cmd_log(args: argparse.Namespace) -> int:
    repository = open_existing_store(args)
    if args.repair:
        _print_repair(repository.repair_history())
        return 0
    records = repository.history(None if args.mountpoint is None else Path(args.mountpoint).resolve())
    changed = [repository.changed_paths(record) for record in records]
    if args.json:
        entries = [
            record.as_json() | {"changed": count} for record, count in zip(records, changed, strict=True)
        ]
        print(json.dumps(entries, indent=2))
        return 0
    names = repository.tags_by_root()
    for record, count in zip(records, changed, strict=True):
        line = f"{record.time}  {record.root}  {record.source} {record.where}".rstrip()
        if count is not None:
            line += f"  ({count} changed)"
        if record.root in names:
            line += f"  (tag: {', '.join(names[record.root])})"
        print(line + (f"\n    {record.message}" if record.message else ""))
    return 0


def _print_repair(repair: HistoryRepair) -> None:
    """`log --repair`: what was set aside, and the tags that keep what the damaged lines named."""
    if repair.was_whole:
        print(f"{repair.history} reads whole: nothing to repair")
        return
    for damage in repair.damaged:
        print(f"  {damage}")
    print(f"set {count_of(repair.set_aside, 'line')} aside in {repair.set_aside_in}; sealed the rest anew")
    for name, root in repair.tagged:
        print(f"  tagged {name} {root} (a root a damaged line named)")
    for name, root in repair.recovered:
        print(f"  tagged {name} {root} (a stored root nothing named)")


def cmd_tag(args: argparse.Namespace) -> int:
    repository = open_existing_store(args)
    if args.delete:
        if args.root is not None:
            raise UsageError("tag -d NAME takes no ROOT")
        repository.untag(args.name)
        print(f"deleted tag {args.name}")
        return 0
    if args.name in COMMAND_NAMES:
        raise IpldmountError(f"{args.name!r} cannot be a tag name: it is an ipldmount command")
    root = repository.tag(args.name, args.root)
    print(f"{args.name} {cids.cid_to_str(root)}")
    return 0


def cmd_tags(args: argparse.Namespace) -> int:
    tags = open_existing_store(args).tags()
    if args.json:
        print(json.dumps(tags, indent=2, sort_keys=True))
        return 0
    for name, root in sorted(tags.items()):
        print(f"{name} {root}")
    return 0


DIFF_MARKS = {"added": "A", "removed": "D", "modified": "M"}


def cmd_diff(args: argparse.Namespace) -> int:
    with open_reading_store(args) as repository:
        changes = repository.diff(args.a, args.b)
    if args.json:
        print(json.dumps([{"change": change.kind, "path": change.path} for change in changes], indent=2))
        return 0
    for change in changes:
        print(f"{DIFF_MARKS[change.kind]} {change.path}")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    with open_reading_store(args) as repository:
        tree, node, path = repository.locate(args.target)
        if isinstance(node, Directory):
            listing = sorted(tree.entries(node).items())
        else:
            listing = [(path.rstrip("/").rpartition("/")[2], node)]
        for name, child in listing:
            print(_ls_line(tree, name, child) if args.long else _display_name(name, child))
        return 0


def _display_name(name: str, node: Node) -> str:
    return name + "/" if isinstance(node, Directory) else name


def _ls_line(tree: Tree, name: str, node: Node) -> str:
    """``KIND SIZE CID NAME``; in place of a CID, ``inline`` for a node held in its parent's block
    (it has no block of its own), ``broken:CID`` for one whose block cannot be read."""
    kind = "d" if isinstance(node, Directory) else "-" if isinstance(node, File) else "?"
    state = tree.describe(node)
    size = tree.size(node) if isinstance(node, File) else 0
    shown = "inline" if state.inline else cids.cid_to_str(state.cid) if state.cid else "-"
    if state.broken is not None:
        shown = f"broken:{shown}"
    return f"{kind} {size:>12} {shown:<59} {_display_name(name, node)}"


def cmd_cat(args: argparse.Namespace) -> int:
    with open_reading_store(args) as repository:
        tree, file = repository.file_at(args.target)
        reader = tree.reader(file)
        out = sys.stdout.buffer
        for offset in range(0, reader.size, 1 << 20):
            out.write(reader.read(offset, 1 << 20))
        out.flush()
        return 0


COMMANDS: dict[str, tuple[Command, str]] = {
    "ls": (cmd_ls, "list a directory of a stored tree"),
    "cat": (cmd_cat, "write a stored file to stdout"),
    "log": (cmd_log, "the roots made in the store (syncs, imports, freezes), newest first"),
    "tag": (cmd_tag, "name a root (tag NAME [ROOT]), or delete a name (tag -d NAME)"),
    "tags": (cmd_tags, "list the names of roots"),
    "diff": (cmd_diff, "the paths added (A), removed (D) and modified (M) from one root to another"),
}


def add_arguments(parsers: dict[str, argparse.ArgumentParser]) -> None:
    log_parser = parsers["log"]
    which = log_parser.add_mutually_exclusive_group()
    which.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?", help="only the roots synced there")
    which.add_argument("--all", action="store_true", help="every root of the store (the default)")
    log_parser.add_argument("--json", action="store_true", help="print JSON: a list of records, newest first")
    log_parser.add_argument(
        "--repair",
        action="store_true",
        help="set aside the lines of a damaged history (gc refuses to run on one), tagging every stored root "
        "they still name and every whole stored root nothing names (recovered-N), and seal the rest anew",
    )
    parsers["tag"].add_argument("name", metavar="NAME")
    parsers["tag"].add_argument(
        "root", metavar="ROOT", nargs="?", help="a CID, a tag or a mountpoint (default: the newest root)"
    )
    parsers["tag"].add_argument("-d", "--delete", action="store_true", help="delete the tag NAME")
    parsers["tags"].add_argument("--json", action="store_true", help="print JSON: name -> CID")
    for side in ("a", "b"):
        parsers["diff"].add_argument(
            side, metavar=side.upper(), help="a CID, a tag or a mountpoint (the root last synced there)"
        )
    parsers["diff"].add_argument(
        "--json", action="store_true", help='print JSON: [{"change": "added|removed|modified", "path": ...}]'
    )
    for name in ("ls", "cat", "diff"):
        fetch_arguments(parsers[name])
    parsers["ls"].add_argument(
        "target", metavar="CID[/PATH]", help="a root CID or tag, optionally with a path in it"
    )
    parsers["ls"].add_argument(
        "-l",
        "--long",
        action="store_true",
        help="show kind, size and CID ('inline': no block of its own)",
    )
    parsers["cat"].add_argument(
        "target", metavar="CID/PATH", help="a root CID or tag and the path of a file in it"
    )
