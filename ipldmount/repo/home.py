"""STORE/: the one object that knows where everything in a store's folder lives.

    STORE/STORE, blocks/, tmp/    the block store's own (marker, one file per block, temporaries)
    STORE/roots.log               every root made here (sync, import, freeze, pull) and every root
                                  gc let go: one sealed JSON line each (see registry)
    STORE/roots.head              the size of roots.log after its last append, and that line's seal
    STORE/roots.log.damaged       lines `log --repair` set aside
    STORE/history.commits         there: every history line has its commit (an old store was upgraded)
    STORE/live/                   roots live in-process stores (IPLDStore) use, one locked file each
    STORE/tags.json               names for roots (trees or commits)
    STORE/branches.json           branch -> head commit, moved by compare-and-swap (branches.lock)
    STORE/pushes.log              roots pushed to IPFS nodes (`ipldmount push`): one JSON line each
    STORE/attributes.sqlite       mode, owner and mtime by path and content (outside the CIDs)
    STORE/cars/                   CARs written by sync (unless told otherwise)
    STORE/mounts/ID/journal       a mountpoint's unsynced changes (ID: its real path, hashed)
    STORE/mounts/ID/daemon.pid    while its daemon runs;  daemon.log: what the daemon said
    STORE/mounts/ID/root          the root a running daemon serves, then the contents its open
                                  files read (kept by garbage collection)
    STORE/mounts/ID/head          what the mountpoint shows as of its last sync: commit, tree, branch
    STORE/gc.lock, leases/        the block store's guards against collecting what writers use

Everything is created with the store's modes (private by default, see
:class:`~ipldmount.blocks.directory.DirectoryBlockstore`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ipldmount.blocks import DirectoryBlockstore, fsync_dir
from ipldmount.errors import IpldmountError
from ipldmount.repo.attributes import AttributeTable
from ipldmount.repo.branches import Branches
from ipldmount.repo.liveroots import LiveRoots, live_roots
from ipldmount.repo.registry import PushLedger, Registry, Tags


def mount_id(mountpoint: Path) -> str:
    """A short, stable name for a mountpoint's state (its real path hashed)."""
    return hashlib.sha256(str(mountpoint.resolve()).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class MountFiles:
    """The files of one mountpoint's state."""

    folder: Path

    @property
    def journal(self) -> Path:
        return self.folder / "journal"

    @property
    def pid_file(self) -> Path:
        return self.folder / "daemon.pid"

    @property
    def daemon_log(self) -> Path:
        return self.folder / "daemon.log"

    @property
    def root_file(self) -> Path:
        return self.folder / "root"

    @property
    def head_file(self) -> Path:
        return self.folder / "head"


@dataclass(frozen=True)
class MountHead:
    """What a mountpoint shows as of its last sync (or mount): its commit, tree and branch."""

    tree: str | None  # None: the empty tree, never synced
    commit: str | None = None  # None: not committed yet (a mount of a bare tree, or of empty)
    branch: str | None = None  # the branch its syncs move (None: detached)
    mountpoint: str = ""


class StoreHome:
    """A store's folder: its block store, and where mount state and CARs go."""

    def __init__(self, blocks: DirectoryBlockstore) -> None:
        self.blocks = blocks
        self.root = blocks.root
        self._attributes: AttributeTable | None = None

    def __repr__(self) -> str:
        return f"StoreHome({str(self.root)!r})"

    @property
    def tmp_dir(self) -> Path:
        """Temporaries (write buffers): on the store's filesystem, private to it."""
        return self.blocks.tmp_dir

    @property
    def cars_dir(self) -> Path:
        return self.blocks.make_dir(self.root / "cars")

    def all_mount_files(self) -> list[MountFiles]:
        """The state of every mountpoint this store has served (or serves)."""
        folder = self.root / "mounts"
        if not folder.is_dir():
            return []
        return [MountFiles(path) for path in sorted(folder.iterdir()) if path.is_dir()]

    def sync_cars(self) -> list[Path]:
        """The CARs syncs wrote into STORE/cars (``ROOT.car``, ``ROOT.full.car``)."""
        folder = self.root / "cars"
        return sorted(folder.glob("*.car")) if folder.is_dir() else []

    def mount_files(self, mountpoint: Path) -> MountFiles:
        """A mountpoint's state files. Ask before mounting: it resolves the path, and a daemon
        that stats its own mountpoint before it serves waits for itself forever."""
        return MountFiles(self.blocks.make_dir(self.root / "mounts" / mount_id(mountpoint)))

    def open_private(self, path: Path, flags: int) -> int:
        """``os.open`` a file of the store with the store's file mode."""
        return self.blocks.open_file(path, flags)

    # --- history ---------------------------------------------------------------------

    @property
    def registry(self) -> Registry:
        return Registry(
            self.root / "roots.log",
            self.open_private,
            self.root / "roots.head",
            self.root / "roots.log.damaged",
        )

    def live_roots(self) -> LiveRoots:
        """A new publication of the roots an in-process store uses (see liveroots)."""
        return LiveRoots(self.root / "live", self.open_private, self.blocks.make_dir)

    def roots_in_use(self) -> list[str]:
        """The roots every live in-process store of this store has published."""
        return live_roots(self.root / "live")

    @property
    def pushes(self) -> PushLedger:
        return PushLedger(self.root / "pushes.log", self.open_private)

    @property
    def branches(self) -> Branches:
        return Branches(
            self.root / "branches.json", self.root / "branches.lock", self.tmp_dir, self.open_private
        )

    @property
    def tags(self) -> Tags:
        return Tags(self.root / "tags.json", self.tmp_dir, self.open_private)

    @property
    def attribute_table(self) -> AttributeTable:
        """Mode, owner and mtime of files, kept outside the CIDs (one table, opened on first use)."""
        if self._attributes is None:
            self._attributes = AttributeTable(self.root / "attributes.sqlite", self.open_private)
        return self._attributes

    # --- the daemon ------------------------------------------------------------------

    def write_pid(self, files: MountFiles) -> None:
        fd = self.open_private(files.pid_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        with os.fdopen(fd, "w") as stream:
            stream.write(f"{os.getpid()}\n")

    def forget_pid(self, files: MountFiles) -> None:
        files.pid_file.unlink(missing_ok=True)
        files.root_file.unlink(missing_ok=True)

    def write_root(self, files: MountFiles, root: str, held: list[str] | None = None) -> None:
        """Say which root the running daemon serves, and what else its open files read (content
        unlinked or replaced since it was opened), atomically: garbage collection keeps them all."""
        temp = files.folder / f".root.{os.getpid()}"
        fd = self.open_private(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        with os.fdopen(fd, "w") as stream:
            stream.write("".join(f"{cid}\n" for cid in [root, *(held or [])]))
        os.replace(temp, files.root_file)

    def write_head(self, files: MountFiles, head: MountHead) -> None:
        """Say what the mountpoint shows now (after a sync, a reset or a discard), durably and
        atomically: ``resume`` mounts it, a mountpoint given as a root means it, gc keeps it."""
        temp = files.folder / f".head.{os.getpid()}"
        fd = self.open_private(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        with os.fdopen(fd, "w") as stream:
            json.dump(head.__dict__, stream)
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, files.head_file)
        fsync_dir(files.folder)

    def read_head(self, files: MountFiles) -> MountHead | None:
        """The head a mountpoint's last session wrote (None: none yet); refuses one it cannot read."""
        try:
            value = json.loads(files.head_file.read_text())
            return MountHead(**value)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            raise IpldmountError(f"{files.head_file} cannot be read ({exc}): nothing was changed") from None

    def served_root(self, files: MountFiles) -> str | None:
        """The root a live daemon serves at that mountpoint (None: no live daemon)."""
        served = self.served_roots(files)
        return served[0] if served else None

    def served_roots(self, files: MountFiles) -> list[str]:
        """The root a live daemon serves, then what its open files hold (empty: no live daemon)."""
        pid = self.daemon_pid(files)
        if pid is None or not process_alive(pid):
            return []
        try:
            return files.root_file.read_text().split()
        except FileNotFoundError:
            return []

    def daemon_pid(self, files: MountFiles) -> int | None:
        """The pid a mountpoint's daemon wrote (it may have died since)."""
        try:
            return int(files.pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None


def process_alive(pid: int) -> bool:
    """True while *pid* runs (a zombie, dead but not yet reaped, does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            return stat_file.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return False
