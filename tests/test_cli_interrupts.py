"""Ctrl-C and SIGTERM during long commands: exit 128+signal, one line, nothing half-done kept.

The commands are made to wait at a known point instead of racing a timer: the CAR they import
comes through a pipe that the test keeps open, or a block they export is a FIFO nobody writes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuse_helpers import SEED_CAR, SEED_ROOT, Mounts, cli, is_mounted, start_cli, wait_for, waiting_in

from ipldmount.blocks import DirectoryBlockstore
from ipldmount.blocks.car import read_car

pytest_plugins = ("fuse_helpers",)


def _stop(process: subprocess.Popen[str], signum: int) -> tuple[int, str, str]:
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def half_a_car(tmp_path: Path) -> Iterator[Path]:
    """A FIFO through which the seed CAR's header and first block come, then nothing (held open)."""
    fifo = tmp_path / "slow.car"
    os.mkfifo(fifo)
    data = SEED_CAR.read_bytes()
    with open(SEED_CAR, "rb") as stream:
        read_car(stream)  # the header is valid
    header_length = data[0] + 1
    first_section = header_length + 1 + data[header_length]  # one-byte varint: small block
    done = threading.Event()

    def feed() -> None:
        with open(fifo, "wb") as pipe:
            pipe.write(data[:first_section])
            pipe.flush()
            done.wait(120)

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    try:
        yield fifo
    finally:
        done.set()
        thread.join(10)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_import_interrupted(tmp_path: Path, half_a_car: Path, signum: int) -> None:
    store = tmp_path / "store"
    process = start_cli("import", half_a_car, "--store", store)
    wait_for(lambda: waiting_in(process.pid, "pipe"), 60, "the import to wait for more of the CAR")
    code, out, err = _stop(process, signum)
    assert code == 128 + signum
    line = _one_line(err)
    assert "interrupted" in line and "nothing was imported" in line
    assert out == ""
    assert list(DirectoryBlockstore(store)) == [] and os.listdir(store / "tmp") == []


def test_mount_of_a_car_interrupted_while_importing(mounts: Mounts, half_a_car: Path) -> None:
    mnt = mounts()  # should the mount happen after all, the fixture unmounts it
    store, mountpoint = mnt.store, mnt.path
    process = start_cli("mount", half_a_car, mountpoint, "--store", store)
    wait_for(lambda: waiting_in(process.pid, "pipe"), 60, "the import to wait for more of the CAR")
    code, _, err = _stop(process, signal.SIGINT)
    assert code == 130
    assert "nothing was mounted" in _one_line(err)
    assert not is_mounted(mountpoint)
    assert list(DirectoryBlockstore(store)) == []


def _store_with_a_stuck_block(tmp_path: Path) -> Path:
    """The seed example's store, but reading its chunk waits forever: an export stops mid-archive."""
    store = tmp_path / "store"
    assert cli("import", SEED_CAR, "--store", store).returncode == 0
    blocks = DirectoryBlockstore(store)
    chunk = next(cid for cid in blocks if cid[1] == 0x55)
    path = blocks.block_path(chunk)
    path.unlink()
    os.mkfifo(path)  # nobody ever writes it
    return store


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_export_interrupted_leaves_no_partial_car(tmp_path: Path, signum: int) -> None:
    store = _store_with_a_stuck_block(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    process = start_cli("export", SEED_ROOT, "-o", out_dir / "seed.car", "--store", store)
    wait_for(lambda: waiting_in(process.pid, "wait_for_partner"), 60, "the export to wait on the FIFO block")
    code, _, err = _stop(process, signum)
    assert code == 128 + signum
    assert "no CAR was written" in _one_line(err)
    assert os.listdir(out_dir) == [], "neither the CAR nor its temporary file"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_export_to_stdout_interrupted_says_the_car_is_incomplete(tmp_path: Path, signum: int) -> None:
    """What went to stdout cannot be taken back: "no CAR was written" would be untrue."""
    store = _store_with_a_stuck_block(tmp_path)
    process = start_cli("export", SEED_ROOT, "-o", "-", "--store", store)
    assert process.stdout is not None and process.stderr is not None
    wait_for(lambda: waiting_in(process.pid, "wait_for_partner"), 60, "the export to wait on the FIFO block")
    process.send_signal(signum)
    out = process.stdout.buffer.read()  # binary: a CAR is no text
    err = process.stderr.read()
    assert process.wait(timeout=60) == 128 + signum
    line = _one_line(err)
    assert "interrupted" in line and "the CAR written to stdout is incomplete" in line
    assert "no CAR was written" not in line
    assert out and SEED_CAR.read_bytes().startswith(out) and out != SEED_CAR.read_bytes()


def test_export_into_a_fifo_interrupted_says_the_car_is_incomplete(tmp_path: Path) -> None:
    store = _store_with_a_stuck_block(tmp_path)
    fifo = tmp_path / "pipe.car"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    process = start_cli("export", SEED_ROOT, "-o", fifo, "--store", store)
    wait_for(lambda: waiting_in(process.pid, "wait_for_partner"), 60, "the export to wait on the FIFO block")
    code, _, err = _stop(process, signal.SIGINT)
    assert code == 130
    assert f"the CAR written to {fifo} is incomplete" in _one_line(err)
    reader.join(60)
    assert received and SEED_CAR.read_bytes().startswith(received[0]) and received[0] != SEED_CAR.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["pipe.car", "store"], "the FIFO is left as it was"


def test_progress_line_shows_total_percentage_rate_and_time_left() -> None:
    from ipldmount.progress import Progress

    class Terminal:
        def __init__(self) -> None:
            self.text = ""

        def isatty(self) -> bool:
            return True

        def write(self, text: str) -> None:
            self.text += text

        def flush(self) -> None:
            pass

    now = [100.0]
    terminal = Terminal()
    progress = Progress("import x.car", terminal, total_bytes=400 << 20, clock=lambda: now[0])  # type: ignore[arg-type]
    now[0] += 10
    progress(50, 100 << 20)
    line = terminal.text.rpartition("\r")[2]
    assert "25.0%" in line and "100.0/400.0 MiB" in line and "10.0 MiB/s" in line and "30s left" in line
    blocks = Progress("export", terminal, total_blocks=200, clock=lambda: now[0])  # type: ignore[arg-type]
    now[0] += 5
    blocks(50, 1 << 20)
    assert "50/200 blocks" in terminal.text.rpartition("\r")[2]
    assert "25.0%" in terminal.text.rpartition("\r")[2]
    time.sleep(0)  # (no real time involved)
