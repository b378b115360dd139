"""ipldmount: zarr data in content-addressed IPLD storage, as a library and as a FUSE mount.

The package is layered in wings whose imports point one way (down this list):
``cli`` and ``zarrstore`` (adapters) > ``mount`` (FUSE, trio) > ``state`` (a mount's
journal, open files, session) > ``tree`` (the mutable model) > ``format`` (FORMAT.md)
> ``blocks`` (stores, CARs) > ``ipld`` (CIDs, DAG-CBOR); ``errors`` and ``progress``
serve them all. :class:`IPLDStore` (and :class:`IPFSStore`, :func:`get_ipfs_mapper`, its
IPFS-backed form) are imported on first use, so the CLI never loads zarr.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ipldmount.blocks import Blockstore, DirectoryBlockstore, MemoryBlockstore, default_store_path
from ipldmount.errors import IpldmountError
from ipldmount.tree import Tree

if TYPE_CHECKING:
    from ipldmount.zarrstore import IPFSStore, IPLDStore, get_ipfs_mapper

__all__ = [
    "Blockstore",
    "DirectoryBlockstore",
    "IPFSStore",
    "IPLDStore",
    "IpldmountError",
    "MemoryBlockstore",
    "Tree",
    "default_store_path",
    "get_ipfs_mapper",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in ("IPLDStore", "IPFSStore", "get_ipfs_mapper"):
        from ipldmount import zarrstore

        return getattr(zarrstore, name)
    raise AttributeError(f"module 'ipldmount' has no attribute {name!r}")
