"""ipldmount: zarr data in content-addressed IPLD storage, as a library and as a FUSE mount.

The package is layered in wings whose imports point one way (down this list):
``adapters`` (the FUSE mount, the zarr Store, the gateway server, the command line) >
``session`` (a mount's journal and open files) > ``repo`` (one store's roots, history, gc) >
``tree`` (the mutable model) > ``format`` (FORMAT.md) and ``remote`` (transports) > ``blocks``
(stores, CARs) > ``ipld`` (CIDs, DAG-CBOR); ``errors`` and ``progress`` serve them all.
:class:`IPLDStore` (and :class:`IPFSStore`, :func:`get_ipfs_mapper`, its
IPFS-backed form) are imported on first use, so the CLI never loads zarr.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ipldmount._version import __version__
from ipldmount.blocks import Blockstore, DirectoryBlockstore, MemoryBlockstore, default_store_path
from ipldmount.errors import IpldmountError
from ipldmount.tree.model import Tree

if TYPE_CHECKING:
    from ipldmount.adapters.zarr_store import IPFSStore, IPLDStore, get_ipfs_mapper

__all__ = [
    "Blockstore",
    "DirectoryBlockstore",
    "IPFSStore",
    "IPLDStore",
    "IpldmountError",
    "MemoryBlockstore",
    "Tree",
    "__version__",
    "default_store_path",
    "get_ipfs_mapper",
]


def __getattr__(name: str) -> Any:
    if name in ("IPLDStore", "IPFSStore", "get_ipfs_mapper"):
        from ipldmount.adapters import zarr_store

        return getattr(zarr_store, name)
    raise AttributeError(f"module 'ipldmount' has no attribute {name!r}")
