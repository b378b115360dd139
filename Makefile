# ipldmount developer / CI entry points.
#
#   make test     install system packages (if missing) + .venv + the IPFS node, then run pytest
#                 in a private network namespace (tests/in-netns: the node reaches only loopback)
#   make kubo     the real IPFS node the tests start: Kubo, built from its pinned Go module into
#                 .tools/ (scripts/build-kubo.sh; reused while the version is unchanged)
#   make ipfs-node   the JavaScript tools the tests check interop with (npm ci into tests/ipfs-node:
#                 ipfs-car, the trustless client's libraries, iamap)
#   make interop-tools   the IPLD HashMap implementations the tests compare with: iamap (in
#                 tests/ipfs-node) and go-ipld-adl-hamt (built into .tools/bin/hamt-go)
#   make lint     ruff check, ruff format --check, mypy --strict on ipldmount/
#   make test-zarr-min   the zarr Store tests again, in .venv-zarr-min with the lowest zarr we support
#   make demo     scripts/demo.sh, in .venv with the runtime and demo dependencies only
#   make bench    bench/run.py
#   make peers    the Python >= 3.12 venv (.tools/peers-py312) with the stores bench/b_small_keys.py
#                 compares with, icechunk and py-hamt (scripts/peer-python.sh; reused while
#                 bench/peers-requirements.txt is unchanged); needed by `make bench` only
#
# Variables: PYTEST_ARGS (passed to pytest), PYTHON (interpreter that creates
# .venv, default python3), SKIP_SYSDEPS=1 (skip the apt check entirely).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
# Every recipe runs as one bash script, so `set -e` covers all of its lines.
.ONESHELL:
.DELETE_ON_ERROR:
MAKEFLAGS += --no-builtin-rules

PYTHON      ?= python3
VENV        := .venv
VPY         := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
DEMO_STAMP  := $(VENV)/.installed-demo
PYTEST_ARGS ?=
SKIP_SYSDEPS ?=

# Debian packages needed to build and run pyfuse3 and to exercise the mount
# (getfattr/setfattr come from attr; systemd-analyze, to verify the unit, from systemd;
# rsync drives the mount in the tests; strace counts the requests ls -l makes; iproute2 brings
# up loopback in the tests' network namespace; nodejs and npm run the JavaScript interop
# tools, unless the machine has its own node.js already).
SYSDEPS_PKGS ?= fuse3 libfuse3-dev pkg-config attr gcc python3-dev systemd rsync strace iproute2 \
	$(if $(shell command -v node && command -v npm),,nodejs npm)
IPFS_NODE   := tests/ipfs-node
IPFS_STAMP  := $(IPFS_NODE)/node_modules/.installed

TOOLS       := .tools/bin
HAMT_GO_SRC := tests/interop/hamt-go
HAMT_GO     := $(TOOLS)/hamt-go

ZARR_MIN    := 3.0.8
MIN_VENV    := .venv-zarr-min

.PHONY: all sysdeps venv ipfs-node kubo interop-tools test test-zarr-min lint demo peers bench clean distclean

all: test

