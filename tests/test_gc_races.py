"""gc's safety argument attacked all at once: two mounts writing, fsyncing, unlinking and syncing,
in-process stores setting and freezing in other processes (one killed with -9 and started
again), a mount's daemon killed with -9 and resumed, and `gc --grace 0 --keep-last 1` in a loop
throughout; then every closed file reads back and every kept root exports whole.

Bounded for CI (IPLDMOUNT_RACE_SECONDS, default 25 s of load); run it longer by hand.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuse_helpers import Mount, Mounts, check, read_file, write_file

from ipldmount.blocks import DirectoryBlockstore
from ipldmount.blocks.dag import iter_closure
from ipldmount.ipld.cid import parse_cid

pytest_plugins = ("fuse_helpers",)
pytestmark = pytest.mark.fuse

SECONDS = float(os.environ.get("IPLDMOUNT_RACE_SECONDS", "25"))
POOL = [bytes([n]) * size for n, size in enumerate([3000, 70_000, 300_000, 1 << 20, (1 << 20) + 5])]
"""Contents written again and again: a rewrite of content whose blocks became garbage claims
them instead of writing them, which is what gc must not race."""

FREEZER = textwrap.dedent(
    """
    import os, random, sys, threading, time
    import zarr
    from ipldmount.blocks import DirectoryBlockstore
    from ipldmount.blocks.dag import iter_closure
    from ipldmount.ipld.cid import parse_cid
    from ipldmount.adapters.zarr_store import IPLDStore
    buf = zarr.core.buffer.default_buffer_prototype().buffer.from_bytes
    blocks = DirectoryBlockstore(sys.argv[1])
    store = IPLDStore(blocks)
    pool = [bytes([n]) * size for n, size in enumerate([3000, 70_000, 300_000])]

    def writer(seed):  # sets values while the main thread freezes
        rng = random.Random(seed)
        step = 0
        while True:
            store.set_sync(f"k{seed}/{rng.randrange(20)}", buf(rng.choice(pool) + b"%d" % (step % 3)))
            step += 1

    for seed in range(3):
        threading.Thread(target=writer, args=(int(sys.argv[2]) * 10 + seed,), daemon=True).start()
    while True:
        time.sleep(0.05)
        root = store.freeze()
        bad = sum(1 for cid, _ in iter_closure(blocks, parse_cid(root)) if not blocks.has(cid))
        print(("BAD " if bad else "OK ") + root, flush=True)
    """
)


def gc_once(store: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "ipldmount",
            "gc",
            "--grace",
            "0",
            "--keep-last",
            "1",
            "--json",
            "--store",
            str(store),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "IPLDMOUNT_CONFIG": "/nonexistent"},
    )


class Load:
    """The writers: threads driving two mounts, and freezer processes; errors collected."""

    def __init__(self, store: Path, first: Mount, second: Mount) -> None:
        self.store, self.first, self.second = store, first, second
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.expected: dict[str, bytes] = {}  # what the first mount's closed files hold
        self.freezers: list[subprocess.Popen[str]] = []
        self.frozen: list[str] = []  # "OK ROOT" / "BAD ROOT" lines of every freezer
        self.lock = threading.Lock()

    def run(self, target: object, *args: object) -> threading.Thread:
        def guarded() -> None:
            try:
                target(*args)  # type: ignore[operator]
            except BaseException as exc:
                self.errors.append(exc)
                self.stop.set()

        thread = threading.Thread(target=guarded)
        thread.start()
        return thread

    def write_first(self) -> None:
        rng = random.Random(1)
        (self.first / "arr").mkdir()
        step = 0
        while not self.stop.is_set():
            if step % 20 == 10:
                self.read_unlinked(step)
            name = f"arr/{rng.randrange(16)}"
            step += 1
            if step % 11 == 0 and name in self.expected:
                os.unlink(self.first / name)
                del self.expected[name]
                continue
            data = rng.choice(POOL) + (b"%d" % step if step % 3 == 0 else b"")
            with open(self.first / name, "wb") as stream:
                stream.write(data)
                if step % 4 == 0:
                    stream.flush()
                    os.fsync(stream.fileno())
            self.expected[name] = data
            if step % 15 == 0:
                self.first.sync()

    def read_unlinked(self, step: int) -> None:
        """A file open while it is unlinked and a sync and gc run: it reads its content (POSIX)."""
        data = os.urandom(1_500_000)
        write_file(self.first / "open", data)
        self.first.sync()
        with open(self.first / "open", "rb") as stream:
            os.unlink(self.first / "open")
            self.first.sync()
            check(gc_once(self.store))
            assert stream.read() == data, f"an unlinked open file lost its content (step {step})"

    def write_second(self) -> None:
        """Writes, syncs, and once a daemon killed with -9 and resumed."""
        rng = random.Random(2)
        step = 0
        killed = False
        while not self.stop.is_set():
            step += 1
            write_file(self.second / f"f{rng.randrange(8)}", rng.choice(POOL))
            if step % 10 == 0:
                self.second.sync()
            if not killed and step == 25:
                killed = True
                pid = self.second.kill(signal.SIGKILL)
                self.second.wait_daemon_gone(pid)
                time.sleep(1)  # a gc or two runs with only the journal to go by
                self.second.mount("resume")

    def start_freezer(self, seed: int) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-c", FREEZER, str(self.store), str(seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.freezers.append(process)
        self.run(self._read_freezer, process)
        return process

    def _read_freezer(self, process: subprocess.Popen[str]) -> None:
        for line in process.stdout:  # type: ignore[union-attr]
            with self.lock:
                self.frozen.append(line.strip())

    def kill_freezers(self) -> None:
        for process in self.freezers:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)


@pytest.fixture
def load(mounts: Mounts, tmp_path: Path) -> Iterator[Load]:
    store = tmp_path / "store"
    first = mounts("first", store).mount("empty")
    second = mounts("second", store).mount("empty")
    writers = Load(store, first, second)
    yield writers
    writers.stop.set()
    writers.kill_freezers()


def test_gc_racing_writers_freezes_syncs_and_kills_keeps_every_version_whole(
    load: Load, tmp_path: Path
) -> None:
    threads = [load.run(load.write_first), load.run(load.write_second)]
    load.start_freezer(3)
    victim = load.start_freezer(4)
    collections = 0
    deadline = time.monotonic() + SECONDS
    while time.monotonic() < deadline and not load.stop.is_set():
        result = gc_once(load.store)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["missing_blocks"] == 0
        collections += 1
        if collections == 3:
            victim.kill()  # an in-process store dies with -9 mid-write; another takes its place
            load.start_freezer(5)
    load.stop.set()
    for thread in threads:
        thread.join(timeout=120)
    load.kill_freezers()
    assert load.errors == [], load.errors
    assert collections >= 3

    bad = [line for line in load.frozen if not line.startswith("OK ")]
    assert load.frozen and bad == [], f"{len(bad)} of {len(load.frozen)} frozen roots missed blocks"
    for name, data in load.expected.items():  # every closed file reads back
        assert read_file(load.first / name) == data, name
    final = load.first.unmount()
    load.second.unmount()
    report = json.loads(check(gc_once(load.store)).stdout)
    kept = set(report["kept_roots"])
    assert final in kept and report["missing_blocks"] == 0
    store = DirectoryBlockstore(load.store)
    for root in kept:  # every kept version reads back whole, each block verified against its CID
        assert all(store.has(cid) for cid, _ in iter_closure(store, parse_cid(root))), root
        check(load.first.cli("export", root, "-o", tmp_path / "check.car"))
    load.first.mount(final, "--read-only")
    for name, data in load.expected.items():
        assert read_file(load.first / name) == data, name
