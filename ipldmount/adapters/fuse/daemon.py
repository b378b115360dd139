"""The mount daemon: pyfuse3's request loop, the control socket's server and signals, under trio.

The kernel's requests go to the mount's Operations; the control socket (sync, status, unmount)
and signals talk to the session itself.

Whatever way the mount ends (``ipldmount unmount``, ``fusermount3 -u``,
SIGTERM, SIGINT) the daemon syncs before it exits, so nothing written is lost.
A daemon killed outright leaves its journal behind; the next mount of the same
mountpoint replays it.
"""

from __future__ import annotations

import ctypes
import functools
import json
import logging
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from ipldmount.adapters.fuse.control import MAX_MESSAGE, runtime_dir
from ipldmount.adapters.fuse.ops import Operations, close, mount, serve, terminate
from ipldmount.blocks.car import car_target
from ipldmount.errors import CarWriteError, IncompleteDagError, IpldmountError
from ipldmount.ipld import cid as cids
from ipldmount.repo.home import mount_id
from ipldmount.repo.repository import Repository
from ipldmount.session.advance import Place
from ipldmount.session.session import Session

log = logging.getLogger(__name__)

READ_AHEAD_KB = 4096


@dataclass(frozen=True)
class MountConfig:
    repository: Repository  # the store; its blocks may be a store that fetches into it (a lazy mount)
    mountpoint: Path
    root: bytes | None
    read_only: bool = False
    whole_files: bool = False
    car_dir: Path | None = None
    allow_other: bool = False
    commit: bytes | None = None  # the commit *root* is the tree of (None: none yet)
    branch: str | None = None  # the branch its syncs move (None: detached)


def run(config: MountConfig, ready: Callable[[], None]) -> None:
    """Mount, serve until unmounted, sync, and return. *ready* is called once the mount is live."""
    keep_freed_buffers()
    session = Session(
        config.repository,
        config.mountpoint,
        config.root,
        read_only=config.read_only,
        whole_files=config.whole_files,
        car_dir=config.car_dir,
        commit=config.commit,
        branch=config.branch,
    )
    control = runtime_dir() / f"{mount_id(config.mountpoint)}.sock"
    ops = Operations(session, control)
    mount(ops, config.mountpoint, read_only=config.read_only, allow_other=config.allow_other)
    clean = False
    try:
        config.repository.home.write_pid(session.files)
        try:
            trio.run(_serve, session, control, ready)
        except BaseExceptionGroup as group:
            raise _single(group) from None  # what failed, not "Exceptions from Trio nursery"
        clean = True
    finally:
        close(unmount=is_mounted(config.mountpoint))
        ops.close()  # the threads the mount started
        session.close(clean)
        if _bound_by_us(control):
            control.unlink()  # never another daemon's: one that failed to bind leaves it alone
        config.repository.home.forget_pid(session.files)
    log.info("unmounted %s; final root %s", config.mountpoint, session.root)


async def _serve(session: Session, control: Path, ready: Callable[[], None]) -> None:
    """The kernel's requests (pyfuse3 calls the mount's Operations), the control socket's and
    signals, until unmounted; then the final sync."""
    async with trio.open_nursery() as nursery:
        listener = _listen(control)
        nursery.start_soon(trio.serve_listeners, functools.partial(_answer, session), [listener])
        nursery.start_soon(_on_signals, session)
        nursery.start_soon(_raise_read_ahead, session.mountpoint)
        ready()
        log.info("serving %s (root %s)", session.mountpoint, session.root)
        await serve()
        if not session.read_only and (session.dirty or len(session.open_files)):
            try:
                result = await session.sync()
            except (IncompleteDagError, CarWriteError) as exc:  # the root is committed: nothing is lost
                log.error("final sync of %s: %s", session.mountpoint, exc)
                nursery.cancel_scope.cancel()
                return
            except IpldmountError as exc:
                raise IpldmountError(
                    f"the final sync of {session.mountpoint} failed: {exc}; its changes stay in the "
                    f"journal {session.journal.path} and come back when this mountpoint mounts the "
                    f"same root again"
                ) from exc
            log.info("final sync on exit: root %s, CAR %s", result.root, result.car or "(unchanged, none)")
        nursery.cancel_scope.cancel()


