"""ipldmount: zarr data in content-addressed IPLD storage, as a library and as a FUSE mount.

The package is layered in wings whose imports point one way (down this list):
``cli`` and ``zarrstore`` (adapters) > ``mount`` (FUSE, trio) > ``state`` (a mount's
journal, open files, session) > ``tree`` (the mutable model) > ``format`` (FORMAT.md)
> ``blocks`` (stores, CARs) > ``ipld`` (CIDs, DAG-CBOR); ``errors`` and ``progress``
serve them all. :class:`IPLDStore` is imported on first use, so the CLI never loads zarr.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ipldmount.blocks import Blockstore, DirectoryBlockstore, MemoryBlockstore, default_store_path
from ipldmount.errors import IpldmountError
from ipldmount.tree import Tree

if TYPE_CHECKING:
    from ipldmount.zarrstore import IPLDStore

__all__ = [
    "Blockstore",
    "DirectoryBlockstore",
    "IPLDStore",
    "IpldmountError",
    "MemoryBlockstore",
    "Tree",
    "default_store_path",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "IPLDStore":
        from ipldmount.zarrstore import IPLDStore

        return IPLDStore
    raise AttributeError(f"module 'ipldmount' has no attribute {name!r}")
