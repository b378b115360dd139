"""History that travels: a commit and the commits before it, pushed to an IPFS node, pulled
from one, and carried in a CAR (FORMAT.md §8).

A commit links its tree and its parents, so the DAG under a head commit is every version ever
made: no node, pull or CAR is asked for all of that. What travels is the *commit chain* (every
commit block the store has under the head, one small block each) and the trees that are whole
here, each as the difference from the tree before it; a reader of an older version fetches what
it lacks when it reads it. A node is never asked to pin a commit recursively: it would have to
fetch every older tree, which may exist nowhere any more.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ipldmount.blocks import Blockstore
from ipldmount.errors import BlockNotFoundError, FormatError, IncompleteDagError, RemoteError
from ipldmount.format.commit import COMMIT_KEY, Commit, decode_commit, is_commit_value
from ipldmount.ipld import cid as cids
from ipldmount.ipld import codec

if TYPE_CHECKING:  # transports: imported where they are used, so that opening a store loads no HTTP
    from ipldmount.remote.exchange import CarSource, Transfer
    from ipldmount.remote.kubo import KuboNode

Counting = Callable[[int, int], None]  # (blocks, bytes) so far
MAX_PULLED_COMMITS = 10_000  # commit blocks one pull fetches at most: a chain without end stops there
CommitBlock = tuple[bytes, bytes, Commit]  # (CID, block, the commit it holds)


class HistoryTooLongError(RemoteError):
    """A pull met more commits than MAX_PULLED_COMMITS: those fetched are kept, nothing else."""


# --- the chain a store holds ---------------------------------------------------------------------


def local_chain(store: Blockstore, head: bytes, stop: Collection[bytes] = ()) -> list[CommitBlock]:
    """The commit blocks under *head* (itself included) that *store* holds, parents before
    children, none under *stop* (commits the other side has with all before them). A parent the
    store lacks ends its line, as in :func:`~ipldmount.format.commit.ancestry`; one that is not
    a commit is a damaged history (FormatError)."""
    found: dict[bytes, CommitBlock] = {}
    order: list[CommitBlock] = []
    stack: list[tuple[bytes, bool]] = [(head, False)]
    while stack:
        cid, expanded = stack.pop()
        if expanded:
            order.append(found[cid])
            continue
        if cid in found or cid in stop:
            continue
        try:
            data = store.get(cid)
        except BlockNotFoundError:
            if cid == head:
                raise
            continue
        commit = _commit_in(cid, data, head)
        found[cid] = (cid, data, commit)
        stack.append((cid, True))
        stack.extend((parent, False) for parent in reversed(commit.parents))
    return order


def _commit_in(cid: bytes, data: bytes, head: bytes) -> Commit:
    """The commit block *data* holds; FormatError naming it if it is none."""
    try:
        return decode_commit(data)
    except FormatError as exc:
        what = "" if cid == head else f" (in the history of {cids.cid_to_str(head)})"
        raise FormatError(f"{cids.cid_to_str(cid)}{what} is not a commit: {exc}") from None


def may_be_commit(cid: bytes, data: bytes) -> bool:
    """Whether a block may hold a commit, without decoding it: DAG-CBOR with the commit key's
    bytes in it (every commit has them; a tree very rarely does, and is then decoded)."""
    return cids.codec_of(cid) == cids.DAG_CBOR and COMMIT_KEY.encode() in data


def commit_of_block(cid: bytes, data: bytes) -> Commit | None:
    """The commit in a block, or None when the block holds anything else (FormatError: a
    malformed commit)."""
    if not may_be_commit(cid, data) or not is_commit_value(codec.decode(data)):
        return None
    return decode_commit(data)


# --- push ----------------------------------------------------------------------------------------


@dataclass
class HistoryPush:
    """What a push of a commit sent."""

    commit: bytes
    tree: bytes
    commits: int = 0  # commit blocks sent
    trees: int = 0  # trees sent (the blocks each adds to the one before)
    partial: list[bytes] = field(default_factory=list)  # older trees not whole here: not sent
    blocks: int = 0  # every block sent, commits included
    nbytes: int = 0
    already: bool = False  # the node had the commit and all before it already


@dataclass(frozen=True)
class PushPlan:
    """Where a push of a commit stands: the node, the trees it was sent before (bases), the
    commits it has with all before them (where the chain stops), and the trees gc let go here."""

    node: KuboNode
    pushed_trees: Sequence[bytes]
    pushed_commits: Sequence[bytes]
    dropped: Collection[str]
    pin: bool


def push_history(
    store: Blockstore, head: bytes, plan: PushPlan, progress: Counting | None = None
) -> HistoryPush:
    """Send *plan.node* the commit *head*, every commit before it the store holds and the node
    lacks, and the trees of those commits that are whole here, oldest first, each as the
    difference from its parent's tree or a tree pushed before (the cost is the changes, not
    the history). With *plan.pin*: each tree sent is pinned recursively, each commit sent alone."""
    node = plan.node
    stop = [cid for cid in plan.pushed_commits if node.block_size(cid) is not None]
    chain = local_chain(store, head, stop)
    sent = HistoryPush(head, decode_commit(store.get(head)).tree)
    if not chain:
        sent.already = True
        return sent
    _push_trees(store, chain, plan, sent, progress)
    _push_commits(chain, node, sent, progress)
    if plan.pin:
        node.pin_blocks([cid for cid, _, _ in reversed(chain)])
    return sent


def _push_trees(
    store: Blockstore, chain: list[CommitBlock], plan: PushPlan, sent: HistoryPush, progress: Counting | None
) -> None:
    """The trees of *chain* (parents first): the head's always, an older one if it is whole here."""
    from ipldmount.remote.exchange import push

    present: set[bytes] = set()  # trees sent whole in this push: bases without asking
    for cid, _, commit in chain:
        tree, is_head = commit.tree, cid == sent.commit
        if tree in present:
            continue
        if not is_head and not _whole_here(store, tree, plan.dropped):
            sent.partial.append(tree)
            continue
        bases = [*_parent_trees(store, commit), *plan.pushed_trees]
        try:
            moved = push(
                store,
                tree,
                plan.node,
                bases=bases,
                pin=plan.pin,
                progress=_after(sent, progress),
                present=present,
            )
        except IncompleteDagError:
            if is_head:
                raise
            sent.partial.append(tree)  # partial here after all (a lazy mount read part of it)
            continue
        present.add(tree)
        _add(sent, moved)