# glibc's mallopt(3) parameters, and the values the daemon gives them.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 4 << 20  # above a leaf (1 MiB) and a FUSE write (max_write): both come from the heap
TRIM_THRESHOLD = 32 << 20  # free heap kept for the next buffers before it goes back to the kernel


def keep_freed_buffers() -> bool:
    """Have glibc's malloc keep freed buffers for reuse; True if it took the settings.

    Writes through the mount allocate and free a 1 MiB leaf and a FUSE request buffer per MiB.
    By default glibc maps buffers that large on their own, or trims the heap soon after they
    are freed, so each next buffer faults in and clears fresh pages. That cost 0.5-0.6 s of
    system time per GiB written, more than half the daemon's CPU (measured with dd of 1 GiB,
    5 rounds against an untuned daemon); kept buffers cost about 12 MB of resident memory.
    Elsewhere (musl, another libc) nothing changes.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    mapped: bool = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    taken: bool = mapped and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    log.debug("malloc keeps freed buffers: %s", taken)
    return taken


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception inside nested single-member groups (trio wraps everything), else the group."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


_bound_sockets: dict[Path, int] = {}  # control socket path -> inode, for the sockets this process bound


def _bound_by_us(path: Path) -> bool:
    try:
        return path.stat().st_ino == _bound_sockets.get(path)
    except FileNotFoundError:
        return False


def _listen(path: Path) -> trio.SocketListener:
    """Bind the control socket, replacing one left behind by a dead daemon."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)
    else:
        raise IpldmountError(f"another daemon already answers on {path}")
    finally:
        probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    os.chmod(path, 0o600)
    _bound_sockets[path] = path.stat().st_ino
    sock.listen(16)
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


async def _answer(session: Session, stream: trio.SocketStream) -> None:
    async with stream:
        data = b""
        while not data.endswith(b"\n") and len(data) < MAX_MESSAGE:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            data += chunk
        answer = await _dispatch(session, data)
        await stream.send_all(json.dumps(answer).encode() + b"\n")
        if answer.get("unmounting"):
            terminate()  # an unmount always unmounts: what failed is in the answer, the rest is safe


def _parse(data: bytes) -> tuple[str, dict[str, Any]] | None:
    """(command, arguments) of a request, or None when it is not one."""
    try:
        request = json.loads(data)
    except ValueError:
        return None
    if not isinstance(request, dict) or not isinstance(request.get("command"), str):
        return None
    for key in ("car", "message", "branch", "commit", "tree"):
        if request.get(key) is not None and not isinstance(request[key], str):
            return None
    if not isinstance(request.get("full_car", False), bool):
        return None
    return request["command"], request


async def _dispatch(session: Session, data: bytes) -> dict[str, Any]:
    parsed = _parse(data)
    if parsed is None:
        return {"ok": False, "error": "malformed request"}
    command, request = parsed
    if command == "status":
        return {"ok": True, **(await session.status())}
    if command in ("discard", "reset"):
        return await _move(session, command, request)
    if command not in ("sync", "unmount"):
        return {"ok": False, "error": f"unknown command {command!r}"}
    answer: dict[str, Any] = {"ok": True, "unmounting": command == "unmount"}
    try:
        if session.read_only:
            answer.update(root=session.root)
        else:
            car = Path(request["car"]) if request.get("car") else None
            if car is not None:
                car_target(car)  # a directory or socket is refused before the sync commits anything
            result = await session.sync(
                car,
                request.get("message"),
                full_car=request.get("full_car", False),
                branch=request.get("branch"),
            )
            answer.update(root=result.root, changed=result.changed, car_bytes=result.car_bytes)
            answer.update(commit=result.commit, branch=result.branch, committed=result.committed)
            answer.update(merged=result.merged)
            answer.update(car=str(result.car) if result.car else None, full_car=result.full_car)
        answer.update(warnings=session.warnings())
    except (IncompleteDagError, CarWriteError) as exc:  # the root is committed; only its CAR is missing
        log.error("sync of %s: %s", session.mountpoint, exc)
        answer.update(ok=False, error=str(exc), root=cids.cid_to_str(exc.root))
    except (IpldmountError, OSError) as exc:
        log.error("%s of %s failed: %s", command, session.mountpoint, exc)
        answer.update(ok=False, error=f"{command} failed: {exc}")
    except Exception:
        log.exception("%s of %s failed unexpectedly", command, session.mountpoint)
        answer.update(ok=False, error=f"{command} failed unexpectedly (see the daemon log)")
    return answer


