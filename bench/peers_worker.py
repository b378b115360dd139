#!/usr/bin/env python3
"""One round of bench/b_small_keys.py on a peer store, in the peers' Python (>= 3.12).

    .tools/peers-py312/bin/python bench/peers_worker.py --store icechunk --chunks 100000 \\
        --dir /var/tmp/x/icechunk-0 --round 0

prints one JSON line: the four figures in seconds (``write``, ``read``, ``first_commit``,
``one_chunk_commit``) and what measured them (``peer``: the package and its version,
``python``). icechunk and py-hamt need Python >= 3.12 and the project's venv is 3.11, so
b_small_keys runs this in a subprocess (scripts/peer-python.sh makes the venv).

It imports nothing from ipldmount or bench/common, only zarr and numpy (and the peer, lazily):
b_small_keys imports :func:`make_data` and :func:`measure` from here, so every store, ours and
the peers', gets the same bytes and the same steps, timed the same way.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr

CHUNK_ITEMS = 256  # float32: one chunk is 1 KiB
DTYPE = "float32"


def make_data(chunks: int, round_: int) -> np.ndarray:
    """*chunks* x 256 float32 in [0, 1) (no NaN: equality is plain), the first item of chunk i
    being ``i + round_ * chunks`` (exact in float32 up to 2**24): no two chunks of any round are
    equal, so a content-addressed store never finds one it already has."""
    data = np.random.default_rng(7).random(chunks * CHUNK_ITEMS, dtype=np.float32)
    data[::CHUNK_ITEMS] = np.arange(chunks, dtype=np.float64) + round_ * chunks
    return data


def patch_for(data: np.ndarray, round_: int) -> tuple[slice, np.ndarray]:
    """The one chunk overwritten after the first commit (the middle one), and its new values:
    negative numbers, which the first write never has."""
    chunks = len(data) // CHUNK_ITEMS
    middle = chunks // 2
    where = slice(middle * CHUNK_ITEMS, (middle + 1) * CHUNK_ITEMS)
    return where, -(data[where] + np.float32(1 + round_))


class Steps:
    """How a store is made, committed and reopened; subclasses fill in the store's own ways.

    :meth:`commit` returning False means the store has no commit (zarr's MemoryStore): its
    commit figures are None.
    """

    def create(self) -> Any:
        """A new, empty, writable zarr store."""
        raise NotImplementedError

    def commit(self) -> bool:
        """Make what was written final (a root, a snapshot, durable bytes)."""
        return False

    def reopen(self) -> Any:
        """A fresh store object on the committed state, for reading."""
        raise NotImplementedError

    def writable(self) -> Any:
        """A store that writes on top of the committed state (the one-chunk overwrite)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the steps opened."""


def measure(steps: Steps, chunks: int, round_: int) -> dict[str, float | None]:
    """Seconds for each step on a fresh store: ``a[:] = data`` (creating the array not counted),
    the first commit, ``open_array(...)[:]`` on a fresh store at the committed state, then one
    chunk overwritten plus a second commit (opening the array for it not counted). Every value
    read back is checked. A garbage collection runs before each timed step, for every store
    alike: a collection the last step made due (100 ms over a store's 100,000 keys) is not
    charged to a 5 ms step."""
    data = make_data(chunks, round_)
    gc.collect()  # the previous store's garbage is not collected in this one's time
    try:
        array = zarr.create_array(
            steps.create(),
            name="a",
            shape=data.shape,
            chunks=(CHUNK_ITEMS,),
            dtype=DTYPE,
            compressors=None,
            fill_value=np.float32(0),
            zarr_format=3,
        )
        gc.collect()
        start = time.perf_counter()
        array[:] = data
        write = time.perf_counter() - start
        gc.collect()
        start = time.perf_counter()
        committed = steps.commit()
        first_commit = time.perf_counter() - start if committed else None

        fresh = steps.reopen()
        gc.collect()
        start = time.perf_counter()
        values = zarr.open_array(fresh, path="a", mode="r")[:]
        read = time.perf_counter() - start
        if not np.array_equal(values, data):
            raise RuntimeError(f"read back different data from {fresh!r}")
        del values, fresh

        one_chunk_commit = None
        if committed:
            where, patch = patch_for(data, round_)
            again = zarr.open_array(steps.writable(), path="a", mode="r+")
            gc.collect()
            start = time.perf_counter()
            again[where] = patch
            steps.commit()
            one_chunk_commit = time.perf_counter() - start
            if not np.array_equal(zarr.open_array(steps.reopen(), path="a", mode="r")[where], patch):
                raise RuntimeError("the one-chunk overwrite is not in the second commit")
    finally:
        steps.close()
    return {"write": write, "read": read, "first_commit": first_commit, "one_chunk_commit": one_chunk_commit}


# --- the peers ------------------------------------------------------------------------


class IcechunkSteps(Steps):
    """icechunk on a local filesystem repository: a writable session on ``main``, committed with
    ``session.commit``; read through a readonly session of the repository opened anew."""

    def __init__(self, where: Path, round_: int) -> None:
        self.where = where
        self.round = round_
        self.repo: Any = None
        self.session: Any = None
        self.commits = 0

    def create(self) -> Any:
        import icechunk

        self.repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(self.where)))
        self.session = self.repo.writable_session("main")
        return self.session.store

    def commit(self) -> bool:
        self.commits += 1
        self.session.commit(f"round {self.round}, commit {self.commits}")
        return True

    def reopen(self) -> Any:
        import icechunk

        repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(self.where)))
        return repo.readonly_session("main").store

    def writable(self) -> Any:
        self.session = self.repo.writable_session("main")
        return self.session.store


class PyHamtSteps(Steps):
    """py-hamt in memory: ``HAMT`` (values as bytes) over an ``InMemoryCAS`` behind a
    ``ZarrHAMTStore``; its commit is ``hamt.make_read_only()``, which writes the buffered nodes
    to the CAS and makes ``hamt.root_node_id`` the root. Read through a new read-only HAMT on
    that root over the same CAS. The HAMT's coroutines run on zarr's own event loop, where the
    store's are run."""

    def __init__(self) -> None:
        self.cas: Any = None
        self.hamt: Any = None

    def create(self) -> Any:
        from py_hamt import HAMT, InMemoryCAS, ZarrHAMTStore
        from zarr.core.sync import sync

        self.cas = InMemoryCAS()
        self.hamt = sync(HAMT.build(cas=self.cas, values_are_bytes=True))
        return ZarrHAMTStore(self.hamt, read_only=False)

    def commit(self) -> bool:
        from zarr.core.sync import sync

        sync(self.hamt.make_read_only())
        return True

    def reopen(self) -> Any:
        from py_hamt import HAMT, ZarrHAMTStore

        reader = HAMT(
            cas=self.cas, root_node_id=self.hamt.root_node_id, read_only=True, values_are_bytes=True
        )
        return ZarrHAMTStore(reader, read_only=True)

    def writable(self) -> Any:
        from py_hamt import ZarrHAMTStore
        from zarr.core.sync import sync

        sync(self.hamt.enable_write())
        return ZarrHAMTStore(self.hamt, read_only=False)


def peer_version(store: str) -> str:
    from importlib.metadata import version

    package = {"icechunk": "icechunk", "pyhamt": "py-hamt"}[store]
    return f"{package} {version(package)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", required=True, choices=["icechunk", "pyhamt"])
    parser.add_argument("--chunks", type=int, required=True, help="chunks of 1 KiB in the array")
    parser.add_argument("--dir", type=Path, required=True, help="a new directory for a store on disk")
    parser.add_argument("--round", type=int, default=0, help="stamped into the data (no block dedupes)")
    args = parser.parse_args(argv)
    steps: Steps = IcechunkSteps(args.dir, args.round) if args.store == "icechunk" else PyHamtSteps()
    figures: dict[str, Any] = dict(measure(steps, args.chunks, args.round))
    figures.update(peer=peer_version(args.store), python=platform.python_version(), zarr=zarr.__version__)
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
