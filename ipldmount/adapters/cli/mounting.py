"""mount (ROOT: a CID, a tag, a .car file, ``empty`` or ``resume``), sync, unmount, status."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ipldmount.adapters.cli.common import (
    Command,
    UsageError,
    fetch_arguments,
    open_store,
    progress_line,
    read_through,
    remotes_of,
)
from ipldmount.adapters.fuse import control
from ipldmount.errors import IpldmountError
from ipldmount.ipld import cid as cids
from ipldmount.repo.home import process_alive
from ipldmount.repo.repository import Discarded, Repository, Version
from ipldmount.tree.unixfs import is_unixfs

if TYPE_CHECKING:
    from ipldmount.remote.remotes import Remotes


def cmd_mount(args: argparse.Namespace) -> int:
    apply_mount_options(args)
    if args.store:  # absolute: the daemon reports paths in the store to clients that run elsewhere
        args.store = str(Path(args.store).resolve())
    repository = open_store(args, durable=False)  # the daemon's fsync and sync make blocks durable (syncfs)
    mountpoint = Path(args.mountpoint).resolve()
    pid = repository.daemon_pid(mountpoint)
    if args.discard and pid is not None and process_alive(pid):
        raise IpldmountError(
            f"{mountpoint} is mounted: `ipldmount discard {mountpoint}` drops its unsynced changes while it "
            f"stays mounted"
        )
    _check_mountpoint(mountpoint, repository, args.nonempty)
    if args.discard:
        _say_discarded(repository.discard_pending(mountpoint), mountpoint)
    remotes = remotes_of(args)
    with read_through(repository, remotes) as reading:
        version = reading.mount_version(
            args.root,
            mountpoint,
            importing=lambda size: progress_line(f"import {args.root}", total_bytes=size),
        )
        if args.on_branch:  # the daemon a mount started: the branch as the mount resolved it
            version = replace(version, branch=args.on_branch)
        version = (
            _on_branch(reading, version, args.branch) if not args.read_only else replace(version, branch=None)
        )
        root = version.tree
        if root is not None and is_unixfs(root) and not args.read_only:
            print(f"{cids.cid_to_str(root)} is UnixFS: mounting it read-only", file=sys.stderr)
            args.read_only = True
        attributes = reading.home.attribute_table.recover()  # unreadable, or corrupt and moved aside: say so
        if attributes:
            print(f"ipldmount: warning: {attributes}", file=sys.stderr)
        if args.foreground:
            return _run_daemon(args, reading, mountpoint, version)
        return _spawn_daemon(args, reading, mountpoint, version, remotes)


def _on_branch(repository: Repository, version: Version, name: str | None) -> Version:
    """`--branch NAME`: the mount's syncs move NAME, made now at ROOT's commit if it does not
    exist (at the first sync, for a root with none); an existing NAME must name ROOT's commit."""
    if name is None:
        return version
    head = repository.branches().get(name)
    if head is None and version.commit is not None:
        repository.move_branch(
            name, None, version.commit, why="branch", where=f"mount {version.branch or ''}".strip()
        )
    elif head is not None and head != version.commit:
        raise IpldmountError(
            f"branch {name} names {cids.cid_to_str(head)}, not the commit of ROOT: mount {name} itself, "
            f"or choose a new branch name"
        )
    return replace(version, branch=name)


def _check_mountpoint(mountpoint: Path, repository: Repository, nonempty: bool = False) -> None:
    """Refuse a bad mountpoint; clear a stale one our own dead daemon left."""
    try:
        control.check_mountpoint(mountpoint)
    except control.StaleMountError:
        pid = repository.daemon_pid(mountpoint)
        if pid is None or process_alive(pid):
            raise
        print(
            f"ipldmount: {mountpoint} was left mounted by a daemon that died (pid {pid}); clearing it",
            file=sys.stderr,
        )
        _fusermount_unmount(mountpoint)
    except FileNotFoundError:
        raise IpldmountError(f"mountpoint {mountpoint} does not exist") from None
    if not mountpoint.is_dir():
        raise IpldmountError(f"mountpoint {mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise IpldmountError(f"{mountpoint} is already a mountpoint (unmount it first)")
    if not nonempty:
        with os.scandir(mountpoint) as entries:
            first = next(entries, None)
        if first is not None:
            raise IpldmountError(
                f"mountpoint {mountpoint} is not empty ({first.name!r} is there): the mount would hide "
                f"what it holds; empty it, or pass --nonempty (-o nonempty) to mount over it anyway"
            )


def _say_discarded(discarded: Discarded, mountpoint: Path) -> None:
    """--discard: say what the unsynced changes an earlier session left were."""
    if discarded.unreadable is not None:
        print(
            f"ipldmount: discarding an unreadable journal {discarded.journal}: {discarded.unreadable}",
            file=sys.stderr,
        )
    elif not discarded.changes:
        print(f"ipldmount: {mountpoint} has no unsynced changes to discard", file=sys.stderr)
    else:
        base = cids.cid_to_str(discarded.base) if discarded.base else "the empty tree"
        print(
            f"ipldmount: discarded {discarded.changes} unsynced changes on {base} at {mountpoint}",
            file=sys.stderr,
        )


def _fusermount_unmount(mountpoint: Path) -> None:
    result = subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, text=True)
    if result.returncode != 0:
        raise IpldmountError(f"fusermount3 -u {mountpoint} failed: {result.stderr.strip()}")


