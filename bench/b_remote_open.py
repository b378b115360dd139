"""remote_open: `xr.open_zarr` of a 50-array dataset that only an IPFS node has, into a cold cache.

The node is the test suite's Kubo (tests/ipfs_node.py), reached through a proxy on loopback that
holds each request for LATENCY seconds, as a node across a network would: on loopback a round
trip costs well under a millisecond, and the number of round trips, which is what the metadata
walk (ipldmount/format/skeleton.py) cuts, would not show. Each round opens the dataset twice in
fresh IPFSStores, once with the walk and once without it (who goes first alternates), and checks
that both opened all 50 arrays.
"""

from __future__ import annotations

import contextlib
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
from common import Context, Row, Timer, log

from ipldmount.adapters.zarr_store import IPFSStore, IPLDStore
from ipldmount.blocks import DirectoryBlockstore
from ipldmount.remote.exchange import push
from ipldmount.remote.kubo import KuboNode
from ipldmount.session.ahead import MetadataAhead

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import ipfs_node  # the test suite's node runner

LATENCY = 0.020  # seconds each request waits on its way to the node: a nearby node
ARRAYS = 50


class LatencyProxy:
    """127.0.0.1:port -> *target*, holding each burst a client sends for *delay* seconds."""

    def __init__(self, target: int, delay: float) -> None:
        self.target, self.delay = target, delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pipe, args=(client, server, self.delay), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, 0.0), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket, delay: float) -> None:
        try:
            while data := source.recv(1 << 16):
                if delay:
                    time.sleep(delay)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)


def run(ctx: Context) -> None:
    reason = ipfs_node.node_missing()
    if reason is not None:
        log(f"remote_open: skipped: {reason}")
        return
    node = ipfs_node.start_node()
    proxy = LatencyProxy(node.api_port, LATENCY)
    try:
        root = _dataset(ctx, node, chunks=400 if ctx.quick else 2000)
        _measure(ctx, f"http://127.0.0.1:{proxy.port}", root, rounds=max(ctx.repeats, 3))
    finally:
        proxy.close()
        node.stop()


def _dataset(ctx: Context, node: ipfs_node.IpfsNode, chunks: int) -> str:
    """ARRAYS float32 arrays of *chunks* one-row chunks each, pushed to the node; the commit."""
    import xarray as xr

    store = IPLDStore(DirectoryBlockstore(ctx.path("remote_open", "origin"), durable=False))
    arrays = {f"v{i:02d}": (("t", "x"), np.full((chunks, 16), i, dtype="f4")) for i in range(ARRAYS)}
    encoding = {name: {"chunks": (1, 16), "compressors": None} for name in arrays}
    xr.Dataset(arrays).to_zarr(store, encoding=encoding, consolidated=False, zarr_format=2)
    commit = store.freeze()
    push(store.blockstore, store.place.commit or b"", KuboNode(node.url), pin=True)
    log(f"remote_open: {ARRAYS} arrays of {chunks} chunks on the node")
    return commit


def _open(url: str, root: str, walk: bool) -> float:
    """Seconds for xr.open_zarr over a fresh IPFSStore (cold cache), with or without the walk."""
    import xarray as xr

    ahead = MetadataAhead  # as the store module names it: patched here, on the class
    start = ahead.__dict__["start"]  # the classmethod itself, put back as it was
    if not walk:
        ahead.start = classmethod(lambda cls, store, root: None)  # type: ignore[method-assign,assignment]
    try:
        store = IPFSStore(url, root, read_only=True)
        with Timer() as timer:
            opened = xr.open_zarr(store, consolidated=False)
        assert len(opened.data_vars) == ARRAYS
        store.close()
    finally:
        ahead.start = start  # type: ignore[method-assign]
    return timer.seconds


def _measure(ctx: Context, url: str, root: str, rounds: int) -> None:
    times: dict[bool, list[float]] = {True: [], False: []}
    for round_ in range(rounds):
        for walk in (True, False) if round_ % 2 == 0 else (False, True):
            times[walk].append(_open(url, root, walk))
        shown = f"with {times[True][-1]:.2f} s, without {times[False][-1]:.2f} s"
        log(f"remote_open: round {round_ + 1}/{rounds}: {shown}")
    with_walk, without = statistics.median(times[True]), statistics.median(times[False])
    note = f"median of {rounds}, interleaved; {LATENCY * 1000:.0f} ms per request to Kubo"
    case = f"xr.open_zarr, {ARRAYS} arrays, cold cache"
    ctx.add(Row("remote_open", case, with_walk, "s", without, "the same, no metadata walk", note))
