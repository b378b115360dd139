"""Sharded directories as ipldmount wrote them before it took the spec's bitmap order (tests only)."""

from __future__ import annotations

from typing import Any

from ipldmount.blocks import Blockstore
from ipldmount.format import hamt
from ipldmount.ipld import cid as cids
from ipldmount.ipld import codec


def old_order_copy(store: Blockstore, root: dict[str, Any]) -> dict[str, Any]:
    """*root* (a HAMT root in the spec's order) with every node's bitmap in the old order, a
    big-endian integer, the way the old writer laid the same entries out; new child blocks go
    to *store*."""
    return {**root, "hamt": _old_node(store, root["hamt"])}


def _old_node(store: Blockstore, node: list[Any]) -> list[Any]:
    bitmap, data = node
    elements = [_old_link(store, element) if isinstance(element, codec.Link) else element for element in data]
    return [hamt.bitmap_of(hamt.slots_of(bitmap), hamt.OLD_ORDER), elements]


def _old_link(store: Blockstore, link: codec.Link) -> codec.Link:
    child = _old_node(store, codec.decode(store.get(link.cid)))
    return codec.Link(store.put(codec.encode(child), cids.DAG_CBOR))