sysdeps:
	@if [ -n "$(SKIP_SYSDEPS)" ]; then echo "sysdeps: skipped (SKIP_SYSDEPS set)"; exit 0; fi
	missing=()
	if command -v dpkg-query >/dev/null 2>&1; then
	  for p in $(SYSDEPS_PKGS); do
	    st=$$(dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null || true)
	    [ "$$st" = "install ok installed" ] || missing+=("$$p")
	  done
	else
	  # No dpkg: check what we actually use, and report by package name.
	  command -v fusermount3 >/dev/null 2>&1 || missing+=(fuse3)
	  pkg-config --exists fuse3 2>/dev/null || missing+=(libfuse3-dev)
	  command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
	  command -v getfattr >/dev/null 2>&1 || missing+=(attr)
	  command -v gcc >/dev/null 2>&1 || missing+=(gcc)
	  command -v rsync >/dev/null 2>&1 || missing+=(rsync)
	  command -v strace >/dev/null 2>&1 || missing+=(strace)
	  command -v ip >/dev/null 2>&1 || missing+=(iproute2)
	  command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
	fi
	if [ $${#missing[@]} -eq 0 ]; then
	  echo "sysdeps: all present ($(SYSDEPS_PKGS))"
	  exit 0
	fi
	echo "sysdeps: missing: $${missing[*]}"
	if ! command -v apt-get >/dev/null 2>&1; then
	  echo "sysdeps: ERROR: apt-get not found; install these by hand (or set SKIP_SYSDEPS=1)" >&2
	  exit 1
	fi
	if [ "$$(id -u)" -eq 0 ]; then
	  SUDO=()
	elif command -v sudo >/dev/null 2>&1; then
	  SUDO=(sudo)
	else
	  echo "sysdeps: ERROR: not root and no sudo; cannot install: $${missing[*]}" >&2
	  exit 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	echo "sysdeps: apt-get update"
	"$${SUDO[@]}" apt-get update
	echo "sysdeps: apt-get install $${missing[*]}"
	"$${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$${missing[@]}"

venv: $(STAMP)

# Rebuilt only when pyproject.toml changes. sysdeps is order-only: it always
# runs its (cheap) check, but never forces a reinstall by itself.
$(STAMP): pyproject.toml | sysdeps
	@echo "venv: preparing $(VENV)"
	if [ ! -x $(VPY) ]; then $(PYTHON) -m venv $(VENV); fi
	$(VPY) -m pip install --disable-pip-version-check -e '.[test]'
	touch $@

# The JavaScript interop tools as package-lock.json pins them (about 40 MB, seconds); no install
# scripts run, so nothing is fetched from outside the npm registry.
$(IPFS_STAMP): $(IPFS_NODE)/package.json $(IPFS_NODE)/package-lock.json | sysdeps
	@echo "ipfs-node: npm ci in $(IPFS_NODE)"
	(cd $(IPFS_NODE) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
	touch $@

ipfs-node: $(IPFS_STAMP)

# Needs a Go toolchain (go 1.26 or newer) and the Go module proxy; the script itself decides
# whether the binary in .tools/ is already the pinned version.
kubo:
	scripts/build-kubo.sh >/dev/null

# go-ipld-adl-hamt, the IPLD HashMap's Go ADL, at the versions go.sum pins (modules from the Go
# module proxy): rebuilt only when the program or its pins change. Without go, nothing is built
# and tests/test_hamt_interop.py skips its Go tests (and fails them under CI=true).
$(HAMT_GO): $(HAMT_GO_SRC)/go.mod $(HAMT_GO_SRC)/go.sum $(HAMT_GO_SRC)/main.go
	@if ! command -v go >/dev/null 2>&1; then echo "interop-tools: go not found, $(HAMT_GO) not built"; exit 0; fi
	echo "interop-tools: go build $(HAMT_GO)"
	mkdir -p $(TOOLS)
	(cd $(HAMT_GO_SRC) && go build -buildvcs=false -o $(CURDIR)/$(HAMT_GO) .)

interop-tools: ipfs-node $(HAMT_GO)

test: sysdeps venv ipfs-node kubo interop-tools
	@echo "test: tests/in-netns $(VPY) -m pytest -q $(PYTEST_ARGS)"
	tests/in-netns $(VPY) -m pytest -q $(PYTEST_ARGS)

# pyproject says zarr>=$(ZARR_MIN): prove it with a venv pinned to exactly that release.
$(MIN_VENV)/.installed: pyproject.toml | sysdeps
	@echo "venv: preparing $(MIN_VENV) (zarr==$(ZARR_MIN))"
	if [ ! -x $(MIN_VENV)/bin/python ]; then $(PYTHON) -m venv $(MIN_VENV); fi
	$(MIN_VENV)/bin/python -m pip install --disable-pip-version-check -e '.[test]' 'zarr==$(ZARR_MIN)'
	touch $@

test-zarr-min: $(MIN_VENV)/.installed
	$(MIN_VENV)/bin/python -c 'import zarr; assert zarr.__version__ == "$(ZARR_MIN)", zarr.__version__'
	$(MIN_VENV)/bin/python -m pytest -q tests/test_zarrstore.py tests/test_writebuffer.py $(PYTEST_ARGS)

lint: venv
	@rc=0
	echo "lint: ruff check"
	$(VENV)/bin/ruff check . || rc=1
	echo "lint: ruff format --check"
	$(VENV)/bin/ruff format --check . || rc=1
	echo "lint: mypy ipldmount"
	$(VENV)/bin/mypy ipldmount || rc=1
	if [ $$rc -ne 0 ]; then echo "lint: FAILED" >&2; fi
	exit $$rc

# The runtime install plus what the demo's dataset needs (xarray, pandas): no test or lint tools.
$(DEMO_STAMP): pyproject.toml | sysdeps
	@echo "venv: preparing $(VENV) for the demo"
	if [ ! -x $(VPY) ]; then $(PYTHON) -m venv $(VENV); fi
	$(VPY) -m pip install --disable-pip-version-check -e '.[demo]'
	touch $@

demo: sysdeps $(DEMO_STAMP)
	bash scripts/demo.sh

# Never fails: without the peers' venv, small_keys's peer rows say why (the benchmark runs the same
# script itself, so `bench/run.py --only small_keys` needs no make).
peers:
	scripts/peer-python.sh >/dev/null || echo "peers: not made; small_keys's peer rows will say why" >&2

bench: venv ipfs-node kubo peers
	tests/in-netns $(VPY) bench/run.py

clean:
	rm -rf build dist .pytest_cache .mypy_cache .ruff_cache .hypothesis ./*.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -print0 | xargs -0 rm -rf

# Also removes the virtualenv (NOT part of clean: others may share it).
distclean: clean
	rm -rf $(VENV) $(MIN_VENV) $(IPFS_NODE)/node_modules .tools
