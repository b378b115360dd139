"""The ``ipldmount`` command line.

``ipldmount ROOT MOUNTPOINT`` mounts; the other commands are named. Every
command takes ``--store DIR`` (default ``$IPLDMOUNT_STORE`` or the XDG data
dir). Errors of ours print one line and exit 1; bad usage exits 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

from ipldmount._version import __version__
from ipldmount.adapters.fuse import control
from ipldmount.blocks import DirectoryBlockstore, car, dag, default_store_path
from ipldmount.blocks.car import write_car_file
from ipldmount.blocks.gc import Collection, mark
from ipldmount.errors import (
    InvalidCIDError,
    IpldmountError,
    IsDirectoryError,
    NotDirectoryError,
    NotFoundError,
)
from ipldmount.format.diff import diff_roots
from ipldmount.ipld import cid as cids
from ipldmount.progress import Progress
from ipldmount.remote.exchange import CarSource, Transfer, pull, push
from ipldmount.remote.fetching import FetchingBlockstore
from ipldmount.remote.remotes import Remotes
from ipldmount.repo.home import StoreHome, process_alive
from ipldmount.repo.journal import Journal
from ipldmount.repo.registry import PushRecord, RootRecord, free_tag_name
from ipldmount.repo.retention import DEFAULT_GRACE, GcReport, Retention, unnamed_heads
from ipldmount.repo.retention import collect as retention_gc
from ipldmount.tree.model import Directory, File, Node, Tree
from ipldmount.tree.unixfs import is_unixfs, open_tree

if TYPE_CHECKING:  # built in the commands that talk to a node: the HTTP client loads with it
    from ipldmount.remote.kubo import KuboNode

log = logging.getLogger("ipldmount")

# The store a command reads trees from: blocks it lacks come from remotes, if any are configured.
ReadingStore = DirectoryBlockstore | FetchingBlockstore[DirectoryBlockstore]


def _open_store(args: argparse.Namespace, durable: bool = True) -> DirectoryBlockstore:
    return DirectoryBlockstore(Path(args.store) if args.store else default_store_path(), durable=durable)


def _split_target(store: ReadingStore, target: str) -> tuple[bytes, str]:
    """``ROOT[/PATH]`` -> (binary CID, path); ROOT is a CID or a tag."""
    text, _, path = target.partition("/")
    return _root_or_tag(_directory(store), text), path


def _directory(store: ReadingStore) -> DirectoryBlockstore:
    """The store on disk under a reading store (its tags, its history)."""
    return store.local if isinstance(store, FetchingBlockstore) else store


def _root_or_tag(store: DirectoryBlockstore, text: str) -> bytes:
    try:
        return cids.parse_cid(text)
    except InvalidCIDError:
        tagged = StoreHome(store).tags.get(text)
        if tagged is None:
            raise
        return tagged


def _open_existing_store(args: argparse.Namespace) -> DirectoryBlockstore:
    """The store for a command that only reads: a mistyped ``--store`` must not create an empty one
    (unless blocks are to be fetched into it from an IPFS node or gateway)."""
    path = Path(args.store) if args.store else default_store_path()
    if not path.is_dir() and getattr(args, "fetching", False) and _remotes(args):
        return DirectoryBlockstore(path)
    if not path.is_dir():
        raise IpldmountError(f"no blockstore at {path} (import a CAR into it first, or pass --store DIR)")
    return DirectoryBlockstore(path)


def _reading_store(args: argparse.Namespace) -> ReadingStore:
    """The store for a command that reads trees: blocks it lacks come from the configured IPFS
    node or gateways, if any (and stay in the store). The command closes it."""
    return _remotes(args).fetching_into(_open_existing_store(args))


def _open_tree(store: ReadingStore, root: bytes) -> Tree:
    """The tree at *root*, which must be a directory node in *store* (or fetched into it)."""
    if not store.has(root) and not store.fetches_missing:
        shown = cids.cid_to_str(root)
        raise IpldmountError(f"{shown} is not in the store {_directory(store).root} (import its CAR first)")
    return open_tree(store, root, read_only=True)


@contextmanager
def _path_errors(target: str) -> Iterator[None]:
    """Name the whole ``CID/PATH`` the user typed in lookup errors, not just the part that failed."""
    try:
        yield
    except (NotFoundError, NotDirectoryError, IsDirectoryError) as exc:
        raise type(exc)(target.rstrip("/")) from None


@contextmanager
def _progress(
    label: str, *, total_bytes: int | None = None, total_blocks: int | None = None
) -> Iterator[Progress]:
    """A progress line that ends its line even when the operation fails, so the error starts afresh."""
    progress = Progress(label, total_bytes=total_bytes, total_blocks=total_blocks)
    try:
        yield progress
    finally:
        progress.done()


def cmd_import(args: argparse.Namespace) -> int:
    for root in _import(_open_store(args), args.car, single_root=False):
        print(cids.cid_to_str(root))
    return 0


def _record_import(store: DirectoryBlockstore, path: str, roots: list[bytes]) -> None:
    where = str(Path(path).resolve()) if Path(path).is_file() else path
    registry = StoreHome(store).registry
    for root in roots:
        registry.record(RootRecord(cids.cid_to_str(root), RootRecord.now(), "import", where))


def _import(store: DirectoryBlockstore, path: str, *, single_root: bool) -> list[bytes]:
    """Import a CAR file whose roots are all directory trees (one, if *single_root*): all or nothing."""
    started = time.time()
    try:
        with open(path, "rb") as stream:
            size = _regular_file_size(stream.fileno())
            with _progress(f"import {path}", total_bytes=size) as progress:
                roots = car.import_car(store, stream, progress, _check_roots(store, path, single_root))
        _record_import(store, path, roots)
        store.settle(started)  # the roots are in the history: garbage collection keeps them
        return roots
    except FileNotFoundError:
        raise IpldmountError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise IpldmountError(f"{path} is a directory, not a CAR file") from None


def _regular_file_size(fd: int) -> int | None:
    info = os.fstat(fd)
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def _check_roots(store: DirectoryBlockstore, path: str, single_root: bool) -> Callable[[list[bytes]], None]:
    """Refuse, before anything is committed, a CAR whose roots are not what the command needs."""

    def check(roots: list[bytes]) -> None:
        if single_root and len(roots) != 1:
            shown = ", ".join(cids.cid_to_str(root) for root in roots[:3]) + ", ..." * (len(roots) > 3)
            raise IpldmountError(
                f"{path} has {len(roots)} roots ({shown}), so it names no single tree; nothing was "
                f"imported (`ipldmount import {path}` keeps them all; then mount one by its CID)"
            )
        for root in roots:
            try:
                open_tree(store, root, read_only=True)
            except IpldmountError as exc:
                raise IpldmountError(
                    f"{path}: root {cids.cid_to_str(root)} is not a directory tree ({exc}); "
                    f"nothing was imported"
                ) from None

    return check


def cmd_export(args: argparse.Namespace) -> int:
    with _reading_store(args) as store:
        return _export(args, store)


def _export(args: argparse.Namespace, store: ReadingStore) -> int:
    root, path = _split_target(store, args.cid)
    if path.strip("/"):
        raise IpldmountError("export takes a root CID, not a path (export the CID `ls -l` shows for it)")
    _open_tree(store, root)  # refuse a root that is missing or not a directory before writing anything
    to_stdout = args.output == "-"
    if not to_stdout:
        # Like cp or curl -o: write into an existing directory, never create one on a typo.
        parent = Path(args.output).parent
        if not parent.is_dir():
            what = "is not a directory" if parent.exists() else "does not exist"
            raise IpldmountError(f"cannot write {args.output}: directory {parent} {what}")
    # A device or pipe is written into as it goes; a directory or socket is refused before anything.
    streamed = to_stdout or car.car_target(Path(args.output)).streamed
    total = dag.closure_size(store, root) if sys.stderr.isatty() else None  # a first pass, for the % only
    try:
        with _progress(f"export {args.cid}", total_blocks=total) as progress:
            if to_stdout:
                missing: list[bytes] = []
                size = car.export_car(store, root, sys.stdout.buffer, progress=progress, missing=missing)
                sys.stdout.buffer.flush()
                if missing:
                    incomplete = "the CAR written to stdout is incomplete"
                    raise car.incomplete_dag(root, missing, consequence=incomplete)
            else:
                size = write_car_file(store, root, Path(args.output), progress=progress)
    except (KeyboardInterrupt, Interrupted) as exc:
        if not streamed:
            raise  # the temporary file is gone: main() says no CAR was written
        signum = signal.SIGINT if isinstance(exc, KeyboardInterrupt) else Interrupted.signum
        stopped = f"export stopped; the CAR written to {'stdout' if to_stdout else args.output} is incomplete"
        print(f"ipldmount: interrupted ({signum.name}): {stopped}", file=sys.stderr)
        return 128 + signum
    if not to_stdout:
        print(f"wrote {size} bytes to {args.output}", file=sys.stderr)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    with _reading_store(args) as store:
        root, path = _split_target(store, args.target)
        tree = _open_tree(store, root)
        with _path_errors(args.target):
            node = tree.resolve(path)
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
    with _reading_store(args) as store:
        root, path = _split_target(store, args.target)
        tree = _open_tree(store, root)
        with _path_errors(args.target):
            file = tree.resolve_file(path)
        reader = tree.reader(file)
        out = sys.stdout.buffer
        for offset in range(0, reader.size, 1 << 20):
            out.write(reader.read(offset, 1 << 20))
        out.flush()
        return 0


# --- mounting ---------------------------------------------------------------------


def _resolve_root(home: StoreHome, reading: ReadingStore, root: str, mountpoint: Path) -> bytes | None:
    """ROOT as a CID in the store: ``empty``, ``resume``, a ``.car`` file (imported first), or a CID
    (*reading* fetches it if it is not there and remotes are configured)."""
    store = home.blocks
    if root == "empty":
        return None
    if root == "resume":
        return _last_root(home, mountpoint)
    if Path(root).exists() and not Path(root).is_dir():  # a .car file, or a pipe (/dev/stdin)
        return _import(store, root, single_root=True)[0]
    cid = _parse_root(store, root)
    if not reading.has(cid) and not reading.fetches_missing:
        raise IpldmountError(
            f"root {root} is not in the store {store.root} (import its CAR first, pass the .car, or "
            "name an IPFS node or gateway that has it: --ipfs URL, --gateway URL)"
        )
    open_tree(reading, cid, read_only=True)  # a root that is no directory is refused here, not in the daemon
    return cid


def _parse_root(store: DirectoryBlockstore, text: str) -> bytes:
    """ROOT as typed: a CID or a tag, or else say what ROOT may be."""
    try:
        return _root_or_tag(store, text)
    except InvalidCIDError as exc:
        if Path(text).exists():
            raise IpldmountError(f"{text} is not a CAR file") from None
        raise IpldmountError(
            f"ROOT must be a CID, a tag, a .car file, 'empty' or 'resume'; {exc} (and no tag has that name)"
        ) from None


def _last_root(home: StoreHome, mountpoint: Path) -> bytes | None:
    """The root this mountpoint had last: its journal's base (changes pending on it come back), else
    the last root synced there, else empty. What a service restarting after a crash wants."""
    pending = Journal(home.mount_files(mountpoint).journal).read()
    if pending is not None:
        return pending.root
    synced = home.registry.history(str(mountpoint))
    return cids.parse_cid(synced[0].root) if synced else None


def _mountpoint_root(home: StoreHome, mountpoint: Path) -> bytes | None:
    """The root a mountpoint shows: its live daemon's (started from or last synced), else the base
    of the journal a dead one left, else the last root synced there."""
    files = home.mount_files(mountpoint)
    served = home.served_root(files)
    if served is not None:
        return cids.parse_cid(served)
    return _last_root(home, mountpoint)


def _check_mountpoint(mountpoint: Path, home: StoreHome, nonempty: bool = False) -> None:
    """Refuse a bad mountpoint; clear a stale one our own dead daemon left."""
    try:
        control.check_mountpoint(mountpoint)
    except control.StaleMountError:
        pid = home.daemon_pid(home.mount_files(mountpoint))
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


def _discard_pending(home: StoreHome, mountpoint: Path) -> None:
    """--discard: drop the unsynced changes a mountpoint's earlier session left, saying what they were."""
    journal = Journal(home.mount_files(mountpoint).journal)
    try:
        pending = journal.read()
    except IpldmountError as exc:
        print(f"ipldmount: discarding an unreadable journal {journal.path}: {exc}", file=sys.stderr)
        journal.remove()
        return
    if pending is None or not pending.records:
        print(f"ipldmount: {mountpoint} has no unsynced changes to discard", file=sys.stderr)
    else:
        base = cids.cid_to_str(pending.root) if pending.root else "the empty tree"
        print(
            f"ipldmount: discarded {len(pending.records)} unsynced changes on {base} at {mountpoint}",
            file=sys.stderr,
        )
    journal.remove()


