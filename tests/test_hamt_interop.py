"""Our sharded directories against the IPLD HashMap's other implementations (FORMAT.md 6.4).

iamap 3.0.6 (JavaScript, the implementation the spec names) and go-ipld-adl-hamt (the spec's Go
ADL) read what we write and write what we read, through tests/interop; the spec's own fixture,
alice-words, settles the bitmap's bit order. What these tests find about go-ipld-adl-hamt is that
it disagrees with the spec: it numbers a byte's bits from the most significant one. They assert
what is true of it, and our format follows the spec.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fuse_helpers import Mounts, expect_errno, read_file
from hamt_helpers import old_order_copy
from ipfs_node import NODE_DIR, require_node

from ipldmount.blocks import Blockstore, DirectoryBlockstore, MemoryBlockstore
from ipldmount.blocks.car import export_car, import_car, read_car
from ipldmount.format import dirnode, hamt
from ipldmount.ipld import cid as cids
from ipldmount.ipld import codec

pytest_plugins = ("fuse_helpers",)

REPO = Path(__file__).resolve().parent.parent
IAMAP = REPO / "tests/interop/hamt_iamap.mjs"
HAMT_GO = REPO / ".tools/bin/hamt-go"  # `make interop-tools` builds it
FIXTURE = REPO / "tests/data/hamt_alice_words"
FIXTURE_ROOT = "bafyreic672jz6huur4c2yekd3uycswe2xfqhjlmtmm5dorb6yoytgflova"  # as the spec publishes it


# --- the tools ----------------------------------------------------------------------------


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} -- CI must run the HashMap interop tests", pytrace=False)
    pytest.skip(reason)


def iamap(*args: str | Path) -> str:
    """Run tests/interop/hamt_iamap.mjs: its stdout."""
    require_node(network=False)
    if not (NODE_DIR / "node_modules/iamap").exists():
        _missing("iamap is not installed in tests/ipfs-node: run `make interop-tools`")
    return _run([shutil.which("node") or "node", IAMAP, *args])


def hamt_go(*args: str | Path) -> str:
    """Run go-ipld-adl-hamt's program, .tools/bin/hamt-go: its stdout."""
    if not HAMT_GO.exists():
        _missing(f"{HAMT_GO} is missing: run `make interop-tools` (needs go)")
    return _run([HAMT_GO, *args])


def _run(command: list[Any]) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return result.stdout


Tool = Callable[..., str]


def read_with(tool: Tool, car: Path, root: str) -> dict[str, bool]:
    """Every key *tool* lists in the HashMap at *root*, with whether its lookup finds it."""
    found = json.loads(tool("read", car, root))
    listed = dict(found["entries"])
    assert len(listed) == len(found["entries"]), "a key listed twice"
    return listed


# --- HashMaps of file links, ours and theirs ---------------------------------------------------


def file_links(store: Blockstore, count: int) -> dict[str, codec.Link]:
    """*count* zarr-like chunk names, each linking to a raw block of its own (stored)."""
    names = [f"{i}.{j}" for i in range(count) for j in range(100)][:count]
    return {name: codec.Link(store.put(f"chunk {name}\n".encode(), cids.RAW)) for name in names}


def our_car(tmp_path: Path, store: Blockstore, root: dict[str, Any]) -> tuple[Path, str]:
    """A HAMT root stored and exported with the project's CAR export: (the CAR, the root CID)."""
    cid = store.put(codec.encode(root), cids.DAG_CBOR)
    car = tmp_path / f"{cids.cid_to_str(cid)}.car"
    with car.open("wb") as out:
        export_car(store, cid, out)
    return car, cids.cid_to_str(cid)


def our_root(links: dict[str, codec.Link]) -> str:
    """The root CID of our HAMT of *links*."""
    return cids.cid_to_str(cids.block_cid(cids.DAG_CBOR, codec.encode(hamt.build(MemoryBlockstore(), links))))


def their_car(tool: Tool, tmp_path: Path, links: dict[str, codec.Link]) -> tuple[Path, str]:
    """A HashMap of *links* written by *tool*: (its CAR, the root CID it printed)."""
    names = tmp_path / "names.json"
    names.write_text(json.dumps({name: cids.cid_to_str(link.cid) for name, link in links.items()}))
    car = tmp_path / "theirs.car"
    return car, tool("write", names, car).strip()


