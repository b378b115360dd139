"""Opening a remote tree: the zarr metadata fetched ahead, in a thread, while the reader starts.

A lazy mount (or an :class:`~ipldmount.adapters.zarr_store.IPFSStore`) over an IPFS node or
gateway would otherwise fetch each metadata key of a dataset when zarr asks, one round trip
after another; :func:`~ipldmount.format.skeleton.fetch_metadata_ahead` asks for them a tree
level at a time. It runs beside the reader rather than before it, so a slow or dead source
delays nothing: a block both want is fetched once (the fetcher joins them), and what the
walk has fetched the reader finds local.
"""

from __future__ import annotations

import logging
import threading

from ipldmount.blocks import Blockstore
from ipldmount.format.skeleton import fetch_metadata_ahead

log = logging.getLogger(__name__)


class MetadataAhead:
    """The walk of one opened root, in a daemon thread; :meth:`stop` ends it at its next level."""

    def __init__(self, store: Blockstore, root: bytes) -> None:
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(store, root), name="ipldmount-metadata-ahead", daemon=True
        )

    @classmethod
    def start(cls, store: Blockstore, root: bytes | None) -> MetadataAhead | None:
        """A started walk, or None where there is nothing to fetch (a local store, no root)."""
        if root is None or not store.fetches_missing:
            return None
        ahead = cls(store, root)
        ahead._thread.start()
        return ahead

    def _run(self, store: Blockstore, root: bytes) -> None:
        try:
            fetch_metadata_ahead(store, root, self._stopped.is_set)
        except Exception as exc:  # only ever ahead of a reader, which meets the same fault itself
            log.debug("fetching metadata ahead stopped: %s", exc)

    def wait(self, seconds: float) -> bool:
        """Wait up to *seconds* for the walk to end; whether it has."""
        self._thread.join(seconds)
        return not self._thread.is_alive()

    def stop(self, wait: float = 0.0) -> None:
        """End the walk after the level it is fetching (*wait*: seconds to wait for that)."""
        self._stopped.set()
        if wait:
            self._thread.join(wait)
