"""Talking to a running daemon: one JSON request, one JSON answer, over a Unix socket.

The daemon advertises its socket in the ``user.ipld.socket`` attribute of the
mount's root, so clients find it from the mountpoint alone. The client side is
plain blocking sockets: the CLI has no event loop.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
from contextlib import suppress
from pathlib import Path
from typing import Any

from ipldmount.errors import IpldmountError

MAX_MESSAGE = 1 << 20
# What a mount whose daemon died answers: ENOTCONN, or ECONNABORTED once the kernel aborted it.
STALE_ERRNOS = frozenset({errno.ENOTCONN, errno.ECONNABORTED})
XATTR_SOCKET = "user.ipld.socket"


class ControlError(IpldmountError):
    """The daemon could not be reached, or answered with an error (then *answer* holds the rest)."""

    def __init__(self, message: str, answer: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.answer = answer or {}


class StaleMountError(ControlError):
    """The mountpoint's daemon is gone ("Transport endpoint is not connected")."""


def runtime_dir() -> Path:
    """Where control sockets live: short paths, private to the user.

    The folder must be ours and closed to others: in a shared place like /tmp,
    anyone could have made it first to catch our sockets.
    """
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        path = Path(base) / "ipldmount"
    elif os.geteuid() == 0 and os.access("/run", os.W_OK):
        path = Path("/run/ipldmount")
    else:
        path = Path(f"/tmp/ipldmount-{os.geteuid()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with suppress(FileExistsError):
        path.mkdir(mode=0o700)
    _check_private(path)
    return path


def _check_private(path: Path) -> None:
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise IpldmountError(f"{path} is not a directory (a symlink?); refusing to put control sockets there")
    if info.st_uid != os.geteuid():
        raise IpldmountError(
            f"{path} belongs to uid {info.st_uid}, not to you (uid {os.geteuid()}); "
            f"refusing to put control sockets there (remove it, or set XDG_RUNTIME_DIR)"
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise IpldmountError(
            f"{path} is open to other users (mode {stat.S_IMODE(info.st_mode):o}); "
            f"refusing to put control sockets there (chmod 700 it)"
        )


def check_mountpoint(mountpoint: Path) -> None:
    """Raise StaleMountError for a mountpoint whose daemon died.

    ``statvfs`` because the kernel answers ``stat`` of a FUSE root from its
    attribute cache even when the daemon is gone; statfs always reaches it.
    """
    try:
        os.statvfs(mountpoint)
    except OSError as exc:
        if exc.errno in STALE_ERRNOS:
            raise StaleMountError(
                f"{mountpoint} is a stale mount: its daemon died (Transport endpoint is not connected). "
                f"Run `ipldmount unmount {mountpoint}` to clear it, then mount again: "
                f"changes closed before the crash are kept in the journal and come back"
            ) from None
        raise


def socket_of(mountpoint: Path) -> Path:
    check_mountpoint(mountpoint)
    try:
        return Path(os.getxattr(mountpoint, XATTR_SOCKET).decode())
    except OSError:
        raise ControlError(f"{mountpoint} is not an ipldmount mount") from None


def request(mountpoint: Path, command: str, timeout: float | None = None, **arguments: Any) -> dict[str, Any]:
    """Send one command to the daemon serving *mountpoint* and return its answer."""
    path = socket_of(mountpoint)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        try:
            connection.connect(str(path))
        except OSError as exc:
            raise ControlError(
                f"cannot reach the daemon for {mountpoint} at {path}: {exc.strerror}"
            ) from None
        connection.sendall(json.dumps({"command": command, **arguments}).encode() + b"\n")
        answer = _read_line(connection)
    if not answer.get("ok"):
        raise ControlError(str(answer.get("error", "the daemon refused the request")), answer)
    return answer


def _read_line(connection: socket.socket) -> dict[str, Any]:
    data = b""
    while not data.endswith(b"\n"):
        chunk = connection.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_MESSAGE:
            raise ControlError("the daemon's answer is too long")
    if not data:
        raise ControlError("the daemon closed the connection without answering (did it crash? see its log)")
    try:
        answer = json.loads(data)
    except ValueError:
        raise ControlError("the daemon's answer is not JSON") from None
    if not isinstance(answer, dict):
        raise ControlError("the daemon's answer is not a JSON object")
    return answer
