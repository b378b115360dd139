"""A trustless HTTP gateway, read-only: raw blocks and CAR streams, every block verified.

Requests follow the trustless gateway specification: ``GET /ipfs/{cid}`` with both the
``format`` query parameter and the ``Accept`` header, ``application/vnd.ipld.raw`` for
one block, ``application/vnd.ipld.car`` (``dag-scope``, ``order=dfs``, ``dups=n``) for a
DAG. Nothing a gateway sends is trusted: a block must hash to the CID asked for (and is
refused once past MAX_BLOCK, as it streams in), a CAR's blocks are checked by whoever reads
it (:func:`~ipldmount.remote.exchange.pull`), an error's body is never read, and every request
ends by its deadline (:mod:`.http`).
"""

from __future__ import annotations

from collections.abc import Iterator

from ipldmount.errors import RemoteError
from ipldmount.ipld import cid as cids
from ipldmount.remote.http import Endpoint, Reply, Timeouts
from ipldmount.remote.limits import MAX_BLOCK

RAW = "application/vnd.ipld.raw"
CAR = "application/vnd.ipld.car"


class Gateway:
    """The trustless gateway at *url* (``https://host``; requests go to ``/ipfs/...``)."""

    def __init__(self, url: str, timeouts: Timeouts | None = None) -> None:
        self.endpoint = Endpoint(url, "gateway", timeouts)

    def __repr__(self) -> str:
        return f"Gateway({self.endpoint.url!r})"

    @property
    def url(self) -> str:
        return self.endpoint.url

    def close(self) -> None:
        self.endpoint.close()

    def get_block(self, cid: bytes) -> bytes:
        """The block *cid*, verified: RemoteError if the gateway lacks it or sends other bytes."""
        name = cids.cid_to_str(cid)
        asked = f"block {name}"
        params = [("format", "raw")]
        with self.endpoint.request(
            "GET", f"/ipfs/{name}", params, headers={"Accept": RAW}, asked=asked
        ) as reply:
            self._check(reply, asked, RAW)
            data = reply.body(MAX_BLOCK, "block")
        if not cids.verify(cid, data):
            raise RemoteError(f"gateway {self.url} sent a wrong block for {name} ({len(data)} bytes)")
        return data

    def export_car(self, root: bytes, scope: str = "all") -> Iterator[bytes]:
        """A CAR of the DAG under *root* (``dag-scope`` *scope*), as it comes: the reader verifies it."""
        name = cids.cid_to_str(root)
        accept = f"{CAR}; version=1; order=dfs; dups=n"
        params = [("format", "car"), ("dag-scope", scope), ("car-version", "1")]
        deadline = self.endpoint.deadline(rated=True)  # as long as its size takes at the minimum rate
        asked = f"CAR of {name}"
        reply = self.endpoint.request(
            "GET", f"/ipfs/{name}", params, headers={"Accept": accept}, deadline=deadline, asked=asked
        )
        try:
            self._check(reply, asked, CAR)
        except RemoteError:
            reply.close()
            raise
        return reply.pieces()

    def _check(self, reply: Reply, asked: str, expected: str) -> None:
        """RemoteError unless *reply* is a 200 of the *expected* content type (its body unread)."""
        status, content_type = reply.status, reply.header("Content-Type")
        if status == 404:
            raise RemoteError(f"gateway {self.url}: {asked}: not found (404)")
        if status != 200:
            raise RemoteError(f"gateway {self.url}: {asked}: HTTP {status}")
        if content_type.split(";")[0].strip().lower() != expected:
            answered = content_type[:80] or "no content type"
            raise RemoteError(
                f"gateway {self.url}: {asked}: answered {answered!r}, not {expected} "
                "(not a trustless gateway?)"
            )
