"""A real IPFS node for the tests: Kubo, the node users run, built from its pinned Go module
(``make kubo``: scripts/build-kubo.sh into .tools/).

It runs with nobody to talk to: no bootstrap peers, no swarm addresses,
no AutoConf, API and gateway on loopback, and only inside a private network namespace (``make
test`` runs the suite under ``unshare -n``), so it can reach nothing but this machine's loopback.
It is not started ``--offline``: like a user's node, it looks for a block it lacks until the
request's timeout, which the tests of our timeouts need.
Without the node or the namespace, its tests are skipped locally and fail under CI=true.
The JavaScript tools beside it (tests/ipfs-node: ipfs-car, the trustless client) are a second,
independent implementation of the formats, not a node.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = Path(__file__).resolve().parent / "ipfs-node"
TRUSTLESS_CLIENT = NODE_DIR / "trustless-client.mjs"  # an independent client, in JavaScript
IPFS_CAR = NODE_DIR / "node_modules" / ".bin" / "ipfs-car"  # web3.storage's UnixFS packer
START_TIMEOUT = 90.0  # seconds for the daemon to answer `version` (about 1 s on an idle machine)


def kubo_version() -> str:
    """The pinned Kubo version: scripts/build-kubo.sh's default, the one place it is written."""
    script = (ROOT / "scripts" / "build-kubo.sh").read_text()
    found = re.search(r"KUBO_VERSION=\$\{KUBO_VERSION:-(v[0-9.]+)\}", script)
    assert found, "scripts/build-kubo.sh names no KUBO_VERSION"
    return found.group(1)


def kubo_binary() -> Path:
    """The built Kubo: $IPLDMOUNT_KUBO, else .tools/kubo-VERSION/ipfs."""
    override = os.environ.get("IPLDMOUNT_KUBO")
    return Path(override) if override else ROOT / ".tools" / f"kubo-{kubo_version()}" / "ipfs"


def node_missing() -> str | None:
    """Why the node cannot run here, or None."""
    if not kubo_binary().exists():
        return f"no IPFS node built ({kubo_binary()} is missing: run `make kubo`)"
    interfaces = sorted(name for _, name in socket.if_nameindex())  # of this network namespace
    if interfaces != ["lo"]:
        return f"not in a private network namespace (interfaces {interfaces}): run the tests with `make test`"
    return None


def tools_missing() -> str | None:
    """Why the JavaScript tools cannot run here, or None."""
    if shutil.which("node") is None:
        return "node.js is not installed"
    if not IPFS_CAR.exists():
        return f"the JavaScript test tools are not installed ({IPFS_CAR} is missing: run `make ipfs-node`)"
    return None


def _refuse(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} -- CI must run the IPFS tests", pytrace=False)
    pytest.skip(reason)


def require_node(network: bool = True) -> None:
    """Skip (locally) or fail (CI=true) when the node cannot run (without *network*: when the
    JavaScript tools cannot, whatever the node and the network namespace)."""
    reason = node_missing() if network else tools_missing()
    if reason is not None:
        _refuse(reason)


def require_tools() -> None:
    """Skip (locally) or fail (CI=true) without the JavaScript tools."""
    reason = tools_missing()
    if reason is not None:
        _refuse(reason)


