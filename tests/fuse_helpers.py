"""Real-mount test helpers: a :class:`Mount` driven through the CLI, and fixtures that always clean up.

A test module loads the fixtures with ``pytest_plugins = ("fuse_helpers",)``;
every mount test takes ``mounts`` (which depends on ``fuse``) and is marked
``@pytest.mark.fuse``.

Cleanup never trusts the daemon: ``ipldmount unmount``, then ``fusermount3 -u``,
then aborting the FUSE connection through fusectl and ``umount -l``; then any
daemon process the store still names is killed. A mount that survives all of
that fails the test.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SEED_DIR = Path(__file__).resolve().parent / "data" / "seed_example"
SEED_TREE = SEED_DIR / "tree"
SEED_CAR = SEED_DIR / "seed_example.car"
SEED_ROOT = "bafyreidn66mk3fktszrfwayonvpq6y3agtnb5e5o22ivof5tgikbxt7k6u"
SEED_CHUNK = "bafkreihc4ibtvz7btvualgou5mfbgwncwshmlovmoudgyml7x6crlhcu54"
SEED_FILES = (".zattrs", ".zgroup", "a/.zarray", "a/.zattrs", "a/0")

CLI_TIMEOUT = 120  # seconds any one CLI call may take before the test fails instead of hanging
FUSECTL = Path("/sys/fs/fuse/connections")


# --- environment -------------------------------------------------------------


def fuse_missing() -> str | None:
    """Why real mounts cannot run here, or None if they can."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (Debian package fuse3)"
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
    except OSError as exc:
        return f"/dev/fuse cannot be opened: {exc.strerror}"
    os.close(fd)
    return None


def fuse_available() -> bool:
    """True if real FUSE mounts can run. Without them: skip locally, but fail under CI=true."""
    reason = fuse_missing()
    if reason is None:
        return True
    message = f"real FUSE mount tests cannot run: {reason}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} -- CI must run them (install fuse3, provide /dev/fuse)", pytrace=False)
    pytest.skip(message)
    return False  # not reached


def mount_table() -> list[tuple[str, str, str]]:
    """(mount ID's major:minor, mountpoint, fs type) for every mount, from /proc/self/mountinfo."""
    table = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            separator = fields.index("-")
            table.append((fields[2], _unescape(fields[4]), fields[separator + 1]))
    return table


def _unescape(path: str) -> str:
    return path.encode().decode("unicode_escape") if "\\" in path else path


def fuse_mounts() -> list[str]:
    """Mountpoints of every FUSE file system (type fuse or fuse.*; not fusectl)."""
    return [point for _, point, kind in mount_table() if kind == "fuse" or kind.startswith("fuse.")]


def is_mounted(mountpoint: Path) -> bool:
    """Whether *mountpoint* is in the mount table (never touches the mount itself)."""
    return any(point == str(mountpoint) for _, point, _ in mount_table())


def fuse_connection(mountpoint: Path) -> str | None:
    """The fusectl connection number (the device minor) of the FUSE mount at *mountpoint*."""
    for device, point, kind in reversed(mount_table()):
        if point == str(mountpoint) and (kind == "fuse" or kind.startswith("fuse.")):
            return device.partition(":")[2]
    return None


def _pid_state(pid: int) -> str | None:
    """The process state letter from /proc (R, S, D, T, Z...), None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            return stat_file.read().rpartition(")")[2].split()[0]
    except (FileNotFoundError, IndexError):
        return None


def pid_alive(pid: int) -> bool:
    return _pid_state(pid) not in (None, "Z", "X")


def wait_for(predicate: object, timeout: float, what: str) -> None:
    """Poll *predicate* until true; fail (not hang) after *timeout* seconds. Not a timing assertion."""
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


# --- the CLI -------------------------------------------------------------------


def cli(
    *args: str | os.PathLike[str],
    timeout: float = CLI_TIMEOUT,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m ipldmount ARGS`` and return the finished process (never raises on exit status).

    The developer's own settings stay out: no IPLDMOUNT_STORE, no IPFS node or gateway, no config
    file, unless *env* sets them."""
    command = [sys.executable, "-m", "ipldmount", *map(str, args)]
    try:
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=_cli_environment(env),
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"`ipldmount {' '.join(map(str, args))}` did not finish within {timeout}s"
        ) from exc


