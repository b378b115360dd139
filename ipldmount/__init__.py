"""ipldmount: zarr data in content-addressed IPLD storage, as a library and as a FUSE mount."""

from .blockstore import Blockstore, DirectoryBlockstore, MemoryBlockstore, default_store_path
from .errors import IpldmountError
from .tree import Tree
from .zarrstore import IPLDStore

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
