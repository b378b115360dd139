"""Which IPFS node and gateways a command contacts: the command line, else the environment,
else the config file; nothing at all unless one of them says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from ipldmount.errors import IpldmountError
from ipldmount.remote.remotes import Remotes, config_path


def _env(tmp_path: Path, config: str | None = None, **values: str) -> dict[str, str]:
    path = tmp_path / "config.toml"
    if config is not None:
        path.write_text(config)
    return {"IPLDMOUNT_CONFIG": str(path), **values}


def test_nothing_is_configured_by_default(tmp_path: Path) -> None:
    remotes = Remotes.resolve(environ=_env(tmp_path))
    assert not remotes and remotes.fetcher() is None


def test_the_command_line_wins_then_the_environment_then_the_file(tmp_path: Path) -> None:
    config = 'ipfs = "http://file:5001"\ngateways = ["http://file-gw"]\n'
    env = _env(tmp_path, config, IPLDMOUNT_IPFS="http://env:5001", IPLDMOUNT_GATEWAYS="http://a, http://b")
    assert Remotes.resolve(environ=env) == Remotes("http://env:5001", ("http://a", "http://b"))
    assert Remotes.resolve("http://flag:5001/", ["http://g/"], environ=env) == Remotes(
        "http://flag:5001", ("http://g",)
    )
    assert Remotes.resolve(environ=_env(tmp_path, config)) == Remotes("http://file:5001", ("http://file-gw",))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("ipfs = ", "config file"),
        ("ipfs = 5001", "must be a URL in quotes"),
        ('gateways = "http://one"', "must be a list of URLs"),
        ('ipfs = "ftp://node"', "not an http:// or https:// URL"),
    ],
)
def test_a_bad_config_file_is_one_clear_error(tmp_path: Path, config: str, message: str) -> None:
    with pytest.raises(IpldmountError, match=message):
        Remotes.resolve(environ=_env(tmp_path, config))


def test_bad_urls_are_refused() -> None:
    for url in ("localhost:5001", "http://", "file:///tmp/x", ""):
        if url:
            with pytest.raises(IpldmountError):
                Remotes.of(url)
    assert not Remotes.of(None)


def test_the_config_file_lives_where_xdg_says(tmp_path: Path) -> None:
    assert config_path({"XDG_CONFIG_HOME": str(tmp_path)}) == tmp_path / "ipldmount" / "config.toml"
    assert config_path({"IPLDMOUNT_CONFIG": "/etc/x.toml", "XDG_CONFIG_HOME": "/y"}) == Path("/etc/x.toml")