_STARTED: list[subprocess.Popen[str]] = []  # commands start_cli began: none outlives its test


def start_cli(*args: str | os.PathLike[str]) -> subprocess.Popen[str]:
    """``python -m ipldmount ARGS`` started, not waited for (to be signalled mid-way); as :func:`cli`.
    Whatever is still running when the test ends is killed (:func:`no_commands_left_behind`)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "ipldmount", *map(str, args)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_cli_environment(None),
    )
    _STARTED.append(process)
    return process


@pytest.fixture(autouse=True)
def no_commands_left_behind() -> Iterator[None]:
    """Kill (and reap) every command a test started and left running, even when the test failed."""
    yield
    while _STARTED:
        process = _STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)  # reaped, its pipes drained and closed


def _cli_environment(env: dict[str, str] | None) -> dict[str, str]:
    merged = {**os.environ, "PYTHONUNBUFFERED": "1", "IPLDMOUNT_CONFIG": "/nonexistent/config.toml"}
    for name in ("IPLDMOUNT_STORE", "IPLDMOUNT_IPFS", "IPLDMOUNT_GATEWAYS"):
        merged.pop(name, None)
    merged.update(env or {})
    return merged


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of *size* (``4m``) mounted at *path*, for a disk that fills up; unmounted after."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True, timeout=30)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, timeout=30)


def check(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (
        f"`{' '.join(result.args[2:])}` exited {result.returncode}\n"
        f"stdout: {result.stdout}\nstderr: {result.stderr}"
    )
    return result


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert lines, "no output"
    return lines[-1].strip()


def assert_one_line_error(result: subprocess.CompletedProcess[str], *mentions: str) -> str:
    """The CLI failed the way users should see it: exit 1, one line on stderr, no traceback."""
    assert result.returncode == 1, f"exit {result.returncode}: {result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    for mention in mentions:
        assert mention.lower() in lines[0].lower(), f"{mention!r} not in {lines[0]!r}"
    return lines[0]


# --- a mount ---------------------------------------------------------------------


class Mount:
    """One mountpoint over one store, driven through the ``ipldmount`` CLI."""

    def __init__(self, mountpoint: Path, store: Path) -> None:
        self.path = mountpoint
        self.store = store
        self.path.mkdir(parents=True, exist_ok=True)
        _ALL_MOUNTPOINTS.setdefault(self.path, self.store)

    def __truediv__(self, other: str) -> Path:
        return self.path / other

    def __fspath__(self) -> str:
        return str(self.path)

    def cli(
        self, *args: str | os.PathLike[str], timeout: float = CLI_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        return cli(*args, "--store", self.store, timeout=timeout)

    # lifecycle

    def mount(self, root: str | os.PathLike[str] = "empty", *options: str) -> Mount:
        check(self.cli("mount", root, self.path, *options))
        assert is_mounted(self.path), f"{self.path} is not mounted after a successful `ipldmount mount`"
        return self

    def sync(self, car: Path | None = None, *options: str) -> str:
        """``ipldmount sync``: the new root CID (the last line of its output)."""
        args = ["sync", self.path, *options] + (["--car", car] if car else [])
        return last_line(check(self.cli(*args)).stdout)

    def unmount(self) -> str:
        """``ipldmount unmount`` (which syncs): the final root CID."""
        root = last_line(check(self.cli("unmount", self.path)).stdout)
        assert not is_mounted(self.path)
        self.wait_daemon_gone()
        return root

    def status(self) -> dict[str, object]:
        return json.loads(check(self.cli("status", self.path, "--json")).stdout)  # type: ignore[no-any-return]

    # the daemon

    def state_dir(self) -> Path:
        from ipldmount.repo.home import mount_id

        return self.store / "mounts" / mount_id(self.path)

    def daemon_pid(self) -> int | None:
        pid_file = self.state_dir() / "daemon.pid"
        try:
            return int(pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def daemon_log(self) -> str:
        path = self.state_dir() / "daemon.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def roots_log(self) -> list[dict[str, object]]:
        """The roots synced at this mountpoint, oldest first (from the store's STORE/roots.log)."""
        path = self.store / "roots.log"
        if not path.exists():
            return []
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [
            entry
            for entry in records
            if entry.get("source") == "mount" and entry.get("where") == str(self.path)
        ]

    def kill(self, sig: int) -> int:
        pid = self.daemon_pid()
        assert pid is not None and pid_alive(pid), "no running daemon"
        os.kill(pid, sig)
        return pid

    def wait_daemon_gone(self, pid: int | None = None, timeout: float = 60) -> None:
        pid = pid if pid is not None else self.daemon_pid()
        if pid is not None:
            wait_for(lambda: not pid_alive(pid), timeout, f"daemon {pid} to exit")

    def daemon_answers(self, timeout: float = 5.0) -> bool:
        """Whether the daemon answers a status request on its control socket (never touches the mount)."""
        from ipldmount.adapters.fuse.control import runtime_dir
        from ipldmount.repo.home import mount_id

        path = runtime_dir() / f"{mount_id(self.path)}.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(timeout)
            try:
                connection.connect(str(path))
                connection.sendall(b'{"command": "status"}\n')
                return connection.recv(65536).endswith(b"\n")
            except OSError:
                return False

    # cleanup

    def cleanup(self) -> list[str]:
        """Unmount by every means there is and stop the daemons; returns what had to be done."""
        done: list[str] = []
        pid = self.daemon_pid()
        if is_mounted(self.path) and pid is not None and pid_alive(pid) and not self.daemon_answers():
            # A hung daemon: any process holding a file on the mount blocks in close() (FLUSH),
            # and so does every child we spawn, which closes inherited fds. Cut it off first.
            abort_connection(self.path)
            done.append("fusectl abort (the daemon does not answer)")
        if is_mounted(self.path):
            try:
                result = self.cli("unmount", self.path, "--timeout", "15", timeout=20)
                done.append(f"ipldmount unmount: exit {result.returncode}")
            except AssertionError:
                done.append("ipldmount unmount: timed out")
        if is_mounted(self.path):
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run(["fusermount3", "-u", str(self.path)], capture_output=True, timeout=20)
                done.append("fusermount3 -u")
        if is_mounted(self.path):
            abort_connection(self.path)
            done.append("fusectl abort")
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run(["umount", "-l", str(self.path)], capture_output=True, timeout=20)
                done.append("umount -l")
        done += stop_daemons([self.state_dir() / "daemon.pid"])
        return done


def stop_daemons(pid_files: list[Path]) -> list[str]:
    """Make sure the daemons these pid files name are gone: time to sync and exit, then kill -9."""
    done = []
    for pid_file in pid_files:
        try:
            pid = int(pid_file.read_text())
        except (OSError, ValueError):
            continue
        if _pid_state(pid) not in ("T", "t"):  # unmounted: a live daemon syncs and exits by itself
            with contextlib.suppress(AssertionError):
                wait_for(lambda pid=pid: not pid_alive(pid), 20, f"daemon {pid} to exit")
        if pid_alive(pid) and _is_our_daemon(pid):
            os.kill(pid, signal.SIGKILL)
            done.append(f"kill -9 {pid}")
            with contextlib.suppress(AssertionError):
                wait_for(lambda pid=pid: not pid_alive(pid), 10, f"daemon {pid} to die")
    return done


def _is_our_daemon(pid: int) -> bool:
    """Guard against a recycled pid: only kill processes that are ipldmount daemons."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"ipldmount" in command and b"--foreground" in command


def abort_connection(mountpoint: Path) -> None:
    """Abort the FUSE connection behind *mountpoint* through fusectl (fails every pending request)."""
    minor = fuse_connection(mountpoint)
    if minor is None:
        return
    if not (FUSECTL / minor).exists() and not any(kind == "fusectl" for _, _, kind in mount_table()):
        subprocess.run(["mount", "-t", "fusectl", "none", str(FUSECTL)], capture_output=True, timeout=20)
    with contextlib.suppress(OSError):
        (FUSECTL / minor / "abort").write_text("1")


# --- fixtures ------------------------------------------------------------------------


@pytest.fixture
def fuse() -> None:
    """Real mounts can run here: skips without FUSE, but fails under CI=true."""
    fuse_available()


class Mounts:
    """Makes mounts for one test and cleans every one of them up afterwards."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.store = tmp_path / "store"
        self.made: list[Mount] = []

    def __call__(self, name: str = "mnt", store: Path | None = None) -> Mount:
        mount = Mount(self.tmp_path / name, store or self.store)
        self.made.append(mount)
        return mount

    def cleanup(self) -> None:
        problems, forced = [], []
        for mount in reversed(self.made):
            forced += [
                f"{mount.path}: {step}" for step in mount.cleanup() if "kill" in step or "abort" in step
            ]
            if is_mounted(mount.path):
                problems.append(str(mount.path))
        # then every daemon any of the test's stores still names (mounts/*/daemon.pid)
        for store in {mount.store for mount in self.made}:
            forced += stop_daemons([Path(p) for p in glob.glob(str(store / "mounts" / "*" / "daemon.pid"))])
        assert not problems, f"still mounted after cleanup: {problems}"
        assert not forced, f"daemons that did not exit after unmount had to be stopped by force: {forced}"


@pytest.fixture
def mounts(fuse: None, no_mounts_left_behind: None, tmp_path: Path) -> Iterator[Mounts]:
    """A factory of :class:`Mount` objects (per-test store under tmp_path), all unmounted on teardown."""
    made = Mounts(tmp_path)
    try:
        yield made
    finally:
        made.cleanup()


@pytest.fixture(scope="module")
def no_mounts_left_behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After a module's tests, no FUSE mount under the test temp dirs may remain."""
    yield
    base = str(tmp_path_factory.getbasetemp())
    left = [point for point in fuse_mounts() if point.startswith(base)]
    for point in left:
        Mount(Path(point), Path(point).parent / "store").cleanup()
    assert not left, f"FUSE mounts left behind: {left}"


_ALL_MOUNTPOINTS: dict[Path, Path] = {}  # every mountpoint a test used this session -> its store


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """No FUSE mount of ours survives the session: clean up any that did, and fail the run."""
    left = [point for point in _ALL_MOUNTPOINTS if is_mounted(point)]
    for point in left:
        Mount(point, _ALL_MOUNTPOINTS[point]).cleanup()
    if left:
        print(f"\nfuse_helpers: FUSE mounts were left behind (now cleaned up): {[str(p) for p in left]}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# --- file helpers ----------------------------------------------------------------------


def write_file(path: Path, data: bytes) -> None:
    """open/write/close, the way any program writes a file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def read_file(path: Path) -> bytes:
    with open(path, "rb") as stream:
        return stream.read()


def copy_seed(target: Path) -> None:
    """Copy the seed example's five files into *target* with plain file operations."""
    (target / "a").mkdir()
    for name in SEED_FILES:
        write_file(target / name, (SEED_TREE / name).read_bytes())


def expect_errno(code: int, function: object, *args: object) -> OSError:
    """Call *function* and check it fails with *code*."""
    with pytest.raises(OSError) as caught:
        function(*args)  # type: ignore[operator]
    assert caught.value.errno == code, (
        f"{getattr(function, '__name__', function)}{args}: expected {errno.errorcode[code]}, "
        f"got {errno.errorcode.get(caught.value.errno or 0, caught.value.errno)} ({caught.value})"
    )
    return caught.value


def waiting_in(pid: int, syscall_hint: str) -> bool:
    """True once the process sleeps in the kernel at `syscall_hint` (a pipe read, a FIFO open)."""
    try:
        wchan = Path(f"/proc/{pid}/wchan").read_text()
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state == "S" and syscall_hint in wchan
