"""UnixFS blocks made by hand, for the cases an importer never makes (data beside links, identity
links, odd layouts) and the hostile ones. A tiny DAG-PB encoder: tests only, never shipped."""

from __future__ import annotations

import mmh3

from ipldmount.blocks import Blockstore
from ipldmount.ipld import cid as cids
from ipldmount.ipld.varint import encode_varint

DIRECTORY, FILE, SYMLINK, SHARD = 1, 2, 4, 5


def _field(number: int, payload: bytes | int) -> bytes:
    if isinstance(payload, int):
        return encode_varint(number << 3) + encode_varint(payload)
    return encode_varint(number << 3 | 2) + encode_varint(len(payload)) + payload


def unixfs(
    kind: int,
    data: bytes | None = None,
    *,
    filesize: int | None = None,
    blocksizes: tuple[int, ...] = (),
    hash_type: int | None = None,
    fanout: int | None = None,
) -> bytes:
    """A UnixFS ``Data`` message."""
    out = _field(1, kind)
    if data is not None:
        out += _field(2, data)
    if filesize is not None:
        out += _field(3, filesize)
    for size in blocksizes:
        out += _field(4, size)
    if hash_type is not None:
        out += _field(5, hash_type)
    if fanout is not None:
        out += _field(6, fanout)
    return out


def pb_node(links: list[tuple[bytes, str | None, int | None]], data: bytes | None) -> bytes:
    """A DAG-PB block: links (binary CID, name, tsize) first, then Data."""
    out = b""
    for cid, name, tsize in links:
        link = _field(1, cid)
        if name is not None:
            link += _field(2, name.encode())
        if tsize is not None:
            link += _field(3, tsize)
        out += _field(2, link)
    if data is not None:
        out += _field(1, data)
    return out


def put(store: Blockstore, links: list[tuple[bytes, str | None, int | None]], data: bytes | None) -> bytes:
    block = pb_node(links, data)
    cid = cids.block_cid(cids.DAG_PB, block)
    store.put_block(cid, block)
    return cid


def put_raw(store: Blockstore, data: bytes) -> bytes:
    return store.put(data, cids.RAW)


def identity(data: bytes, codec: int = cids.RAW) -> bytes:
    return bytes([0x01, codec, 0x00]) + encode_varint(len(data)) + data


def cidv0(cid: bytes) -> bytes:
    """The CIDv0 form of a dag-pb CIDv1 (what older ``ipfs add`` writes into links)."""
    assert cid[:4] == bytes([0x01, cids.DAG_PB, 0x12, 0x20])
    return cid[2:]


def put_file(store: Blockstore, parts: list[tuple[bytes, int]], data: bytes | None = None) -> bytes:
    """A file node over *parts* (cid, length), with *data* of its own before them."""
    message = unixfs(
        FILE,
        data,
        filesize=len(data or b"") + sum(n for _, n in parts),
        blocksizes=tuple(n for _, n in parts),
    )
    return put(store, [(cid, None, n) for cid, n in parts], message)


def put_directory(store: Blockstore, entries: list[tuple[str, bytes]]) -> bytes:
    return put(store, [(cid, name, 0) for name, cid in entries], unixfs(DIRECTORY))


def put_shard(store: Blockstore, entries: dict[str, bytes], fanout: int = 4, depth: int = 0) -> bytes:
    """A UnixFS HAMT shard of *entries* (name -> CID), placed by murmur3 as go-unixfs places them:
    a slot of one entry links it (named bucket + name), a slot of more a sub-shard (named bucket)."""
    width, pad = fanout.bit_length() - 1, len(f"{fanout - 1:X}")
    slots: dict[int, dict[str, bytes]] = {}
    for name, cid in entries.items():
        digest, _ = mmh3.hash64(name.encode(), 0, signed=False)
        slots.setdefault(digest >> (64 - width * (depth + 1)) & (fanout - 1), {})[name] = cid
    links: list[tuple[bytes, str | None, int | None]] = []
    for index in sorted(slots):
        group = slots[index]
        if len(group) == 1:
            [(name, cid)] = group.items()
            links.append((cid, f"{index:0{pad}X}{name}", 1))
        else:
            links.append((put_shard(store, group, fanout, depth + 1), f"{index:0{pad}X}", 1))
    bitmap = sum(1 << index for index in slots).to_bytes(max(1, fanout // 8), "big")
    return put(store, links, unixfs(SHARD, bitmap, hash_type=0x22, fanout=fanout))
