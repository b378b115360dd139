"""One store as every front door uses it: :class:`Repository`.

The command line, the zarr Store and the mount each build one Repository over the store they
opened, and go through it for what is the store's rather than theirs: which root a text names
(a CID, a tag, a mountpoint, ``ROOT/PATH``), recording a root made (and only then settling the
writer's lease on its blocks), importing and exporting CARs, garbage collection, ancestry, tags,
reading and repairing the history, and the journal a crashed mount left.

A store in memory has no folder: no history, tags or mounts. Its Repository records nothing, and
its garbage collection keeps only the roots it is given.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ipldmount.blocks import Blockstore, DirectoryBlockstore, car, dag
from ipldmount.blocks.car import write_car_file
from ipldmount.blocks.gc import collect_garbage, mark
from ipldmount.errors import (
    BlockNotFoundError,
    InvalidCIDError,
    IpldmountError,
    IsDirectoryError,
    NotDirectoryError,
    NotFoundError,
    RemoteError,
)
from ipldmount.format.commit import Commit, first_parents, read_commit, store_commit
from ipldmount.format.diff import Change, diff_roots
from ipldmount.ipld import cid as cids
from ipldmount.remote.fetching import FetchingBlockstore
from ipldmount.repo.branches import DEFAULT_BRANCH
from ipldmount.repo.commitlog import LogEntry, commit_log
from ipldmount.repo.home import StoreHome
from ipldmount.repo.journal import Journal
from ipldmount.repo.liveroots import LiveRoots
from ipldmount.repo.registry import PushRecord, RootRecord, free_tag_name
from ipldmount.repo.retention import GcReport, Retention, collect, unnamed_heads
from ipldmount.repo.sharing import (
    MAX_PULLED_COMMITS,
    HistoryPull,
    HistoryPush,
    PushPlan,
    commit_of_block,
    fetch_chain,
    local_chain,
    push_history,
    root_block,
)
from ipldmount.tree.model import EMPTY_DIRECTORY, File, Node, Tree
from ipldmount.tree.unixfs import open_tree

if TYPE_CHECKING:  # transports: imported where they are used, so that opening a store loads no HTTP
    from ipldmount.remote.exchange import CarSource, Transfer
    from ipldmount.remote.kubo import KuboNode

Counting = Callable[[int, int], None]  # (blocks, bytes) so far: a progress line
IPNS = "/ipns/"  # a root argument naming an IPNS name
NameResolver = Callable[[str], bytes]  # ``/ipns/NAME`` -> the CID it points at now
SizedProgress = Callable[[int | None], AbstractContextManager[Counting]]  # given the size to read, if known


@dataclass(frozen=True)
class Version:
    """What a root argument names: a tree, the commit it is the tree of (if any), and the
    branch it was named by (if any: a mount of it moves the branch)."""

    tree: bytes | None  # None: the empty tree
    commit: bytes | None = None
    branch: str | None = None


@dataclass(frozen=True)
class Discarded:
    """What :meth:`Repository.discard_pending` dropped."""

    journal: Path
    changes: int  # unsynced changes dropped (0: there were none)
    base: bytes | None  # the root they were made on (None: the empty tree)
    unreadable: str | None = None  # why the journal could not be read (dropped all the same)


@dataclass(frozen=True)
class HistoryRepair:
    """What :meth:`Repository.repair_history` did."""

    history: Path
    set_aside_in: Path
    damaged: list[str]  # what was wrong with the history before ("line N: why")
    set_aside: int  # lines set aside
    tagged: list[tuple[str, str]]  # (tag, root) for each stored root a damaged line named
    recovered: list[tuple[str, str]]  # (tag, root) for each whole stored root nothing named

    @property
    def was_whole(self) -> bool:
        """The history read whole: nothing was changed."""
        return not self.damaged and not self.set_aside


class Repository:
    """The roots of one store: *blocks*, what trees are read through (a
    :class:`~ipldmount.remote.fetching.FetchingBlockstore` fetches what the store lacks), and on
    disk the store's folder (*home*, found from *blocks* when not given)."""

    def __init__(
        self, blocks: Blockstore, *, home: StoreHome | None = None, names: NameResolver | None = None
    ) -> None:
        self.blocks = blocks
        # what ``/ipns/NAME`` points at: an IPFS node is asked (the command line's --ipfs), if any
        self.names = names
        # the store that holds the blocks: imports go there, and only what is there counts as stored
        self.local = blocks.local if isinstance(blocks, FetchingBlockstore) else blocks
        if home is None and isinstance(self.local, DirectoryBlockstore):
            home = StoreHome(self.local)
        self._home = home
        self._live: LiveRoots | None = None  # the root an in-process store said it uses

    @classmethod
    def at(cls, path: Path, *, durable: bool = True) -> Repository:
        """The store in the folder *path* (made if there is none)."""
        return cls(DirectoryBlockstore(path, durable=durable))

    def __repr__(self) -> str:
        return f"Repository({self.blocks!r})"

    @property
    def home(self) -> StoreHome:
        """The store's folder; a store in memory has none (IpldmountError)."""
        if self._home is None:
            raise IpldmountError(f"{self.blocks!r} is in memory: it has no history, tags or mounts")
        return self._home

    @property
    def on_disk(self) -> bool:
        return self._home is not None

    @property
    def where(self) -> str:
        """The store's folder as the history names it (its real path); "" for a store in memory."""
        return str(self._home.root.resolve()) if self._home is not None else ""

    # --- which version a text names ----------------------------------------------------

    def resolve(self, text: str) -> Version:
        """The version *text* names: a mountpoint (what it shows now), ``NAME~N`` (N first
        parents back), a CID (a commit, or a tree), a branch, a tag (naming either), or
        ``/ipns/NAME`` (what the name points at now, asked of :attr:`names`)."""
        if text.startswith(IPNS):
            return self._named_by_ipns(text)
        if ("/" in text or text in (".", "..")) and Path(text).is_dir():
            return self._shown_at_named(text)
        name, tilde, back = text.partition("~")
        if tilde:
            return self._back(name, back)
        try:
            return self.version_of(cids.parse_cid(text))
        except InvalidCIDError as exc:
            not_a_cid = exc
        if text and Path(text).is_dir():
            return self._shown_at_named(text)
        head = self.home.branches.get(text) if text else None
        if head is not None:
            return replace(self.version_of(head), branch=text)
        tagged = self.home.tags.get(text) if text else None
        if tagged is None:
            raise InvalidCIDError(
                f"{str(not_a_cid).rstrip('.')}; nor is it a branch, a tag, BRANCH~N or a mountpoint "
                f"of this store"
            )
        return self.version_of(tagged)

    def _named_by_ipns(self, text: str) -> Version:
        """``/ipns/NAME`` or ``/ipns/NAME~N``: the name resolved (never a path: a node's FUSE
        mount at /ipns is not looked into), then read as its CID is."""
        name, tilde, back = text.partition("~")
        if tilde:
            return self._back(name, back)
        if self.names is None:
            raise IpldmountError(f"{text}: an IPNS name resolves through an IPFS node (pass --ipfs URL)")
        named = self.names(name)
        if not self.blocks.fetches_missing and not self.blocks.has(named):
            raise IpldmountError(
                f"{name} points at {cids.cid_to_str(named)}, which is not in the store: pull it first "
                f"(ipldmount pull {name} --ipfs URL)"
            )
        return self.version_of(named)

    def _shown_at_named(self, text: str) -> Version:
        version = self.shown_at(Path(text).resolve())
        if version.tree is None and version.commit is None:
            raise IpldmountError(f"nothing was mounted or synced at {text} yet")
        return version

    def _back(self, name: str, back: str) -> Version:
        if not back.isdigit() or len(back) > 9:
            raise IpldmountError(f"{name}~{back}: after ~ comes a number of commits to go back")
        start = self.resolve(name)
        if start.commit is None:
            raise IpldmountError(f"{name} names a tree, not a commit: it has no parents to go back to")
        for steps, (cid, commit) in enumerate(first_parents(self.blocks, start.commit)):
            if steps == int(back):
                return Version(commit.tree, cid)
        raise IpldmountError(f"{name}~{back}: {name} has fewer than {int(back) + 1} commits in its line")

    def version_of(self, cid: bytes) -> Version:
        """*cid* as a version: a commit (its tree with it) or a tree (no commit)."""
        try:
            commit = read_commit(self.blocks, cid)
        except BlockNotFoundError:
            return Version(cid)  # said by whoever reads the tree: not in the store
        return Version(cid) if commit is None else Version(commit.tree, cid)

    def commit(self, cid: bytes) -> Commit:
        """The commit at *cid* (IpldmountError if it is not one)."""
        commit = read_commit(self.blocks, cid)
        if commit is None:
            raise IpldmountError(f"{cids.cid_to_str(cid)} is a tree, not a commit")
        return commit

    def root_or_tag(self, text: str) -> bytes:
        """The tree *text* names (:meth:`resolve`): a commit's tree, a branch's, a tag's, a CID's."""
        tree = self.resolve(text).tree
        if tree is None:
            raise IpldmountError(f"{text} shows the empty tree, which was never stored")
        return tree

    def split_target(self, target: str) -> tuple[bytes, str]:
        """``ROOT[/PATH]`` -> (tree, path); ROOT is anything :meth:`resolve` reads but a mountpoint
        (``/ipns/NAME`` included)."""
        text, path = _root_and_path(target)
        return self.root_or_tag(text), path

    def find_root(self, text: str | None) -> bytes:
        """The tree *text* names (:meth:`resolve`); without *text*, the default branch's, else
        the newest root made in the store."""
        return self.find_version(text).tree or self._stored_empty()

    def find_version(self, text: str | None) -> Version:
        """The version *text* names; without it, the default branch's head, else the newest made."""
        if text is not None:
            return self.resolve(text)
        head = self.home.branches.get(DEFAULT_BRANCH)
        if head is not None:
            return replace(self.version_of(head), branch=DEFAULT_BRANCH)
        newest = self.home.registry.history()
        if not newest:
            raise IpldmountError("no root was made in this store yet: name one (tag NAME ROOT)")
        record = newest[0]
        commit = cids.parse_cid(record.commit) if record.commit else None
        return Version(cids.parse_cid(record.root), commit)

    def _stored_empty(self) -> bytes:
        return self.local.put(EMPTY_DIRECTORY, cids.DAG_CBOR)

    def stored_tree(self, root: bytes) -> Tree:
        """The tree at *root*, read-only: a directory node in the store (or fetched into it)."""
        if not self.blocks.has(root) and not self.blocks.fetches_missing:
            shown = cids.cid_to_str(root)
            raise IpldmountError(f"{shown} is not in the store {self.home.root} (import its CAR first)")
        return open_tree(self.blocks, root, read_only=True)

    def stored_root(self, root: bytes) -> bytes:
        """*root*, if its block is in the store (not fetched: for sending it elsewhere)."""
        if not self.local.has(root):
            raise IpldmountError(f"{cids.cid_to_str(root)} is not in the store {self.home.root}")
        return root

    def locate(self, target: str) -> tuple[Tree, Node, str]:
        """The tree, the node and the path at ``ROOT[/PATH]`` (a lookup error names all of *target*)."""
        root, path = self.split_target(target)
        tree = self.stored_tree(root)
        with _naming(target):
            return tree, tree.resolve(path), path

    def file_at(self, target: str) -> tuple[Tree, File]:
        """The tree and the file at ``ROOT/PATH`` (a lookup error names all of *target*)."""
        root, path = self.split_target(target)
        tree = self.stored_tree(root)
        with _naming(target):
            return tree, tree.resolve_file(path)

    # --- mountpoints --------------------------------------------------------------------

    def mount_root(
        self, text: str, mountpoint: Path, *, importing: SizedProgress | None = None
    ) -> bytes | None:
        """The tree :meth:`mount_version` mounts (None: the empty tree)."""
        return self.mount_version(text, mountpoint, importing=importing).tree

    def mount_version(
        self, text: str, mountpoint: Path, *, importing: SizedProgress | None = None
    ) -> Version:
        """ROOT of a mount as a version in the store: ``empty`` (the default branch, when the
        store has none yet; else no commit), ``resume`` (:meth:`last_version_at`), a ``.car``
        file (imported first: it must hold one tree or commit), a branch (its syncs move it),
        or anything else :meth:`resolve` reads. A root that is not a directory is refused
        here, not in the daemon."""
        if text == "empty":
            return Version(None, branch=None if self.home.branches.all() else DEFAULT_BRANCH)
        if text == "resume":
            return self.last_version_at(mountpoint)
        if not text.startswith(IPNS) and Path(text).exists() and not Path(text).is_dir():  # a .car, a pipe
            return self.version_of(self.import_car(text, single_root=True, progress=importing)[0])
        version = self._mountable(text)
        root = version.tree
        if root is None:
            return version
        if not self.blocks.has(root) and not self.blocks.fetches_missing:
            raise IpldmountError(
                f"root {text} is not in the store {self.home.root} (import its CAR first, pass the .car, or "
                "name an IPFS node or gateway that has it: --ipfs URL, --gateway URL)"
            )
        open_tree(self.blocks, root, read_only=True)  # fetched, if it must be
        return version

    def _mountable(self, text: str) -> Version:
        """ROOT as typed, or else say what ROOT may be."""
        try:
            return self.resolve(text)
        except InvalidCIDError as exc:
            if Path(text).exists():
                raise IpldmountError(f"{text} is not a CAR file") from None
            raise IpldmountError(
                f"ROOT must be a CID, a branch, a tag, BRANCH~N, a .car file, 'empty' or 'resume'; {exc}"
            ) from None
        except IpldmountError:
            if Path(text).is_dir():  # a directory nothing was mounted at
                raise IpldmountError(f"{text} is not a CAR file, nor a mountpoint of this store") from None
            raise

    def last_root_at(self, mountpoint: Path) -> bytes | None:
        return self.last_version_at(mountpoint).tree

    def last_version_at(self, mountpoint: Path) -> Version:
        """What *mountpoint* had last: its journal's base (changes pending on it come back), else
        what its last session synced (its head), else empty. What a service restarting after a
        crash wants, and ``resume``."""
        files = self.home.mount_files(mountpoint)
        pending = Journal(files.journal).read()
        if pending is not None:
            return Version(pending.root, pending.commit, pending.branch)
        head = self.home.read_head(files)
        if head is not None:
            return Version(_cid_or_none(head.tree), _cid_or_none(head.commit), head.branch)
        synced = self.home.registry.history(str(mountpoint))  # a store from before heads
        return Version(cids.parse_cid(synced[0].root)) if synced else Version(None)

    def root_shown_at(self, mountpoint: Path) -> bytes | None:
        return self.shown_at(mountpoint).tree

    def shown_at(self, mountpoint: Path) -> Version:
        """What *mountpoint* shows now: its live daemon's version (started from, last synced,
        reset or discarded to), else the base of the journal a dead one left, else its head."""
        files = self.home.mount_files(mountpoint)
        served = self.home.served_root(files)
        if served is None:
            version = self.last_version_at(mountpoint)
        else:
            head = self.home.read_head(files)
            if head is not None and head.tree == served:
                commit = cids.parse_cid(head.commit) if head.commit else None
                version = Version(cids.parse_cid(served), commit, head.branch)
            else:
                version = Version(cids.parse_cid(served))
        return version

    def daemon_pid(self, mountpoint: Path) -> int | None:
        """The pid *mountpoint*'s daemon wrote (it may have died since)."""
        return self.home.daemon_pid(self.home.mount_files(mountpoint))

    def discard_pending(self, mountpoint: Path) -> Discarded:
        """Drop the unsynced changes an earlier session at *mountpoint* left in its journal (a
        crashed or killed mount's), saying what they were."""
        journal = Journal(self.home.mount_files(mountpoint).journal)
        try:
            pending = journal.read()
        except IpldmountError as exc:
            journal.remove()
            return Discarded(journal.path, 0, None, unreadable=str(exc))
        journal.remove()
        if pending is None:
            return Discarded(journal.path, 0, None)
        return Discarded(journal.path, len(pending.records), pending.root)

    # --- recording roots ----------------------------------------------------------------

    def record(
        self,
        records: Sequence[RootRecord],
        *,
        settle_before: float,
        in_use: bytes | None = None,
        in_use_commit: bytes | None = None,
    ) -> None:
        """Commit roots this process made: *records* go into the history, *in_use* is published
        as the root an in-process store uses (:meth:`publish_in_use`), and only then is this
        process's writer lease settled: what it stored or claimed before *settle_before*
        (``time.time()``) is in a root garbage collection keeps. In memory nothing is recorded."""
        if self._home is not None:
            for record in records:
                self._home.registry.record(record)
            if in_use is not None:
                self.publish_in_use(in_use, in_use_commit)
        self.local.settle(settle_before)

    def publish_in_use(self, root: bytes, commit: bytes | None = None) -> None:
        """Tell garbage collection, in any process, that this process uses *root* (the tree of
        *commit*, if it has one) until :meth:`close` or its exit (liveroots); nothing to tell
        for a store in memory."""
        if self._home is None:
            return
        if self._live is None:
            self._live = self._home.live_roots()
        self._live.publish([cids.cid_to_str(cid) for cid in (root, commit) if cid is not None])

    def close(self) -> None:
        """Stop publishing the root in use (garbage collection keeps it only if the history or a tag does)."""
        if self._live is not None:
            self._live.close()
            self._live = None

    # --- commits and branches -----------------------------------------------------------

    def upgrade_history(self) -> int:
        """A store from before commits: its history lines become commits (:mod:`.upgrade`)."""
        from ipldmount.repo.upgrade import upgrade_history

        return upgrade_history(self._home) if self._home is not None else 0

    def make_commit(self, tree: bytes, parents: Sequence[bytes], message: str | None = None) -> bytes:
        """Store a commit of *tree* on *parents*; its CID. Not durable until the store syncs."""
        return store_commit(self.local, Commit.made(tree, tuple(parents), message))

    def branches(self) -> dict[str, bytes]:
        """Branch name -> head commit."""
        return self.home.branches.all() if self._home is not None else {}

    def move_branch(
        self,
        name: str,
        expected: bytes | None,
        new: bytes | None,
        *,
        why: str,
        where: str = "",
        message: str | None = None,
    ) -> None:
        """Move *name* from *expected* to *new* (compare-and-swap: BranchMovedError if it moved
        meanwhile; None: create, or delete), and say so in the reflog."""
        if new is not None and name in self.home.tags.all():
            raise IpldmountError(f"{name!r} is a tag: a branch cannot have its name")
        if new is not None:
            self.commit(new)  # a branch names commits only
        self.home.branches.move(name, expected, new)
        before = self.commit(expected).tree if expected is not None else None
        tree = self.commit(new).tree if new is not None else before
        if tree is not None:
            record = RootRecord.made(
                tree, why, where, before, message, commit=new, branch=name, previous=expected
            )
            self.home.registry.record(record)

    def branch_line(self, name: str, limit: int | None = None) -> list[tuple[bytes, Commit]]:
        """The commits of *name*'s first-parent line, newest first."""
        head = self.home.branches.get(name)
        if head is None:
            raise IpldmountError(f"no branch named {name!r}")
        line = first_parents(self.blocks, head)
        return [step for _, step in zip(range(limit), line, strict=False)] if limit else list(line)

    # --- CARs ---------------------------------------------------------------------------

    def import_car(
        self, path: str, *, single_root: bool = False, progress: SizedProgress | None = None
    ) -> list[bytes]:
        """Import a CAR file whose roots are all directory trees or commits of one (one root, if
        *single_root*), all or nothing, and record its roots (source ``import``, where: the
        file's real path; a commit's line names its tree and the commit)."""
        started = time.time()
        try:
            with open(path, "rb") as stream:
                check = self._check_roots(path, single_root)
                if progress is None:
                    roots = car.import_car(self.local, stream, None, check, required_links=_required_links)
                else:
                    with progress(_regular_file_size(stream.fileno())) as counting:
                        roots = car.import_car(
                            self.local, stream, counting, check, required_links=_required_links
                        )
            where = str(Path(path).resolve()) if Path(path).is_file() else path
            # in the history, the roots are kept by garbage collection: the lease may end
            records = [self._made_version(root, "import", where) for root in roots]
            self.record(records, settle_before=started)
            return roots
        except FileNotFoundError:
            raise IpldmountError(f"no such file: {path}") from None
        except IsADirectoryError:
            raise IpldmountError(f"{path} is a directory, not a CAR file") from None

    def _made_version(self, root: bytes, source: str, where: str) -> RootRecord:
        """The history line of *root* brought in from *where*: a commit is recorded as it is; a
        bare tree gets a commit of its own (no parents), so every version recorded is a commit."""
        version = self.version_of(root)
        commit = version.commit or self._commit_recorded_for(root)
        if commit is None:
            commit = self.make_commit(root, [], f"{source} {where}")
            self.local.sync()
        tree = version.tree if version.tree is not None else root
        return RootRecord.made(tree, source, where, commit=commit)

    def _commit_recorded_for(self, tree: bytes) -> bytes | None:
        """The commit the newest history line of *tree* names (the same tree brought in again
        keeps its version), if it is still stored."""
        if self._home is None:
            return None
        text = cids.cid_to_str(tree)
        for record in self.history():
            if record.root == text and record.commit and self.local.has(cids.parse_cid(record.commit)):
                return cids.parse_cid(record.commit)
        return None

    def _check_roots(self, path: str, single_root: bool) -> Callable[[list[bytes]], None]:
        """Refuse, before anything is committed, a CAR whose roots are not what is needed."""

        def check(roots: list[bytes]) -> None:
            if single_root and len(roots) != 1:
                shown = ", ".join(cids.cid_to_str(root) for root in roots[:3]) + ", ..." * (len(roots) > 3)
                raise IpldmountError(
                    f"{path} has {len(roots)} roots ({shown}), so it names no single tree; nothing was "
                    f"imported (`ipldmount import {path}` keeps them all; then mount one by its CID)"
                )
            for root in roots:
                commit = read_commit(self.local, root)
                tree = root if commit is None else commit.tree
                try:
                    open_tree(self.local, tree, read_only=True)
                except IpldmountError as exc:
                    what = "" if commit is None else f" is a commit whose tree {cids.cid_to_str(tree)}"
                    where = "" if commit is None else " in the CAR or the store"
                    raise IpldmountError(
                        f"{path}: root {cids.cid_to_str(root)}{what} is not a directory tree{where} ({exc}); "
                        f"nothing was imported"
                    ) from None

        return check

    def export_root(self, text: str) -> bytes:
        """The root to export: what a CID, tag, branch, ``NAME~N`` or ``/ipns/NAME`` names (not
        a path), a commit (its CAR carries its chain and its tree) or a directory tree, its tree
        in the store: refused before anything is written."""
        name, path = _root_and_path(text)
        if path.strip("/"):
            raise IpldmountError("export takes a root CID, not a path (export the CID `ls -l` shows for it)")
        version = self.resolve(name)
        if version.tree is None:
            raise IpldmountError(f"{text} shows the empty tree, which was never stored")
        self.stored_tree(version.tree)
        return version.commit or version.tree

    def block_count(self, root: bytes) -> int:
        """How many blocks the CAR of *root* holds (a walk of them all)."""
        lead, under = self._car_parts(root)
        return len(lead) + dag.closure_size(self.blocks, under)

    def _car_parts(self, root: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """A root's CAR as (blocks first, the DAG after them): for a commit, the chain of
        commits this store holds (head first) and its tree, never the older trees it links to."""
        commit = read_commit(self.blocks, root)
        if commit is None:
            return [], root
        chain = local_chain(self.local, root)
        return [(cid, data) for cid, data, _ in reversed(chain)], commit.tree

    def export_car(
        self, root: bytes, out: Path | BinaryIO, *, progress: Counting | None = None, shown_as: str = ""
    ) -> int:
        """Write the CARv1 of *root* (of a commit: FORMAT.md §8); the bytes written. To a path, a
        file is replaced whole (a device or pipe is streamed into); into a stream, as it goes.
        Blocks that cannot be read are named (IncompleteDagError): then no file was written, or
        what went into a stream (*shown_as*, for the message) is incomplete."""
        lead, under = self._car_parts(root)
        if isinstance(out, Path):
            return write_car_file(self.blocks, root, out, progress=progress, lead=lead, dag=under)
        missing: list[bytes] = []
        size = car.export_car(
            self.blocks, root, out, progress=progress, missing=missing, lead=lead, dag=under
        )
        out.flush()
        if missing:
            raise car.incomplete_dag(
                root, missing, consequence=f"the CAR written to {shown_as} is incomplete"
            )
        return size

    # --- IPFS nodes and gateways --------------------------------------------------------

    def push(self, root: bytes, node: KuboNode, *, pin: bool, progress: Counting | None = None) -> Transfer:
        """Send *node* what it lacks of *root* (the difference from the roots pushed there before
        and from those *root* was made from), pinning it there if *pin*; the push is kept in
        the push ledger unless the node had *root* pinned already."""
        from ipldmount.remote.exchange import push

        pushes = self.home.pushes
        bases = [*pushes.roots_on(node.url), *self.ancestors(root)]
        sent = push(self.local, root, node, bases=bases, pin=pin, progress=progress)
        if not sent.already:
            pushes.record(PushRecord(node.url, cids.cid_to_str(root), pin, RootRecord.now(), sent.blocks))
        return sent

    def push_history(
        self, head: bytes, node: KuboNode, *, pin: bool, progress: Counting | None = None
    ) -> HistoryPush:
        """Send *node* the commit *head* with the commits before it and the trees of theirs that
        are whole here, only what it lacks (:func:`~ipldmount.repo.sharing.push_history`); kept in
        the push ledger, so that the next push starts where this one ended."""
        pushes = self.home.pushes
        plan = PushPlan(
            node,
            pushes.roots_on(node.url),
            pushes.commits_on(node.url, pinned=pin),  # a push to pin goes on past one that did not
            self.home.registry.read_whole().dropped,
            pin,
        )
        sent = push_history(self.local, head, plan, progress)
        if not sent.already:
            tree, commit = cids.cid_to_str(sent.tree), cids.cid_to_str(head)
            pushes.record(PushRecord(node.url, tree, pin, RootRecord.now(), sent.blocks, commit=commit))
        return sent

    def pull_version(
        self,
        root: bytes,
        sources: Sequence[CarSource],
        where: str,
        *,
        progress: Counting | None = None,
        limit: int = MAX_PULLED_COMMITS,
    ) -> HistoryPull:
        """Fetch *root*: a tree whole (:meth:`pull`), or a commit with the commits before it (one
        small block each, at most *limit* fetched) and its tree whole; the trees of older commits
        come when something reads them. Recorded as :meth:`pull` does, with the commit."""
        from ipldmount.remote.exchange import pull, unfetched

        started = time.time()
        had = self.local.has(root)
        try:
            data = root_block(self.local, root, sources)
        except RemoteError as exc:  # said as a pull of the root says it
            raise unfetched(root, [root], [str(exc)]) from None
        commit = commit_of_block(root, data) if data is not None else None
        if data is None or commit is None:
            return HistoryPull(root, root, transfer=self.pull(root, sources, where, progress=progress))
        self.local.put_block(root, data)
        pulled = HistoryPull(root, commit.tree, root, commits=0 if had else 1)
        fetch_chain(self.local, root, sources, pulled, limit)
        pulled.transfer = pull(self.local, commit.tree, sources, progress=progress)
        self.record([self._made_version(root, "pull", where)], settle_before=started)
        return pulled

    def pull(
        self, root: bytes, sources: Sequence[CarSource], where: str, *, progress: Counting | None = None
    ) -> Transfer:
        """Fetch what the store lacks of *root* from the first of *sources* that has it, and
        record it (source ``pull``, *where*: the node or gateways)."""
        from ipldmount.remote.exchange import pull

        started = time.time()
        fetched = pull(self.local, root, sources, progress=progress)
        self.record([self._made_version(root, "pull", where)], settle_before=started)
        return fetched

    # --- history and tags ---------------------------------------------------------------

    def history(self, mountpoint: Path | None = None) -> list[RootRecord]:
        """The roots made here, newest first; only those synced at *mountpoint* if given."""
        return self.home.registry.history(None if mountpoint is None else str(mountpoint))

    def log(self, revs: list[str] | None = None, *, limit: int | None = None) -> list[LogEntry]:
        """The commits *revs* descend from (default: every branch, tag, mountpoint's head and
        version recorded), newest first (:mod:`.commitlog`)."""
        heads = [self._commit_named(text) for text in revs] if revs else None
        return commit_log(self.home, self.blocks, heads, limit)

    def _commit_named(self, text: str) -> bytes:
        version = self.resolve(text)
        if version.commit is None:
            raise IpldmountError(
                f"{text} names a tree with no commit: it has no history (see `ipldmount log`)"
            )
        return version.commit

    def changed_paths(self, record: RootRecord) -> int | None:
        """How many paths differ from the record's parent: a diff, so it costs the change; None
        where there is no parent, or a block of either tree is not in the store."""
        if record.parent is None:
            return None
        try:
            return sum(
                1 for _ in diff_roots(self.blocks, cids.parse_cid(record.parent), cids.parse_cid(record.root))
            )
        except IpldmountError:
            return None

    def ancestors(self, root: bytes, limit: int = 8) -> list[bytes]:
        """Roots *root* was made from (a mount's earlier syncs), newest first."""
        parents = {record.root: record.parent for record in self.home.registry.records() if record.parent}
        found: list[bytes] = []
        text = cids.cid_to_str(root)
        while len(found) < limit and (text := parents.get(text, "")):
            found.append(cids.parse_cid(text))
        return found

    def diff(self, a: str, b: str) -> list[Change]:
        """The paths added, removed and modified from *a* to *b*: each a CID, a tag or a
        mountpoint, a tree in the store."""
        before, after = (self._stored_root_named(text) for text in (a, b))
        return list(diff_roots(self.blocks, before, after))

    def _stored_root_named(self, text: str) -> bytes:
        root = self.find_root(text)
        self.stored_tree(root)
        return root

    def tags(self) -> dict[str, str]:
        """Tag name -> root CID."""
        return self.home.tags.all()

    def tags_by_root(self) -> dict[str, list[str]]:
        """Root CID -> the names it has, sorted."""
        names: dict[str, list[str]] = {}
        for name, root in sorted(self.tags().items()):
            names.setdefault(root, []).append(name)
        return names

    def tag(self, name: str, text: str | None) -> bytes:
        """Name the version *text* names (:meth:`find_version`): its commit if it has one, else
        its tree; only a stored tree, and only a whole one."""
        if name in self.branches():
            raise IpldmountError(f"{name!r} is a branch: a tag cannot have its name")
        version = self.find_version(text)
        root = version.tree or self._stored_empty()
        self.stored_tree(root)
        self._check_whole_if_dropped(root)
        named = version.commit or root
        self.home.tags.set(name, named)
        return named

    def untag(self, name: str) -> None:
        self.home.tags.delete(name)

    def _check_whole_if_dropped(self, root: bytes) -> None:
        """A root gc let go may be partial: it is named only if every block it reaches is still here."""
        if cids.cid_to_str(root) not in self.home.registry.read_whole().dropped:
            return
        lacking = mark(self.local, [root], check_leaves=True).missing_count
        if lacking:
            raise IpldmountError(
                f"{cids.cid_to_str(root)} was let go by gc and {_count_of(lacking, 'block')} of it are gone: "
                f"import or pull it again before naming it"
            )

    def _whole_version(self, text: str) -> bool:
        """Whether the tree *text* names (a commit's, or itself) is here whole: only such a
        root is worth a name (a partial one is what an earlier gc left)."""
        cid = cids.parse_cid(text)
        if not self.local.has(cid):
            return False
        try:
            tree = self.version_of(cid).tree
        except IpldmountError:
            return False
        return tree is not None and not mark(self.local, [tree], check_leaves=True).missing_count

    def repair_history(self) -> HistoryRepair:
        """Set the history's lines gc refuses on aside, tagging every stored root they name; then
        (a line lost whole, or too damaged to name its root) tag every whole stored root nothing
        names (``recovered-N``), rather than let the next gc take it."""
        home = self.home
        registry = home.registry
        before = registry.read_whole()
        set_aside, made = registry.repair(home.tags, self._whole_version)
        if not before.damaged and not set_aside:
            return HistoryRepair(registry.path, registry.set_aside, [], 0, [], [])
        names = home.tags.all()
        tagged = [(name, names[name]) for name in made]
        recovered: list[tuple[str, str]] = []
        for head in unnamed_heads(home):
            name = free_tag_name(home.tags, "recovered")
            home.tags.set(name, cids.parse_cid(head))
            recovered.append((name, head))
        return HistoryRepair(registry.path, registry.set_aside, before.damaged, set_aside, tagged, recovered)

    # --- garbage collection -------------------------------------------------------------

    def collect(
        self,
        retention: Retention,
        *,
        dry_run: bool = False,
        marking: Counting | None = None,
        sweeping: Counting | None = None,
        pinned_remotely: Callable[[bytes], bool] | None = None,
        also: dict[str, list[str]] | None = None,
    ) -> GcReport:
        """Remove every block no kept root reaches (:func:`~ipldmount.repo.retention.collect`);
        *also*: more roots to keep (CID text -> reasons). A store in memory keeps only those."""
        if self._home is None:
            kept = dict(also or {})
            roots = [cids.parse_cid(text) for text in kept]
            found = collect_garbage(
                self.local, roots, grace=retention.grace, dry_run=dry_run, marking=marking, sweeping=sweeping
            )
            return GcReport(kept, found)
        return collect(
            self._home,
            retention,
            dry_run=dry_run,
            marking=marking,
            sweeping=sweeping,
            pinned_remotely=pinned_remotely,
            also=also,
        )


@contextmanager
def _naming(target: str) -> Iterator[None]:
    """Name the whole ``CID/PATH`` typed in lookup errors, not just the part that failed."""
    try:
        yield
    except (NotFoundError, NotDirectoryError, IsDirectoryError) as exc:
        raise type(exc)(target.rstrip("/")) from None


def _root_and_path(target: str) -> tuple[str, str]:
    """``ROOT[/PATH]`` -> (ROOT, PATH) as typed; ROOT may be ``/ipns/NAME``."""
    if target.startswith(IPNS):
        name, _, path = target.removeprefix(IPNS).partition("/")
        return IPNS + name, path
    root, _, path = target.partition("/")
    return root, path


def _required_links(cid: bytes, data: bytes) -> Iterable[bytes]:
    """The links of an imported block that must be in the CAR or the store: all of a tree's;
    none of a commit's (its parents and older trees travel apart; its own tree is checked)."""
    return () if commit_of_block(cid, data) is not None else dag.block_links(cid, data)


def _regular_file_size(fd: int) -> int | None:
    info = os.fstat(fd)
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def _cid_or_none(text: str | None) -> bytes | None:
    return cids.parse_cid(text) if text else None


def _count_of(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' * (count != 1)}"
