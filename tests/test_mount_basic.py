"""Real mounts: the seed test vector, read-only mounts, errno answers, and bad CLI input."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from pathlib import Path

import pytest
from fuse_helpers import (
    SEED_CAR,
    SEED_CHUNK,
    SEED_FILES,
    SEED_ROOT,
    SEED_TREE,
    Mounts,
    assert_one_line_error,
    cli,
    copy_seed,
    expect_errno,
    fuse_mounts,
    is_mounted,
    read_file,
    write_file,
)

pytest_plugins = ("fuse_helpers",)
pytestmark = pytest.mark.fuse


# --- 1. the seed test vector by plain file operations -----------------------------


def test_seed_vector_written_through_the_mount(mounts: Mounts, tmp_path: Path) -> None:
    mnt = mounts().mount("empty")
    copy_seed(mnt.path)
    # the first sync of an empty mount: its CAR of the change is the whole DAG, at STORE/cars/ROOT.car
    assert mnt.sync() == SEED_ROOT
    assert (mnt.store / "cars" / f"{SEED_ROOT}.car").read_bytes() == SEED_CAR.read_bytes()
    car = tmp_path / "out.car"
    result = mnt.cli("sync", mnt.path, "--full-car", "--car", car)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == SEED_ROOT
    assert car.read_bytes() == SEED_CAR.read_bytes()
    assert os.getxattr(mnt.path, "user.ipld.cid").decode() == SEED_ROOT
    assert os.getxattr(mnt / "a/0", "user.ipld.cid").decode() == SEED_CHUNK
    assert "user.ipld.cid" in os.listxattr(mnt / "a/0")
    for name in SEED_FILES:
        assert read_file(mnt / name) == (SEED_TREE / name).read_bytes(), name
    assert mnt.unmount() == SEED_ROOT


def test_getfattr_reports_the_root(mounts: Mounts) -> None:
    import shutil
    import subprocess

    if shutil.which("getfattr") is None:
        pytest.skip("getfattr (Debian package attr) is not installed")
    mnt = mounts().mount("empty")
    copy_seed(mnt.path)
    mnt.sync()
    out = subprocess.run(
        ["getfattr", "--only-values", "-n", "user.ipld.cid", str(mnt.path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert out.strip() == SEED_ROOT


# --- 3. read-only mount of an imported CAR ---------------------------------------------


def test_read_only_mount_of_a_car(mounts: Mounts) -> None:
    mnt = mounts().mount(SEED_CAR, "--read-only")
    for name in SEED_FILES:
        assert read_file(mnt / name) == (SEED_TREE / name).read_bytes(), name
    assert sorted(os.listdir(mnt.path)) == sorted(os.listdir(SEED_TREE))
    assert sorted(os.listdir(mnt / "a")) == sorted(os.listdir(SEED_TREE / "a"))
    assert os.getxattr(mnt.path, "user.ipld.cid").decode() == SEED_ROOT

    expect_errno(errno.EROFS, os.open, mnt / "a/0", os.O_WRONLY)
    expect_errno(errno.EROFS, os.open, mnt / "a/0", os.O_RDWR)
    expect_errno(errno.EROFS, os.open, mnt / "new", os.O_WRONLY | os.O_CREAT, 0o644)
    expect_errno(errno.EROFS, os.mkdir, mnt / "d")
    expect_errno(errno.EROFS, os.unlink, mnt / "a/0")
    expect_errno(errno.EROFS, os.rmdir, mnt / "a")
    expect_errno(errno.EROFS, os.rename, mnt / "a/0", mnt / "a/1")
    expect_errno(errno.EROFS, os.truncate, mnt / "a/0", 0)
    # nothing changed
    assert read_file(mnt / "a/0") == (SEED_TREE / "a/0").read_bytes()
    # sync of a read-only mount reports the root and changes nothing
    assert mnt.sync() == SEED_ROOT
    assert mnt.unmount() == SEED_ROOT


# --- 4. errno answers ----------------------------------------------------------------------


@pytest.fixture
def tree(mounts: Mounts) -> Path:
    """A mounted tree: d/ (holding f), e/ (empty), file, full/ (holding x)."""
    mnt = mounts().mount("empty")
    root = mnt.path
    (root / "d").mkdir()
    (root / "e").mkdir()
    (root / "full").mkdir()
    write_file(root / "file", b"content")
    write_file(root / "d/f", b"f")
    write_file(root / "full/x", b"x")
    return root


def test_enoent(tree: Path) -> None:
    expect_errno(errno.ENOENT, os.open, tree / "missing", os.O_RDONLY)
    expect_errno(errno.ENOENT, os.stat, tree / "missing")
    expect_errno(errno.ENOENT, os.unlink, tree / "missing")
    expect_errno(errno.ENOENT, os.rmdir, tree / "missing")
    expect_errno(errno.ENOENT, os.rename, tree / "missing", tree / "other")
    expect_errno(errno.ENOENT, os.open, tree / "nodir/x", os.O_WRONLY | os.O_CREAT, 0o644)


def test_eexist(tree: Path) -> None:
    expect_errno(errno.EEXIST, os.mkdir, tree / "d")
    expect_errno(errno.EEXIST, os.mkdir, tree / "file")
    expect_errno(errno.EEXIST, os.open, tree / "file", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    expect_errno(errno.EEXIST, os.link, tree / "file", tree / "d/f")
    assert read_file(tree / "file") == b"content"
    assert read_file(tree / "d/f") == b"f"


def test_enotdir(tree: Path) -> None:
    expect_errno(errno.ENOTDIR, os.stat, tree / "file/x")
    expect_errno(errno.ENOTDIR, os.open, tree / "file/x", os.O_WRONLY | os.O_CREAT, 0o644)
    expect_errno(errno.ENOTDIR, os.mkdir, tree / "file/x")
    expect_errno(errno.ENOTDIR, os.rmdir, tree / "file")
    expect_errno(errno.ENOTDIR, os.rename, tree / "e", tree / "file")
    expect_errno(errno.ENOTDIR, os.listdir, tree / "file")
    assert (tree / "e").is_dir() and read_file(tree / "file") == b"content"


def test_eisdir(tree: Path) -> None:
    expect_errno(errno.EISDIR, os.open, tree / "d", os.O_WRONLY)
    expect_errno(errno.EISDIR, os.open, tree / "d", os.O_RDWR)
    expect_errno(errno.EISDIR, os.unlink, tree / "d")
    expect_errno(errno.EISDIR, os.rename, tree / "file", tree / "e")
    expect_errno(errno.EISDIR, os.truncate, tree / "d", 0)
    assert (tree / "e").is_dir() and (tree / "d/f").is_file()


def test_enotempty(tree: Path) -> None:
    expect_errno(errno.ENOTEMPTY, os.rmdir, tree / "d")
    expect_errno(errno.ENOTEMPTY, os.rename, tree / "e", tree / "full")
    assert read_file(tree / "full/x") == b"x"
    assert (tree / "e").is_dir()
    # an empty target directory is replaced
    os.rename(tree / "full", tree / "e")
    assert read_file(tree / "e/x") == b"x"
    assert not (tree / "full").exists()


def test_enametoolong(tree: Path) -> None:
    ok, too_long = "n" * 255, "n" * 256
    expect_errno(errno.ENAMETOOLONG, os.open, tree / too_long, os.O_WRONLY | os.O_CREAT, 0o644)
    expect_errno(errno.ENAMETOOLONG, os.mkdir, tree / too_long)
    expect_errno(errno.ENAMETOOLONG, os.stat, tree / too_long)
    expect_errno(errno.ENAMETOOLONG, os.rename, tree / "file", tree / too_long)
    # 255 bytes work (also in UTF-8 multibyte form: 85 three-byte characters)
    write_file(tree / ok, b"ok")
    assert read_file(tree / ok) == b"ok"
    os.mkdir(tree / "d" / ok)
    os.rename(tree / "file", tree / "d" / ok / ok)
    assert read_file(tree / "d" / ok / ok) == b"content"
    wide = "\u20ac" * 85
    write_file(tree / wide, b"euro")
    assert wide in os.listdir(tree)
    expect_errno(errno.ENAMETOOLONG, os.mkdir, tree / ("\u20ac" * 86))


def test_einval_moving_a_directory_into_itself(tree: Path) -> None:
    os.mkdir(tree / "d/sub")
    expect_errno(errno.EINVAL, os.rename, tree / "d", tree / "d/sub/d")
    expect_errno(errno.EINVAL, os.rename, tree / "d", tree / "d/inner")
    assert (tree / "d/f").is_file()


def test_eperm_for_symlink_and_fifo(tree: Path) -> None:
    expect_errno(errno.EPERM, os.symlink, "file", tree / "link")
    expect_errno(errno.EPERM, os.mkfifo, tree / "fifo")
    expect_errno(errno.EPERM, os.mknod, tree / "fifo2", stat.S_IFIFO | 0o644)
    assert not os.path.lexists(tree / "link")
    assert not os.path.lexists(tree / "fifo")


def test_enotsup_for_setxattr(tree: Path) -> None:
    expect_errno(errno.ENOTSUP, os.setxattr, tree / "file", "user.test", b"v")
    expect_errno(errno.ENOTSUP, os.setxattr, tree, "user.ipld.cid", b"v")
    expect_errno(errno.ENOTSUP, os.removexattr, tree / "file", "user.test")
    # a missing attribute is ENODATA (ENOATTR)
    expect_errno(errno.ENODATA, os.getxattr, tree / "file", "user.nothing")
    # no ACLs, no security labels: the namespaces are "not supported", which ls -l, cp -a and
    # rsync -AX remember per file system instead of asking again for every file
    for name in ("security.selinux", "system.posix_acl_access", "trusted.x"):
        expect_errno(errno.ENOTSUP, os.getxattr, tree / "file", name)
    expect_errno(errno.ENOTSUP, os.setxattr, tree / "file", "security.selinux", b"v")


def test_ls_l_asks_once_for_acls_and_labels(tree: Path, tmp_path: Path) -> None:
    """ls -l of a directory costs no extended-attribute request per entry (strace counts them)."""
    folder = tree / "many"
    folder.mkdir()
    for i in range(50):
        (folder / f"f{i}").write_bytes(b"x")
    trace = tmp_path / "ls.strace"
    subprocess.run(
        ["strace", "-f", "-e", "trace=%file,getxattr,lgetxattr", "-o", str(trace), "ls", "-l", str(folder)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    asked = [line for line in trace.read_text().splitlines() if "getxattr(" in line]
    assert 1 <= len(asked) <= 4, asked  # the first entry only (label, ACL), not 2 x 50


def test_statvfs(tree: Path, tmp_path: Path) -> None:
    info = os.statvfs(tree)
    disk = os.statvfs(tmp_path / "store")
    assert info.f_namemax == 255
    assert info.f_bavail > 0
    # it reports the store's disk (free space moves a little between the two calls)
    assert info.f_blocks * info.f_frsize == disk.f_blocks * disk.f_frsize
    assert abs(info.f_bavail * info.f_frsize - disk.f_bavail * disk.f_frsize) < 256 << 20


# --- 9. bad input on the command line --------------------------------------------------------


def _nothing_mounted(path: Path) -> None:
    assert not is_mounted(path)
    assert str(path) not in fuse_mounts()


@pytest.mark.parametrize(
    ("root", "mentions"),
    [
        ("not-a-cid", ()),
        ("bafyreiXXXX", ()),
        ("bafyreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku", ("not in the store",)),
    ],
)
def test_mount_refuses_bad_roots(mounts: Mounts, root: str, mentions: tuple[str, ...]) -> None:
    mnt = mounts()
    result = mnt.cli("mount", root, mnt.path)
    assert_one_line_error(result, *mentions)
    _nothing_mounted(mnt.path)


def test_mount_refuses_a_truncated_car(mounts: Mounts, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.car"
    truncated.write_bytes(SEED_CAR.read_bytes()[:300])
    mnt = mounts()
    assert_one_line_error(mnt.cli("mount", truncated, mnt.path))
    _nothing_mounted(mnt.path)
    # and the store holds no half import that a mount of the root could use
    assert_one_line_error(mnt.cli("mount", SEED_ROOT, mnt.path))
    _nothing_mounted(mnt.path)


def test_mount_refuses_a_missing_mountpoint(mounts: Mounts, tmp_path: Path) -> None:
    mnt = mounts()
    missing = tmp_path / "does-not-exist"
    assert_one_line_error(mnt.cli("mount", "empty", missing), "does not exist")
    _nothing_mounted(missing)
    assert_one_line_error(mnt.cli("mount", "empty", tmp_path / "plainfile"), "does not exist")
    (tmp_path / "plainfile").write_text("x")
    assert_one_line_error(mnt.cli("mount", "empty", tmp_path / "plainfile"), "not a directory")
    _nothing_mounted(tmp_path / "plainfile")


def test_mount_refuses_a_busy_mountpoint_and_non_mounts(mounts: Mounts) -> None:
    mnt = mounts().mount("empty")
    assert_one_line_error(mnt.cli("mount", "empty", mnt.path), "already")
    assert len([p for p in fuse_mounts() if p == str(mnt.path)]) == 1
    other = mounts("plain")
    for command in ("sync", "status", "unmount"):
        assert_one_line_error(other.cli(command, other.path), "not an ipldmount mount")


def test_cli_on_a_non_root_node(mounts: Mounts, tmp_path: Path) -> None:
    """A CID that is a file (raw block), not a directory, is refused before mounting."""
    store = tmp_path / "store"
    check_import = cli("import", SEED_CAR, "--store", store)
    assert check_import.returncode == 0, check_import.stderr
    mnt = mounts()
    assert_one_line_error(mnt.cli("mount", SEED_CHUNK, mnt.path))
    _nothing_mounted(mnt.path)


def test_relative_store_paths_work_from_anywhere(mounts: Mounts, tmp_path: Path) -> None:
    """`--store` relative to where mount ran: sync from another directory names a CAR that exists."""
    mnt = mounts()  # store = tmp_path/"store", the same directory as the relative "store" below
    result = cli("mount", "empty", "mnt", "--store", "store", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    write_file(mnt / "x", b"x")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = cli("sync", "../mnt", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    car_line = result.stdout.splitlines()[0]
    car = Path(car_line.removeprefix("wrote CAR ").rpartition(" (")[0])
    assert car.is_absolute() and car.exists(), car_line
    assert car.parent == tmp_path / "store" / "cars"
    assert mnt.status()["store"] == str(tmp_path / "store")
