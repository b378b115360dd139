"""The non-mount commands: ``import``, ``export``, ``ls`` and ``cat``, run in-process through ``main``."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ipldmount.adapters import cli
from ipldmount.adapters.zarr_store import IPLDStore
from ipldmount.blocks import DirectoryBlockstore, car
from ipldmount.format.commit import read_commit
from ipldmount.ipld.cid import DAG_CBOR, RAW, block_cid, cid_to_str

SEED_DIR = Path(__file__).parent / "data" / "seed_example"
SEED_CAR = SEED_DIR / "seed_example.car"
SEED_ROOT = "bafyreidn66mk3fktszrfwayonvpq6y3agtnb5e5o22ivof5tgikbxt7k6u"
SEED_CHUNK = "bafkreihc4ibtvz7btvualgou5mfbgwncwshmlovmoudgyml7x6crlhcu54"
SEED_CHUNK_BYTES = (SEED_DIR / "tree" / "a" / "0").read_bytes()


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture(autouse=True)
def _no_default_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test that forgets --store must not touch the user's real store."""
    monkeypatch.setenv("IPLDMOUNT_STORE", str(tmp_path / "default-store"))


@pytest.fixture
def seeded(store_dir: Path) -> Path:
    """A store holding the seed example (imported directly, so no output reaches the test's capture)."""
    with SEED_CAR.open("rb") as stream:
        car.import_car(DirectoryBlockstore(store_dir), stream)
    return store_dir


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = cli.main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return code, out, err


def run_binary(capsysbinary: pytest.CaptureFixture[bytes], *args: str | Path) -> tuple[int, bytes, bytes]:
    code = cli.main([str(arg) for arg in args])
    out, err = capsysbinary.readouterr()
    return code, out, err


def assert_one_error_line(code: int, err: str) -> str:
    """Exit status 1 and exactly one stderr line, ``ipldmount: error: ...``, with no traceback."""
    assert code == 1
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ipldmount: error: "), err
    assert "Traceback" not in err
    return lines[0]


def stored_blocks(store_dir: Path) -> list[bytes]:
    """The store's blocks but the commits (an import of a tree records one of its own)."""
    store = DirectoryBlockstore(store_dir)
    return [cid for cid in store if read_commit(store, cid) is None]


# --- the happy path -------------------------------------------------------------------------


def test_module_help_runs_as_a_program() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ipldmount", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "usage: ipldmount" in result.stdout
    for command in ("import", "export", "ls", "cat"):
        assert command in result.stdout


def test_import_prints_the_root(capsys: pytest.CaptureFixture[str], store_dir: Path) -> None:
    code, out, err = run(capsys, "import", SEED_CAR, "--store", store_dir)
    assert (code, out, err) == (0, SEED_ROOT + "\n", "")
    assert sorted(cid_to_str(cid) for cid in stored_blocks(store_dir)) == [SEED_CHUNK, SEED_ROOT]
    # Importing again is harmless and prints the same root.
    assert run(capsys, "import", SEED_CAR, "--store", store_dir) == (0, SEED_ROOT + "\n", "")
    assert len(stored_blocks(store_dir)) == 2


def test_ls_root(capsys: pytest.CaptureFixture[str], seeded: Path) -> None:
    code, out, err = run(capsys, "ls", SEED_ROOT, "--store", seeded)
    assert (code, err) == (0, "")
    assert out.splitlines() == [".zattrs", ".zgroup", "a/"]
    # A trailing slash names the same directory.
    assert run(capsys, "ls", SEED_ROOT + "/", "--store", seeded)[1] == out


def test_ls_long(capsys: pytest.CaptureFixture[str], seeded: Path) -> None:
    code, out, err = run(capsys, "ls", "-l", f"{SEED_ROOT}/a", "--store", seeded)
    assert (code, err) == (0, "")
    rows = [line.split() for line in out.splitlines()]
    files = {name: path.read_bytes() for name, path in _seed_files("a").items()}
    assert [row[-1] for row in rows] == [".zarray", ".zattrs", "0"]
    for kind, size, _, name in rows:
        assert kind == "-"
        assert int(size) == len(files[name])
    # Inline metadata has no block of its own: ls says so rather than show a CID no block has.
    assert [row[2] for row in rows] == ["inline", "inline", SEED_CHUNK]
    assert cid_to_str(block_cid(RAW, files["0"])) == SEED_CHUNK
    assert DirectoryBlockstore(seeded).has(block_cid(RAW, files["0"]))  # every CID shown is fetchable

    code, out, _ = run(capsys, "ls", "-l", SEED_ROOT, "--store", seeded)
    directory = [line.split() for line in out.splitlines() if line.endswith("a/")]
    assert directory and directory[0][0] == "d"
    assert directory[0][2] == "inline"  # the directory is part of the root's block


