"""How a mount shows itself: its source in /proc/mounts (the root CID), and what -v and -vv log."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fuse_helpers import Mounts

from ipldmount.adapters.fuse.libfuse_hooks import FSNAME_MAX, fsname

pytest_plugins = ("fuse_helpers",)

ROOT = "bafyreidn66mk3fktszrfwayonvpq6y3agtnb5e5o22ivof5tgikbxt7k6u"


def test_fsname_names_the_root() -> None:
    assert fsname(ROOT) == f"ipldmount:{ROOT}"
    assert fsname("QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG") == (
        "ipldmount:QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"
    )


@pytest.mark.parametrize("root", ["", "a,allow_other", "bafy two", "bafy\n", "é", "b" * FSNAME_MAX])
def test_fsname_falls_back_for_what_would_break_the_options(root: str) -> None:
    """A comma would smuggle in a mount option, whitespace split /proc/mounts' fields."""
    assert fsname(root) == "ipldmount"


def _mount_source(mountpoint: Path) -> str:
    """The mount's source (its fsname) from /proc/self/mountinfo."""
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            if fields[4] == str(mountpoint):
                return fields[fields.index("-") + 2]
    raise AssertionError(f"{mountpoint} is not mounted")


@pytest.mark.fuse
def test_proc_mounts_shows_the_root(mounts: Mounts) -> None:
    mnt = mounts().mount("empty")
    assert _mount_source(mnt.path) == f"ipldmount:{mnt.status()['root']}"
    mnt.unmount()


def _daemon_log(mounts: Mounts, name: str, *options: str) -> str:
    mnt = mounts(name).mount("empty", *options)
    mnt.unmount()
    return mnt.daemon_log()


def _lines(log: str, level: str, logger: str) -> list[str]:
    return re.findall(rf"^.* {level} {logger}[.:].*$", log, re.MULTILINE)


@pytest.mark.fuse
def test_v_logs_ipldmount_info_and_no_library_debug(mounts: Mounts) -> None:
    """`--help` says -vv is for debug: -v is INFO, and pyfuse3's DEBUG lines are not ours."""
    log = _daemon_log(mounts, "v", "-v")
    assert _lines(log, "INFO", "ipldmount"), log
    assert "serving" in log and "final root" in log
    assert " DEBUG " not in log, log
    assert "pyfuse3" not in log, log


@pytest.mark.fuse
def test_vv_logs_ipldmount_debug_but_not_the_libraries(mounts: Mounts) -> None:
    log = _daemon_log(mounts, "vv", "-vv")
    assert _lines(log, "DEBUG", "ipldmount"), log
    assert not _lines(log, "DEBUG", "pyfuse3") and not _lines(log, "DEBUG", "trio"), log


@pytest.mark.fuse
def test_the_daemon_logs_its_syncs_without_v(mounts: Mounts) -> None:
    log = _daemon_log(mounts, "quiet")
    assert "serving" in log and "final root" in log
    assert " DEBUG " not in log, log
