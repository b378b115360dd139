"""The sizes of blocks the IPFS network exchanges: what a node takes, what anyone sends.

Apart from the transports (:mod:`.kubo`, :mod:`.gateway`) so that code moving DAGs
(:mod:`.exchange`) knows them without loading an HTTP client.
"""

from __future__ import annotations

from ipldmount.errors import RemoteError
from ipldmount.ipld import cid as cids

BLOCK_LIMIT = 2 << 20  # the largest block Kubo (0.40 and later) accepts from block/put and dag/import
MAX_BLOCK = 2 << 20  # the largest block taken from a node or gateway: the most IPFS implementations exchange


def check_block_size(cid: bytes, size: int) -> None:
    """RemoteError if a node would refuse a block of *size* bytes."""
    if size > BLOCK_LIMIT:
        raise RemoteError(
            f"block {cids.cid_to_str(cid)} is {size:,} bytes, over the {BLOCK_LIMIT:,} an IPFS node "
            "accepts (a file stored whole, --whole-files): it cannot be sent"
        )