MSB_FIRST = "msb-first"  # go-ipld-adl-hamt's order: slot i is bit 7 - i % 8 of byte i // 8


def finds(blocks: dict[bytes, Any], root: bytes, key: bytes, order: str = hamt.SPEC_ORDER) -> Any:
    """The value a lookup of *key* finds in the HashMap at *root* with its bitmaps read in *order*
    (a :data:`hamt.Order`, or :data:`MSB_FIRST`), or None: any bit width (from the bitmap's
    length), each level's index the next bits of the digest, as the spec says."""
    node = _decoded(blocks, root)["hamt"]
    width = (len(node[0]) * 8).bit_length() - 1
    number = int.from_bytes(hashlib.sha256(key).digest())
    for depth in range(256 // width):
        bitmap, data = node
        if order == MSB_FIRST:
            slots = hamt.slots_of(bytes(int(f"{byte:08b}"[::-1], 2) for byte in bitmap))
        else:
            slots = hamt.slots_of(bitmap, order)  # type: ignore[arg-type]
        index = number >> (256 - width * (depth + 1)) & ((1 << width) - 1)
        if index not in slots:
            return None
        element = data[slots.index(index)]
        if not isinstance(element, codec.Link):
            return next((value for found, value in element if found == key), None)
        node = _decoded(blocks, element.cid)
    return None


def _decoded(blocks: dict[bytes, Any], cid: bytes) -> Any:
    """*cid*'s block decoded, kept in *blocks* in place of its bytes."""
    if type(blocks[cid]) is bytes:
        blocks[cid] = codec.decode(blocks[cid])
    return blocks[cid]


def car_blocks(car: Path) -> tuple[bytes, dict[bytes, Any]]:
    with car.open("rb") as stream:
        roots, blocks = read_car(stream)
        return roots[0], dict(blocks)


# --- (a) what we write, read by them ---------------------------------------------------------


@pytest.mark.parametrize("count", [5000, 50_000])
def test_iamap_finds_every_key_of_our_sharded_directory(tmp_path: Path, count: int) -> None:
    store = MemoryBlockstore()
    links = file_links(store, count)
    car, root = our_car(tmp_path, store, hamt.build(store, links))
    assert read_with(iamap, car, root) == dict.fromkeys(links, True)


def test_iamap_misses_keys_of_an_old_order_directory(tmp_path: Path) -> None:
    """What an outside tester saw of the pre-spec order: every key listed, most not found."""
    store = MemoryBlockstore()
    links = file_links(store, 5000)
    car, root = our_car(tmp_path, store, old_order_copy(store, hamt.build(store, links)))
    found = read_with(iamap, car, root)
    assert found.keys() == links.keys()
    assert sum(found.values()) < len(links) // 10


@pytest.mark.parametrize("count", [5000])  # its lookups read the path's blocks anew: 50,000 take a minute
def test_go_ipld_adl_hamt_lists_our_keys_but_finds_them_msb_first(tmp_path: Path, count: int) -> None:
    """go-ipld-adl-hamt reads each bitmap byte from its high bit: it lists every key, and finds
    exactly those an MSB-first lookup finds, far from all (FORMAT.md 6.4)."""
    store = MemoryBlockstore()
    links = file_links(store, count)
    car, root = our_car(tmp_path, store, hamt.build(store, links))
    found = read_with(hamt_go, car, root)
    assert found.keys() == links.keys()
    cid, blocks = car_blocks(car)
    assert found == {name: finds(blocks, cid, name.encode(), MSB_FIRST) is not None for name in links}
    assert sum(found.values()) < len(links) // 2


# --- (c) the spec's fixture ---------------------------------------------------------------------


def test_the_spec_fixture_is_laid_out_in_the_spec_order() -> None:
    root, blocks = car_blocks(FIXTURE / "hamt.car")
    assert cids.cid_to_str(root) == FIXTURE_ROOT and len(blocks) == 36
    assert all(cids.block_cid(cids.codec_of(cid), data) == cid for cid, data in blocks.items())
    words = json.loads((FIXTURE / "hamt.json").read_text())
    assert {word: finds(blocks, root, word.encode()) for word in words} == words
    for order in (hamt.OLD_ORDER, MSB_FIRST):
        missed = [word for word in words if finds(blocks, root, word.encode(), order) is None]
        assert len(missed) > len(words) // 2, order


def test_iamap_finds_every_key_of_the_spec_fixture() -> None:
    words = json.loads((FIXTURE / "hamt.json").read_text())
    found = json.loads(iamap("read", FIXTURE / "hamt.car", FIXTURE_ROOT))
    assert found["bitWidth"] == 5
    assert dict(found["entries"]) == dict.fromkeys(words, True)


def test_go_ipld_adl_hamt_misses_keys_of_the_spec_fixture() -> None:
    """The Go ADL disagrees with the spec's own fixture too: every key listed, only those an
    MSB-first lookup finds are found."""
    words = json.loads((FIXTURE / "hamt.json").read_text())
    found = read_with(hamt_go, FIXTURE / "hamt.car", FIXTURE_ROOT)
    root, blocks = car_blocks(FIXTURE / "hamt.car")
    assert found.keys() == words.keys()
    assert found == {word: finds(blocks, root, word.encode(), MSB_FIRST) is not None for word in words}
    assert sum(found.values()) < len(words) // 2


# --- (b) what they write, read by us through a real mount ---------------------------------------


@pytest.mark.fuse
def test_a_hashmap_iamap_built_is_ours_byte_for_byte_and_mounts(mounts: Mounts, tmp_path: Path) -> None:
    mnt = mounts()
    store = DirectoryBlockstore(mnt.store)
    links = file_links(store, 5000)
    car, root = their_car(iamap, tmp_path, links)
    assert root == cids.cid_to_str(
        cids.block_cid(cids.DAG_CBOR, codec.encode(hamt.build(MemoryBlockstore(), links)))
    )
    top = _parent_of(store, car, "iamap")
    mnt.mount(cids.cid_to_str(top))
    assert sorted(os.listdir(mnt / "iamap")) == sorted(links)
    for name in links:
        assert read_file(mnt / "iamap" / name) == f"chunk {name}\n".encode(), name
    assert mnt.unmount() == cids.cid_to_str(top), "reading changed nothing"


@pytest.mark.fuse
def test_a_hashmap_go_ipld_adl_hamt_built_is_refused_as_malformed(mounts: Mounts, tmp_path: Path) -> None:
    """The Go ADL's bitmaps fit neither bitmap order this format reads: the directory is
    malformed (EIO), and its parent and the rest of the tree are fine."""
    mnt = mounts()
    store = DirectoryBlockstore(mnt.store)
    links = file_links(store, 1000)
    car, root = their_car(hamt_go, tmp_path, links)
    assert root != cids.cid_to_str(
        cids.block_cid(cids.DAG_CBOR, codec.encode(hamt.build(MemoryBlockstore(), links)))
    )
    assert read_with(hamt_go, car, root) == dict.fromkeys(links, True)  # it reads its own
    top = _parent_of(store, car, "go")
    mnt.mount(cids.cid_to_str(top))
    assert os.listdir(mnt.path) == ["go"]
    expect_errno(errno.EIO, os.listdir, mnt / "go")
    expect_errno(errno.EIO, read_file, mnt / "go" / next(iter(links)))
    assert mnt.unmount() == cids.cid_to_str(top)


def _parent_of(store: Blockstore, car: Path, name: str) -> bytes:
    """A root directory holding the HashMap of *car* (imported into *store*) under *name*,
    laid out by the format's own rule: its CID."""
    with car.open("rb") as stream:
        (root,) = import_car(store, stream)
    form = dirnode.layout(store, {name: dirnode.EntryForm(link=root)})
    return form.store(store)


def test_iamap_writes_the_blocks_we_write(tmp_path: Path) -> None:
    """Not only the root: every block of the HashMap iamap writes is one ours writes."""
    links = file_links(MemoryBlockstore(), 1000)
    car, _ = their_car(iamap, tmp_path, links)
    ours = MemoryBlockstore()
    built = codec.encode(hamt.build(ours, links))
    expected = {cids.block_cid(cids.DAG_CBOR, built): built} | {cid: ours.get(cid) for cid in ours}
    assert car_blocks(car)[1] == expected