def _fusermount_unmount(mountpoint: Path) -> None:
    result = subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, text=True)
    if result.returncode != 0:
        raise IpldmountError(f"fusermount3 -u {mountpoint} failed: {result.stderr.strip()}")


def cmd_mount(args: argparse.Namespace) -> int:
    if args.store:  # absolute: the daemon reports paths in the store to clients that run elsewhere
        args.store = str(Path(args.store).resolve())
    # the daemon's fsync and sync make blocks durable (syncfs)
    home = StoreHome(_open_store(args, durable=False))
    mountpoint = Path(args.mountpoint).resolve()
    pid = home.daemon_pid(home.mount_files(mountpoint))
    if args.discard and pid is not None and process_alive(pid):
        raise IpldmountError(
            f"{mountpoint} is mounted: the unsynced changes of a live mount cannot be dropped yet (unmount "
            f"would sync them); to drop them, stop its daemon without a sync (kill -9 {pid}), then "
            f"mount again with --discard"
        )
    _check_mountpoint(mountpoint, home, args.nonempty)
    if args.discard:
        _discard_pending(home, mountpoint)
    remotes = _remotes(args)
    with remotes.fetching_into(home.blocks) as store:
        root = _resolve_root(home, store, args.root, mountpoint)
        if root is not None and is_unixfs(root) and not args.read_only:
            print(f"{cids.cid_to_str(root)} is UnixFS: mounting it read-only", file=sys.stderr)
            args.read_only = True
        attributes = home.attribute_table.recover()  # unreadable, or corrupt and moved aside: say so
        if attributes:
            print(f"ipldmount: warning: {attributes}", file=sys.stderr)
        if args.foreground:
            return _run_daemon(args, home, store, mountpoint, root)
        return _spawn_daemon(args, home, mountpoint, root, remotes)


