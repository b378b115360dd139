"""Block stores and transports: where blocks live (memory, a directory) and how they travel (CARs).

Imports point down only: to :mod:`ipldmount.ipld` and :mod:`ipldmount.errors`.
"""

from ipldmount.blocks.base import BlockSink, Blockstore, Chunk, CidOnly, Staging
from ipldmount.blocks.directory import (
    DirectoryBlockstore,
    NotAStoreError,
    default_store_path,
    fsync_dir,
    replacing,
)
from ipldmount.blocks.memory import MemoryBlockstore

__all__ = [
    "BlockSink",
    "Blockstore",
    "Chunk",
    "CidOnly",
    "DirectoryBlockstore",
    "MemoryBlockstore",
    "NotAStoreError",
    "Staging",
    "default_store_path",
    "fsync_dir",
    "replacing",
]
