"""Which IPFS node and gateways a command may contact: nothing unless configured.

In order of precedence: the command line (``--ipfs URL``, ``--gateway URL`` repeated),
the environment (``IPLDMOUNT_IPFS``, ``IPLDMOUNT_GATEWAYS`` separated by commas or
spaces), then the config file (``$IPLDMOUNT_CONFIG``, else
``$XDG_CONFIG_HOME/ipldmount/config.toml``)::

    ipfs = "http://127.0.0.1:5001"
    gateways = ["http://127.0.0.1:8080"]

The file is UTF-8 (a byte-order mark is accepted); anything wrong in it is one error that
names the file. Reading the settings loads no HTTP client: that comes with the first client
built for them (:meth:`Remotes.sources`).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ipldmount.blocks.base import Blockstore
from ipldmount.errors import IpldmountError, RemoteError
from ipldmount.remote.fetching import BlockFetcher, BlockSource, FetchingBlockstore

L = TypeVar("L", bound=Blockstore)


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    if environ.get("IPLDMOUNT_CONFIG"):
        return Path(environ["IPLDMOUNT_CONFIG"])
    base = Path(environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "ipldmount" / "config.toml"


@dataclass(frozen=True)
class Remotes:
    """An IPFS node's RPC URL (or None) and trustless gateway URLs, in the order to try them."""

    ipfs: str | None = None
    gateways: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.ipfs is not None or bool(self.gateways)

    def sources(self, block_timeout: float | None = None) -> list[BlockSource]:
        """Clients for the node, then the gateways: the order blocks are asked for (*block_timeout*:
        default, the total timeout of a request, :func:`~ipldmount.remote.http.total_timeout`)."""
        from ipldmount.remote.gateway import Gateway  # the HTTP client, loaded with the first one
        from ipldmount.remote.kubo import KuboNode

        node: list[BlockSource] = [KuboNode(self.ipfs, block_timeout=block_timeout)] if self.ipfs else []
        return node + [Gateway(url) for url in self.gateways]

    def resolve_name(self, name: str) -> bytes:
        """The CID ``/ipns/NAME`` points at now, asked of the IPFS node (gateways are not asked:
        a trustless gateway's IPNS record would have to be verified here, signature and all)."""
        if self.ipfs is None:
            raise IpldmountError(f"{name}: an IPNS name resolves through an IPFS node: pass --ipfs URL")
        from ipldmount.remote.kubo import KuboNode  # the HTTP client, loaded for the first name

        node = KuboNode(self.ipfs)
        try:
            return node.name_resolve(name)
        finally:
            node.close()

    def fetcher(self, block_timeout: float | None = None) -> BlockFetcher | None:
        """A fetcher over :meth:`sources`, or None when nothing is configured."""
        return BlockFetcher(self.sources(block_timeout)) if self else None

    def fetching_into(self, store: L) -> L | FetchingBlockstore[L]:
        """*store* as readers see it: when anything is configured, a :class:`FetchingBlockstore`
        over it (blocks it lacks come from :meth:`sources` and stay in it), to be closed by the
        caller; else *store* itself."""
        fetcher = self.fetcher()
        return store if fetcher is None else FetchingBlockstore(store, fetcher)

    @classmethod
    def resolve(
        cls,
        ipfs: str | None = None,
        gateways: Sequence[str] = (),
        environ: Mapping[str, str] | None = None,
    ) -> Remotes:
        """The remotes from the command line, else the environment, else the config file (each
        setting on its own)."""
        environ = os.environ if environ is None else environ
        path = config_path(environ)
        file = _read_config(path)
        ipfs = ipfs or environ.get("IPLDMOUNT_IPFS") or _text(file, "ipfs", path)
        listed = list(gateways) or environ.get("IPLDMOUNT_GATEWAYS", "").replace(",", " ").split()
        if not listed:
            listed = _texts(file, "gateways", path)
        return cls.of(ipfs, listed)

    @classmethod
    def of(cls, ipfs: str | None, gateways: Sequence[str] = ()) -> Remotes:
        """Exactly these remotes (no environment, no config file), their URLs checked."""
        if not ipfs and not gateways:
            return cls()
        from ipldmount.remote.http import check_url  # the HTTP client: only for remotes to use

        try:
            return cls(
                check_url(ipfs, "IPFS node") if ipfs else None,
                tuple(check_url(url, "gateway") for url in gateways),
            )
        except RemoteError as exc:
            raise IpldmountError(str(exc)) from None


def _read_config(path: Path) -> dict[str, object]:
    """The config file's settings ({} if there is none); IpldmountError naming it if it is not
    UTF-8 TOML. A byte-order mark (some editors write one) is skipped: tomllib refuses it."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise IpldmountError(f"config file {path}: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(raw.decode("utf-8").removeprefix("\ufeff"))
    except UnicodeDecodeError as exc:
        raise IpldmountError(f"config file {path}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise IpldmountError(f"config file {path}: {exc}") from None


def _text(config: dict[str, object], key: str, path: Path) -> str | None:
    value = config.get(key)
    if value is not None and not isinstance(value, str):
        raise IpldmountError(f"config file {path}: {key} must be a URL in quotes, not {_brief(value)}")
    return value


def _texts(config: dict[str, object], key: str, path: Path) -> list[str]:
    value = config.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise IpldmountError(
            f"config file {path}: {key} must be a list of URLs in quotes, not {_brief(value)}"
        )
    return list(value)


def _brief(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."