def _run_daemon(
    args: argparse.Namespace, home: StoreHome, store: ReadingStore, mountpoint: Path, root: bytes | None
) -> int:
    from ipldmount.adapters.fuse import daemon  # pyfuse3 is needed only here

    config = daemon.MountConfig(
        home=home,
        store=store,
        mountpoint=mountpoint,
        root=root,
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
        print(f"mounted {cids.cid_to_str(root) if root else 'empty'} at {mountpoint}", file=sys.stderr)

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
    args: argparse.Namespace, home: StoreHome, mountpoint: Path, root: bytes | None, remotes: Remotes
) -> int:
    """Start the daemon in the background and return once the mount is live (or failed)."""
    log_path = home.mount_files(mountpoint).daemon_log
    read_end, write_end = os.pipe()
    command = [
        sys.executable,
        "-m",
        "ipldmount",
        "mount",
        cids.cid_to_str(root) if root else "empty",
        str(mountpoint),
    ]
    command += ["--foreground", "--store", str(home.root), "--ready-fd", str(write_end)]
    command += ["--read-only"] * args.read_only + ["--whole-files"] * args.whole_files
    command += ["--allow-other"] * args.allow_other + ["-v"] * args.verbose
    command += ["--nonempty"] * args.nonempty + remotes.as_arguments()
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
        shown = cids.cid_to_str(root) if root else "an empty tree"
        print(f"mounted {shown} at {mountpoint} (daemon pid {process.pid}, log {log_path})")
        return 0
    process.wait()
    reason = message.removeprefix("ERROR ").strip() or f"the daemon exited with status {process.returncode}"
    raise IpldmountError(f"mounting {mountpoint} failed: {reason} (see {log_path})")