_UNSYNCED = (
    "{0} has unsynced changes: say what becomes of them (--keep: on top of REV; --discard: dropped), "
    "or sync them first"
)


async def _move(session: Session, command: str, request: dict[str, Any]) -> dict[str, Any]:
    """discard (drop the unsynced changes) or reset (show another commit, the branch moved too)."""
    try:
        if command == "discard":
            result = await session.discard()
        else:
            commit = cids.parse_cid(request["commit"]) if request.get("commit") else None
            tree = cids.parse_cid(request["tree"]) if request.get("tree") else None
            target = Place(commit, tree, session.place.branch)
            changes = request.get("changes", "refuse")
            if changes == "refuse" and session.dirty:
                return {"ok": False, "error": _UNSYNCED.format(session.mountpoint)}
            result = await session.reset(target, keep=changes == "keep")
    except (IpldmountError, OSError) as exc:
        log.error("%s of %s failed: %s", command, session.mountpoint, exc)
        return {"ok": False, "error": f"{command} failed: {exc}"}
    except Exception:
        log.exception("%s of %s failed unexpectedly", command, session.mountpoint)
        return {"ok": False, "error": f"{command} failed unexpectedly (see the daemon log)"}
    return {"ok": True, "root": result.root, "commit": result.commit, "branch": result.branch}


async def _on_signals(session: Session) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("got %s: syncing and unmounting", signal.Signals(signum).name)
            if not session.read_only:
                try:
                    result = await session.sync()
                    log.info("synced on %s: root %s", signal.Signals(signum).name, result.root)
                except IpldmountError as exc:
                    log.error("sync on signal failed (changes stay in the journal): %s", exc)
            terminate()
            return


def mount_device(mountpoint: Path) -> str | None:
    """The ``major:minor`` of the mount at *mountpoint*, read without touching the mount.

    The daemon must never stat its own mountpoint: the kernel would send the
    request to this very process, which is busy waiting for the answer.
    """
    target = str(mountpoint)
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            if len(fields) > 4 and fields[4] == target:
                return fields[2]
    return None


def is_mounted(mountpoint: Path) -> bool:
    return mount_device(mountpoint) is not None


async def _raise_read_ahead(mountpoint: Path) -> None:
    """Raise the mount's read-ahead to 4 MiB, a few leaves: the reader loads them side by side
    (cold sequential reads: 1.7x faster at 1 MiB than the default, 1.3x more at 4 MiB; more
    does not help: dd of a 1 GiB file after dropping caches).

    The kernel sets it from the FUSE INIT reply, which serve() sends once it runs;
    a value written before that is lowered again. So write it again until it stays.
    """
    for delay in (0.05, 0.2, 0.5, 1.0, 2.0):
        await trio.sleep(delay)
        if tune_read_ahead(mountpoint):
            return


def tune_read_ahead(mountpoint: Path) -> bool:
    """Set the mount's read-ahead to READ_AHEAD_KB; True if it reads back so."""
    device = mount_device(mountpoint)
    path = Path(f"/sys/class/bdi/{device}/read_ahead_kb")
    try:
        if path.read_text().strip() != str(READ_AHEAD_KB):
            path.write_text(str(READ_AHEAD_KB))
            return False  # check again later: INIT may not have been answered yet
        return True
    except OSError as exc:
        log.debug("could not raise read-ahead on %s (bdi %s): %s", mountpoint, device, exc)
        return True


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) how we are doing; a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.connect(address)
        notify.sendall(message.encode())
