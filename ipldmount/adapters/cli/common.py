"""What every command group shares: the commands' names, opening the store, options, output helpers."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ipldmount.blocks import default_store_path
from ipldmount.errors import IpldmountError
from ipldmount.progress import Progress
from ipldmount.repo.repository import Repository

if TYPE_CHECKING:  # the transports load HTTP: only the commands that reach a node import them
    from ipldmount.remote.remotes import Remotes

Command = Callable[[argparse.Namespace], int]

# Every command, in the order `ipldmount --help` lists them (each group module has the handlers).
COMMAND_NAMES = (
    *("mount", "sync", "unmount", "status"),
    *("import", "export", "ls", "cat", "log", "tag", "tags", "diff", "gc"),
    *("push", "pull", "publish", "serve"),
    *("branch", "branches", "reset", "discard", "reflog"),
)


class UsageError(IpldmountError):
    """The command line is wrong (exit status 2)."""


class Interrupted(BaseException):
    """SIGTERM arrived: unwind like KeyboardInterrupt does for SIGINT."""

    signum = signal.SIGTERM


# --- the store ---------------------------------------------------------------------------


def _store_path(args: argparse.Namespace) -> Path:
    return Path(args.store) if args.store else default_store_path()


def open_store(args: argparse.Namespace, durable: bool = True) -> Repository:
    """The store of ``--store``, made if there is none (a command that writes into it)."""
    return _upgraded(Repository.at(_store_path(args), durable=durable))


def _upgraded(repository: Repository) -> Repository:
    """A store from before commits gets them on first use (said once, on stderr)."""
    upgraded = repository.upgrade_history()
    if upgraded:
        print(
            f"ipldmount: gave {upgraded} history lines of {repository.where} their commits", file=sys.stderr
        )
    return repository


def open_existing_store(args: argparse.Namespace) -> Repository:
    """The store for a command that only reads: a mistyped ``--store`` must not create an empty one
    (unless blocks are to be fetched into it from an IPFS node or gateway)."""
    path = _store_path(args)
    if not path.is_dir() and getattr(args, "fetching", False) and remotes_of(args):
        return Repository.at(path)
    if not path.is_dir():
        raise IpldmountError(f"no blockstore at {path} (import a CAR into it first, or pass --store DIR)")
    return _upgraded(Repository.at(path))


@contextmanager
def open_reading_store(args: argparse.Namespace) -> Iterator[Repository]:
    """The store for a command that reads trees: blocks it lacks come from the configured IPFS
    node or gateways, if any (and stay in the store)."""
    with read_through(open_existing_store(args), remotes_of(args)) as repository:
        yield repository


@contextmanager
def read_through(repository: Repository, remotes: Remotes) -> Iterator[Repository]:
    """The one place the command line lets a store fetch the blocks it lacks from *remotes*: the
    repository as readers see it (``/ipns/NAME`` resolved through the node), fetching ahead
    stopped at the end."""
    with remotes.fetching_into(repository.local) as store:
        yield Repository(store, home=repository.home, names=remotes.resolve_name)


def remotes_of(args: argparse.Namespace) -> Remotes:
    """The node and gateways of ``--ipfs`` and ``--gateway``, else the environment and config file."""
    return resolve_remotes(args.ipfs, args.gateway or ())


def resolve_remotes(ipfs: str | None, gateways: Sequence[str] = ()) -> Remotes:
    from ipldmount.remote.remotes import Remotes

    return Remotes.resolve(ipfs, gateways)


def remotes_named(remotes: Remotes) -> str:
    """The node, else the gateways, as said in messages."""
    return remotes.ipfs or ", ".join(remotes.gateways)


# --- options -----------------------------------------------------------------------------


def common_options(default: object) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--store",
        metavar="DIR",
        default=default,
        help="blockstore directory (default: $IPLDMOUNT_STORE or $XDG_DATA_HOME/ipldmount)",
    )
    common.add_argument(
        "-v", "--verbose", action="count", default=default, help="more logging (-vv for debug)"
    )
    return common


def fetch_arguments(parser: argparse.ArgumentParser) -> None:
    """--ipfs and --gateway for a command that reads: where blocks the store lacks come from (on
    first use; they stay in the store)."""
    parser.add_argument(
        "--ipfs",
        metavar="URL",
        help="an IPFS node's RPC API to fetch missing blocks from (default: $IPLDMOUNT_IPFS, config file)",
    )
    parser.add_argument(
        "--gateway",
        action="append",
        metavar="URL",
        help="a trustless gateway to fetch missing blocks from (repeatable, after --ipfs; default: "
        "$IPLDMOUNT_GATEWAYS)",
    )
    parser.set_defaults(fetching=True)


def count(text: str) -> int:
    """An argument that counts: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a count: {text!r}")
    return value


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``90``, ``45s``, ``10m``, ``12h``, ``30d``, ``2w``: seconds."""
    number, unit = (text[:-1], text[-1]) if text[-1:] in DURATION_UNITS else (text, "s")
    try:
        value = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a duration: {text!r} (say 90, 45s, 10m, 12h, 30d, 2w)"
        ) from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"a duration must be a finite number >= 0: {text!r}")
    return value * DURATION_UNITS[unit]


# --- output ------------------------------------------------------------------------------


@contextmanager
def progress_line(
    label: str, *, total_bytes: int | None = None, total_blocks: int | None = None
) -> Iterator[Progress]:
    """A progress line that ends its line even when the operation fails, so the error starts afresh."""
    progress = Progress(label, total_bytes=total_bytes, total_blocks=total_blocks)
    try:
        yield progress
    finally:
        progress.done()


def count_of(number: int, noun: str) -> str:
    return f"{number} {noun}{'s' * (number != 1)}"


def megabytes(number: int) -> str:
    return f"{number / 1e6:.1f} MB" if number >= 100_000 else f"{number} bytes"