def _whole_here(store: Blockstore, tree: bytes, dropped: Collection[str]) -> bool:
    """A tree an older commit names is sent if its root block is here and gc did not let it go;
    one partial all the same (read lazily) is found out while it is sent, and skipped."""
    return store.has(tree) and cids.cid_to_str(tree) not in dropped


def _parent_trees(store: Blockstore, commit: Commit) -> list[bytes]:
    """The trees of *commit*'s parents that the store can tell: the best bases for its tree."""
    trees = []
    for parent in commit.parents:
        try:
            trees.append(decode_commit(store.get(parent)).tree)
        except (BlockNotFoundError, FormatError):
            continue
    return trees


def _push_commits(
    chain: list[CommitBlock], node: KuboNode, sent: HistoryPush, progress: Counting | None
) -> None:
    """The commit blocks, newest first, as one CAR whose root is the head (pinned by no import)."""
    from ipldmount.blocks.car import car_header, section_head

    def pieces() -> Iterator[bytes]:
        yield car_header([sent.commit])
        for cid, data, _ in reversed(chain):
            yield section_head(cid, len(data))
            yield data
            sent.commits += 1
            sent.blocks += 1
            sent.nbytes += len(data)
            if progress is not None:
                progress(sent.blocks, sent.nbytes)

    node.import_car(pieces(), pin_roots=False)
    if node.block_size(sent.commit) is None:
        raise RemoteError(
            f"IPFS node {node.url}: after dag/import it does not have {cids.cid_to_str(sent.commit)}"
        )


def _after(sent: HistoryPush, progress: Counting | None) -> Counting | None:
    """A transfer's progress, counted on from what the push sent before it."""
    if progress is None:
        return None
    blocks, nbytes = sent.blocks, sent.nbytes
    return lambda more, size: progress(blocks + more, nbytes + size)


def _add(sent: HistoryPush, moved: Transfer) -> None:
    if not moved.already:
        sent.trees += 1
    sent.blocks += moved.blocks
    sent.nbytes += moved.nbytes


# --- pull ----------------------------------------------------------------------------------------


@dataclass
class HistoryPull:
    """What a pull of a commit (or a tree) fetched."""

    root: bytes  # what was asked for
    tree: bytes
    commit: bytes | None = None  # None: the root is a tree
    commits: int = 0  # commit blocks fetched
    ends: list[bytes] = field(default_factory=list)  # parents no source had: the history ends there
    transfer: Transfer | None = None  # the tree's pull


def fetch_block(cid: bytes, sources: Sequence[CarSource]) -> bytes:
    """One block from the first of *sources* that gives it (each verifies it against *cid*)."""
    failures = []
    for source in sources:
        try:
            return source.get_block(cid)
        except RemoteError as exc:
            failures.append(str(exc))
    raise RemoteError("; ".join(failures[-2:]) or f"no source to fetch {cids.cid_to_str(cid)} from")


def root_block(store: Blockstore, root: bytes, sources: Sequence[CarSource]) -> bytes | None:
    """The block of *root* if it may be a commit (fetched if the store lacks it, not stored: a
    tree's comes again with its CAR); None for a DAG-PB or raw root, never a commit."""
    if cids.codec_of(root) != cids.DAG_CBOR:
        return None
    return store.get(root) if store.has(root) else fetch_block(root, sources)


def fetch_chain(
    store: Blockstore,
    head: bytes,
    sources: Sequence[CarSource],
    pulled: HistoryPull,
    limit: int = MAX_PULLED_COMMITS,
) -> None:
    """Bring the commits under *head* the store lacks, one block each, into *store* (which holds
    *head*): at most *limit* fetched, whatever the sources answer (HistoryTooLongError past it,
    those fetched kept). Commits the store has are read here, so a pull again goes on where one
    stopped. A parent no source has ends its line (*pulled.ends*)."""
    seen: set[bytes] = set()
    stack = [head]
    while stack:
        cid = stack.pop()
        if cid in seen:
            continue
        seen.add(cid)
        commit = _chain_commit(store, cid, sources, pulled, limit)
        if commit is not None:
            stack.extend(reversed(commit.parents))
    store.sync()


def _chain_commit(
    store: Blockstore, cid: bytes, sources: Sequence[CarSource], pulled: HistoryPull, limit: int
) -> Commit | None:
    """A commit of the chain, read from the store or else fetched (counted against *limit*, and
    stored only once it reads as a commit); None: no source has it."""
    if store.has(cid):
        return _commit_in(cid, store.get(cid), pulled.root)
    if pulled.commits >= limit:
        store.sync()
        raise HistoryTooLongError(
            f"the history of {cids.cid_to_str(pulled.root)} goes on past {limit:,} commits fetched by one "
            f"pull: cut off there; the commits fetched are kept, the tree was not pulled (pull again to "
            f"fetch {limit:,} more)"
        )
    try:
        data = fetch_block(cid, sources)
    except RemoteError:
        pulled.ends.append(cid)
        return None
    commit = _commit_in(cid, data, pulled.root)
    store.put_block(cid, data)
    pulled.commits += 1
    return commit
