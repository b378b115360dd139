"""Moving trees in and out of the store: import, export (CARs), push, pull (IPFS), serve (a gateway)."""

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
    from ipldmount.remote.kubo import KuboNode

    remotes = remotes_of(args)
    if remotes.ipfs is None:
        raise IpldmountError("push needs an IPFS node: --ipfs URL (or IPLDMOUNT_IPFS, or the config file)")
    repository = open_existing_store(args)
    root = repository.stored_root(repository.find_root(args.root))
    node = KuboNode(remotes.ipfs)
    node.version()  # a node that is not there fails here, before any walk
    with progress_line(f"push to {node.url}") as progress:
        sent = repository.push(root, node, pin=args.pin, progress=progress)
    print(_pushed(sent, node.url, args.pin), file=sys.stderr)
    print(cids.cid_to_str(root))
    return 0


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
    root = cids.parse_cid(args.root)
    repository = open_store(args)
    sources: list[CarSource] = [KuboNode(remotes.ipfs)] if remotes.ipfs else []
    sources += [Gateway(url) for url in remotes.gateways]
    where = remotes_named(remotes)
    with progress_line(f"pull {args.root}") as progress:
        fetched = repository.pull(root, sources, where, progress=progress)
    if fetched.already:
        print(f"the store has all of {args.root} already: nothing fetched", file=sys.stderr)
    else:
        print(
            f"fetched {count_of(fetched.blocks, 'block')}, {megabytes(fetched.nbytes)} from {where}",
            file=sys.stderr,
        )
    print(cids.cid_to_str(root))
    return 0


SERVE_LIMITS = {  # serve's bounds on hostile clients (ipldmount/adapters/serve.py says why)
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
    print(f"serving {where} as a trustless gateway at {server.url}/ipfs/", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


COMMANDS: dict[str, tuple[Command, str]] = {
    "import": (cmd_import, "import a CARv1 file into the store; prints its root CID"),
    "export": (cmd_export, "write the CARv1 of a root CID"),
    "push": (cmd_push, "send a root's blocks that an IPFS node lacks, and optionally pin it there"),
    "pull": (cmd_pull, "fetch what the store lacks of a root from an IPFS node or gateways"),
    "serve": (cmd_serve, "serve the store read-only as a trustless HTTP gateway (raw blocks and CARs)"),
}


def add_arguments(parsers: dict[str, argparse.ArgumentParser]) -> None:
    push_parser, pull_parser = parsers["push"], parsers["pull"]
    push_parser.add_argument(
        "root", metavar="ROOT", help="a CID, a tag or a mountpoint (the root last synced there)"
    )
    push_parser.add_argument("--pin", action="store_true", help="pin the root on the node once it is sent")
    pull_parser.add_argument("root", metavar="CID", help="the root to fetch")
    for parser in (push_parser, pull_parser):
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
    parsers["export"].add_argument("cid", metavar="CID", help="root CID (or tag) to export")
    parsers["export"].add_argument(
        "-o",
        "--output",
        required=True,
        metavar="FILE.car",
        help="where to write the archive ('-' for stdout)",
    )