def test_ls_of_a_file_lists_just_that_file(capsys: pytest.CaptureFixture[str], seeded: Path) -> None:
    assert run(capsys, "ls", f"{SEED_ROOT}/a/0", "--store", seeded) == (0, "0\n", "")
    code, out, _ = run(capsys, "ls", "-l", f"{SEED_ROOT}/a/0", "--store", seeded)
    assert code == 0
    assert out.split() == ["-", "24", SEED_CHUNK, "0"]


def test_cat(capsysbinary: pytest.CaptureFixture[bytes], seeded: Path) -> None:
    code, out, err = run_binary(capsysbinary, "cat", f"{SEED_ROOT}/a/0", "--store", seeded)
    assert (code, err) == (0, b"")
    assert out == SEED_CHUNK_BYTES
    assert len(out) == 24
    # Inlined metadata comes back byte for byte too.
    for key, path in _seed_files().items():
        assert (
            run_binary(capsysbinary, "cat", f"{SEED_ROOT}/{key}", "--store", seeded)[1] == path.read_bytes()
        )


def test_cat_large_chunked_file(capsysbinary: pytest.CaptureFixture[bytes], tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    data = os.urandom(3 * (1 << 20) + 17)
    store = IPLDStore(DirectoryBlockstore(store_dir))
    store.tree.write_file("big/c/0", data)
    root = store.freeze()
    assert run_binary(capsysbinary, "cat", f"{root}/big/c/0", "--store", store_dir) == (0, data, b"")


def test_export_to_a_file(capsys: pytest.CaptureFixture[str], seeded: Path, tmp_path: Path) -> None:
    out_car = tmp_path / "out.car"
    code, out, err = run(capsys, "export", SEED_ROOT, "-o", out_car, "--store", seeded)
    assert (code, out) == (0, "")
    assert err == f"wrote 356 bytes to {out_car}\n"
    assert out_car.read_bytes() == SEED_CAR.read_bytes()
    # Overwriting an existing file is fine, and leaves no temporary files behind.
    assert run(capsys, "export", SEED_ROOT, "-o", out_car, "--store", seeded)[0] == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.car", "store"]


def test_export_to_stdout(capsysbinary: pytest.CaptureFixture[bytes], seeded: Path) -> None:
    code, out, err = run_binary(capsysbinary, "export", SEED_ROOT, "-o", "-", "--store", seeded)
    assert (code, err) == (0, b"")
    assert out == SEED_CAR.read_bytes()


def test_round_trip_through_a_second_store(
    capsys: pytest.CaptureFixture[str], seeded: Path, tmp_path: Path
) -> None:
    out_car = tmp_path / "again.car"
    assert run(capsys, "export", SEED_ROOT, "-o", out_car, "--store", seeded)[0] == 0
    other = tmp_path / "other"
    assert run(capsys, "import", out_car, "--store", other) == (0, SEED_ROOT + "\n", "")
    assert run(capsys, "ls", f"{SEED_ROOT}/a", "--store", other)[1].split() == [".zarray", ".zattrs", "0"]


def test_store_from_the_environment(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run(capsys, "import", SEED_CAR) == (0, SEED_ROOT + "\n", "")
    assert len(stored_blocks(tmp_path / "default-store")) == 2
    assert run(capsys, "ls", SEED_ROOT)[1].split() == [".zattrs", ".zgroup", "a/"]


def _seed_files(under: str = "") -> dict[str, Path]:
    tree = SEED_DIR / "tree" / under
    return {path.relative_to(tree).as_posix(): path for path in sorted(tree.rglob("*")) if path.is_file()}


# --- bad input: one line on stderr, exit 1 ---------------------------------------------------

MISSING_ROOT = cid_to_str(block_cid(DAG_CBOR, b"\xa0"))  # a valid CID of a block the store lacks


@pytest.mark.parametrize(
    "target",
    [
        "not-a-cid",
        "bafy",
        "",
        "Qm123",
        "bafyreidn66mk3fktszrfwayonvpq6y3agtnb5e5o22ivof5tgikbxt7k6",
        "zzz/a/0",
    ],
)
@pytest.mark.parametrize("command", ["ls", "cat", "export"])
def test_malformed_cid(capsys: pytest.CaptureFixture[str], seeded: Path, command: str, target: str) -> None:
    extra = ["-o", str(seeded.parent / "x.car")] if command == "export" else []
    code, out, err = run(capsys, command, target, *extra, "--store", seeded)
    line = assert_one_error_line(code, err)
    assert "CID" in line
    assert out == ""
    assert not (seeded.parent / "x.car").exists()


def test_unsupported_cid(capsys: pytest.CaptureFixture[str], seeded: Path) -> None:
    """A well-formed CID of a codec nothing here reads (dag-json)."""
    dag_json = "baguqeeraaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    code, _, err = run(capsys, "ls", dag_json, "--store", seeded)
    assert "unsupported codec" in assert_one_error_line(code, err)


def test_a_cidv0_is_read_as_its_cidv1(capsys: pytest.CaptureFixture[str], seeded: Path) -> None:
    code, _, err = run(capsys, "ls", "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG", "--store", seeded)
    line = assert_one_error_line(code, err)
    assert (
        "bafybeie5nqv6kd3qnfjupgvz34woh3oksc3iau6abmyajn7qvtf6d2ho34" in line and "not in the store" in line
    )


@pytest.mark.parametrize("command", ["ls", "cat", "export"])
def test_cid_not_in_store(capsys: pytest.CaptureFixture[str], seeded: Path, command: str) -> None:
    target = MISSING_ROOT if command == "export" else f"{MISSING_ROOT}/a/0"
    extra = ["-o", str(seeded.parent / "x.car")] if command == "export" else []
    code, out, err = run(capsys, command, target, *extra, "--store", seeded)
    line = assert_one_error_line(code, err)
    assert MISSING_ROOT in line and "not in the store" in line
    assert out == ""
    assert not (seeded.parent / "x.car").exists()


def test_root_that_is_not_a_directory(capsys: pytest.CaptureFixture[str], seeded: Path) -> None:
    code, _, err = run(capsys, "ls", SEED_CHUNK, "--store", seeded)
    assert "not a dag-cbor directory" in assert_one_error_line(code, err)


@pytest.mark.parametrize(
    ("command", "path", "message"),
    [
        ("ls", "nope", "No such file or directory"),
        ("ls", "a/nope", "No such file or directory"),
        ("ls", "a/0/x", "Not a directory"),
        ("cat", "nope", "No such file or directory"),
        ("cat", "a/0/x", "Not a directory"),
        ("cat", "a", "Is a directory"),
        ("cat", "a/", "Is a directory"),
        ("cat", "", "Is a directory"),
    ],
)
def test_bad_paths(
    capsys: pytest.CaptureFixture[str], seeded: Path, command: str, path: str, message: str
) -> None:
    target = f"{SEED_ROOT}/{path}"
    code, out, err = run(capsys, command, target, "--store", seeded)
    line = assert_one_error_line(code, err)
    assert message in line
    assert repr(target.rstrip("/")) in line  # names what the user typed, not only the failing part
    assert out == ""


def test_export_refuses_a_path(capsys: pytest.CaptureFixture[str], seeded: Path, tmp_path: Path) -> None:
    code, _, err = run(capsys, "export", f"{SEED_ROOT}/a", "-o", tmp_path / "x.car", "--store", seeded)
    assert "not a path" in assert_one_error_line(code, err)
    assert not (tmp_path / "x.car").exists()


@pytest.mark.parametrize(
    "damage",
    ["truncated-block", "truncated-header", "flipped-byte", "empty", "garbage", "missing-block"],
)
def test_bad_car_imports_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, store_dir: Path, damage: str
) -> None:
    data = SEED_CAR.read_bytes()
    bad = {
        "truncated-block": data[:-5],
        "truncated-header": data[:20],
        "flipped-byte": data[:-1] + bytes([data[-1] ^ 1]),
        "empty": b"",
        "garbage": b"this is not a CAR file at all",
        # A CAR of only its root: the chunk the root links to is in neither CAR nor store.
        "missing-block": _root_only_car(data),
    }[damage]
    car_path = tmp_path / "bad.car"
    car_path.write_bytes(bad)
    code, out, err = run(capsys, "import", car_path, "--store", store_dir)
    assert_one_error_line(code, err)
    assert out == ""
    assert stored_blocks(store_dir) == []
    assert list((store_dir / "tmp").iterdir()) == []  # no staged leftovers either


def _root_only_car(data: bytes) -> bytes:
    """The seed CAR without the chunk block its root links to: a well-formed but incomplete DAG."""
    roots, sections = car.read_car(io.BytesIO(data))
    out = io.BytesIO()
    car.write_car(out, roots, [(cid, block) for cid, block in sections if cid in roots])
    return out.getvalue()


def test_nonexistent_car(capsys: pytest.CaptureFixture[str], tmp_path: Path, store_dir: Path) -> None:
    code, _, err = run(capsys, "import", tmp_path / "nope.car", "--store", store_dir)
    assert "no such file" in assert_one_error_line(code, err)


def test_car_that_is_a_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path, store_dir: Path) -> None:
    code, _, err = run(capsys, "import", tmp_path, "--store", store_dir)
    assert "is a directory" in assert_one_error_line(code, err)