def _run_daemon(args: argparse.Namespace, repository: Repository, mountpoint: Path, version: Version) -> int:
    from ipldmount.adapters.fuse import daemon  # pyfuse3 is needed only here

    config = daemon.MountConfig(
        repository=repository,
        mountpoint=mountpoint,
        root=version.tree,
        commit=version.commit,
        branch=version.branch,
        read_only=args.read_only,
        whole_files=args.whole_files,
        car_dir=Path(args.car_dir).resolve() if args.car_dir else None,
        allow_other=args.allow_other,
    )

    def ready() -> None:
        daemon.sd_notify(f"READY=1\nSTATUS=serving {mountpoint}")
        if args.ready_fd is not None:
            os.write(args.ready_fd, b"READY\n")
            os.close(args.ready_fd)
            args.ready_fd = None  # closed: a later failure must not write to whatever reuses the number
        print(f"mounted {_shown_version(version)} at {mountpoint}", file=sys.stderr)

    try:
        daemon.run(config, ready)
    except BaseException as exc:
        if args.ready_fd is not None:
            _report_failure(args.ready_fd, exc)
        raise
    return 0


def _report_failure(fd: int, exc: BaseException) -> None:
    try:
        os.write(fd, f"ERROR {exc}\n".encode())
        os.close(fd)
    except OSError:
        pass


def _spawn_daemon(
    args: argparse.Namespace, repository: Repository, mountpoint: Path, version: Version, remotes: Remotes
) -> int:
    """Start the daemon in the background and return once the mount is live (or failed)."""
    home = repository.home
    log_path = home.mount_files(mountpoint).daemon_log
    read_end, write_end = os.pipe()
    command = [
        sys.executable,
        "-m",
        "ipldmount",
        "mount",
        _root_argument(version),
        str(mountpoint),
    ]
    command += ["--on-branch", version.branch] if version.branch else []
    command += ["--foreground", "--store", str(home.root), "--ready-fd", str(write_end)]
    command += ["--read-only"] * args.read_only + ["--whole-files"] * args.whole_files
    command += ["--allow-other"] * args.allow_other + ["-v"] * args.verbose
    command += ["--nonempty"] * args.nonempty + remote_arguments(remotes)
    if args.car_dir:
        command += ["--car-dir", str(Path(args.car_dir).resolve())]
    log_fd = home.open_private(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    with os.fdopen(log_fd, "ab") as log_file:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            pass_fds=(write_end,),
            start_new_session=True,
        )
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as ready:
            message = ready.read().decode(errors="replace").strip()
    except BaseException:  # interrupted while waiting: do not leave a mount the user gave up on
        process.terminate()
        with suppress(subprocess.TimeoutExpired):
            process.wait(30)
        raise
    if message.startswith("READY"):
        print(f"mounted {_shown_version(version)} at {mountpoint} (daemon pid {process.pid}, log {log_path})")
        return 0
    process.wait()
    reason = message.removeprefix("ERROR ").strip() or f"the daemon exited with status {process.returncode}"
    raise IpldmountError(f"mounting {mountpoint} failed: {reason} (see {log_path})")


def _root_argument(version: Version) -> str:
    """ROOT for the daemon: the commit (its tree with it), else the tree, else ``empty``."""
    named = version.commit or version.tree
    return cids.cid_to_str(named) if named is not None else "empty"


def _shown_version(version: Version) -> str:
    """``main (commit C, tree T)``, ``commit C (tree T)``, ``T``, ``an empty tree``."""
    tree = cids.cid_to_str(version.tree) if version.tree else "an empty tree"
    if version.commit is None:
        return f"{tree} (branch {version.branch}, made at the first sync)" if version.branch else tree
    commit = f"commit {cids.cid_to_str(version.commit)}, tree {tree}"
    return f"branch {version.branch} ({commit})" if version.branch else f"{commit} (detached: on no branch)"


def remote_arguments(remotes: Remotes) -> list[str]:
    """The options that give *remotes* (for the daemon a mount starts)."""
    arguments = ["--ipfs", remotes.ipfs] if remotes.ipfs else []
    for url in remotes.gateways:
        arguments += ["--gateway", url]
    return arguments


