"""The control sockets' folder: created private, and refused when anyone else could reach it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ipldmount.adapters.fuse.control import runtime_dir
from ipldmount.errors import IpldmountError


@pytest.fixture
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    return tmp_path / "ipldmount"


def test_created_private(xdg: Path) -> None:
    assert runtime_dir() == xdg
    assert stat.S_IMODE(xdg.stat().st_mode) == 0o700
    assert runtime_dir() == xdg  # and found again


def test_open_to_others_is_refused(xdg: Path) -> None:
    xdg.mkdir()
    xdg.chmod(0o777)
    with pytest.raises(IpldmountError, match="open to other users"):
        runtime_dir()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_someone_elses_is_refused(xdg: Path) -> None:
    xdg.mkdir(mode=0o700)
    os.chown(xdg, 65534, 65534)
    with pytest.raises(IpldmountError, match="belongs to uid 65534"):
        runtime_dir()


def test_a_symlink_is_refused(xdg: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    xdg.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(IpldmountError, match="not a directory"):
        runtime_dir()


def test_the_fallback_in_tmp_is_checked_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without XDG_RUNTIME_DIR and /run (a user), sockets go to /tmp/ipldmount-UID, checked alike."""
    real_uid = os.geteuid()
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 4242424)
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    fallback = Path("/tmp/ipldmount-4242424")
    fallback.mkdir(mode=0o700, exist_ok=True)
    try:
        with pytest.raises(IpldmountError, match=f"belongs to uid {real_uid}, not to you"):
            runtime_dir()
    finally:
        fallback.rmdir()
