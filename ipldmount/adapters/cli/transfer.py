"""Moving trees and their history in and out of the store: import, export (CARs), push, pull,
publish (IPFS), serve (a gateway)."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ipldmount.adapters.cli.common import (
    Command,
    Interrupted,
    count,
    count_of,
    fetch_arguments,
    megabytes,
    open_existing_store,
    open_reading_store,
    open_store,
    parse_duration,
    progress_line,
    remotes_named,
    remotes_of,
)
from ipldmount.blocks import car
from ipldmount.errors import IpldmountError
from ipldmount.ipld import cid as cids
from ipldmount.repo.repository import Repository

if TYPE_CHECKING:
    from ipldmount.remote.exchange import CarSource, Transfer
    from ipldmount.remote.kubo import KuboNode
    from ipldmount.repo.sharing import HistoryPull, HistoryPush


def cmd_import(args: argparse.Namespace) -> int:
    repository = open_store(args)
    roots = repository.import_car(
        args.car, progress=lambda size: progress_line(f"import {args.car}", total_bytes=size)
    )
    for root in roots:
        print(cids.cid_to_str(root))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    with open_reading_store(args) as repository:
        return _export(args, repository)


def _export(args: argparse.Namespace, repository: Repository) -> int:
    root = repository.export_root(args.cid)  # refused if missing or not a directory, before anything
    to_stdout = args.output == "-"
    if not to_stdout:
        # Like cp or curl -o: write into an existing directory, never create one on a typo.
        parent = Path(args.output).parent
        if not parent.is_dir():
            what = "is not a directory" if parent.exists() else "does not exist"
            raise IpldmountError(f"cannot write {args.output}: directory {parent} {what}")
    # A device or pipe is written into as it goes; a directory or socket is refused before anything.
    streamed = to_stdout or car.car_target(Path(args.output)).streamed
    total = repository.block_count(root) if sys.stderr.isatty() else None  # a first pass, for the % only
    try:
        with progress_line(f"export {args.cid}", total_blocks=total) as progress:
            out = sys.stdout.buffer if to_stdout else Path(args.output)
            size = repository.export_car(root, out, progress=progress, shown_as="stdout")
    except (KeyboardInterrupt, Interrupted) as exc:
        if not streamed:
            raise  # the temporary file is gone: main() says no CAR was written
        signum = signal.SIGINT if isinstance(exc, KeyboardInterrupt) else Interrupted.signum
        stopped = f"export stopped; the CAR written to {'stdout' if to_stdout else args.output} is incomplete"
        print(f"ipldmount: interrupted ({signum.name}): {stopped}", file=sys.stderr)
        return 128 + signum
    if not to_stdout:
        print(f"wrote {size} bytes to {args.output}", file=sys.stderr)
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    node, repository = _node_and_store(args, "push")
    version = repository.find_version(args.root)
    if version.commit is not None:
        history = _push_history(repository, node, version.commit, args.pin)
        print(cids.cid_to_str(history.commit))
        print(cids.cid_to_str(history.tree))  # last, as for a tree
        return 0
    root = repository.stored_root(repository.find_root(args.root))
    with progress_line(f"push to {node.url}") as progress:
        sent = repository.push(root, node, pin=args.pin, progress=progress)
    print(_pushed(sent, node.url, args.pin), file=sys.stderr)
    print(cids.cid_to_str(root))
    return 0


def _node_and_store(args: argparse.Namespace, command: str) -> tuple[KuboNode, Repository]:
    """The node of --ipfs, checked to be there before any walk, and the store (``/ipns/NAME``
    resolved through that node)."""
    from ipldmount.remote.kubo import KuboNode

    remotes = remotes_of(args)
    if remotes.ipfs is None:
        raise IpldmountError(
            f"{command} needs an IPFS node: --ipfs URL (or IPLDMOUNT_IPFS, or the config file)"
        )
    repository = open_existing_store(args)
    repository.names = remotes.resolve_name
    node = KuboNode(remotes.ipfs)
    node.version()  # a node that is not there fails here
    return node, repository


def _push_history(repository: Repository, node: KuboNode, head: bytes, pin: bool) -> HistoryPush:
    """Push a commit with its history, saying what was sent (on stderr)."""
    repository.stored_root(head)
    with progress_line(f"push to {node.url}") as progress:
        sent = repository.push_history(head, node, pin=pin, progress=progress)
    print(_pushed_history(sent, node.url, pin), file=sys.stderr)
    return sent


def _pushed_history(sent: HistoryPush, url: str, pinned: bool) -> str:
    if sent.already:
        return f"{url} has commit {cids.cid_to_str(sent.commit)} and its history already: nothing sent"
    what = f"{count_of(sent.commits, 'commit')}, {count_of(sent.trees, 'tree')}"
    line = f"sent {count_of(sent.blocks, 'block')}, {megabytes(sent.nbytes)} ({what}) to {url}"
    if sent.partial:
        line += f"; {count_of(len(sent.partial), 'older tree')} not whole here: not sent"
    return line + ("; pinned (trees whole, commits each alone)" if pinned else "")


def _pushed(sent: Transfer, url: str, pinned: bool) -> str:
    if sent.already:
        return f"{url} has {cids.cid_to_str(sent.root)} pinned already: nothing sent"
    since = f" (new since {cids.cid_to_str(sent.base)})" if sent.base else ""
    return f"sent {count_of(sent.blocks, 'block')}, {megabytes(sent.nbytes)}{since} to {url}" + (
        "; pinned" if pinned else ""
    )


def cmd_pull(args: argparse.Namespace) -> int:
    from ipldmount.remote.gateway import Gateway
    from ipldmount.remote.kubo import KuboNode

    remotes = remotes_of(args)
    if not remotes:
        raise IpldmountError("pull needs a source: --ipfs URL or --gateway URL (or IPLDMOUNT_IPFS, ...)")
    root = remotes.resolve_name(args.root) if args.root.startswith("/ipns/") else cids.parse_cid(args.root)
    repository = open_store(args)
    sources: list[CarSource] = [KuboNode(remotes.ipfs)] if remotes.ipfs else []
    sources += [Gateway(url) for url in remotes.gateways]
    where = remotes_named(remotes)
    with progress_line(f"pull {args.root}") as progress:
        pulled = repository.pull_version(root, sources, where, progress=progress)
    for line in _pulled(pulled, args.root, where):
        print(line, file=sys.stderr)
    if pulled.commit is not None:
        print(cids.cid_to_str(pulled.commit))
    print(cids.cid_to_str(pulled.tree))
    return 0


def _pulled(pulled: HistoryPull, asked: str, where: str) -> list[str]:
    """What a pull says: what it fetched, and for a commit, how much history came with it."""
    fetched = pulled.transfer
    assert fetched is not None
    tree = "its tree" if pulled.commit is not None else asked
    if fetched.already:
        lines = [f"the store has all of {tree} already: nothing fetched"]
    else:
        lines = [
            f"fetched {count_of(fetched.blocks, 'block')}, {megabytes(fetched.nbytes)} of {tree} from {where}"
        ]
    if pulled.commit is not None:
        lines.append(
            f"history: {count_of(pulled.commits, 'commit')} fetched; the trees of older commits are fetched "
            f"when something reads them (--ipfs URL, --gateway URL)"
        )
    if pulled.ends:
        lines.append(
            f"history: {count_of(len(pulled.ends), 'parent commit')} no source had: the history ends there"
        )
    return lines


def cmd_publish(args: argparse.Namespace) -> int:
    node, repository = _node_and_store(args, "publish")
    head = repository.branches().get(args.branch)
    if head is None:
        raise IpldmountError(f"no branch named {args.branch!r}: publish takes a branch of this store")
    if args.key not in node.key_names():  # before anything is sent
        raise IpldmountError(f"IPFS node {node.url} has no key named {args.key!r} (ipfs key gen {args.key})")
    _push_history(repository, node, head, pin=True)
    name = node.name_publish(head, key=args.key, lifetime=args.lifetime)
    print(f"published /ipns/{name} -> commit {cids.cid_to_str(head)} (branch {args.branch})", file=sys.stderr)
    print(f"/ipns/{name}")
    print(cids.cid_to_str(head))
    return 0


SERVE_LIMITS = {  # serve's bounds on hostile clients (ipldmount/adapters/serve/server.py says why)
    "max_connections": (count, "connections open at once, idle ones included (default 512)"),
    "idle_timeout": (parse_duration, "a connection may wait this long to start a request (default 60s)"),
    "request_timeout": (parse_duration, "from a request's first byte to its last header (default 10s)"),
    "send_timeout": (parse_duration, "a client may go this long taking no byte of its answer (default 30s)"),
}


def cmd_serve(args: argparse.Namespace) -> int:
    from ipldmount.adapters.serve import GatewayServer  # http.server only for this command

    repository = open_existing_store(args)
    try:
        limits = {name: getattr(args, name) for name in SERVE_LIMITS if getattr(args, name) is not None}
        server = GatewayServer(repository.blocks, (args.bind, args.port), **limits)
    except OSError as exc:
        raise IpldmountError(f"cannot listen on {args.bind}:{args.port}: {exc.strerror or exc}") from None
    where = repository.home.root
    print(f"serving {where} as a gateway at {server.url}/ipfs/", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


COMMANDS: dict[str, tuple[Command, str]] = {
    "import": (cmd_import, "import a CARv1 file into the store; prints its root CID"),
    "export": (cmd_export, "write the CARv1 of a root CID"),
    "push": (
        cmd_push,
        "send what an IPFS node lacks of a root (a commit: with its history), and optionally pin it",
    ),
    "pull": (
        cmd_pull,
        "fetch what the store lacks of a root (a commit: with its history) from an IPFS node or gateways",
    ),
    "publish": (
        cmd_publish,
        "push a branch's head with its history to an IPFS node and point an IPNS name at it",
    ),
    "serve": (cmd_serve, "serve the store read-only as an HTTP gateway (blocks, CARs, files by path)"),
}


def add_arguments(parsers: dict[str, argparse.ArgumentParser]) -> None:
    push_parser, pull_parser = parsers["push"], parsers["pull"]
    push_parser.add_argument(
        "root",
        metavar="REV",
        help="a commit, tree, branch, tag, BRANCH~N, /ipns/NAME or mountpoint (a commit: with its history)",
    )
    push_parser.add_argument(
        "--pin", action="store_true", help="pin it on the node once sent (trees whole, commits each alone)"
    )
    pull_parser.add_argument(
        "root", metavar="CID", help="the commit (with its history) or tree to fetch, or /ipns/NAME"
    )
    publish = parsers["publish"]
    publish.add_argument("branch", metavar="BRANCH", help="the branch whose head (and history) to publish")
    publish.add_argument(
        "--key", default="self", metavar="NAME", help="the node's key to publish with (default: self)"
    )
    publish.add_argument(
        "--lifetime",
        type=parse_duration,
        default=86400.0,
        metavar="DURATION",
        help="how long the record is valid (default 24h; 90, 45s, 10m, 12h, 30d)",
    )
    for parser in (push_parser, pull_parser, publish):
        parser.add_argument(
            "--ipfs",
            metavar="URL",
            help="an IPFS node's RPC API, http://HOST:5001 (default: $IPLDMOUNT_IPFS)",
        )
    pull_parser.add_argument(
        "--gateway",
        action="append",
        metavar="URL",
        help="a trustless gateway to fetch from (repeatable, tried in order; default: $IPLDMOUNT_GATEWAYS)",
    )
    push_parser.set_defaults(gateway=None)
    publish.set_defaults(gateway=None)
    fetch_arguments(parsers["export"])
    serve = parsers["serve"]
    serve.add_argument("--port", type=int, default=8080, help="TCP port (default 8080)")
    serve.add_argument(
        "--bind", default="127.0.0.1", metavar="ADDRESS", help="address to listen on (default 127.0.0.1)"
    )
    for name, (kind, what) in SERVE_LIMITS.items():
        metavar = "N" if kind is count else "DURATION"
        serve.add_argument(f"--{name.replace('_', '-')}", type=kind, metavar=metavar, help=what)
    parsers["import"].add_argument("car", metavar="FILE.car", help="the CARv1 archive to import")
    parsers["export"].add_argument(
        "cid",
        metavar="REV",
        help="a tree or a commit (with the history the store has) to export: a CID, tag, branch, /ipns/NAME",
    )
    parsers["export"].add_argument(
        "-o",
        "--output",
        required=True,
        metavar="FILE.car",
        help="where to write the archive ('-' for stdout)",
    )
