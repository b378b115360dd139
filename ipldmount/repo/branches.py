"""Branches: named heads of history, each naming a commit, moved only by compare-and-swap.

``STORE/branches.json`` maps each branch to its head commit's CID. A move says which head it
expects to replace; under an exclusive lock it reads the file, checks, and replaces it whole
(temporary file, fsync, rename): two writers that both saw head H cannot both move on from H,
so the second learns the branch moved (:class:`BranchMovedError`) and merges or refuses.
Every move is also said in the history (``roots.log``, by the repository): the reflog.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ipldmount.errors import IpldmountError
from ipldmount.ipld import cid as cids
from ipldmount.repo.registry import OpenPrivate, check_tag_name, replace_json

DEFAULT_BRANCH = "main"


class BranchMovedError(IpldmountError):
    """A branch's head is not the one a move expected: someone else moved it first."""

    def __init__(self, name: str, head: bytes | None) -> None:
        self.name, self.head = name, head
        shown = cids.cid_to_str(head) if head is not None else "nothing (it was deleted)"
        super().__init__(f"branch {name} moved meanwhile: it now names {shown}")


class Branches:
    """``{"name": "commit CID", ...}`` in one file, replaced atomically under a lock."""

    def __init__(self, path: Path, lock: Path, tmp_dir: Path, open_private: OpenPrivate) -> None:
        self.path = path
        self._lock = lock
        self._tmp_dir = tmp_dir
        self._open = open_private

    def all(self) -> dict[str, bytes]:
        """Branch name -> head commit; refuses (IpldmountError) a file it cannot read whole."""
        try:
            value = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (ValueError, UnicodeDecodeError) as exc:
            raise IpldmountError(f"{self.path} is not a branch file ({exc}): nothing was changed") from None
        if not isinstance(value, dict):
            raise IpldmountError(f"{self.path} is not a branch file: nothing was changed")
        try:
            return {str(name): cids.parse_cid(str(head)) for name, head in value.items()}
        except IpldmountError as exc:
            raise IpldmountError(f"{self.path} names a head that is not a CID ({exc})") from None

    def get(self, name: str) -> bytes | None:
        return self.all().get(name)

    def move(self, name: str, expected: bytes | None, new: bytes | None) -> None:
        """Point *name* at *new* (None: delete it) if it names *expected* now (None: it must not
        exist); else BranchMovedError with the head it has."""
        if new is not None:
            check_branch_name(name)
        with self._changing() as heads:
            if heads.get(name) != expected:
                raise BranchMovedError(name, heads.get(name))
            if new is None:
                heads.pop(name, None)
            else:
                heads[name] = new

    @contextmanager
    def _changing(self) -> Iterator[dict[str, bytes]]:
        fd = self._open(self._lock, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            heads = self.all()
            yield heads
            self._replace(heads)
        finally:
            os.close(fd)  # and the lock with it

    def _replace(self, heads: dict[str, bytes]) -> None:
        shown = {name: cids.cid_to_str(head) for name, head in heads.items()}
        replace_json(self.path, self._tmp_dir, self._open, shown)


def check_branch_name(name: str) -> None:
    """Branch names follow tag names' rules (and so never read as a CID, a path or ``BRANCH~N``)."""
    try:
        check_tag_name(name)
    except IpldmountError as exc:
        raise IpldmountError(str(exc).replace("a tag name", "a branch name")) from None