def cmd_sync(args: argparse.Namespace) -> int:
    car_path = str(Path(args.car).resolve()) if args.car else None
    try:
        answer = control.request(
            Path(args.mountpoint),
            "sync",
            car=car_path,
            message=args.message,
            full_car=args.full_car,
            branch=args.branch,
        )
    except control.ControlError as exc:
        if exc.answer.get("root"):  # committed: only the CAR failed
            print(exc.answer["root"])
            raise IpldmountError(f"synced: {exc}") from None
        raise
    _print_synced(answer, args.json)
    return 0


def _print_synced(answer: dict[str, Any], as_json: bool = False) -> None:
    warnings = answer.get("warnings")
    for warning in warnings if isinstance(warnings, list) else ():  # what may have been lost
        print(f"ipldmount: warning: {warning}", file=sys.stderr)
    if as_json:
        shown = {key: answer.get(key) for key in SYNC_JSON}
        print(json.dumps(shown | {"tree": answer.get("root")}, indent=2))
        return
    if answer.get("car"):
        what = "the whole DAG" if answer.get("full_car") else "the blocks new since the last sync"
        print(f"wrote CAR {answer['car']} ({answer['car_bytes']} bytes: {what})")
    elif "changed" in answer and not answer.get("committed"):  # a read-only mount answers with its root only
        print("nothing changed since the last sync: no CAR written (--full-car writes one)")
    if answer.get("commit"):
        made = (
            ("merged into" if answer.get("merged") else "committed on") if answer.get("committed") else "at"
        )
        where = f"branch {answer['branch']}" if answer.get("branch") else "no branch (detached)"
        print(f"{made} {where}: commit {answer['commit']}")
    print(answer["root"])


SYNC_JSON = ("commit", "branch", "committed", "merged", "changed", "car", "car_bytes", "full_car")


def cmd_unmount(args: argparse.Namespace) -> int:
    mountpoint = Path(args.mountpoint).resolve()
    try:
        control.check_mountpoint(mountpoint)
    except control.StaleMountError:
        _fusermount_unmount(mountpoint)
        print(f"cleared the stale mount at {mountpoint}; its unsynced changes come back on the next mount")
        return 0
    car_path = str(Path(args.car).resolve()) if args.car else None
    try:
        answer = control.request(mountpoint, "unmount", car=car_path, full_car=args.full_car)
    except control.ControlError as exc:
        if not exc.answer.get("unmounting"):
            raise
        _wait_unmounted(mountpoint, args.timeout)  # an unmount always unmounts
        if exc.answer.get("root"):
            print(exc.answer["root"])
            raise IpldmountError(f"unmounted {mountpoint}, but {exc}") from None
        raise IpldmountError(
            f"unmounted {mountpoint}, but {exc}; the changes are kept in its journal and come back "
            f"with `ipldmount resume {mountpoint}`"
        ) from None
    _wait_unmounted(mountpoint, args.timeout)
    _print_synced(answer, args.json)
    return 0


def _wait_unmounted(mountpoint: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while os.path.ismount(mountpoint):
        if time.monotonic() > deadline:
            raise IpldmountError(
                f"{mountpoint} is still mounted after {timeout:.0f}s (busy? see the daemon log)"
            )
        time.sleep(0.05)


STATUS_LINES = {
    "mountpoint": "mountpoint",
    "root": "root (started from, or last synced)",
    "commit": "commit",
    "branch": "branch",
    "unsynced_changes": "unsynced changes",
    "open_unsaved_files": "files open with unsaved writes",
    "failed_closes": "files whose last close failed (they keep their earlier content)",
    "sync_changes_root": "a sync would change the root",
    "read_only": "read-only",
    "store": "store",
    "journal": "journal",
    "pid": "daemon pid",
}


def cmd_status(args: argparse.Namespace) -> int:
    answer = control.request(Path(args.mountpoint), "status")
    answer.pop("ok", None)
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    for key, value in answer.items():
        shown = ("yes" if value else "no") if isinstance(value, bool) else value
        print(f"{STATUS_LINES.get(key, key)}: {shown}")
    return 0


COMMANDS: dict[str, tuple[Command, str]] = {
    "mount": (cmd_mount, "mount ROOT at MOUNTPOINT (the default command: `ipldmount ROOT MOUNTPOINT`)"),
    "sync": (
        cmd_sync,
        "commit a mount's changes; prints the new root CID and writes the CAR of the change",
    ),
    "unmount": (cmd_unmount, "sync, then unmount and stop the daemon"),
    "status": (cmd_status, "show a mount's root, commit, branch, unsynced changes and store"),
}


def add_arguments(parsers: dict[str, argparse.ArgumentParser]) -> None:
    _mount_arguments(parsers["mount"])
    for name in ("sync", "unmount", "status"):
        parsers[name].add_argument("mountpoint", metavar="MOUNTPOINT")
    for name in ("sync", "unmount"):
        parsers[name].add_argument(
            "--car",
            metavar="PATH",
            help="write the CAR here, even if nothing changed (default: STORE/cars/ROOT.car, "
            "or ROOT.full.car with --full-car)",
        )
        parsers[name].add_argument(
            "--full-car",
            action="store_true",
            help="write the whole DAG, not just the blocks new since the last sync",
        )
    parsers["unmount"].add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for the unmount"
    )
    parsers["sync"].add_argument("-m", "--message", help="say what changed (shown by `ipldmount log`)")
    parsers["sync"].add_argument(
        "--branch",
        metavar="NAME",
        help="commit onto a new branch NAME (made here), which the mount's syncs move from now on",
    )
    for name in ("sync", "unmount"):
        parsers[name].add_argument(
            "--json", action="store_true", help="print the commit, tree and CAR as JSON"
        )
    parsers["status"].add_argument("--json", action="store_true", help="print JSON")


