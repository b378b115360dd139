"""small_keys: 100,000 chunks of 1 KiB through zarr, IPLDStore vs MemoryStore, py-hamt, LocalStore
and icechunk: write, read, the first commit and a one-chunk commit.

The peers (icechunk, py-hamt) need Python >= 3.12: they run in bench/peers_worker.py under the
venv that scripts/peer-python.sh makes, one subprocess per peer and round, between our own
stores' measurements. The worker also holds the data and the measured steps (:func:`measure`),
so every store gets the same bytes and the same timing.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zarr
from common import Context, Row, log
from peers_worker import Steps, measure
from zarr.storage import LocalStore, MemoryStore

from ipldmount.adapters.zarr_store import IPLDStore
from ipldmount.blocks import DirectoryBlockstore, MemoryBlockstore

HERE = Path(__file__).resolve().parent
WORKER = HERE / "peers_worker.py"
PEER_PYTHON_SCRIPT = HERE.parent / "scripts" / "peer-python.sh"
STEPS = ("write", "read", "first_commit", "one_chunk_commit")


# --- our stores and zarr's ------------------------------------------------------------


class MemorySteps(Steps):
    """zarr's MemoryStore: no commit; read through a new MemoryStore over the same dict."""

    def __init__(self) -> None:
        self.store: MemoryStore | None = None

    def create(self) -> MemoryStore:
        self.store = MemoryStore()
        return self.store

    def reopen(self) -> MemoryStore:
        assert self.store is not None
        return MemoryStore(store_dict=self.store._store_dict, read_only=True)


class LocalSteps(Steps):
    """zarr's LocalStore on the work directory's disk: its commit is ``os.sync()`` (LocalStore
    never fsyncs, so that is what makes its writes durable)."""

    def __init__(self, where: Path) -> None:
        self.where = where

    def create(self) -> LocalStore:
        return LocalStore(self.where)

    def commit(self) -> bool:
        os.sync()
        return True

    def reopen(self) -> LocalStore:
        return LocalStore(self.where, read_only=True)

    def writable(self) -> LocalStore:
        return LocalStore(self.where)


class IPLDSteps(Steps):
    """IPLDStore over a MemoryBlockstore or a DirectoryBlockstore: its commit is ``freeze()``
    (on disk: one sync of the filesystem, then the commit recorded); read through a new
    IPLDStore at the root (on disk, over a new DirectoryBlockstore); the one-chunk overwrite
    goes on in the store that wrote."""

    def __init__(self, where: Path | None) -> None:
        self.where = where
        self.blockstore = DirectoryBlockstore(where) if where is not None else MemoryBlockstore()
        self.store: IPLDStore | None = None
        self.root: str | None = None
        self.opened: list[IPLDStore] = []

    def create(self) -> IPLDStore:
        self.store = IPLDStore(self.blockstore)
        self.opened.append(self.store)
        return self.store

    def commit(self) -> bool:
        assert self.store is not None
        self.root = self.store.freeze()
        return True

    def reopen(self) -> IPLDStore:
        blockstore = DirectoryBlockstore(self.where) if self.where is not None else self.blockstore
        store = IPLDStore(blockstore, self.root, read_only=True)
        self.opened.append(store)
        return store

    def writable(self) -> IPLDStore:
        assert self.store is not None
        return self.store

    def close(self) -> None:
        for store in self.opened:
            store.close()


# --- the contenders -------------------------------------------------------------------


@dataclass(frozen=True)
class Contender:
    key: str
    name: str  # as the table names it
    peer: str | None = None  # --store of peers_worker.py, for the peers
    on_disk: bool = False


CONTENDERS = (
    Contender("memory", "MemoryStore"),
    Contender("ipld_mem", "IPLDStore(MemoryBlockstore)"),
    Contender("pyhamt", "py-hamt InMemoryCAS", peer="pyhamt"),
    Contender("local", "LocalStore on disk", on_disk=True),
    Contender("icechunk", "icechunk, local filesystem", peer="icechunk", on_disk=True),
    Contender("ipld_dir", "IPLDStore(DirectoryBlockstore)", on_disk=True),
)
BY_KEY = {contender.key: contender for contender in CONTENDERS}
OURS: dict[str, Callable[[Path], Steps]] = {
    "memory": lambda where: MemorySteps(),
    "ipld_mem": lambda where: IPLDSteps(None),
    "local": LocalSteps,
    "ipld_dir": IPLDSteps,
}