def ipfs_car_pack(directory: Path, car: Path) -> str:
    """``ipfs-car pack --hidden DIRECTORY``: the directory (dot files too: zarr metadata) as a UnixFS
    CAR, made by an importer that is not
    the node's (no network needed). Returns the root CID it prints."""
    require_tools()
    result = subprocess.run(
        [str(IPFS_CAR), "pack", str(directory), "--hidden", "--output", str(car)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return result.stdout.strip().splitlines()[-1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


MOUNT_NAMES = ("ipfs", "ipns", "mfs")  # Kubo's FUSE mounts: Mounts.IPFS, Mounts.IPNS, Mounts.MFS


def is_mounted(path: Path) -> bool:
    """Whether *path* is a mountpoint now (a FUSE mount whose daemon died still is)."""
    target = str(path)
    with open("/proc/self/mountinfo") as mountinfo:
        return any(len(fields := line.split()) > 4 and fields[4] == target for line in mountinfo)


class IpfsNode:
    """One Kubo daemon with a repo of its own under *home*; :meth:`stop` always stops it.

    With *mounts* (a directory), the daemon runs with ``--mount``: its FUSE mounts go to
    ``MOUNTS/ipfs`` (read-only ``/ipfs/CID/...``), ``MOUNTS/ipns`` and ``MOUNTS/mfs`` (the
    writable MFS tree of ``ipfs files``), and :meth:`stop` leaves none of them mounted. With
    *swarm*, it listens for peers on a loopback port (another such node on this machine can
    connect to it: see :meth:`connect`); without, it has no swarm address at all.
    """

    def __init__(
        self,
        home: Path,
        gateway: bool = False,
        owns_home: bool = False,
        mounts: Path | None = None,
        swarm: bool = False,
    ) -> None:
        self.home = home
        self.owns_home = owns_home  # a temporary home, removed by stop()
        self.mounts = mounts.resolve() if mounts is not None else None
        self.repo = home / "repo"
        self.api_port = free_port()
        self.gateway_port = free_port() if gateway else None
        self.swarm_port = free_port() if swarm else None
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = home / "daemon.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def mountpoint(self, name: str) -> Path:
        """Where the mount *name* (``ipfs``, ``ipns`` or ``mfs``) is; only with *mounts*."""
        assert self.mounts is not None and name in MOUNT_NAMES
        return self.mounts / name

    @property
    def gateway_url(self) -> str:
        assert self.gateway_port is not None
        return f"http://127.0.0.1:{self.gateway_port}"

    def _env(self) -> dict[str, str]:
        # No telemetry, no update checks: the node reaches nothing, and says nothing about it.
        return {
            **os.environ,
            "IPFS_PATH": str(self.repo),
            "IPFS_TELEMETRY": "off",
            "GOLOG_LOG_LEVEL": "error",
        }

    def ipfs(self, *args: str, timeout: float = 120.0) -> str:
        """Run the ``ipfs`` command line against this repo (the daemon's API when it runs)."""
        result = subprocess.run(
            [str(kubo_binary()), *args], env=self._env(), capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise RuntimeError(f"ipfs {' '.join(args)}: {result.stderr.strip() or result.stdout.strip()}")
        return result.stdout

    def ipfs_to_file(self, path: Path, *args: str, timeout: float = 300.0) -> None:
        """Run ``ipfs ARGS`` with its output written to *path* (a CAR, say: bytes, not text)."""
        with path.open("wb") as out:
            subprocess.run(
                [str(kubo_binary()), *args], env=self._env(), stdout=out, check=True, timeout=timeout
            )

    def init(self) -> None:
        self.ipfs("init", "--profile", "test", "--empty-repo")
        config_path = self.repo / "config"
        config = json.loads(config_path.read_text())
        config["Addresses"].update(
            Swarm=[f"/ip4/127.0.0.1/tcp/{self.swarm_port}"] if self.swarm_port else [],
            Announce=[],
            NoAnnounce=[],
            API=f"/ip4/127.0.0.1/tcp/{self.api_port}",
            Gateway=f"/ip4/127.0.0.1/tcp/{self.gateway_port}" if self.gateway_port else [],
        )
        config["Bootstrap"] = []
        # The DHT, with no peer to reach (no bootstrap, no swarm address, a private namespace): with
        # "none", Kubo keeps no IPNS record it publishes, so it cannot resolve even its own name.
        config["Routing"] = {"Type": "dht"}
        config["AutoConf"] = {"Enabled": False}  # would fetch network defaults at start
        config.setdefault("Discovery", {})["MDNS"] = {"Enabled": False}
        config.setdefault("Swarm", {})["DisableNatPortMap"] = True
        if self.mounts is not None:
            config["Mounts"] = {
                **config.get("Mounts", {}),
                **{name.upper(): str(self.mountpoint(name)) for name in MOUNT_NAMES},
            }
        config_path.write_text(json.dumps(config, indent=2))

    def start(self) -> IpfsNode:
        if not self.repo.exists():
            self.init()
        if self.mounts is not None:
            for name in MOUNT_NAMES:
                self.mountpoint(name).mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(kubo_binary()), "daemon", *(["--mount"] if self.mounts is not None else [])],
            env=self._env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"the IPFS node exited ({self.process.returncode}): {self.log_tail()}")
            try:
                self.rpc("version")
                if self.mounts is None or all(is_mounted(self.mountpoint(name)) for name in MOUNT_NAMES):
                    return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.2)
        message = f"the IPFS node did not answer within {START_TIMEOUT:g} s: {self.log_tail()}"
        self._end()  # start_node() removes a temporary home once this is raised
        raise RuntimeError(message)

    def connect(self, other: IpfsNode) -> None:
        """Connect to *other* (started with *swarm*) on loopback: blocks then come by bitswap."""
        assert other.swarm_port is not None
        peer = other.ipfs("id", "-f", "<id>").strip()
        self.ipfs("swarm", "connect", f"/ip4/127.0.0.1/tcp/{other.swarm_port}/p2p/{peer}")

    def rpc(self, command: str, *, timeout: float = 30.0, **params: str) -> bytes:
        """POST an RPC command (for tests' own checks, independent of ipldmount's client)."""
        query = "&".join(f"{key.replace('_', '-')}={value}" for key, value in params.items())
        request = urllib.request.Request(f"{self.url}/api/v0/{command}?{query}", method="POST")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return bytes(response.read())

    def add(self, files: dict[str, bytes], **params: str) -> dict[str, str]:
        """``ipfs add`` of *files* (path -> bytes) in one multipart request: {path: CID} of every
        file and directory the node reports (the node's own UnixFS import)."""
        boundary = "ipldmount-test-boundary"
        body = bytearray()
        for path, data in files.items():
            body += f"--{boundary}\r\n".encode()
            name = urllib.parse.quote(path, safe="")
            body += f'Content-Disposition: form-data; name="file"; filename="{name}"\r\n'.encode()
            body += b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n"
        body += f"--{boundary}--\r\n".encode()
        options = {"cid-version": "1", **{key.replace("_", "-"): value for key, value in params.items()}}
        query = urllib.parse.urlencode(options)
        request = urllib.request.Request(
            f"{self.url}/api/v0/add?{query}",
            data=bytes(body),
            method="POST",
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            lines = response.read().decode().splitlines()
        added = {}
        for line in lines:
            entry = json.loads(line)
            if "Hash" in entry:
                added[entry["Name"]] = entry["Hash"]
        return added

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def pause(self) -> None:
        """Freeze the node (SIGSTOP): it keeps its sockets but answers nothing."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        """SIGINT (the node then releases its repo lock), then SIGKILL if it lingers; then its
        home goes, if it was a temporary one. With mounts, whatever the daemon left mounted (it
        unmounts its own on SIGINT, not when it is killed) is unmounted: ``fusermount3 -u``, then
        ``umount -l``; the home is never removed through a mount that is still there."""
        try:
            self._end()
        finally:
            leftover = self._unmount_leftovers()
            if self.owns_home and not leftover:
                shutil.rmtree(self.home, ignore_errors=True)

    def _unmount_leftovers(self) -> list[Path]:
        """Unmount what is still mounted of this node's mounts; those that stay mounted."""
        if self.mounts is None:
            return []
        stuck = []
        for name in MOUNT_NAMES:
            where = self.mountpoint(name)
            for command in (["fusermount3", "-u", str(where)], ["umount", "-l", str(where)]):
                if not is_mounted(where):
                    break
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    subprocess.run(command, capture_output=True, timeout=30)
            if is_mounted(where):
                stuck.append(where)
        return stuck

    def _end(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGCONT)
            os.killpg(process.pid, signal.SIGINT)
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)
        except ProcessLookupError:
            pass


def start_node(gateway: bool = False) -> IpfsNode:
    """A started node in a fresh temporary home (the caller stops it)."""
    require_node()
    node = IpfsNode(Path(tempfile.mkdtemp(prefix="ipldmount-ipfs-")), gateway=gateway, owns_home=True)
    try:
        return node.start()
    except BaseException:
        node.stop()
        raise


@pytest.fixture(scope="module")
def node() -> Iterator[IpfsNode]:
    """A node for the tests of one module, stopped after them (also when one fails)."""
    started = start_node()
    try:
        yield started
    finally:
        started.stop()