def _mount_arguments(mount: argparse.ArgumentParser) -> None:
    mount.add_argument(
        "root",
        metavar="ROOT",
        help="a branch (each sync commits onto it), a commit or tree CID (a UnixFS one, dag-pb, mounts "
        "read-only), a tag, BRANCH~N, a .car file to import, 'empty' (the branch main in a store with no "
        "branch yet), or 'resume' (what this mountpoint had last, with its unsynced changes)",
    )
    mount.add_argument(
        "--branch",
        metavar="NAME",
        help="syncs move the branch NAME (made at ROOT's commit if it does not exist; if it does, it "
        "must name ROOT's commit)",
    )
    mount.add_argument(
        "mountpoint", metavar="MOUNTPOINT", help="an existing empty directory (see --nonempty)"
    )
    mount.add_argument("-f", "--foreground", action="store_true", help="serve in this process (for systemd)")
    mount.add_argument("--read-only", action="store_true", help="refuse every change (EROFS)")
    mount.add_argument("--car-dir", metavar="DIR", help="where sync writes CARs (default: STORE/cars)")
    mount.add_argument(
        "--whole-files", action="store_true", help="keep every file as one raw block (exact ipldstore CIDs)"
    )
    mount.add_argument("--allow-other", action="store_true", help="let other users see the mount")
    mount.add_argument(
        "--nonempty", action="store_true", help="mount over a directory that holds files (hiding them)"
    )
    mount.add_argument(
        "--discard",
        action="store_true",
        help="first drop the unsynced changes an earlier session left at MOUNTPOINT (says how many)",
    )
    mount.add_argument(
        "-o",
        dest="options",
        metavar="OPTIONS",
        action="append",
        default=[],
        help="mount(8)-style options, comma-separated: ro, rw, allow_other, nonempty, whole_files, "
        "store=DIR, car_dir=DIR, ipfs=URL; options mount(8) and fstab add (dev, suid, noauto, _netdev, "
        "x-*, ...) are accepted and ignored",
    )
    fetch_arguments(mount)
    mount.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    mount.add_argument("--on-branch", help=argparse.SUPPRESS)


# mount(8) options that mean nothing to a FUSE daemon (the kernel or mount itself applies them).
IGNORED_MOUNT_OPTIONS = (
    {"rw", "defaults", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "auto", "noauto", "nofail"}
    | {"user", "nouser", "users", "owner", "group", "_netdev", "async", "sync", "dirsync", "silent", "loud"}
    | {"atime", "noatime", "relatime", "strictatime", "diratime", "nodiratime", "lazytime", "nolazytime"}
)


def apply_mount_options(args: argparse.Namespace) -> None:
    """Fold ``-o a,b,k=v`` (as mount(8), mount.fuse3 and fstab pass them) into *args*."""
    flags = {
        "ro": "read_only",
        "allow_other": "allow_other",
        "nonempty": "nonempty",
        "whole_files": "whole_files",
    }
    values = {"store": "store", "car_dir": "car_dir", "ipfs": "ipfs"}
    for option in ",".join(args.options).split(","):
        name, equals, value = option.strip().partition("=")
        if not name or name in IGNORED_MOUNT_OPTIONS or name.startswith("x-") or name.startswith("comment="):
            continue
        if name in flags and not equals:
            setattr(args, flags[name], True)
        elif name in values and equals and value:
            setattr(args, values[name], value)
        else:
            known = ", ".join([*flags, *(f"{key}=..." for key in values)])
            raise UsageError(f"unknown mount option {option!r} (known: {known})")