def peer_python() -> tuple[str | None, str]:
    """The peers' Python from scripts/peer-python.sh (made or reused), or None and why not."""
    try:
        result = subprocess.run(
            ["bash", str(PEER_PYTHON_SCRIPT)], capture_output=True, text=True, timeout=1200
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"{PEER_PYTHON_SCRIPT.name}: {exc}"
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0 or not lines:
        why = [line for line in result.stderr.splitlines() if line.strip()]
        if not why:
            return None, f"{PEER_PYTHON_SCRIPT.name} exited {result.returncode}"
        return None, why[-1].strip().removeprefix("peers: ")
    return lines[-1], ""


class Peer:
    """One peer in the worker subprocess; after its first failure it is not run again."""

    def __init__(self, contender: Contender, python: str | None, why_not: str) -> None:
        assert contender.peer is not None
        self.contender = contender
        self.python = python
        self.problem = "" if python else f"not installed: {why_not}"
        self.about = ""  # "icechunk 2.3.0, Python 3.12.1", from the worker's answer

    def run(self, chunks: int, where: Path, round_: int) -> dict[str, float | None] | None:
        if self.python is None or self.problem:
            return None
        command = [self.python, str(WORKER), "--store", str(self.contender.peer), "--chunks", str(chunks)]
        command += ["--dir", str(where), "--round", str(round_)]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=3600)
        except (OSError, subprocess.SubprocessError) as exc:
            self.fail(repr(exc))
            return None
        lines = result.stdout.strip().splitlines()
        try:
            answer: dict[str, Any] = json.loads(lines[-1]) if result.returncode == 0 and lines else {}
        except ValueError:
            answer = {}
        if not answer:
            errors = [line for line in result.stderr.splitlines() if line.strip()]
            self.fail(errors[-1].strip() if errors else f"the worker exited {result.returncode}")
            return None
        self.about = f"{answer['peer']}, Python {answer['python']}"
        if answer.get("zarr") != zarr.__version__:
            self.about += f", zarr {answer.get('zarr')}"
        return {step: answer[step] for step in STEPS}

    def fail(self, why: str) -> None:
        self.problem = f"failed: {why}"
        log(f"{self.contender.name}: {self.problem}")


# --- the run --------------------------------------------------------------------------


def run(ctx: Context) -> None:
    run_sized(ctx, 10_000 if ctx.quick else 100_000, ctx.repeats)


def run_sized(ctx: Context, chunks: int, rounds: int) -> None:
    warnings.filterwarnings("ignore", category=UserWarning, module="zarr")
    python, why_not = peer_python()
    peers = {c.key: Peer(c, python, why_not) for c in CONTENDERS if c.peer is not None}
    log(
        f"{chunks:,} chunks of 1 KiB, {rounds} round(s), zarr {zarr.__version__}, "
        f"Python {platform.python_version()}; peers: {python or 'not installed: ' + why_not}"
    )
    seconds: dict[tuple[str, str], list[float]] = {}
    order = [contender.key for contender in CONTENDERS]
    for round_ in range(rounds):
        for key in order if round_ % 2 == 0 else order[::-1]:  # who goes first alternates
            where = ctx.workdir / "small_keys" / f"{key}-{round_}"
            where.parent.mkdir(parents=True, exist_ok=True)
            os.sync()  # the previous store's writeback must not land in this one's time
            try:
                if key in peers:
                    figures = peers[key].run(chunks, where, round_)
                else:
                    figures = measure(OURS[key](where), chunks, round_)
            finally:
                shutil.rmtree(where, ignore_errors=True)
            for step, value in (figures or {}).items():
                if value is not None:
                    seconds.setdefault((key, step), []).append(value)
        log(f"round {round_ + 1}/{rounds} done")
    median = {key: statistics.median(values) for key, values in seconds.items()}
    add_rows(ctx, chunks, rounds, median, peers)


def add_rows(
    ctx: Context, chunks: int, rounds: int, median: dict[tuple[str, str], float], peers: dict[str, Peer]
) -> None:
    size = f"{chunks:,} x 1 KiB"
    ours_note = f"median of {rounds}"

    def figure(key: str, step: str) -> float | None:
        value = median.get((key, step))
        if value is None:
            return None
        return chunks / value if step in ("write", "read") else value * 1000

    def note(key: str) -> str:
        peer = peers.get(key)
        if peer is None:
            return ours_note
        if peer.problem:
            return peer.problem
        return f"{peer.about}; {ours_note}"

    def add(case: str, ours: str, theirs: str, step: str, baseline_name: str) -> None:
        unit = "chunks/s" if step in ("write", "read") else "ms"
        text = note(theirs)
        peer = peers.get(theirs)
        if unit == "ms" and theirs in COMMIT_NOTES and not (peer and peer.problem):
            text += f"; {COMMIT_NOTES[theirs]}"
        ctx.add(Row("small_keys", case, figure(ours, step), unit, figure(theirs, step), baseline_name, text))

    for ours, baselines in (("ipld_mem", ("memory", "pyhamt")), ("ipld_dir", ("local", "icechunk"))):
        name = BY_KEY[ours].name
        for step in ("write", "read"):
            for theirs in baselines:
                add(f"{step} {size}: {name}", ours, theirs, step, BY_KEY[theirs].name)
    for ours, theirs_list in (("ipld_mem", ("pyhamt",)), ("ipld_dir", ("local", "icechunk"))):
        name = BY_KEY[ours].name
        for theirs in theirs_list:
            add(
                f"first commit of {size}: {name}.freeze()",
                ours,
                theirs,
                "first_commit",
                COMMIT_NAMES[theirs],
            )
        for theirs in theirs_list:
            add(
                f"one chunk overwritten + commit: {name}",
                ours,
                theirs,
                "one_chunk_commit",
                ONE_CHUNK_NAMES[theirs],
            )


COMMIT_NAMES = {
    "pyhamt": "py-hamt make_read_only()",
    "local": "LocalStore: os.sync()",
    "icechunk": "icechunk session.commit()",
}
ONE_CHUNK_NAMES = {
    "pyhamt": "py-hamt write + make_read_only()",
    "local": "LocalStore write + os.sync()",
    "icechunk": "icechunk write + commit()",
}
COMMIT_NOTES = {"icechunk": "its local storage never fsyncs"}
