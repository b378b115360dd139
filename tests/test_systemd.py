"""The systemd unit: ``systemd-analyze verify``, and the readiness/stop protocol it relies on.

The protocol test runs the daemon as systemd would (``--foreground`` with
``NOTIFY_SOCKET`` set) but without systemd: the test plays systemd's part.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "ipldmount@.service"
# How the unit finds ipldmount: the first on PATH, whatever installed it.
FIND = "/usr/bin/env ipldmount"
CID_RE = r"baf[a-z2-7]{20,}"


def _ipldmount_executable() -> Path:
    """The ``ipldmount`` console script of the environment running the tests (the .venv)."""
    beside = Path(sys.executable).parent / "ipldmount"  # not resolved: .venv/bin/python is a symlink
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("ipldmount")
    if found is None:
        pytest.fail("no ipldmount executable: install the package (pip install -e .)")
    return Path(found)


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        message = "systemd-analyze not found (Debian package: systemd)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI must run this check, not skip it")
        pytest.skip(message)
    return path


def _unit_directives(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{key}=")]


# --- the unit file -------------------------------------------------------------------


def _verify(unit_text: str, directory: Path) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` the instance ``ipldmount@mnt-data`` of *unit_text* as a template.

    verify loads ``ipldmount@.service`` from the directory of the instance path
    given, and expands ``%i``/``%f`` for the instance, as systemd would.
    """
    (directory / "ipldmount@.service").write_text(unit_text)
    return subprocess.run(
        [_systemd_analyze(), "verify", str(directory / "ipldmount@mnt-data.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """The shipped file as is: verify checks that ExecStart='s program exists, wherever ipldmount is."""
    result = _verify(UNIT.read_text(), tmp_path)
    output = result.stdout + result.stderr
    about_unit = [line for line in output.splitlines() if "ipldmount" in line]
    assert result.returncode == 0, f"systemd-analyze verify failed ({result.returncode}):\n{output}"
    assert not about_unit, "systemd-analyze verify warned about the unit:\n" + "\n".join(about_unit)


def test_verify_would_catch_a_bad_unit(tmp_path: Path) -> None:
    """The check above is not vacuous: verify does read our file and does complain."""
    text = UNIT.read_text().replace("KillMode=mixed", "KillMode=mixed\nNoSuchDirective=1")
    result = _verify(text, tmp_path)
    assert "NoSuchDirective" in result.stdout + result.stderr


def test_unit_settings() -> None:
    """The settings the rest of the design depends on (verify accepts other values too)."""
    text = UNIT.read_text()
    assert _unit_directives(text, "Type") == ["notify"]
    assert _unit_directives(text, "NotifyAccess") == ["main"]
    assert _unit_directives(text, "KillMode") == ["mixed"]
    assert _unit_directives(text, "Restart") == ["on-failure"]
    assert "EnvironmentFile=-/etc/ipldmount/%i.env" in text
    (start,) = _unit_directives(text, "ExecStart")
    assert start.startswith(f"{FIND} mount ${{IPLDMOUNT_ROOT}} %f --foreground")
    assert "Environment=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in text
    for forbidden in ("ProtectSystem", "PrivateTmp", "PrivateMounts", "ProtectHome", "RuntimeDirectory"):
        assert not _unit_directives(text, forbidden), f"{forbidden}= would hide or break the mount"


def _exec_stop_argv(mountpoint: str) -> list[str]:
    """ExecStop= as argv, with systemd's own expansions done by hand ("$$" -> "$", %f)."""
    (stop,) = _unit_directives(UNIT.read_text(), "ExecStop")
    argv = shlex.split(stop)  # systemd's quoting rules agree with the shell's for this line
    return [arg.replace("$$", "$").replace("%f", mountpoint) for arg in argv]


def test_exec_stop_unmounts_only_while_the_daemon_runs(tmp_path: Path) -> None:
    """systemd runs ExecStop= also after the daemon exited on its own (it then unsets $MAINPID).

    ``ipldmount unmount`` of a mountpoint that is no longer mounted fails; that
    would mark the unit failed and Restart=on-failure would mount it again.
    """
    recorder = tmp_path / "ipldmount"
    recorder.write_text('#!/bin/sh\necho "called: $*"\n')
    recorder.chmod(0o755)
    argv = _exec_stop_argv("/mnt/data")
    env = {key: value for key, value in os.environ.items() if key != "MAINPID"}
    env["PATH"] = f"{tmp_path}:{env.get('PATH', '/usr/bin:/bin')}"  # the recorder is the ipldmount found

    gone = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
    assert (gone.returncode, gone.stdout) == (0, "")

    running = subprocess.run(argv, env={**env, "MAINPID": "1234"}, capture_output=True, text=True, timeout=30)
    assert (running.returncode, running.stdout) == (0, "called: unmount /mnt/data\n")


# --- the notify protocol, with the test playing systemd --------------------------------


def _mounted(mountpoint: Path) -> bool:
    """From /proc/self/mountinfo: true for a stale mount too (``os.path.ismount`` says False there)."""
    with open("/proc/self/mountinfo") as mountinfo:
        return any(line.split()[4] == str(mountpoint) for line in mountinfo)


def _force_unmount(mountpoint: Path) -> None:
    if _mounted(mountpoint):
        subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, timeout=30)
    if _mounted(mountpoint):
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, timeout=30)


class Daemon:
    def __init__(self, process: subprocess.Popen[bytes], stderr_path: Path) -> None:
        self.process = process
        self.stderr_path = stderr_path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


@pytest.fixture
def notify_socket() -> Iterator[socket.socket]:
    """A datagram socket like systemd's NOTIFY_SOCKET, passing the sender's credentials.

    In a short directory of its own: a Unix socket path must stay under 108 bytes.
    """
    with tempfile.TemporaryDirectory(prefix="ipldmount-notify-") as directory:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.bind(os.path.join(directory, "notify"))
        try:
            yield sock
        finally:
            sock.close()


def _unit_defaults() -> dict[str, str]:
    """The unit's ``Environment=KEY=value`` defaults."""
    pairs = (entry.partition("=") for entry in _unit_directives(UNIT.read_text(), "Environment"))
    return {key: value for key, _, value in pairs}


Starter = Callable[[], Daemon]


@pytest.fixture
def start_daemon(tmp_path: Path, notify_socket: socket.socket) -> Iterator[tuple[Starter, Path, Path]]:
    """Starts ``ipldmount mount $IPLDMOUNT_ROOT MNT --foreground -v`` as the unit does, with the
    unit's default root (no env file), one daemon after another; every one stopped afterwards."""
    mountpoint, store = tmp_path / "mnt", tmp_path / "store"
    mountpoint.mkdir()
    started: list[subprocess.Popen[bytes]] = []
    # As the unit runs it: the first ipldmount on PATH, here the test environment's (an env file's PATH).
    path = f"{_ipldmount_executable().parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env = {**os.environ, "NOTIFY_SOCKET": notify_socket.getsockname(), "PATH": path}
    root = _unit_defaults()["IPLDMOUNT_ROOT"]

    def start() -> Daemon:
        # -v as in the unit: it logs "serving", every sync and the final root.
        command = [*FIND.split(), "mount", root, str(mountpoint), "--foreground", "--store", str(store), "-v"]
        stderr_path = tmp_path / f"daemon{len(started)}.stderr"
        with open(stderr_path, "wb") as log:
            process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        started.append(process)
        return Daemon(process, stderr_path)

    try:
        yield start, mountpoint, store
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
        _force_unmount(mountpoint)


@pytest.fixture
def foreground_daemon(start_daemon: tuple[Starter, Path, Path]) -> tuple[Daemon, Path, Path]:
    """One daemon started as systemd would start the unit; always unmounted afterwards."""
    start, mountpoint, store = start_daemon
    return start(), mountpoint, store


def _receive_notification(sock: socket.socket, daemon: Daemon, timeout: float) -> tuple[list[str], int]:
    """The first notification's lines and the sender's pid; fail if the daemon exits or times out first."""
    deadline = time.monotonic() + timeout
    credentials = struct.calcsize("iII")  # struct ucred: pid, uid, gid
    while True:
        if daemon.process.poll() is not None:
            pytest.fail(f"daemon exited ({daemon.process.returncode}) before READY=1:\n{daemon.stderr()}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"no notification within {timeout}s:\n{daemon.stderr()}")
        sock.settimeout(min(0.5, remaining))
        try:
            data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(credentials))
        except TimeoutError:
            continue
        pid = next(
            struct.unpack("iII", payload[:credentials])[0]
            for level, kind, payload in ancillary
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
        )
        return data.decode().splitlines(), pid


@pytest.mark.fuse
def test_foreground_daemon_notifies_ready_and_syncs_on_sigterm(
    foreground_daemon: tuple[Daemon, Path, Path], notify_socket: socket.socket
) -> None:
    daemon, mountpoint, store = foreground_daemon

    lines, sender = _receive_notification(notify_socket, daemon, timeout=60)
    assert "READY=1" in lines
    # NotifyAccess=main: systemd ignores notifications from any process but the main one.
    assert sender == daemon.process.pid

    # READY=1 means live: no waiting, no retrying.
    assert _mounted(mountpoint)
    (mountpoint / "hello.txt").write_text("written under systemd\n")
    assert (mountpoint / "hello.txt").read_text() == "written under systemd\n"

    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(timeout=120) == 0, daemon.stderr()
    assert not _mounted(mountpoint)

    log = daemon.stderr()
    final = re.search(rf"final root ({CID_RE})", log)
    assert final, f"no final root in the daemon's log:\n{log}"
    # The final root holds what was written: the SIGTERM sync did commit it.
    listing = subprocess.run(
        [str(_ipldmount_executable()), "ls", final.group(1), "--store", str(store)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.split() == ["hello.txt"]


def _stop_daemon(daemon: Daemon, mountpoint: Path) -> str:
    """SIGTERM, as systemd stops the unit: the daemon syncs and exits 0; its log."""
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(timeout=120) == 0, daemon.stderr()
    assert not _mounted(mountpoint)
    return daemon.stderr()


@pytest.mark.fuse
def test_a_restarted_instance_carries_on_where_the_last_stopped(
    start_daemon: tuple[Starter, Path, Path], notify_socket: socket.socket
) -> None:
    """A reboot without an env file mounts what the last session synced, not a new empty tree."""
    start, mountpoint, _ = start_daemon
    first = start()
    assert "READY=1" in _receive_notification(notify_socket, first, timeout=60)[0]
    (mountpoint / "kept.txt").write_text("across restarts\n")
    final = re.search(rf"final root ({CID_RE})", _stop_daemon(first, mountpoint))
    assert final, first.stderr()

    second = start()
    assert "READY=1" in _receive_notification(notify_socket, second, timeout=60)[0]
    assert (mountpoint / "kept.txt").read_text() == "across restarts\n"
    assert f"root {final.group(1)}" in second.stderr()  # "serving MNT (root ...)": the same root
    _stop_daemon(second, mountpoint)


def _env_file_settings() -> dict[str, str]:
    """The example env file's uncommented ``KEY=value`` lines."""
    lines = (REPO / "systemd" / "ipldmount.env.example").read_text().splitlines()
    pairs = (line.partition("=") for line in lines if line.strip() and not line.startswith("#"))
    return {key.strip(): value.strip() for key, _, value in pairs}


def _readme_defaults() -> dict[str, str]:
    """The ``| `VARIABLE` | `default` | meaning |`` rows of systemd/README.md's table."""
    text = (REPO / "systemd" / "README.md").read_text()
    return dict(re.findall(r"^\| `(IPLDMOUNT_\w+)` +\| `([^`]*)` +\|", text, re.MULTILINE))


def test_unit_env_file_and_readme_agree_on_the_defaults() -> None:
    """The unit resumes by default (mounting `empty` at every boot lost the last session's root
    from view), and the example env file and the README say what the unit does."""
    unit = _unit_defaults()
    assert unit["IPLDMOUNT_ROOT"] == "resume"
    example = _env_file_settings()
    assert example.keys() >= {"IPLDMOUNT_ROOT", "IPLDMOUNT_STORE", "IPLDMOUNT_OPTIONS"}
    assert {key: unit[key] for key in example} == example
    readme = _readme_defaults()
    assert readme.keys() == {"IPLDMOUNT_ROOT", "IPLDMOUNT_STORE"}, readme
    assert {key: unit[key] for key in readme} == readme
