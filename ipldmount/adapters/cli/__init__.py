"""The ``ipldmount`` command line.

``ipldmount ROOT MOUNTPOINT`` mounts; the other commands are named. Every
command takes ``--store DIR`` (default ``$IPLDMOUNT_STORE`` or the XDG data
dir). Errors of ours print one line and exit 1; bad usage exits 2.

Each command is a thin shell over the store's :class:`~ipldmount.repo.repository.Repository`:
it parses, asks the repository, prints. The commands come in groups: :mod:`.mounting` (mount,
sync, unmount, status), :mod:`.history` (log, tag, tags, diff, ls, cat), :mod:`.transfer`
(import, export, push, pull, publish, serve) and :mod:`.gc`; :mod:`.common` has what they share.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

from ipldmount._version import __version__
from ipldmount.adapters.cli import gc, history, mounting, transfer, versions
from ipldmount.adapters.cli.common import COMMAND_NAMES, Command, Interrupted, UsageError, common_options
from ipldmount.errors import IpldmountError

log = logging.getLogger("ipldmount")

GROUPS = (mounting, history, versions, transfer, gc)
COMMANDS: dict[str, tuple[Command, str]] = {
    name: next(group.COMMANDS[name] for group in GROUPS if name in group.COMMANDS) for name in COMMAND_NAMES
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipldmount",
        usage="ipldmount ROOT MOUNTPOINT [options]\n       ipldmount COMMAND ...",
        description="Mount an IPLD tree (zarr data in content-addressed storage) as a writable directory.",
        epilog="Run `ipldmount COMMAND --help` for a command's options.",
        parents=[common_options(argparse.SUPPRESS)],
    )
    parser.add_argument("--version", action="version", version=f"ipldmount {__version__}")
    parser.set_defaults(store=None, verbose=0)
    common = common_options(argparse.SUPPRESS)  # after the command too; a value given before it stays
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(
            name, help=help_text, description=help_text, parents=[common], prog=f"ipldmount {name}"
        )
    for group in GROUPS:
        group.add_arguments(sub.choices)
    return parser


def _on_sigterm(signum: int, frame: object) -> None:
    raise Interrupted


INTERRUPTED = {
    "import": "nothing was imported",
    "pull": "the blocks fetched so far are kept: pull again to fetch the rest",
    "push": "the node keeps what it was sent; nothing was pinned",
    "publish": "the node keeps what it was sent; no name was published",
    "serve": "the gateway stopped",
    "export": "no CAR was written",
    "mount": "nothing was mounted (a CAR being imported was not kept)",
}


def _with_mount_first(arguments: list[str]) -> list[str]:
    """`ipldmount [--store S] [-v] ROOT MOUNTPOINT ...`: put `mount` before ROOT."""
    index = 0
    while index < len(arguments) and arguments[index].startswith("-"):
        option = arguments[index]
        index += 2 if option == "--store" else 1  # --store DIR; --store=DIR, -v, --version alone
    if index < len(arguments) and arguments[index] not in COMMANDS:
        return [*arguments[:index], "mount", *arguments[index:]]
    return arguments


def _configure_logging(command: str, verbose: int) -> None:
    """-v: ipldmount's INFO; -vv: its DEBUG; libraries (pyfuse3, trio) say only WARNING unless
    -vv (INFO) or -vvv (DEBUG): their debug lines are noise beside ours. The daemon
    (``mount``) logs INFO without -v: its syncs and final root. Leaves alone logging that is
    set up already (a program embedding main(), pytest)."""
    if logging.getLogger().handlers:
        return
    own = [logging.WARNING, logging.INFO, logging.DEBUG][min(max(verbose, command == "mount"), 2)]
    libraries = [logging.WARNING, logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 3)]
    logging.basicConfig(
        level=libraries,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s" if command == "mount" else "%(message)s",
    )
    logging.getLogger("ipldmount").setLevel(own)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_with_mount_first(list(sys.argv[1:] if argv is None else argv)))
    _configure_logging(args.command, args.verbose)
    handler = COMMANDS[args.command][0]
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return handler(args)
    except UsageError as exc:
        parser.exit(2, f"ipldmount: error: {exc}\n")
    except IpldmountError as exc:
        print(f"ipldmount: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 1
    except OSError as exc:
        print(f"ipldmount: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Interrupted) as exc:
        signum = signal.SIGINT if isinstance(exc, KeyboardInterrupt) else Interrupted.signum
        kept = INTERRUPTED.get(args.command)
        what = f"{args.command} stopped" + (f"; {kept}" if kept else "")
        print(f"ipldmount: interrupted ({signal.Signals(signum).name}): {what}", file=sys.stderr)
        return 128 + signum
    finally:
        signal.signal(signal.SIGTERM, previous)


def mount_helper(argv: Sequence[str] | None = None) -> int:
    """``mount.ipldmount SOURCE DIR [-sfnv] [-o OPTIONS]``: what mount(8) runs for ``-t ipldmount``.

    Install it as /sbin/mount.ipldmount (a symlink to the console script) for
    ``mount -t ipldmount`` and fstab lines of type ``ipldmount``.
    """
    helper = argparse.ArgumentParser(prog="mount.ipldmount", description=mount_helper.__doc__)
    helper.add_argument("source", metavar="ROOT")
    helper.add_argument("directory", metavar="MOUNTPOINT")
    helper.add_argument("-o", dest="options", default="")
    helper.add_argument("-f", dest="fake", action="store_true", help="do everything but mount")
    helper.add_argument("-s", dest="sloppy", action="store_true", help="(accepted, ignored)")
    helper.add_argument("-n", dest="no_mtab", action="store_true", help="(accepted, ignored)")
    helper.add_argument("-v", dest="verbose", action="store_true")
    helper.add_argument("-t", dest="type", help="(accepted, ignored)")
    args = helper.parse_args(sys.argv[1:] if argv is None else argv)
    if args.fake:
        return 0
    command = ["mount", args.source, args.directory] + (["-o", args.options] if args.options else [])
    return main(command + ["-v"] * args.verbose)


__all__ = ["main", "mount_helper"]


if __name__ == "__main__":
    sys.exit(main())
