"""The FUSE adapter's inode table alone: numbers for nodes from pages, the kernel's counts beside
them, pages let go once empty, numbers never used twice (tests/test_fuse_handlers.py has the
rows of listed directories through the handlers)."""

from __future__ import annotations

import errno

import pyfuse3
import pytest

from ipldmount.adapters.fuse.inodes import PAGE, InodeTable
from ipldmount.blocks import MemoryBlockstore
from ipldmount.format.files import PendingFile
from ipldmount.tree.model import File, Node, Tree


def unused(node: Node) -> bool:
    return False


def test_the_tree_keeps_no_inode_numbers() -> None:
    assert not {"ino", "lookups"} & set(Node.__slots__)


def test_nodes_are_numbered_once_and_counted() -> None:
    tree = Tree(MemoryBlockstore())
    table = InodeTable(tree)
    assert table.find(pyfuse3.ROOT_INODE) is tree.root
    nodes = [File(PendingFile(b"")) for _ in range(3 * PAGE)]
    inos = [table.remember(node) for node in nodes]
    assert len(set(inos)) == len(nodes) and pyfuse3.ROOT_INODE not in inos
    assert all(table.find(ino) is node for ino, node in zip(inos, nodes, strict=True))
    assert table.ino(nodes[5]) == inos[5] and table.lookups(inos[5]) == 1, "ino() takes no reference"
    assert table.remember(nodes[5]) == inos[5] and table.lookups(inos[5]) == 2
    table.forget(inos[5], 1, unused)
    assert table.find(inos[5]) is nodes[5], "one reference left"
    table.forget(inos[5], 1, unused)
    with pytest.raises(pyfuse3.FUSEError) as stale:
        table.find(inos[5])
    assert stale.value.errno == errno.ESTALE
    assert table.remember(nodes[5]) > max(inos), "a node forgotten and met again gets a new number"


def test_a_node_in_use_keeps_its_number_and_the_root_is_never_forgotten() -> None:
    tree = Tree(MemoryBlockstore())
    table = InodeTable(tree)
    node = File(PendingFile(b""))
    ino = table.remember(node)
    table.forget(ino, 1, lambda kept: kept is node)
    assert table.find(ino) is node and table.lookups(ino) == 0
    table.forget(pyfuse3.ROOT_INODE, 5, unused)
    assert table.find(pyfuse3.ROOT_INODE) is tree.root


def test_a_page_goes_once_none_of_its_nodes_is_numbered() -> None:
    table = InodeTable(Tree(MemoryBlockstore()))
    nodes = [File(PendingFile(b"")) for _ in range(4 * PAGE)]
    inos = [table.remember(node) for node in nodes]
    ranges = len(table._ranges)
    assert ranges == 5, "the root's page and four more (the last one current)"
    for ino in inos[: 3 * PAGE]:
        table.forget(ino, 1, unused)
    assert len(table._ranges) == ranges - 2, "the first page holds the root; the current one stays"
    for ino in inos[: 3 * PAGE]:
        with pytest.raises(pyfuse3.FUSEError):
            table.find(ino)
    assert all(table.find(ino) is node for ino, node in zip(inos[3 * PAGE :], nodes[3 * PAGE :], strict=True))
    later = [table.remember(File(PendingFile(b""))) for _ in range(PAGE + 1)]
    assert min(later) > max(inos), "numbers are never used twice"