def cmd_sync(args: argparse.Namespace) -> int:
    car_path = str(Path(args.car).resolve()) if args.car else None
    try:
        answer = control.request(
            Path(args.mountpoint), "sync", car=car_path, message=args.message, full_car=args.full_car
        )
    except control.ControlError as exc:
        if exc.answer.get("root"):  # committed: only the CAR failed
            print(exc.answer["root"])
            raise IpldmountError(f"synced: {exc}") from None
        raise
    _print_synced(answer)
    return 0


def _print_synced(answer: dict[str, object]) -> None:
    warnings = answer.get("warnings")
    for warning in warnings if isinstance(warnings, list) else ():  # what may have been lost
        print(f"ipldmount: warning: {warning}", file=sys.stderr)
    if answer.get("car"):
        what = "the whole DAG" if answer.get("full_car") else "the blocks new since the last sync"
        print(f"wrote CAR {answer['car']} ({answer['car_bytes']} bytes: {what})")
    elif "changed" in answer:  # a read-only mount answers with its root only
        print("nothing changed since the last sync: no CAR written (--full-car writes one)")
    print(answer["root"])


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
    _print_synced(answer)
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


# --- history ------------------------------------------------------------------------


def cmd_log(args: argparse.Namespace) -> int:
    home = StoreHome(_open_existing_store(args))
    if args.repair:
        return _repair_history(home)
    where = None if args.mountpoint is None else str(Path(args.mountpoint).resolve())
    records = home.registry.history(where)
    changed = [_changed_paths(home.blocks, record) for record in records]
    if args.json:
        entries = [
            record.as_json() | {"changed": count} for record, count in zip(records, changed, strict=True)
        ]
        print(json.dumps(entries, indent=2))
        return 0
    names: dict[str, list[str]] = {}
    for name, root in sorted(home.tags.all().items()):
        names.setdefault(root, []).append(name)
    for record, count in zip(records, changed, strict=True):
        line = f"{record.time}  {record.root}  {record.source} {record.where}".rstrip()
        if count is not None:
            line += f"  ({count} changed)"
        if record.root in names:
            line += f"  (tag: {', '.join(names[record.root])})"
        print(line + (f"\n    {record.message}" if record.message else ""))
    return 0


def _repair_history(home: StoreHome) -> int:
    """`log --repair`: set the lines gc refuses on aside, tagging every stored root they name."""
    registry = home.registry
    before = registry.read_whole()
    set_aside, made = registry.repair(home.tags, lambda text: home.blocks.has(cids.parse_cid(text)))
    if not before.damaged and not set_aside:
        print(f"{registry.path} reads whole: nothing to repair")
        return 0
    for damage in before.damaged:
        print(f"  {damage}")
    print(f"set {_count_of(set_aside, 'line')} aside in {registry.set_aside}; sealed the rest anew")
    for name in made:
        print(f"  tagged {name} {home.tags.all()[name]} (a root a damaged line named)")
    # A line lost whole (a cut tail) or too damaged to name its root: keep every stored root that
    # nothing names, rather than let the next gc take it. `tag -d` lets it go.
    for head in unnamed_heads(home):
        name = free_tag_name(home.tags, "recovered")
        home.tags.set(name, cids.parse_cid(head))
        print(f"  tagged {name} {head} (a stored root nothing named)")
    return 0


def _changed_paths(store: DirectoryBlockstore, record: RootRecord) -> int | None:
    """How many paths differ from the record's parent: a diff, so it costs the change; None where
    there is no parent, or a block of either tree is not in the store."""
    if record.parent is None:
        return None
    try:
        return sum(1 for _ in diff_roots(store, cids.parse_cid(record.parent), cids.parse_cid(record.root)))
    except IpldmountError:
        return None


def cmd_tag(args: argparse.Namespace) -> int:
    store = _open_existing_store(args)
    tags = StoreHome(store).tags
    if args.delete:
        if args.root is not None:
            raise UsageError("tag -d NAME takes no ROOT")
        tags.delete(args.name)
        print(f"deleted tag {args.name}")
        return 0
    if args.name in COMMANDS:
        raise IpldmountError(f"{args.name!r} cannot be a tag name: it is an ipldmount command")
    root = _tag_target(store, args.root)
    _open_tree(store, root)  # only stored trees get names
    _check_whole_if_dropped(StoreHome(store), root)
    tags.set(args.name, root)
    print(f"{args.name} {cids.cid_to_str(root)}")
    return 0


def _check_whole_if_dropped(home: StoreHome, root: bytes) -> None:
    """A root gc let go may be partial: name it only if every block it reaches is still here."""
    if cids.cid_to_str(root) not in home.registry.read_whole().dropped:
        return
    lacking = mark(home.blocks, [root], check_leaves=True).missing_count
    if lacking:
        raise IpldmountError(
            f"{cids.cid_to_str(root)} was let go by gc and {_count_of(lacking, 'block')} of it are gone: "
            f"import or pull it again before naming it"
        )


def _tag_target(store: DirectoryBlockstore, text: str | None) -> bytes:
    """ROOT of `tag NAME [ROOT]`: a CID, a tag, or a mountpoint (the root it shows); else the newest."""
    home = StoreHome(store)
    history = home.registry.history
    if text is not None and Path(text).is_dir():
        root = _mountpoint_root(home, Path(text).resolve())
        if root is None:
            raise IpldmountError(f"nothing was mounted or synced at {text} yet")
        return root
    if text is not None:
        return _root_or_tag(store, text)
    newest = history()
    if not newest:
        raise IpldmountError("no root was made in this store yet: name one (tag NAME ROOT)")
    return cids.parse_cid(newest[0].root)


