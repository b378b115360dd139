"""History that travels, against a real IPFS node (Kubo, started here): push and pull of a
commit with the commits before it, commit CARs, publish and ``/ipns/NAME``.

What a test checks on the node it checks with the node's own API (tests/ipfs_node.py), not with
ipldmount's client. The node runs offline on loopback in the suite's private network namespace.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fuse_helpers import assert_one_line_error, check, cli
from hostile_server import Hostile
from ipfs_node import IpfsNode

from ipldmount.blocks import car
from ipldmount.blocks.dag import iter_new_blocks
from ipldmount.blocks.gc import mark
from ipldmount.errors import IpldmountError
from ipldmount.format.commit import Commit, ancestry
from ipldmount.ipld import cid as cids
from ipldmount.remote.exchange import missing_subtrees
from ipldmount.remote.kubo import KuboNode
from ipldmount.remote.remotes import Remotes
from ipldmount.repo.repository import Repository
from ipldmount.repo.sharing import HistoryTooLongError
from ipldmount.tree.model import Tree

pytest_plugins = ("ipfs_node",)


@pytest.fixture
def kubo(node: IpfsNode) -> Iterator[KuboNode]:
    client = KuboNode(node.url, block_timeout=2.0)
    yield client
    client.close()


@dataclass
class History:
    """Four commits on branch main: first, then two lines from it (second, side), and their merge."""

    first: bytes
    second: bytes
    side: bytes
    merge: bytes

    @property
    def commits(self) -> list[bytes]:
        return [self.first, self.second, self.side, self.merge]


def tree_of(repository: Repository, files: dict[str, bytes]) -> bytes:
    tree = Tree(repository.blocks)
    for path, data in files.items():
        tree.write_file(path, data)
    return tree.commit()


def chunks(tag: str, count: int = 4, size: int = 4096) -> dict[str, bytes]:
    """A zarr-like array whose chunks differ by *tag* (each test its own, on the shared node)."""
    files = {"arr/.zarray": json.dumps({"zarr_format": 2, "tag": tag}).encode()}
    files |= {
        f"arr/{i}": (tag.encode() + i.to_bytes(8, "little")) * (size // (len(tag) + 8)) for i in range(count)
    }
    return files


def make_history(repository: Repository, tag: str) -> History:
    base = chunks(tag)
    first = repository.make_commit(tree_of(repository, base), [], f"{tag}: first")
    second_files = base | {"arr/1": b"second" * 700}
    second = repository.make_commit(tree_of(repository, second_files), [first], f"{tag}: second")
    side = repository.make_commit(tree_of(repository, base | {"notes.txt": b"side"}), [first], f"{tag}: side")
    merged = tree_of(repository, second_files | {"notes.txt": b"side"})
    merge = repository.make_commit(merged, [second, side], f"{tag}: merge")
    repository.local.sync()
    repository.move_branch("main", None, merge, why="test")
    return History(first, second, side, merge)


def lineage(repository: Repository, head: bytes) -> list[tuple[bytes, Commit]]:
    return list(ancestry(repository.blocks, [head]))


def pins(node: IpfsNode, kind: str) -> set[bytes]:
    answer = json.loads(node.rpc("pin/ls", type=kind, cid_base="base32"))
    return {cids.parse_cid(text) for text in answer.get("Keys", {})}


# --- push and pull ---------------------------------------------------------------------------


def test_a_pushed_history_pulls_whole_into_an_empty_store(
    tmp_path: Path, node: IpfsNode, kubo: KuboNode
) -> None:
    a, b = Repository.at(tmp_path / "a"), Repository.at(tmp_path / "b")
    history = make_history(a, "whole")
    sent = a.push_history(history.merge, kubo, pin=True)
    assert (sent.commits, sent.trees, sent.partial, sent.already) == (4, 4, [], False)
    head_tree = a.commit(history.merge).tree
    assert sent.tree == head_tree
    direct, recursive = pins(node, "direct"), pins(node, "recursive")
    assert set(history.commits) <= direct  # each commit pinned alone ...
    assert not set(history.commits) & recursive  # ... never recursively: older trees may be absent
    assert {a.commit(commit).tree for commit in history.commits} <= recursive

    pulled = b.pull_version(history.merge, [kubo], node.url)
    assert (pulled.commit, pulled.tree, pulled.commits, pulled.ends) == (history.merge, head_tree, 4, [])
    assert [(cid, c.message, c.parents) for cid, c in lineage(b, history.merge)] == [
        (cid, c.message, c.parents) for cid, c in lineage(a, history.merge)
    ]
    assert missing_subtrees(b.local, head_tree) == []  # the head's tree whole
    assert mark(b.local, [head_tree], check_leaves=True).missing_count == 0
    assert not b.local.has(a.commit(history.first).tree)  # older trees: when something reads them
    record = b.history()[0]
    assert (record.root, record.commit, record.source) == (
        cids.cid_to_str(head_tree),
        cids.cid_to_str(history.merge),
        "pull",
    )


def test_a_second_push_sends_only_the_new_commit(tmp_path: Path, kubo: KuboNode) -> None:
    a = Repository.at(tmp_path / "a")
    history = make_history(a, "second-push")
    a.push_history(history.merge, kubo, pin=True)
    merged = a.commit(history.merge).tree
    files = chunks("second-push") | {"arr/1": b"second" * 700, "notes.txt": b"side", "arr/2": b"changed"}
    newer_tree = tree_of(a, files)
    newer = a.make_commit(newer_tree, [history.merge], "one chunk changed")
    a.local.sync()
    sent = a.push_history(newer, kubo, pin=True)
    changed = len(list(iter_new_blocks(a.blocks, newer_tree, merged)))
    assert 0 < changed < 5
    assert (sent.commits, sent.trees, sent.blocks) == (1, 1, 1 + changed)
    again = a.push_history(newer, kubo, pin=True)
    assert again.already and again.blocks == 0
    ledger = (a.home.root / "pushes.log").read_text().splitlines()
    assert [json.loads(line).get("commit") for line in ledger] == [
        cids.cid_to_str(history.merge),
        cids.cid_to_str(newer),
    ]


def test_older_trees_gc_let_go_are_not_sent(tmp_path: Path, node: IpfsNode, kubo: KuboNode) -> None:
    a = Repository.at(tmp_path / "a")
    history = make_history(a, "dropped")
    first_tree = a.commit(history.first).tree
    a.home.registry.drop([cids.cid_to_str(first_tree)], "a test: let go by gc")
    sent = a.push_history(history.merge, kubo, pin=True)
    assert (sent.commits, sent.trees, sent.partial) == (4, 3, [first_tree])
    assert first_tree not in pins(node, "recursive")
    assert history.first in pins(node, "direct")  # the commit travels; its tree does not


def test_a_parent_no_node_has_ends_the_pulled_history(tmp_path: Path, kubo: KuboNode) -> None:
    a, b = Repository.at(tmp_path / "a"), Repository.at(tmp_path / "b")
    lost = cids.block_cid(cids.DAG_CBOR, Commit.made(tree_of(a, {"x": b"gone"})).encode())  # never stored
    tree = tree_of(a, chunks("ends"))
    head = a.make_commit(tree, [lost], "on a parent this store never had")
    a.local.sync()
    sent = a.push_history(head, kubo, pin=False)
    assert (sent.commits, sent.trees) == (1, 1)
    pulled = b.pull_version(head, [kubo], "node")
    assert (pulled.commits, pulled.ends) == (1, [lost])
    assert [cid for cid, _ in lineage(b, head)] == [head]


def test_a_history_without_end_is_cut_off(tmp_path: Path) -> None:
    """A node may answer a commit whose parents go on and on: a pull fetches at most its limit."""
    b = Repository.at(tmp_path / "b")
    blocks: dict[bytes, bytes] = {}
    tree_data = b"\xa0"  # {}: an empty directory node
    tree = cids.block_cid(cids.DAG_CBOR, tree_data)
    blocks[tree] = tree_data
    head: tuple[bytes, ...] = ()
    for number in range(60):
        data = Commit(tree, head, "2026-01-01T00:00:00.000Z", f"commit {number}").encode()
        cid = cids.block_cid(cids.DAG_CBOR, data)
        blocks[cid] = data
        head = (cid,)
    hostile = Hostile(blocks, head[0])
    try:
        source = KuboNode(hostile.url, block_timeout=2.0)
        with pytest.raises(HistoryTooLongError, match="past 20 commits fetched by one pull: cut off"):
            b.pull_version(head[0], [source], hostile.url, limit=20)
    finally:
        hostile.stop()
    assert len(lineage(b, head[0])) == 20  # the 20 fetched (the head too) are kept: a pull again goes on
    assert b.history() == []  # nothing recorded: the tree was not pulled


# --- CARs ------------------------------------------------------------------------------------


def test_a_commit_car_carries_the_history_and_the_head_tree(tmp_path: Path) -> None:
    a, c = Repository.at(tmp_path / "a"), Repository.at(tmp_path / "c")
    history = make_history(a, "car")
    assert a.export_root("main") == history.merge
    written = tmp_path / "main.car"
    a.export_car(history.merge, written)
    with written.open("rb") as stream:
        roots, sections = car.read_car(stream)
        held = [cid for cid, _ in sections]
    head_tree = a.commit(history.merge).tree
    assert roots == [history.merge] and held[0] == history.merge
    assert set(history.commits) <= set(held) and head_tree in held
    assert a.commit(history.first).tree not in held  # older trees stay behind
    assert a.block_count(history.merge) == len(held)

    assert c.import_car(str(written)) == [history.merge]
    assert [(cid, commit.message) for cid, commit in lineage(c, history.merge)] == [
        (cid, commit.message) for cid, commit in lineage(a, history.merge)
    ]
    assert mark(c.local, [head_tree], check_leaves=True).missing_count == 0
    record = c.history()[0]
    assert (record.root, record.commit, record.source) == (
        cids.cid_to_str(head_tree),
        cids.cid_to_str(history.merge),
        "import",
    )


def test_a_commit_car_without_its_tree_is_refused(tmp_path: Path) -> None:
    a, c = Repository.at(tmp_path / "a"), Repository.at(tmp_path / "c")
    history = make_history(a, "no-tree")
    bare = tmp_path / "bare.car"
    with bare.open("wb") as out:
        car.write_car(out, [history.merge], [(history.merge, a.blocks.get(history.merge))])
    with pytest.raises(IpldmountError, match=r"is a commit whose tree .* is not a directory tree in the CAR"):
        c.import_car(str(bare))
    assert not c.local.has(history.merge) and c.history() == []


# --- IPNS --------------------------------------------------------------------------------------


def test_a_name_resolves_to_what_the_node_published(tmp_path: Path, node: IpfsNode, kubo: KuboNode) -> None:
    a = Repository.at(tmp_path / "a")
    history = make_history(a, "ipns-api")
    a.push_history(history.merge, kubo, pin=True)
    node.rpc("key/gen", arg="ipns-api", type="ed25519")
    name = kubo.name_publish(history.merge, key="ipns-api", lifetime=3600)
    assert kubo.name_resolve(f"/ipns/{name}") == history.merge
    third = Repository.at(tmp_path / "third")
    with Remotes.of(node.url).fetching_into(third.local) as store:
        reading = Repository(store, home=third.home, names=Remotes.of(node.url).resolve_name)
        version = reading.mount_version(f"/ipns/{name}", tmp_path / "mnt")
        assert (version.commit, version.tree) == (history.merge, a.commit(history.merge).tree)
        assert reading.resolve(f"/ipns/{name}~1").commit == history.second
        tree, found, _ = reading.locate(f"/ipns/{name}/arr")
        assert sorted(tree.entries(found)) == [".zarray", "0", "1", "2", "3"]  # type: ignore[arg-type]


# --- the command line ------------------------------------------------------------------------


def test_push_and_pull_on_the_command_line(tmp_path: Path, node: IpfsNode) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    history = make_history(Repository.at(a), "cli")
    head_tree = Repository.at(a).commit(history.merge).tree
    unpinned = check(cli("push", "main", "--ipfs", node.url, "--store", a))
    assert unpinned.stdout.split() == [cids.cid_to_str(history.merge), cids.cid_to_str(head_tree)]
    assert "(4 commits, 4 trees)" in unpinned.stderr and "pinned" not in unpinned.stderr
    pushed = check(cli("push", "main", "--ipfs", node.url, "--pin", "--store", a))  # goes on to pin it all
    assert pushed.stdout == unpinned.stdout
    assert "(4 commits, 4 trees)" in pushed.stderr and "pinned" in pushed.stderr
    assert history.merge in pins(node, "direct") and head_tree in pins(node, "recursive")
    again = check(cli("push", "main", "--ipfs", node.url, "--pin", "--store", a))
    assert "its history already: nothing sent" in again.stderr
    pulled = check(cli("pull", cids.cid_to_str(history.merge), "--ipfs", node.url, "--store", b))
    assert pulled.stdout.split() == [cids.cid_to_str(history.merge), cids.cid_to_str(head_tree)]
    assert "history: 4 commits fetched" in pulled.stderr
    assert "trees of older commits are fetched when something reads them" in pulled.stderr
    logged = json.loads(check(cli("log", "--json", "--store", b)).stdout)
    expected = [
        (cids.cid_to_str(cid), commit.message) for cid, commit in lineage(Repository.at(a), history.merge)
    ]
    assert [(entry["commit"], entry["message"]) for entry in logged] == expected
    merge_entry = logged[0]
    assert merge_entry["parents"] == [cids.cid_to_str(history.second), cids.cid_to_str(history.side)]
    assert [entry["tree_stored"] for entry in logged] == [True, False, False, False]
    older = cids.cid_to_str(history.first)
    listed = check(cli("ls", f"{older}/arr", "--ipfs", node.url, "--store", b))  # fetched now, on reading
    assert listed.stdout.split() == [".zarray", "0", "1", "2", "3"]


def test_publish_and_ipns_names_on_the_command_line(tmp_path: Path, node: IpfsNode) -> None:
    a, third = tmp_path / "a", tmp_path / "third"
    history = make_history(Repository.at(a), "publish")
    node.rpc("key/gen", arg="publish-cli", type="ed25519")
    published = check(cli("publish", "main", "--ipfs", node.url, "--key", "publish-cli", "--store", a))
    name, commit = published.stdout.split()[0], cids.cid_to_str(history.merge)
    assert name.startswith("/ipns/") and published.stdout.split()[1:] == [commit]
    assert f"-> commit {commit} (branch main)" in published.stderr
    listed = check(cli("ls", f"{name}/arr", "--ipfs", node.url, "--store", third))
    assert listed.stdout.split() == [".zarray", "0", "1", "2", "3"]
    second_chunk = check(cli("cat", f"{name}/arr/1", "--ipfs", node.url, "--store", third))
    assert second_chunk.stdout == "second" * 700
    changed = check(cli("diff", f"{name}~1", name, "--ipfs", node.url, "--store", third))
    assert changed.stdout.split() == ["A", "notes.txt"]
    check(cli("export", name, "-o", tmp_path / "named.car", "--ipfs", node.url, "--store", third))
    with (tmp_path / "named.car").open("rb") as stream:
        assert car.read_car(stream)[0] == [history.merge]
    Repository.at(tmp_path / "empty")
    not_here = cli("log", name, "--ipfs", node.url, "--store", tmp_path / "empty")
    assert_one_line_error(not_here, "which is not in the store: pull it first")
    fourth = tmp_path / "fourth"
    pulled = check(cli("pull", name, "--ipfs", node.url, "--store", fourth))
    assert pulled.stdout.split()[0] == commit
    logged = json.loads(check(cli("log", name, "--json", "--ipfs", node.url, "--store", fourth)).stdout)
    assert [entry["commit"] for entry in logged][:1] == [commit] and len(logged) == 4


def test_ipns_errors_are_one_line(tmp_path: Path, node: IpfsNode) -> None:
    store = tmp_path / "store"
    make_history(Repository.at(store), "errors")
    unknown = "/ipns/12D3KooWLq56HMJLuGwXGon5uoA1SAiVK44epdqQrLDuJSFhYRzT"
    assert_one_line_error(cli("ls", unknown, "--store", store), "resolves through an IPFS node", "--ipfs")
    assert_one_line_error(cli("log", unknown, "--store", store), "resolves through an IPFS node", "--ipfs")
    assert_one_line_error(cli("pull", unknown, "--gateway", node.url, "--store", store), "--ipfs")
    assert_one_line_error(cli("ls", unknown, "--ipfs", node.url, "--store", store), "name/resolve")
    assert_one_line_error(cli("publish", "main", "--store", store), "publish needs an IPFS node")
    assert_one_line_error(
        cli("publish", "nope", "--ipfs", node.url, "--store", store), "no branch named 'nope'"
    )
    missing_key = cli("publish", "main", "--ipfs", node.url, "--key", "no-such-key", "--store", store)
    assert_one_line_error(missing_key, "no key named 'no-such-key'")


def test_a_resolve_the_node_never_answers_ends_in_time(tmp_path: Path, node: IpfsNode) -> None:
    store = tmp_path / "store"
    make_history(Repository.at(store), "frozen")
    node.pause()
    try:
        started = time.monotonic()
        frozen = cli(
            "ls",
            "/ipns/12D3KooWLq56HMJLuGwXGon5uoA1SAiVK44epdqQrLDuJSFhYRzT",
            "--ipfs",
            node.url,
            "--store",
            store,
            env={"IPLDMOUNT_TIMEOUT": "3"},
        )
        assert time.monotonic() - started < 20
    finally:
        node.resume()
    assert_one_line_error(frozen, "name/resolve")
