#!/usr/bin/env bash
# Build the pinned Kubo (the IPFS node the tests and benchmarks start) from its Go module,
# into .tools/kubo-$KUBO_VERSION/ipfs; reused while that file answers the pinned version.
#
#   scripts/build-kubo.sh            prints the path of the binary on its last line
#
# Kubo's go.mod replaces go-libp2p with a fork that the Go module proxy does not serve, so
# `go install github.com/ipfs/kubo/cmd/ipfs@VERSION` refuses it (replace directives) and the
# fork cannot be fetched. We build the module's own source with that one replace removed and
# go-libp2p pinned to the newest upstream release the proxy serves, which carries what the
# fork was for (quic-go and webtransport-go new enough for Kubo's go.mod). Everything else is
# exactly Kubo's go.mod and go.sum; the added sums are checked against the checksum database.
set -euo pipefail

KUBO_VERSION=${KUBO_VERSION:-v0.43.1}
LIBP2P_VERSION=${LIBP2P_VERSION:-v0.52.0}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest="$root/.tools/kubo-$KUBO_VERSION"
binary="$dest/ipfs"

if [ -x "$binary" ] && "$binary" version 2>/dev/null | grep -qx "ipfs version ${KUBO_VERSION#v}"; then
  echo "kubo: $KUBO_VERSION already built" >&2
  echo "$binary"
  exit 0
fi
command -v go >/dev/null || { echo "kubo: ERROR: no Go toolchain (go 1.26 or newer) on PATH" >&2; exit 1; }

echo "kubo: building $KUBO_VERSION with $(go version | cut -d' ' -f3) (a few minutes the first time)" >&2
module_dir=$(go mod download -json "github.com/ipfs/kubo@$KUBO_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -d "$module_dir" ] || { echo "kubo: ERROR: go mod download of github.com/ipfs/kubo@$KUBO_VERSION failed" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$module_dir/." "$work/src"
chmod -R u+w "$work/src"
cd "$work/src"
go mod edit -dropreplace=github.com/libp2p/go-libp2p -require="github.com/libp2p/go-libp2p@$LIBP2P_VERSION"
mkdir -p "$dest"
GOFLAGS=-mod=mod go build -trimpath -o "$work/ipfs" ./cmd/ipfs
mv "$work/ipfs" "$binary"
"$binary" version >&2
echo "$binary"