def cmd_diff(args: argparse.Namespace) -> int:
    with _reading_store(args) as store:
        before, after = (_diff_side(store, text) for text in (args.a, args.b))
        changes = list(diff_roots(store, before, after))
        if args.json:
            print(json.dumps([{"change": change.kind, "path": change.path} for change in changes], indent=2))
            return 0
        for change in changes:
            print(f"{DIFF_MARKS[change.kind]} {change.path}")
        return 0


DIFF_MARKS = {"added": "A", "removed": "D", "modified": "M"}


def _diff_side(store: ReadingStore, text: str) -> bytes:
    """A side of `diff`: a CID, a tag, or a mountpoint (the root last synced there)."""
    root = _tag_target(_directory(store), text)
    _open_tree(store, root)
    return root


# --- IPFS ------------------------------------------------------------------------


def _remotes(args: argparse.Namespace) -> Remotes:
    return Remotes.resolve(args.ipfs, args.gateway or ())


def cmd_push(args: argparse.Namespace) -> int:
    remotes = _remotes(args)
    if remotes.ipfs is None:
        raise IpldmountError("push needs an IPFS node: --ipfs URL (or IPLDMOUNT_IPFS, or the config file)")
    home = StoreHome(_open_existing_store(args))
    root = _tag_target(home.blocks, args.root)
    if not home.blocks.has(root):
        raise IpldmountError(f"{cids.cid_to_str(root)} is not in the store {home.root}")
    from ipldmount.remote.kubo import KuboNode  # the HTTP client, for the commands that use one

    node = KuboNode(remotes.ipfs)
    node.version()  # a node that is not there fails here, before any walk
    bases = [*home.pushes.roots_on(node.url), *_ancestors(home, root)]
    with _progress(f"push to {node.url}") as progress:
        sent = push(home.blocks, root, node, bases=bases, pin=args.pin, progress=progress)
    if not sent.already:
        record = PushRecord(node.url, cids.cid_to_str(root), args.pin, RootRecord.now(), sent.blocks)
        home.pushes.record(record)
    print(_pushed(sent, node.url, args.pin), file=sys.stderr)
    print(cids.cid_to_str(root))
    return 0


def _ancestors(home: StoreHome, root: bytes, limit: int = 8) -> list[bytes]:
    """Roots *root* was made from (the mount's earlier syncs), newest first: bases a node may pin."""
    parents = {record.root: record.parent for record in home.registry.records() if record.parent}
    found: list[bytes] = []
    text = cids.cid_to_str(root)
    while len(found) < limit and (text := parents.get(text, "")):
        found.append(cids.parse_cid(text))
    return found


def _pushed(sent: Transfer, url: str, pinned: bool) -> str:
    if sent.already:
        return f"{url} has {cids.cid_to_str(sent.root)} pinned already: nothing sent"
    since = f" (new since {cids.cid_to_str(sent.base)})" if sent.base else ""
    return f"sent {_count_of(sent.blocks, 'block')}, {_megabytes(sent.nbytes)}{since} to {url}" + (
        "; pinned" if pinned else ""
    )


