#!/usr/bin/env bash
# Placeholder: the end-to-end demo (mount, write zarr, read back by CID) goes here.
set -euo pipefail
echo "demo: not yet implemented" >&2
exit 1