def test_export_into_a_missing_directory(
    capsys: pytest.CaptureFixture[str], seeded: Path, tmp_path: Path
) -> None:
    target = tmp_path / "no" / "such" / "dir" / "x.car"
    code, _, err = run(capsys, "export", SEED_ROOT, "-o", target, "--store", seeded)
    assert "does not exist" in assert_one_error_line(code, err)
    assert not (tmp_path / "no").exists()  # not created on a typo


def test_export_below_a_file(capsys: pytest.CaptureFixture[str], seeded: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(capsys, "export", SEED_ROOT, "-o", blocker / "x.car", "--store", seeded)
    assert "is not a directory" in assert_one_error_line(code, err)


def test_export_to_an_unwritable_directory(
    capsys: pytest.CaptureFixture[str], seeded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:
        # root writes anywhere; make the temporary file fail as it would for anyone else.
        def refuse(*args: object, **kwargs: object) -> tuple[int, Path]:
            raise PermissionError(13, "Permission denied", str(locked))

        monkeypatch.setattr(car, "_open_temporary", refuse)
    try:
        code, _, err = run(capsys, "export", SEED_ROOT, "-o", locked / "x.car", "--store", seeded)
    finally:
        locked.chmod(0o755)
    assert "Permission denied" in assert_one_error_line(code, err)
    assert list(locked.iterdir()) == []


def test_export_onto_a_directory(capsys: pytest.CaptureFixture[str], seeded: Path, tmp_path: Path) -> None:
    (tmp_path / "dir.car").mkdir()
    code, _, err = run(capsys, "export", SEED_ROOT, "-o", tmp_path / "dir.car", "--store", seeded)
    assert_one_error_line(code, err)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["dir.car", "store"]  # no temp left


@pytest.mark.parametrize("command", ["ls", "cat", "export"])
def test_reading_commands_do_not_create_a_store(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str
) -> None:
    missing = tmp_path / "typo"
    target = SEED_ROOT if command != "cat" else f"{SEED_ROOT}/a/0"
    extra = ["-o", str(tmp_path / "x.car")] if command == "export" else []
    code, _, err = run(capsys, command, target, *extra, "--store", missing)
    assert "no blockstore" in assert_one_error_line(code, err)
    assert not missing.exists()


def test_store_that_is_not_a_store(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "something").write_text("x")
    for args in (["import", str(SEED_CAR)], ["ls", SEED_ROOT]):
        code, _, err = run(capsys, *args, "--store", foreign)
        assert "not an ipldmount blockstore" in assert_one_error_line(code, err)
    assert sorted(path.name for path in foreign.iterdir()) == ["something"]


def test_missing_chunk_block(capsysbinary: pytest.CaptureFixture[bytes], seeded: Path) -> None:
    """A block lost from the store: ls still lists, cat and export fail with one line."""
    DirectoryBlockstore(seeded).block_path(block_cid(RAW, SEED_CHUNK_BYTES)).unlink()
    code, out, err = run_binary(capsysbinary, "ls", f"{SEED_ROOT}/a", "--store", seeded)
    assert (code, out) == (0, b".zarray\n.zattrs\n0\n")
    code, out, err = run_binary(capsysbinary, "cat", f"{SEED_ROOT}/a/0", "--store", seeded)
    assert SEED_CHUNK in assert_one_error_line(code, err.decode())
    code, out, err = run_binary(
        capsysbinary, "export", SEED_ROOT, "-o", seeded.parent / "x.car", "--store", seeded
    )
    assert "not found" in assert_one_error_line(code, err.decode())
    assert not (seeded.parent / "x.car").exists()


def _car(path: Path, roots: list[bytes], blocks: list[tuple[bytes, bytes]]) -> Path:
    with path.open("wb") as stream:
        car.write_car(stream, roots, blocks)
    return path


def test_import_refuses_a_root_that_is_not_a_tree(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A raw root imports into nothing any later command could open: refused, nothing kept."""
    data = b"just bytes"
    path = _car(tmp_path / "raw.car", [block_cid(RAW, data)], [(block_cid(RAW, data), data)])
    code, out, err = run(capsys, "import", path, "--store", tmp_path / "store")
    assert "not a directory" in assert_one_error_line(code, err) and out == ""
    assert stored_blocks(tmp_path / "store") == []


def test_a_car_with_two_roots(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """import keeps and prints both; a mount needs one tree, so mounting it is refused."""
    first, second = b"\xa0", b"\xa1\x61x\xa0"  # {} and {"x": {}}
    roots = [block_cid(DAG_CBOR, first), block_cid(DAG_CBOR, second)]
    path = _car(tmp_path / "two.car", roots, list(zip(roots, [first, second], strict=True)))
    store = tmp_path / "store"
    code, out, err = run(capsys, "import", path, "--store", store)
    assert code == 0, err
    assert out.split() == [cid_to_str(root) for root in roots]
    (tmp_path / "mnt").mkdir()
    code, out, err = run(capsys, "mount", path, tmp_path / "mnt", "--store", store)
    assert "2 roots" in assert_one_error_line(code, err)
    assert not os.path.ismount(tmp_path / "mnt")


def test_ls_and_cat_through_an_unreadable_entry_say_one_line(
    capsys: pytest.CaptureFixture[str], seeded: Path
) -> None:
    """The seed's inline directory `a` is fine; make a root whose `a` links to a missing block."""
    import cbor2

    missing = block_cid(DAG_CBOR, b"\xa1\x61z\xa0")
    root = DirectoryBlockstore(seeded).put(
        cbor2.dumps({"a": cbor2.CBORTag(42, b"\0" + missing)}, canonical=True), DAG_CBOR
    )
    for command, path in (("ls", "a"), ("cat", "a/x"), ("ls", "a/x")):
        code, out, err = run(capsys, command, f"{cid_to_str(root)}/{path}", "--store", seeded)
        assert cid_to_str(missing) in assert_one_error_line(code, err), (command, path)
        assert out == ""


# --- usage errors: exit 2 -------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["ls"],
        ["cat"],
        ["import"],
        ["export", SEED_ROOT],  # -o is required
        ["export"],
        ["ls", SEED_ROOT, "--no-such-option"],
        ["cat", SEED_ROOT, "extra", "args"],
        ["--no-such-option"],
    ],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "usage:" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["import", "export", "ls", "cat"])
def test_command_help(capsys: pytest.CaptureFixture[str], command: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    out, _ = capsys.readouterr()
    assert f"ipldmount {command}" in out and "--store" in out


def test_every_command_has_one_handler_in_the_order_help_lists_them() -> None:
    from ipldmount.adapters.cli import GROUPS
    from ipldmount.adapters.cli.common import COMMAND_NAMES

    assert list(cli.COMMANDS) == list(COMMAND_NAMES)
    handled = [name for group in GROUPS for name in group.COMMANDS]
    assert sorted(handled) == sorted(COMMAND_NAMES)  # each in one group, none left out


def test_a_daemon_mount_starts_is_given_the_remotes_as_options() -> None:
    from ipldmount.adapters.cli.mounting import remote_arguments
    from ipldmount.remote.remotes import Remotes

    assert remote_arguments(Remotes()) == []
    both = Remotes.of("http://flag:5001", ["http://g", "http://h"])
    assert remote_arguments(both) == [
        "--ipfs",
        "http://flag:5001",
        "--gateway",
        "http://g",
        "--gateway",
        "http://h",
    ]
    assert remote_arguments(Remotes.of(None, ["http://g"])) == ["--gateway", "http://g"]
    # what the daemon parses back is what was given
    parsed = cli.build_parser().parse_args(["mount", "empty", "/mnt", *remote_arguments(both)])
    assert (parsed.ipfs, parsed.gateway) == ("http://flag:5001", ["http://g", "http://h"])
