"""`ipldmount serve` against the IPFS gateway specifications, over real HTTP.

What the trustless gateway (https://specs.ipfs.tech/http-gateways/trustless-gateway/) and the path
gateway (https://specs.ipfs.tech/http-gateways/path-gateway/) ask, and the IPFS gateway
conformance suite checks, on fixtures built here: a UnixFS DAG made block by block (a directory,
a sub-directory, a file of five raw leaves, a file of two levels, a HAMT shard, a duplicated file)
and an ipldmount tree (inline zarr metadata, a chunked file, a sharded directory). Each test cites
the section it checks.
"""

from __future__ import annotations

import io
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from unixfs_blocks import SYMLINK, put, put_directory, put_file, put_raw, put_shard, unixfs

from ipldmount.adapters.serve import GatewayServer
from ipldmount.blocks import DirectoryBlockstore, car
from ipldmount.blocks.dag import iter_closure
from ipldmount.format import hamt, metadata
from ipldmount.format.files import decode_fbl
from ipldmount.ipld import cid as cids
from ipldmount.ipld import codec
from ipldmount.ipld.codec import Link
from ipldmount.tree.model import Tree

CAR = "application/vnd.ipld.car"
RAW = "application/vnd.ipld.raw"
IMMUTABLE = "public, max-age=29030400, immutable"
ZARRAY = metadata.render(".zarray", {"chunks": [4], "zarr_format": 2})
LEAVES = [bytes([65 + i]) * 256 for i in range(4)] + [b"!\n"]  # 1026 bytes, as the suite's multiblock.txt
BIG = os.urandom((5 << 20) // 2)  # a chunked file of ours: three leaves under one node


@dataclass
class Fixture:
    url: str
    store: DirectoryBlockstore
    unixfs: bytes  # root: subdir/ascii.txt, subdir/multiblock.txt, nested.bin, shard/, copy.txt
    subdir: bytes
    ascii: bytes
    multiblock: bytes
    leaves: list[bytes]
    nested: bytes  # a file node over two file nodes over raw leaves
    nested_halves: list[bytes]
    nested_leaves: list[bytes]
    shard: bytes
    tree: bytes  # ours: arr/.zarray (inline), arr/0, big.bin (chunked), many/ (sharded)
    many: bytes


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fixture]:
    store = DirectoryBlockstore(tmp_path_factory.mktemp("gw") / "store", durable=False)
    ascii_cid = put_raw(store, b"hello application/vnd.ipld.car\n")
    leaves = [put_raw(store, leaf) for leaf in LEAVES]
    multiblock = put_file(store, list(zip(leaves, map(len, LEAVES), strict=True)))
    subdir = put_directory(store, [("ascii.txt", ascii_cid), ("multiblock.txt", multiblock)])
    nested_leaves = [put_raw(store, bytes([48 + i]) * 100) for i in range(4)]
    halves = [put_file(store, [(cid, 100) for cid in nested_leaves[i : i + 2]]) for i in (0, 2)]
    nested = put_file(store, [(half, 200) for half in halves])
    shard = put_shard(store, {f"{i}.txt": put_raw(store, f"file {i}\n".encode()) for i in range(40)})
    copy = put_raw(store, b"hello application/vnd.ipld.car\n")
    unixfs_root = put_directory(
        store,
        [
            ("subdir", subdir),
            ("nested.bin", nested),
            ("shard", shard),
            ("copy.txt", copy),
            ("again.txt", copy),
        ],
    )
    tree = Tree(store)
    tree.write_file("arr/.zarray", ZARRAY)
    tree.write_file("arr/0", b"\x00" * 16)
    tree.write_file("big.bin", BIG)
    sharded = hamt.build(store, {f"n{i}": Link(store.put(str(i).encode(), cids.RAW)) for i in range(2000)})
    many = store.put(codec.encode(sharded), cids.DAG_CBOR)
    tree.put_entry("many", Link(many))
    root = tree.commit()
    server = GatewayServer(store, ("127.0.0.1", 0))
    server.start_in_thread()
    try:
        yield Fixture(
            server.url,
            store,
            unixfs_root,
            subdir,
            ascii_cid,
            multiblock,
            leaves,
            nested,
            halves,
            nested_leaves,
            shard,
            root,
            many,
        )
    finally:
        server.shutdown()
        server.server_close()