def cmd_pull(args: argparse.Namespace) -> int:
    remotes = _remotes(args)
    if not remotes:
        raise IpldmountError("pull needs a source: --ipfs URL or --gateway URL (or IPLDMOUNT_IPFS, ...)")
    root = cids.parse_cid(args.root)
    home = StoreHome(_open_store(args))
    from ipldmount.remote.gateway import Gateway  # the HTTP client, for the commands that use one
    from ipldmount.remote.kubo import KuboNode

    sources: list[CarSource] = [KuboNode(remotes.ipfs)] if remotes.ipfs else []
    sources += [Gateway(url) for url in remotes.gateways]
    with _progress(f"pull {args.root}") as progress:
        fetched = pull(home.blocks, root, sources, progress=progress)
    where = remotes.ipfs or ", ".join(remotes.gateways)
    home.registry.record(RootRecord(cids.cid_to_str(root), RootRecord.now(), "pull", where))
    if fetched.already:
        print(f"the store has all of {args.root} already: nothing fetched", file=sys.stderr)
    else:
        print(
            f"fetched {_count_of(fetched.blocks, 'block')}, {_megabytes(fetched.nbytes)} from {where}",
            file=sys.stderr,
        )
    print(cids.cid_to_str(root))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from ipldmount.adapters.serve import GatewayServer  # http.server only for this command

    store = _open_existing_store(args)
    try:
        limits = {name: getattr(args, name) for name in SERVE_LIMITS if getattr(args, name) is not None}
        server = GatewayServer(store, (args.bind, args.port), **limits)
    except OSError as exc:
        raise IpldmountError(f"cannot listen on {args.bind}:{args.port}: {exc.strerror or exc}") from None
    print(f"serving {store.root} as a trustless gateway at {server.url}/ipfs/", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    home = StoreHome(_open_existing_store(args))
    retention = Retention(args.keep_last, args.keep_within, args.grace)
    node = _evicting_for(args)
    total = len(home.blocks) if sys.stderr.isatty() else None  # a listing, for the % only
    with _progress("gc: marking") as marking, _progress("gc: sweeping", total_blocks=total) as sweeping:
        report = retention_gc(
            home,
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
            _report_missing(found, Remotes.resolve(args.ipfs, ()))
        return 0
    verb = "would remove" if args.dry_run else "removed"
    print(f"kept {_count_of(len(report.kept), 'root')} ({_count_of(found.kept_blocks, 'block')})")
    for root, reasons in sorted(report.kept.items()):
        print(f"  {root}  {'; '.join(reasons)}")
    if node is not None:
        print(f"left {_count_of(len(report.left_to_node), 'root')} to {node.url}, which has them pinned:")
        print(
            "".join(f"  {root}  (read it with --ipfs {node.url})\n" for root in report.left_to_node), end=""
        )
    print(f"{verb} {_count_of(found.removed_blocks, 'block')} ({_megabytes(found.removed_bytes)})")
    if found.recent_blocks:
        print(
            f"kept {found.recent_blocks} unreferenced blocks written in the last {args.grace:g} s "
            f"or held by a running writer"
        )
    if report.cars_removed:
        folder = report.cars_removed[0].parent
        print(f"{verb} {len(report.cars_removed)} CARs of roots not kept from {folder}")
    if report.attribute_rows_removed:
        rows = _count_of(report.attribute_rows_removed, "attribute row")
        print(f"{verb} {rows} (modes and times) of file contents not kept")
    if found.missing_blocks:
        _report_missing(found, Remotes.resolve(args.ipfs, ()))
    return 0


def _report_missing(found: Collection, remotes: Remotes) -> None:
    """Blocks kept roots reach that the store lacks: expected of a cache of a configured node or
    gateway (a lazy mount reads only what it needs), an error otherwise."""
    first = ", ".join(cids.cid_to_str(cid) for cid in found.missing[:3])
    count = _count_of(found.missing_blocks, "block")
    if remotes:
        where = remotes.ipfs or ", ".join(remotes.gateways)
        print(
            f"{count} that kept roots reach are not here (first: {first}): reads fetch them from {where}",
            file=sys.stderr,
        )
        return
    raise IpldmountError(
        f"{count} that kept roots reach cannot be read here (not in the store, or corrupt; first: "
        f"{first}); nothing they reach was removed. If they are on an IPFS node or gateway, say so "
        "with --ipfs URL (or IPLDMOUNT_IPFS, IPLDMOUNT_GATEWAYS, the config file)"
    )


def _evicting_for(args: argparse.Namespace) -> KuboNode | None:
    """The node `gc --evict-pinned` leaves pinned roots to (checked to answer first), or None."""
    if not args.evict_pinned:
        return None
    url = Remotes.resolve(args.ipfs, ()).ipfs
    if url is None:
        raise IpldmountError(
            "gc --evict-pinned needs an IPFS node: --ipfs URL (or IPLDMOUNT_IPFS, or the config)"
        )
    from ipldmount.remote.kubo import KuboNode  # the HTTP client, for the commands that use one

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


def _count_of(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' * (count != 1)}"


def _megabytes(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 100_000 else f"{count} bytes"


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``90``, ``45s``, ``10m``, ``12h``, ``30d``, ``2w``: seconds."""
    number, unit = (text[:-1], text[-1]) if text[-1:] in DURATION_UNITS else (text, "s")
    try:
        value = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a duration: {text!r} (say 90, 45s, 10m, 12h, 30d, 2w)"
        ) from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"a duration must be a finite number >= 0: {text!r}")
    return value * DURATION_UNITS[unit]


def cmd_tags(args: argparse.Namespace) -> int:
    tags = StoreHome(_open_existing_store(args)).tags.all()
    if args.json:
        print(json.dumps(tags, indent=2, sort_keys=True))
        return 0
    for name, root in sorted(tags.items()):
        print(f"{name} {root}")
    return 0


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
    "mount": (cmd_mount, "mount ROOT at MOUNTPOINT (the default command: `ipldmount ROOT MOUNTPOINT`)"),
    "sync": (
        cmd_sync,
        "commit a mount's changes; prints the new root CID and writes the CAR of the change",
    ),
    "unmount": (cmd_unmount, "sync, then unmount and stop the daemon"),
    "status": (cmd_status, "show a mount's root, unsynced changes and store"),
    "import": (cmd_import, "import a CARv1 file into the store; prints its root CID"),
    "export": (cmd_export, "write the CARv1 of a root CID"),
    "ls": (cmd_ls, "list a directory of a stored tree"),
    "cat": (cmd_cat, "write a stored file to stdout"),
    "log": (cmd_log, "the roots made in the store (syncs, imports, freezes), newest first"),
    "tag": (cmd_tag, "name a root (tag NAME [ROOT]), or delete a name (tag -d NAME)"),
    "tags": (cmd_tags, "list the names of roots"),
    "diff": (cmd_diff, "the paths added (A), removed (D) and modified (M) from one root to another"),
    "gc": (cmd_gc, "remove the blocks no kept root reaches (tags, recent history, mounts, live stores)"),
    "push": (cmd_push, "send a root's blocks that an IPFS node lacks, and optionally pin it there"),
    "pull": (cmd_pull, "fetch what the store lacks of a root from an IPFS node or gateways"),
    "serve": (cmd_serve, "serve the store read-only as a trustless HTTP gateway (raw blocks and CARs)"),
}


def _common_options(default: object) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--store",
        metavar="DIR",
        default=default,
        help="blockstore directory (default: $IPLDMOUNT_STORE or $XDG_DATA_HOME/ipldmount)",
    )
    common.add_argument(
        "-v", "--verbose", action="count", default=default, help="more logging (-vv for debug)"
    )
    return common


def _gc_arguments(gc: argparse.ArgumentParser) -> None:
    gc.add_argument("--dry-run", action="store_true", help="remove nothing; say what would go")
    gc.add_argument(
        "--keep-last",
        type=_count,
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


def _fetch_arguments(parser: argparse.ArgumentParser) -> None:
    """--ipfs and --gateway for a command that reads: where blocks the store lacks come from (on
    first use; they stay in the store)."""
    parser.add_argument(
        "--ipfs",
        metavar="URL",
        help="an IPFS node's RPC API to fetch missing blocks from (default: $IPLDMOUNT_IPFS, config file)",
    )
    parser.add_argument(
        "--gateway",
        action="append",
        metavar="URL",
        help="a trustless gateway to fetch missing blocks from (repeatable, after --ipfs; default: "
        "$IPLDMOUNT_GATEWAYS)",
    )
    parser.set_defaults(fetching=True)


def _remote_arguments(push_parser: argparse.ArgumentParser, pull_parser: argparse.ArgumentParser) -> None:
    push_parser.add_argument(
        "root", metavar="ROOT", help="a CID, a tag or a mountpoint (the root last synced there)"
    )
    push_parser.add_argument("--pin", action="store_true", help="pin the root on the node once it is sent")
    pull_parser.add_argument("root", metavar="CID", help="the root to fetch")
    for parser in (push_parser, pull_parser):
        parser.add_argument(
            "--ipfs",
            metavar="URL",
            help="an IPFS node's RPC API, http://HOST:5001 (default: $IPLDMOUNT_IPFS)",
        )
    pull_parser.add_argument(
        "--gateway",
        action="append",
        metavar="URL",
        help="a trustless gateway to fetch from (repeatable, tried in order; default: $IPLDMOUNT_GATEWAYS)",
    )
    push_parser.set_defaults(gateway=None)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a count: {text!r}")
    return value


SERVE_LIMITS = {  # serve's bounds on hostile clients (ipldmount/adapters/serve.py says why)
    "max_connections": (_count, "connections open at once, idle ones included (default 512)"),
    "idle_timeout": (parse_duration, "a connection may wait this long to start a request (default 60s)"),
    "request_timeout": (parse_duration, "from a request's first byte to its last header (default 10s)"),
    "send_timeout": (parse_duration, "a client may go this long taking no byte of its answer (default 30s)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipldmount",
        usage="ipldmount ROOT MOUNTPOINT [options]\n       ipldmount COMMAND ...",
        description="Mount an IPLD tree (zarr data in content-addressed storage) as a writable directory.",
        epilog="Run `ipldmount COMMAND --help` for a command's options.",
        parents=[_common_options(argparse.SUPPRESS)],
    )
    parser.add_argument("--version", action="version", version=f"ipldmount {__version__}")
    parser.set_defaults(store=None, verbose=0)
    common = _common_options(argparse.SUPPRESS)  # after the command too; a value given before it stays
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(
            name, help=help_text, description=help_text, parents=[common], prog=f"ipldmount {name}"
        )
    _mount_arguments(sub.choices["mount"])
    for name in ("sync", "unmount", "status"):
        sub.choices[name].add_argument("mountpoint", metavar="MOUNTPOINT")
    for name in ("sync", "unmount"):
        sub.choices[name].add_argument(
            "--car",
            metavar="PATH",
            help="write the CAR here, even if nothing changed (default: STORE/cars/ROOT.car, "
            "or ROOT.full.car with --full-car)",
        )
        sub.choices[name].add_argument(
            "--full-car",
            action="store_true",
            help="write the whole DAG, not just the blocks new since the last sync",
        )
    sub.choices["unmount"].add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for the unmount"
    )
    sub.choices["sync"].add_argument("-m", "--message", help="say what changed (shown by `ipldmount log`)")
    sub.choices["status"].add_argument("--json", action="store_true", help="print JSON")
    log_parser = sub.choices["log"]
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
    sub.choices["tag"].add_argument("name", metavar="NAME")
    sub.choices["tag"].add_argument(
        "root", metavar="ROOT", nargs="?", help="a CID, a tag or a mountpoint (default: the newest root)"
    )
    sub.choices["tag"].add_argument("-d", "--delete", action="store_true", help="delete the tag NAME")
    sub.choices["tags"].add_argument("--json", action="store_true", help="print JSON: name -> CID")
    for side in ("a", "b"):
        sub.choices["diff"].add_argument(
            side, metavar=side.upper(), help="a CID, a tag or a mountpoint (the root last synced there)"
        )
    sub.choices["diff"].add_argument(
        "--json", action="store_true", help='print JSON: [{"change": "added|removed|modified", "path": ...}]'
    )
    _gc_arguments(sub.choices["gc"])
    _remote_arguments(sub.choices["push"], sub.choices["pull"])
    for name in ("ls", "cat", "export", "diff"):
        _fetch_arguments(sub.choices[name])
    sub.choices["serve"].add_argument("--port", type=int, default=8080, help="TCP port (default 8080)")
    sub.choices["serve"].add_argument(
        "--bind", default="127.0.0.1", metavar="ADDRESS", help="address to listen on (default 127.0.0.1)"
    )
    for name, (kind, what) in SERVE_LIMITS.items():
        metavar = "N" if kind is _count else "DURATION"
        option = f"--{name.replace('_', '-')}"
        sub.choices["serve"].add_argument(option, type=kind, metavar=metavar, help=what)
    sub.choices["import"].add_argument("car", metavar="FILE.car", help="the CARv1 archive to import")
    sub.choices["export"].add_argument("cid", metavar="CID", help="root CID (or tag) to export")
    sub.choices["export"].add_argument(
        "-o",
        "--output",
        required=True,
        metavar="FILE.car",
        help="where to write the archive ('-' for stdout)",
    )
    sub.choices["ls"].add_argument(
        "target", metavar="CID[/PATH]", help="a root CID or tag, optionally with a path in it"
    )
    sub.choices["ls"].add_argument(
        "-l",
        "--long",
        action="store_true",
        help="show kind, size and CID ('inline': no block of its own)",
    )
    sub.choices["cat"].add_argument(
        "target", metavar="CID/PATH", help="a root CID or tag and the path of a file in it"
    )
    return parser


def _mount_arguments(mount: argparse.ArgumentParser) -> None:
    mount.add_argument(
        "root",
        metavar="ROOT",
        help="a root CID in the store (a UnixFS one, dag-pb, mounts read-only), a tag, a .car file to "
        "import, 'empty', or 'resume' (the root this mountpoint had last, with its unsynced changes)",
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
    _fetch_arguments(mount)
    mount.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)


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


class UsageError(IpldmountError):
    """The command line is wrong (exit status 2)."""


class Interrupted(BaseException):
    """SIGTERM arrived: unwind like KeyboardInterrupt does for SIGINT."""

    signum = signal.SIGTERM


def _on_sigterm(signum: int, frame: object) -> None:
    raise Interrupted


INTERRUPTED = {
    "import": "nothing was imported",
    "pull": "the blocks fetched so far are kept: pull again to fetch the rest",
    "push": "the node keeps what it was sent; nothing was pinned",
    "serve": "the gateway stopped",
    "export": "no CAR was written",
    "mount": "nothing was mounted (a CAR being imported was not kept)",
}


def _with_mount_first(arguments: list[str]) -> list[str]:
    """`ipldmount [--store S] [-v] ROOT MOUNTPOINT ...`: put `mount` before ROOT."""
    index = 0
    while index < len(arguments) and arguments[index].startswith("-"):
        option = arguments[index]
        index += 2 if option == "--store" else 1  # --store DIR; --store=DIR, -v, --version alone
    if index < len(arguments) and arguments[index] not in COMMANDS:
        return [*arguments[:index], "mount", *arguments[index:]]
    return arguments


def _configure_logging(command: str, verbose: int) -> None:
    """-v: ipldmount's INFO; -vv: its DEBUG; libraries (pyfuse3, trio) say only WARNING unless
    -vv (INFO) or -vvv (DEBUG): their debug lines are noise beside ours. The daemon
    (``mount``) logs INFO without -v: its syncs and final root. Leaves alone logging that is
    set up already (a program embedding main(), pytest)."""
    if logging.getLogger().handlers:
        return
    own = [logging.WARNING, logging.INFO, logging.DEBUG][min(max(verbose, command == "mount"), 2)]
    libraries = [logging.WARNING, logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 3)]
    logging.basicConfig(
        level=libraries,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s" if command == "mount" else "%(message)s",
    )
    logging.getLogger("ipldmount").setLevel(own)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_with_mount_first(list(sys.argv[1:] if argv is None else argv)))
    _configure_logging(args.command, args.verbose)
    handler = COMMANDS[args.command][0]
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if args.command == "mount":
            apply_mount_options(args)
        return handler(args)
    except UsageError as exc:
        parser.exit(2, f"ipldmount: error: {exc}\n")
    except IpldmountError as exc:
        print(f"ipldmount: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 1
    except OSError as exc:
        print(f"ipldmount: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Interrupted) as exc:
        signum = signal.SIGINT if isinstance(exc, KeyboardInterrupt) else Interrupted.signum
        kept = INTERRUPTED.get(args.command)
        what = f"{args.command} stopped" + (f"; {kept}" if kept else "")
        print(f"ipldmount: interrupted ({signal.Signals(signum).name}): {what}", file=sys.stderr)
        return 128 + signum
    finally:
        signal.signal(signal.SIGTERM, previous)


def mount_helper(argv: Sequence[str] | None = None) -> int:
    """``mount.ipldmount SOURCE DIR [-sfnv] [-o OPTIONS]``: what mount(8) runs for ``-t ipldmount``.

    Install it as /sbin/mount.ipldmount (a symlink to the console script) for
    ``mount -t ipldmount`` and fstab lines of type ``ipldmount``.
    """
    helper = argparse.ArgumentParser(prog="mount.ipldmount", description=mount_helper.__doc__)
    helper.add_argument("source", metavar="ROOT")
    helper.add_argument("directory", metavar="MOUNTPOINT")
    helper.add_argument("-o", dest="options", default="")
    helper.add_argument("-f", dest="fake", action="store_true", help="do everything but mount")
    helper.add_argument("-s", dest="sloppy", action="store_true", help="(accepted, ignored)")
    helper.add_argument("-n", dest="no_mtab", action="store_true", help="(accepted, ignored)")
    helper.add_argument("-v", dest="verbose", action="store_true")
    helper.add_argument("-t", dest="type", help="(accepted, ignored)")
    args = helper.parse_args(sys.argv[1:] if argv is None else argv)
    if args.fake:
        return 0
    command = ["mount", args.source, args.directory] + (["-o", args.options] if args.options else [])
    return main(command + ["-v"] * args.verbose)


__all__ = ["main", "mount_helper"]


if __name__ == "__main__":
    sys.exit(main())
