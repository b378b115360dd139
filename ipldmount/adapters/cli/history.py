"""The versions of a store and what they hold: log, tag, tags, diff, ls, cat."""

from __future__ import annotations

import argparse
import json
import sys

from ipldmount.adapters.cli.common import (
    COMMAND_NAMES,
    Command,
    UsageError,
    count_of,
    fetch_arguments,
    open_existing_store,
    open_reading_store,
    resolve_remotes,
)
from ipldmount.adapters.cli.graph import continuation, graph_rows
from ipldmount.errors import IpldmountError
from ipldmount.ipld import cid as cids
from ipldmount.repo.commitlog import LogEntry
from ipldmount.repo.repository import HistoryRepair
from ipldmount.tree.model import Directory, File, Node, Tree


def cmd_log(args: argparse.Namespace) -> int:
    repository = open_existing_store(args)
    if args.repair:
        _print_repair(repository.repair_history())
        return 0
    # /ipns/NAME through the node (the config file read only then); blocks come from the store only
    repository.names = lambda name: resolve_remotes(args.ipfs).resolve_name(name)
    entries = repository.log([args.rev] if args.rev else None, limit=args.max_count)
    if args.json:
        print(json.dumps([entry.as_json() for entry in entries], indent=2))
        return 0
    rows = graph_rows([(entry.commit, entry.parents) for entry in entries])
    for entry, row in zip(entries, rows, strict=True):
        _print_entry(entry, row.prefix, continuation(row.prefix, row.has_parent))
        for line in row.connectors:
            print(line)
    return 0


def _print_entry(entry: LogEntry, prefix: str, more: str) -> None:
    """One commit: its CID and names, then tree, parents, time, changes and message."""
    names = f" ({', '.join(entry.names)})" if entry.names else ""
    print(f"{prefix}commit {entry.commit}{names}")
    if len(entry.parents) > 1:
        print(f"{more}merge   {' '.join(entry.parents)}")
    elif entry.parents:
        print(f"{more}parent  {entry.parents[0]}")
    print(f"{more}tree    {entry.tree}" + ("" if entry.tree_stored else "  (expired: not in the store)"))
    changed = "" if entry.changed is None else f"  ({count_of(entry.changed, 'path')} changed)"
    print(f"{more}time    {entry.time}{changed}")
    for line in (entry.message or "").splitlines():
        print(f"{more}    {line}")
    print(more.rstrip())


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
    "log": (cmd_log, "the commits of the store (or of REV) as a graph, newest first"),
    "tag": (cmd_tag, "name a version (tag NAME [REV]), or delete a name (tag -d NAME)"),
    "tags": (cmd_tags, "list the names of versions"),
    "diff": (cmd_diff, "the paths added (A), removed (D) and modified (M) from one root to another"),
}


def add_arguments(parsers: dict[str, argparse.ArgumentParser]) -> None:
    log_parser = parsers["log"]
    log_parser.add_argument(
        "rev",
        metavar="REV",
        nargs="?",
        help="the history of REV (a branch, commit, tag, BRANCH~N, /ipns/NAME or mountpoint); default: "
        "every branch, tag, mountpoint and version made in the store",
    )
    log_parser.add_argument(
        "--ipfs",
        metavar="URL",
        help="an IPFS node's RPC API that resolves /ipns/NAME (its history is read from the store: pull it "
        "first); default: $IPLDMOUNT_IPFS, config file",
    )
    log_parser.add_argument("-n", "--max-count", type=int, metavar="N", help="show at most N commits")
    log_parser.add_argument("--json", action="store_true", help="print JSON: a list of commits, newest first")
    log_parser.add_argument(
        "--repair",
        action="store_true",
        help="set aside the lines of a damaged history (gc refuses to run on one), tagging every stored root "
        "they still name and every whole stored root nothing names (recovered-N), and seal the rest anew",
    )
    parsers["tag"].add_argument("name", metavar="NAME")
    parsers["tag"].add_argument(
        "root",
        metavar="REV",
        nargs="?",
        help="a commit or tree CID, a branch, a tag, BRANCH~N or a mountpoint (default: the branch main); "
        "the tag names the commit when REV names one, else the tree",
    )
    parsers["tag"].add_argument("-d", "--delete", action="store_true", help="delete the tag NAME")
    parsers["tags"].add_argument("--json", action="store_true", help="print JSON: name -> CID")
    for side in ("a", "b"):
        parsers["diff"].add_argument(
            side,
            metavar=side.upper(),
            help="a commit or tree CID, a branch, a tag, BRANCH~N or a mountpoint (what it shows now)",
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
