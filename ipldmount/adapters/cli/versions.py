"""Branches and moving them: branch, branches, reset, discard, reflog."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ipldmount.adapters.cli.common import COMMAND_NAMES, Command, UsageError, open_existing_store
from ipldmount.adapters.fuse import control
from ipldmount.errors import IpldmountError
from ipldmount.ipld import cid as cids
from ipldmount.repo.home import process_alive
from ipldmount.repo.repository import Repository, Version


def cmd_branch(args: argparse.Namespace) -> int:
    repository = open_existing_store(args)
    if args.delete:
        if args.rev is not None:
            raise UsageError("branch -d NAME takes no REV")
        head = repository.branches().get(args.name)
        if head is None:
            raise IpldmountError(f"no branch named {args.name!r}")
        repository.move_branch(args.name, head, None, why="branch -d")
        print(f"deleted branch {args.name} (was {cids.cid_to_str(head)})")
        return 0
    if args.name in COMMAND_NAMES or args.name in ("empty", "resume"):
        raise IpldmountError(f"{args.name!r} cannot be a branch name: it is an ipldmount word")
    version = repository.find_version(args.rev)
    commit = _as_commit(repository, version, f"branch {args.name}")
    repository.move_branch(args.name, None, commit, why="branch")
    print(f"{args.name} {cids.cid_to_str(commit)}")
    return 0


def _as_commit(repository: Repository, version: Version, why: str) -> bytes:
    """The commit *version* names; a bare tree becomes one (no parents), as a branch names commits."""
    if version.commit is not None:
        return version.commit
    if version.tree is None:
        raise IpldmountError("that names the empty tree, never synced: nothing to point a branch at")
    repository.stored_tree(version.tree)
    commit = repository.make_commit(version.tree, [], why)
    repository.local.sync()
    return commit


def cmd_branches(args: argparse.Namespace) -> int:
    repository = open_existing_store(args)
    rows = []
    for name, head in sorted(repository.branches().items()):
        commit = repository.commit(head)
        rows.append(
            {
                "branch": name,
                "commit": cids.cid_to_str(head),
                "tree": cids.cid_to_str(commit.tree),
                "time": commit.time,
                "message": commit.message,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        subject = (row["message"] or "").splitlines()[0] if row["message"] else ""
        print(f"{row['branch']}  {row['commit']}  {row['time']}  {subject}".rstrip())
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    repository = open_existing_store(args)
    version = repository.find_version(args.rev)
    if version.tree is None:
        raise IpldmountError(f"{args.rev} names the empty tree: nothing to reset to")
    repository.stored_tree(version.tree)
    target = Path(args.target)
    if args.target not in repository.branches() and target.is_dir():
        commit = _as_commit(repository, version, f"reset {args.target}")
        answer = _reset_mount(target.resolve(), Version(version.tree, commit), args.changes)
        print(
            f"{args.target} shows commit {answer.get('commit') or '(none)'} "
            f"(branch {answer.get('branch') or 'none'})"
        )
        print(answer["root"])
        return 0
    head = repository.branches().get(args.target)
    if head is None:
        raise IpldmountError(f"{args.target} is neither a branch nor a live mount of this store")
    commit = _as_commit(repository, version, f"reset {args.target}")
    following = _live_mounts_on(repository, args.target)
    if args.changes == "refuse":  # every mount is asked before anything moves
        for mountpoint in following:
            _check_no_unsynced(mountpoint)
    if commit != head and not following:
        repository.move_branch(args.target, head, commit, why="reset")
    for mountpoint in following:  # the first moves the branch, from where it is now; the rest follow
        _reset_mount(mountpoint, Version(version.tree, commit), args.changes)
        print(f"{mountpoint} follows", file=sys.stderr)
    print(f"{args.target} {cids.cid_to_str(commit)} (was {cids.cid_to_str(head)})")
    print(cids.cid_to_str(version.tree))
    return 0


def _reset_mount(mountpoint: Path, version: Version, changes: str) -> dict[str, Any]:
    assert version.tree is not None
    return control.request(
        mountpoint,
        "reset",
        commit=cids.cid_to_str(version.commit) if version.commit else None,
        tree=cids.cid_to_str(version.tree),
        changes=changes,
    )


def _check_no_unsynced(mountpoint: Path) -> None:
    status = control.request(mountpoint, "status")
    if status.get("unsynced_changes") or status.get("open_unsaved_files") or status.get("sync_changes_root"):
        raise IpldmountError(
            f"{mountpoint} follows this branch and has unsynced changes: say what becomes of them "
            f"(--keep: on top of REV; --discard: dropped), or sync them first; nothing was moved"
        )


def _live_mounts_on(repository: Repository, branch: str) -> list[Path]:
    """The mountpoints of live daemons whose syncs move *branch*."""
    home = repository.home
    found = []
    for files in home.all_mount_files():
        pid = home.daemon_pid(files)
        head = home.read_head(files)
        if pid is not None and process_alive(pid) and head is not None and head.branch == branch:
            found.append(Path(head.mountpoint))
    return found


def cmd_discard(args: argparse.Namespace) -> int:
    mountpoint = Path(args.mountpoint).resolve()
    repository = open_existing_store(args)
    pid = repository.daemon_pid(mountpoint)
    if pid is None or not process_alive(pid):
        discarded = repository.discard_pending(mountpoint)
        shown = f"{discarded.changes} unsynced changes" if discarded.changes else "no unsynced changes"
        print(f"{mountpoint} is not mounted: discarded {shown} from its journal")
        return 0
    answer = control.request(mountpoint, "discard")
    commit = answer.get("commit")
    print(
        f"discarded the unsynced changes at {mountpoint}: it shows "
        + (f"commit {commit}" if commit else "its root")
    )
    print(answer["root"])
    return 0


def cmd_reflog(args: argparse.Namespace) -> int:
    repository = open_existing_store(args)
    moves = [
        record for record in repository.history() if record.branch and (args.branch in (None, record.branch))
    ]
    if args.json:
        print(json.dumps([record.as_json() for record in moves], indent=2))
        return 0
    for record in moves:
        before = record.previous or "(new)"
        after = record.commit or "(deleted)"
        line = f"{record.time}  {record.branch}  {before} -> {after}  {record.source} {record.where}".rstrip()
        print(line + (f"\n    {record.message}" if record.message else ""))
    return 0


COMMANDS: dict[str, tuple[Command, str]] = {
    "branch": (cmd_branch, "make a branch NAME at REV (default: the branch main), or delete one (-d)"),
    "branches": (cmd_branches, "list the branches and their head commits"),
    "reset": (cmd_reset, "move a branch, or a live mount (and its branch), to REV"),
    "discard": (cmd_discard, "drop a mount's unsynced changes: it shows its last commit again"),
    "reflog": (cmd_reflog, "every move of every branch, newest first"),
}


def add_arguments(parsers: dict[str, argparse.ArgumentParser]) -> None:
    branch = parsers["branch"]
    branch.add_argument("name", metavar="NAME")
    branch.add_argument(
        "rev", metavar="REV", nargs="?", help="a commit, tree, tag, branch, BRANCH~N or mountpoint"
    )
    branch.add_argument(
        "-d", "--delete", action="store_true", help="delete the branch (its commits stay while kept)"
    )
    parsers["branches"].add_argument("--json", action="store_true", help="print JSON")
    reset = parsers["reset"]
    reset.add_argument("target", metavar="BRANCH|MOUNTPOINT")
    reset.add_argument("rev", metavar="REV", help="a commit, tree, tag, branch, BRANCH~N or mountpoint")
    changes = reset.add_mutually_exclusive_group()
    changes.add_argument(
        "--keep",
        dest="changes",
        action="store_const",
        const="keep",
        help="keep a mount's unsynced changes, on top of REV (refused if they touch paths REV changes)",
    )
    changes.add_argument(
        "--discard",
        dest="changes",
        action="store_const",
        const="discard",
        help="drop a mount's unsynced changes",
    )
    reset.set_defaults(changes="refuse")
    parsers["discard"].add_argument("mountpoint", metavar="MOUNTPOINT")
    reflog = parsers["reflog"]
    reflog.add_argument("branch", metavar="BRANCH", nargs="?", help="only this branch's moves")
    reflog.add_argument("--json", action="store_true", help="print JSON")