def _get(url: str, method: str = "GET", **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        url, method=method, headers={k.replace("_", "-"): v for k, v in headers.items()}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def _car(url: str, **headers: str) -> tuple[dict[str, str], list[bytes]]:
    status, answer, body = _get(url, **headers)
    assert status == 200, body
    _, sections = car.read_car(io.BytesIO(body))  # every block is verified against its CID
    return answer, [cid for cid, _ in sections]


def s(cid: bytes) -> str:
    return cids.cid_to_str(cid)


# --- dag-scope (trustless gateway, "dag-scope (request query parameter)") -----------------------


def test_entity_of_a_unixfs_file_is_every_block_of_it(fx: Fixture) -> None:
    # entity: "all the blocks needed to read an entire UnixFS file", after the path's blocks
    _, blocks = _car(f"{fx.url}/ipfs/{s(fx.unixfs)}/subdir/multiblock.txt?format=car&dag-scope=entity")
    assert blocks == [fx.unixfs, fx.subdir, fx.multiblock, *fx.leaves]
    _, blocks = _car(f"{fx.url}/ipfs/{s(fx.nested)}?format=car&dag-scope=entity")
    assert blocks == [
        fx.nested,
        fx.nested_halves[0],
        *fx.nested_leaves[:2],
        fx.nested_halves[1],
        *fx.nested_leaves[2:],
    ]


def test_entity_of_a_directory_is_its_block_and_its_shard_nodes(fx: Fixture) -> None:
    # entity: "or enumerate a UnixFS directory": a plain one is its block; a HAMT every shard node
    _, blocks = _car(f"{fx.url}/ipfs/{s(fx.unixfs)}?format=car&dag-scope=entity")
    assert blocks == [fx.unixfs]
    _, blocks = _car(f"{fx.url}/ipfs/{s(fx.shard)}?format=car&dag-scope=entity")
    shard_nodes = [cid for cid, _ in iter_closure(fx.store, fx.shard) if cids.codec_of(cid) == cids.DAG_PB]
    assert len(shard_nodes) > 1 and blocks == shard_nodes  # sub-shards included, no entry's block


def test_entity_of_our_chunked_file_and_sharded_directory(fx: Fixture) -> None:
    # FORMAT.md 5 and 6.4: a chunked file is all of its blocks; a sharded directory its HAMT nodes
    _, _, body = _get(f"{fx.url}/ipfs/{s(fx.tree)}/big.bin?format=raw")
    node = cids.block_cid(cids.DAG_CBOR, body)
    _, blocks = _car(f"{fx.url}/ipfs/{s(fx.tree)}/big.bin?format=car&dag-scope=entity")
    assert blocks == [fx.tree, node, *(cid for cid, _ in decode_fbl(body))]
    _, blocks = _car(f"{fx.url}/ipfs/{s(fx.many)}?format=car&dag-scope=entity")
    hamt_nodes = [cid for cid, _ in iter_closure(fx.store, fx.many) if cids.codec_of(cid) == cids.DAG_CBOR]
    assert len(hamt_nodes) > 1 and blocks == hamt_nodes
    _, blocks = _car(f"{fx.url}/ipfs/{s(fx.many)}?format=car&dag-scope=block")
    assert blocks == [fx.many]


# --- entity-bytes (trustless gateway, "entity-bytes (request query parameter)") ------------------


@pytest.mark.parametrize(
    ("asked", "leaves"),
    [
        ("0:*", slice(0, 5)),
        ("512:*", slice(2, 5)),
        ("512:1023", slice(2, 4)),
        ("512:-256", slice(2, 4)),  # to: counted from the end
        ("-5:*", slice(3, 5)),
        ("-9999:*", slice(0, 5)),  # from before the start: from the start
        ("-9999:-3", slice(0, 4)),
        ("0:0", slice(0, 1)),
        ("1000:99999", slice(3, 5)),  # partly past the end: what is within
    ],
)
def test_entity_bytes_sends_the_blocks_of_the_range(fx: Fixture, asked: str, leaves: slice) -> None:
    # "MUST return only the minimal set of blocks necessary to verify the specified byte range"
    url = (
        f"{fx.url}/ipfs/{s(fx.unixfs)}/subdir/multiblock.txt?format=car&dag-scope=entity&entity-bytes={asked}"
    )
    _, blocks = _car(url)
    assert blocks == [fx.unixfs, fx.subdir, fx.multiblock, *fx.leaves[leaves]]


def test_entity_bytes_walks_down_to_the_range_only(fx: Fixture) -> None:
    # the nodes on the way to the range, and the leaves holding it; nothing else is read
    _, blocks = _car(f"{fx.url}/ipfs/{s(fx.nested)}?format=car&entity-bytes=250:299")
    assert blocks == [fx.nested, fx.nested_halves[1], fx.nested_leaves[2]]
    _, _, body = _get(f"{fx.url}/ipfs/{s(fx.tree)}/big.bin?format=raw")
    parts = [cid for cid, _ in decode_fbl(body)]
    _, blocks = _car(f"{fx.url}/ipfs/{s(fx.tree)}/big.bin?format=car&entity-bytes=-1:*")
    assert blocks == [fx.tree, cids.block_cid(cids.DAG_CBOR, body), parts[2]]
    # a directory is not a byte array: the parameter is then the same as dag-scope=entity
    _, blocks = _car(f"{fx.url}/ipfs/{s(fx.unixfs)}?format=car&dag-scope=entity&entity-bytes=0:10")
    assert blocks == [fx.unixfs]


def test_entity_bytes_refusals_and_etag(fx: Fixture) -> None:
    base = f"{fx.url}/ipfs/{s(fx.multiblock)}?format=car&dag-scope=entity"
    for bad in ("x:1", "1", "5:2", "1:2:3", "*:5"):
        assert _get(f"{base}&entity-bytes={bad}")[0] == 400, bad
    assert _get(f"{base}&entity-bytes=1026:*")[0] == 400  # wholly past the end, known upfront
    assert _get(f"{fx.url}/ipfs/{s(fx.multiblock)}?format=car&dag-scope=all&entity-bytes=0:1")[0] == 400
    # "A Gateway MUST augment the returned Etag based on the passed entity-bytes"
    tags = {_get(f"{base}&entity-bytes={asked}")[1]["Etag"] for asked in ("0:*", "0:10", "5:10")}
    scopes = {
        _get(f"{fx.url}/ipfs/{s(fx.multiblock)}?format=car&dag-scope={x}")[1]["Etag"]
        for x in ("all", "block")
    }
    assert len(tags | scopes) == 5


# --- CAR order and dups (trustless gateway, "CAR dups", "CAR format signaling in Response") ------


def test_dups_y_sends_every_block_each_time_the_walk_meets_it(fx: Fixture) -> None:
    url = f"{fx.url}/ipfs/{s(fx.unixfs)}"
    answer, blocks = _car(url, Accept=f"{CAR}; version=1; order=dfs; dups=y")
    assert answer["Content-Type"] == f"{CAR}; version=1; order=dfs; dups=y"
    assert blocks.count(fx.ascii) == 3  # subdir/ascii.txt, copy.txt and again.txt: one block
    answer, blocks = _car(url, Accept=f"{CAR}; version=1; order=dfs; dups=n")
    assert answer["Content-Type"] == f"{CAR}; version=1; order=dfs; dups=n"
    assert blocks.count(fx.ascii) == 1 and len(blocks) == len(set(blocks))
    # the Accept header's parameters count with ?format=car; car-dups in the query comes first
    answer, blocks = _car(f"{url}?format=car", Accept=f"{CAR}; version=1; order=dfs; dups=y")
    assert "dups=y" in answer["Content-Type"] and blocks.count(fx.ascii) == 3
    answer, blocks = _car(f"{url}?format=car&car-dups=n", Accept=f"{CAR}; dups=y")
    assert "dups=n" in answer["Content-Type"] and blocks.count(fx.ascii) == 1
    # order=unk is met with dfs, said so; an order not served is refused
    answer, _ = _car(url, Accept=f"{CAR}; version=1; order=unk")
    assert "order=dfs" in answer["Content-Type"]
    assert _get(url, Accept=f"{CAR}; order=foo")[0] == 406
    assert _get(f"{url}?format=car&car-dups=maybe")[0] == 400


def test_identity_cids_are_never_sent_as_blocks(fx: Fixture) -> None:
    # "A Gateway MUST NOT include virtual blocks identified by identity CIDs", dups=y or not
    identity = "bafkqaf3imvwgy3zaneqgc3janfxgy2lomvscay3jmqfa"
    answer, blocks = _car(f"{fx.url}/ipfs/{identity}", Accept=f"{CAR}; dups=y")
    assert "dups=y" in answer["Content-Type"] and blocks == []
    status, _, body = _get(f"{fx.url}/ipfs/{identity}?format=raw")
    assert (status, body) == (200, cids.inline_data(cids.parse_cid(identity)))


# --- response headers (path gateway, "Response Headers"; the suite's CAR and raw checks) --------


def test_car_and_raw_headers(fx: Fixture) -> None:
    name = s(fx.unixfs)
    answer, _ = _car(f"{fx.url}/ipfs/{name}/subdir?format=car")
    assert answer["Content-Disposition"] == f'attachment; filename="{name}.car"'
    assert answer["X-Content-Type-Options"] == "nosniff" and answer["Accept-Ranges"] == "none"
    assert answer["Cache-Control"] == IMMUTABLE
    assert answer["X-Ipfs-Path"] == f"/ipfs/{name}/subdir"
    assert answer["X-Ipfs-Roots"] == f"{name},{s(fx.subdir)}"
    status, answer, body = _get(f"{fx.url}/ipfs/{name}/subdir/ascii.txt", Accept=RAW)
    assert status == 200 and body == fx.store.get(fx.ascii)
    assert answer["Content-Type"] == RAW and answer["Content-Length"] == str(len(body))
    assert answer["Content-Disposition"] == f'attachment; filename="{s(fx.ascii)}.bin"'
    assert answer["Etag"] == f'"{s(fx.ascii)}.raw"' and answer["X-Content-Type-Options"] == "nosniff"
    assert answer["X-Ipfs-Roots"] == f"{name},{s(fx.subdir)},{s(fx.ascii)}"
    _, answer, _ = _get(f"{fx.url}/ipfs/{s(fx.ascii)}?format=raw&filename=foo%20%C3%A9.bin")
    assert (
        answer["Content-Disposition"]
        == "attachment; filename=\"foo _.bin\"; filename*=UTF-8''foo%20%C3%A9.bin"
    )
    # a single range of a raw block (path gateway, "Range (request header)")
    status, answer, body = _get(f"{fx.url}/ipfs/{s(fx.ascii)}", Accept=RAW, Range="bytes=6-16")
    assert status == 206 and body == fx.store.get(fx.ascii)[6:17]
    assert answer["Content-Range"] == f"bytes 6-16/{len(fx.store.get(fx.ascii))}"


def test_content_location_and_vary_when_accept_chose_the_format(fx: Fixture) -> None:
    # path gateway, "Content-Location (response header)": the URL with format= for caches
    url = f"{fx.url}/ipfs/{s(fx.unixfs)}/subdir"
    _, answer, _ = _get(url, Accept=RAW)
    assert answer["Content-Location"] == f"/ipfs/{s(fx.unixfs)}/subdir?format=raw"
    assert answer["Vary"] == "Accept"
    _, answer, _ = _get(f"{url}?dag-scope=block", Accept=f"{CAR}; dups=y")
    assert answer["Content-Location"] == f"/ipfs/{s(fx.unixfs)}/subdir?dag-scope=block&format=car&car-dups=y"
    _, answer, _ = _get(f"{url}?format=raw", Accept=RAW)
    assert "Content-Location" not in answer and answer["Vary"] == "Accept"


def test_only_if_cached(fx: Fixture) -> None:
    # trustless gateway, "Cache-Control: only-if-cached": 412 when the root block is not here
    missing = s(cids.block_cid(cids.RAW, b"not here"))
    for method in ("GET", "HEAD"):
        assert _get(f"{fx.url}/ipfs/{missing}", method, Cache_Control="only-if-cached")[0] == 412
        assert _get(f"{fx.url}/ipfs/{missing}?format=car", method, Cache_Control="only-if-cached")[0] == 412
        assert _get(f"{fx.url}/ipfs/{missing}?format=raw", method)[0] == 404
        status, _, _ = _get(
            f"{fx.url}/ipfs/{s(fx.unixfs)}?format=raw", method, Cache_Control="only-if-cached"
        )
        assert status == 200
        status, _, _ = _get(f"{fx.url}/ipfs/{s(fx.tree)}/arr/.zarray", method, Cache_Control="only-if-cached")
        assert status == 200


def test_if_none_match_answers_304(fx: Fixture) -> None:
    # path gateway, "If-None-Match (request header)": a matching Etag (weak, listed or *) is a 304
    url = f"{fx.url}/ipfs/{s(fx.unixfs)}/subdir/ascii.txt"
    _, answer, _ = _get(url)
    assert answer["Etag"] == f'"{s(fx.ascii)}"'
    for tag in (answer["Etag"], f'"x", W/{answer["Etag"]}', "*"):
        assert _get(url, If_None_Match=tag)[0] == 304
    assert _get(url, If_None_Match='"other"')[0] == 200


# --- paths below a CID (path gateway; trustless CARs "pathing behavior") -------------------------


def test_a_path_through_unixfs_directories_and_a_shard(fx: Fixture) -> None:
    # the CAR holds every block that proves the path, then the terminating entity as the scope says
    _, blocks = _car(f"{fx.url}/ipfs/{s(fx.unixfs)}/subdir/ascii.txt?format=car")
    assert blocks == [fx.unixfs, fx.subdir, fx.ascii]
    _, blocks = _car(f"{fx.url}/ipfs/{s(fx.unixfs)}/subdir?format=car&dag-scope=block")
    assert blocks == [fx.unixfs, fx.subdir]
    _, blocks = _car(f"{fx.url}/ipfs/{s(fx.unixfs)}/shard/7.txt?format=car&dag-scope=block")
    assert blocks[:2] == [fx.unixfs, fx.shard] and len(blocks) >= 3
    shard_nodes = {cid for cid, _ in iter_closure(fx.store, fx.shard) if cids.codec_of(cid) == cids.DAG_PB}
    assert set(blocks[2:-1]) <= shard_nodes and blocks[-1] not in shard_nodes
    assert fx.store.get(blocks[-1]) == b"file 7\n"
    status, _, body = _get(f"{fx.url}/ipfs/{s(fx.unixfs)}/shard/7.txt")
    assert (status, body) == (200, b"file 7\n")


def test_a_path_through_our_tree(fx: Fixture) -> None:
    root = s(fx.tree)
    # inline metadata: its block is the directory's; its bytes are its rendering (FORMAT.md 4)
    status, answer, body = _get(f"{fx.url}/ipfs/{root}/arr/.zarray")
    assert (status, body) == (200, ZARRAY)
    assert type(codec.decode(fx.store.get(fx.tree))["arr"]) is dict  # arr/ is inline in the root too
    assert answer["Content-Type"] == "application/json" and answer["Etag"] == f'"{root}/arr/.zarray"'
    assert answer["X-Ipfs-Roots"] == f"{root},{root},{root}"
    _, _, body = _get(f"{fx.url}/ipfs/{root}/arr/.zarray?format=raw")
    assert cids.block_cid(cids.DAG_CBOR, body) == fx.tree
    _, blocks = _car(f"{fx.url}/ipfs/{root}/arr/.zarray?format=car")
    assert blocks == [fx.tree]
    # a sharded directory: the HAMT nodes on the name's path, then the file
    _, blocks = _car(f"{fx.url}/ipfs/{root}/many/n1234?format=car")
    assert blocks[:2] == [fx.tree, fx.many] and fx.store.get(blocks[-1]) == b"1234"
    assert all(cids.codec_of(cid) == cids.DAG_CBOR for cid in blocks[:-1])
    status, _, body = _get(f"{fx.url}/ipfs/{root}/big.bin", Range="bytes=1048570-1048581")
    assert (status, body) == (206, BIG[1048570:1048582])  # across two leaves


def test_file_bytes_by_path_with_ranges(fx: Fixture) -> None:
    # path gateway "Range (request header)": one range is served (206), the first of several
    url = f"{fx.url}/ipfs/{s(fx.unixfs)}/subdir/multiblock.txt"
    whole = b"".join(LEAVES)
    status, answer, body = _get(url)
    assert (status, body) == (200, whole)
    assert answer["Content-Type"] == "text/plain; charset=utf-8" and answer["Accept-Ranges"] == "bytes"
    assert answer["Cache-Control"] == IMMUTABLE and answer["Etag"] == f'"{s(fx.multiblock)}"'
    assert answer["X-Ipfs-Path"] == f"/ipfs/{s(fx.unixfs)}/subdir/multiblock.txt"
    for asked, part in (
        ("bytes=250-260", whole[250:261]),
        ("bytes=-3", whole[-3:]),
        ("bytes=1020-", whole[1020:]),
    ):
        status, answer, body = _get(url, Range=asked)
        assert (status, body) == (206, part), asked
        start = len(whole) - len(part) if asked.startswith("bytes=-") or asked.endswith("-") else 250
        assert answer["Content-Range"] == f"bytes {start}-{start + len(part) - 1}/{len(whole)}"
    status, answer, _ = _get(url, Range="bytes=6-16,0-4")
    assert status == 206 and answer["Content-Range"] == f"bytes 6-16/{len(whole)}"
    status, answer, _ = _get(url, Range="bytes=2000-")
    assert status == 416 and answer["Content-Range"] == f"bytes */{len(whole)}"
    assert _get(url, Range="lines=1-2")[:3:2] == (200, whole)  # not a byte range: the whole
    status, answer, body = _get(url, "HEAD", Range="bytes=0-9")
    assert (status, answer["Content-Length"], body) == (206, "10", b"")
    status, answer, body = _get(f"{url}?filename=data.bin&download=true", Accept="text/html,*/*;q=0.8")
    assert status == 200 and answer["Content-Disposition"] == 'attachment; filename="data.bin"'


def test_a_directory_answers_a_json_listing(fx: Fixture) -> None:
    status, answer, body = _get(f"{fx.url}/ipfs/{s(fx.unixfs)}/subdir/")
    assert status == 200 and answer["Content-Type"] == "application/json"
    listing = json.loads(body)
    assert listing == {
        "cid": s(fx.subdir),
        "entries": [
            {"name": "ascii.txt", "cid": s(fx.ascii)},
            {"name": "multiblock.txt", "cid": s(fx.multiblock)},
        ],
    }
    _, _, body = _get(f"{fx.url}/ipfs/{s(fx.tree)}/arr", Accept="*/*")
    assert {entry["name"]: entry["cid"] for entry in json.loads(body)["entries"]}[".zarray"] is None


def test_paths_that_name_nothing(fx: Fixture) -> None:
    root = s(fx.unixfs)
    assert _get(f"{fx.url}/ipfs/{root}/subdir/nope.txt")[0] == 404
    assert _get(f"{fx.url}/ipfs/{root}/subdir/nope.txt?format=car")[0] == 404
    assert _get(f"{fx.url}/ipfs/{root}/subdir/ascii.txt/below")[0] == 404  # below a file
    assert _get(f"{fx.url}/ipfs/{root}/subdir/..")[0] == 400
    assert _get(f"{fx.url}/ipfs/{root}/%2E%2E/x")[0] == 400
    assert _get(f"{fx.url}/ipfs/{root}/sub%FFdir")[0] == 400
    assert _get(f"{fx.url}/ipfs/{root}//subdir//ascii.txt")[0] == 200  # empty segments skipped
    assert _get(f"{fx.url}/ipfs/{s(fx.tree)}/arr/%2Ezarray")[2] == ZARRAY  # percent-decoded


def test_a_file_whose_bytes_are_not_here_is_a_404_not_a_500(tmp_path: Path) -> None:
    store = DirectoryBlockstore(tmp_path / "store", durable=False)
    leaves = [put_raw(store, bytes([i]) * 100) for i in range(3)]
    file = put_file(store, [(cid, 100) for cid in leaves])
    symlink = put(store, [], unixfs(SYMLINK, b"f"))
    root = put_directory(store, [("f", file), ("l", symlink)])
    store.block_path(leaves[2]).unlink()
    server = GatewayServer(store, ("127.0.0.1", 0))
    server.start_in_thread()
    try:
        url = f"{server.url}/ipfs/{s(root)}/f"
        assert _get(url)[0] == 404
        assert _get(url, Cache_Control="only-if-cached")[0] == 412
        status, _, body = _get(url, Range="bytes=0-99")  # the part that is here
        assert (status, body) == (206, bytes([0]) * 100)
        assert _get(f"{server.url}/ipfs/{s(root)}/l")[0] == 501  # neither file nor directory
        assert _get(f"{server.url}/ipfs/{s(root)}/l?format=raw")[2] == store.get(symlink)
        status, _, body = _get(f"{url}?format=car&entity-bytes=0:150")  # as the suite asks
        assert status == 200 and [cid for cid, _ in car.read_car(io.BytesIO(body))[1]] == [
            root,
            file,
            *leaves[:2],
        ]
    finally:
        server.shutdown()
        server.server_close()
