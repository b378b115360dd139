#!/usr/bin/env bash
# The Python that runs bench/b_small_keys.py's peers (icechunk, py-hamt: both need Python >= 3.12,
# the project's venv is 3.11): a venv in .tools/peers-py312/ with bench/peers-requirements.txt
# installed, reused while that file's sha256 is the one stored in the venv.
#
#   scripts/peer-python.sh           prints the venv's python on its last line (stdout);
#                                    exits non-zero with the reason on stderr's last line
#
# The base interpreter, the first that runs and is >= 3.12 of: $PEER_PYTHON; python3.12 or
# python3.13 on PATH (a pyenv shim that is not enabled fails to run and is skipped); `pyenv
# prefix 3.12` or `3.13`; /root/.pyenv/versions/3.12*/bin/python (or 3.13*).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
requirements="$root/bench/peers-requirements.txt"
venv="$root/.tools/peers-py312"
stamp="$venv/.requirements-sha256"

fail() {
  echo "peers: $*" >&2
  exit 1
}

[ -f "$requirements" ] || fail "no $requirements"
want=$(sha256sum "$requirements" | cut -d' ' -f1)

new_enough() {  # $1 runs and is Python >= 3.12 with venv
  [ -n "$1" ] && "$1" -c 'import sys, venv; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1
}

if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null || true)" = "$want" ] && new_enough "$venv/bin/python"; then
  echo "peers: $venv is up to date ($("$venv/bin/python" --version 2>&1))" >&2
  echo "$venv/bin/python"
  exit 0
fi

find_python() {
  local candidate version
  if [ -n "${PEER_PYTHON:-}" ]; then
    new_enough "$PEER_PYTHON" && { echo "$PEER_PYTHON"; return 0; }
    echo "peers: PEER_PYTHON=$PEER_PYTHON is not a working Python >= 3.12; looking further" >&2
  fi
  for candidate in python3.12 python3.13; do
    if command -v "$candidate" >/dev/null 2>&1 && new_enough "$candidate"; then
      command -v "$candidate"
      return 0
    fi
  done
  if command -v pyenv >/dev/null 2>&1; then
    for version in 3.12 3.13; do
      candidate="$(pyenv prefix "$version" 2>/dev/null || true)/bin/python"
      new_enough "$candidate" && { echo "$candidate"; return 0; }
    done
  fi
  for candidate in /root/.pyenv/versions/3.12*/bin/python /root/.pyenv/versions/3.13*/bin/python; do
    new_enough "$candidate" && { echo "$candidate"; return 0; }
  done
  return 1
}

base=$(find_python) || fail "no Python >= 3.12 found (set PEER_PYTHON, or install python3.12 or pyenv's 3.12)"
echo "peers: making $venv with $base ($("$base" --version 2>&1))" >&2
rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
"$base" -m venv "$venv" >&2 || fail "$base -m venv $venv failed"
# a complete lock (see the requirements file): no resolver, exactly these versions
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r "$requirements" >&2 \
  || fail "pip install -r bench/peers-requirements.txt failed"
"$venv/bin/python" -c 'import icechunk, py_hamt, zarr, numpy' >&2 || fail "the peers do not import in $venv"
echo "$want" >"$stamp"
versions=$("$venv/bin/python" -c '
import importlib.metadata as metadata, platform
names = ("icechunk", "py-hamt", "zarr", "numpy")
print(", ".join(f"{name} {metadata.version(name)}" for name in names) + f", Python {platform.python_version()}")
')
echo "peers: $venv ready: $versions" >&2
echo "$venv/bin/python"
