#!/usr/bin/env bash
# ipldmount end to end: write an xarray dataset (zarr v3) into a FUSE mount,
# sync it to a root CID and a CAR, then mount that CID read-only from a fresh
# store holding only the CAR, and check the data reads back identical.
#
# Run it with `make demo` (which prepares .venv) or `bash scripts/demo.sh`.
# Everything lives in one temporary directory under ${TMPDIR:-/tmp}; it is
# unmounted and removed on exit, error or not (KEEP_DEMO=1 keeps the files).
set -euo pipefail
cd "$(dirname "$0")/.."

IPLDMOUNT=.venv/bin/ipldmount
PY=.venv/bin/python
for tool in "$IPLDMOUNT" "$PY"; do
  [ -x "$tool" ] || { echo "demo: $tool not found; run \`make venv\` first" >&2; exit 1; }
done
command -v fusermount3 >/dev/null || { echo "demo: fusermount3 not found (apt-get install fuse3)" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/ipldmount-demo.XXXXXX")
work=$(cd "$work" && pwd -P)  # the real path: what /proc/self/mountinfo shows
store=$work/store      # where the dataset is written
store2=$work/store2    # a second, empty store: "another machine" that only gets the CAR
rw=$work/rw            # the writable mount
ro=$work/ro            # the read-only mount of the synced CID
mkdir -p "$rw" "$ro"

mounted() {  # from mountinfo: a stale mount counts too, and nothing touches the mount
  awk -v m="$1" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  for m in "$rw" "$ro"; do
    if mounted "$m"; then
      fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
      mounted "$m" && echo "demo: WARNING: could not unmount $m" >&2
    fi
  done
  # An unmounted daemon still finishes its last sync into the store: let it.
  for pid_file in "$store"/mounts/*/daemon.pid "$store2"/mounts/*/daemon.pid; do
    [ -f "$pid_file" ] || continue
    pid=$(cat "$pid_file" 2>/dev/null) || continue
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
  if [ "$status" -ne 0 ]; then
    echo >&2
    echo "demo: FAILED (exit $status)" >&2
    for log in "$store"/mounts/*/daemon.log "$store2"/mounts/*/daemon.log; do
      [ -s "$log" ] && { echo "--- last lines of $log:" >&2; tail -n 20 "$log" >&2; }
    done
  fi
  if [ -n "${KEEP_DEMO:-}" ]; then
    echo "demo: kept $work"
  else
    rm -rf "$work" || echo "demo: WARNING: could not remove $work" >&2
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step() { printf '\n==> %s\n' "$*"; }
fail() { echo "demo: ERROR: $*" >&2; exit 1; }

# The dataset, written and checked by the same code (deterministic: seeded).
cat > "$work/air.py" <<'PY'
import sys

import numpy as np
import pandas as pd
import xarray as xr


def air_temperature() -> xr.Dataset:
    """A small synthetic 4x-daily air temperature cube (like xarray's tutorial one)."""
    time = pd.date_range("2024-01-01", periods=120, freq="6h")
    lat = np.arange(75.0, 14.9, -2.5, dtype="float32")
    lon = np.arange(200.0, 330.1, 2.5, dtype="float32")
    rng = np.random.default_rng(2024)
    hours = np.arange(time.size)[:, None, None]
    air = (
        273.15
        + 30 * np.cos(np.deg2rad(lat))[None, :, None]
        + 3 * np.sin(2 * np.pi * hours / 4)  # the daily cycle
        + rng.normal(0, 1.5, (time.size, lat.size, lon.size))
    ).astype("float32")
    return xr.Dataset(
        {"air": (("time", "lat", "lon"), air, {"units": "K", "long_name": "4xDaily Air temperature at sigma level 995"})},
        coords={
            "time": time,
            "lat": ("lat", lat, {"units": "degrees_north"}),
            "lon": ("lon", lon, {"units": "degrees_east"}),
        },
        attrs={"title": "ipldmount demo: synthetic air temperature", "Conventions": "COARDS"},
    )


command, path = sys.argv[1], sys.argv[2]
original = air_temperature()
if command == "write":
    chunks = (40, 13, 27)
    original.to_zarr(path, mode="w-", zarr_format=3, consolidated=False, encoding={"air": {"chunks": chunks}})
    n_chunks = int(np.prod([-(-n // c) for n, c in zip(original.air.shape, chunks)]))
    print(f"wrote {path}: air{dict(original.air.sizes)} float32, {n_chunks} chunks of {chunks}, "
          f"{original.nbytes / 1e6:.1f} MB")
elif command == "check":
    back = xr.open_zarr(path, zarr_format=3, consolidated=False).load()
    xr.testing.assert_identical(back, original)  # values, coords, dims, attrs: everything
    print(f"read {path}: identical to the original "
          f"(mean {float(back.air.mean()):.2f} K, {back.air.size} values)")
else:
    sys.exit(f"unknown command {command}")
PY

echo "ipldmount demo in $work"

step "1/6 mount an empty tree at $rw"
"$IPLDMOUNT" empty "$rw" --store "$store"

step "2/6 write an xarray dataset (zarr v3) through the mount"
"$PY" "$work/air.py" write "$rw/air.zarr"
echo "files under the mount: $(find "$rw" -type f | wc -l)"

step "3/6 sync: commit the tree to a root CID and a CAR"
sync_out=$("$IPLDMOUNT" sync "$rw")
cid=$(tail -n 1 <<<"$sync_out")
# The first sync of an empty mount: its CAR of the change is the whole tree.
car=$(sed -n 's/^wrote CAR \(.*\) ([0-9]* bytes[^)]*)$/\1/p' <<<"$sync_out")
[[ "$cid" == baf* ]] || fail "sync printed no root CID:"$'\n'"$sync_out"
[ -s "$car" ] || fail "sync named no CAR file (or an empty one):"$'\n'"$sync_out"
echo "root CID: $cid"
echo "CAR:      $car ($(stat -c %s "$car") bytes)"

step "4/6 unmount $rw"
unmount_out=$("$IPLDMOUNT" unmount "$rw")
final=$(tail -n 1 <<<"$unmount_out")
[ "$final" = "$cid" ] || fail "unmount reported root $final, expected $cid (nothing changed since the sync)"
mounted "$rw" && fail "$rw is still mounted"
echo "unmounted; root unchanged: $final"

step "5/6 mount the CID read-only from a fresh store that has only the CAR"
imported=$("$IPLDMOUNT" import "$car" --store "$store2" 2>/dev/null)
[ "$imported" = "$cid" ] || fail "the CAR's root is $imported, expected $cid"
"$IPLDMOUNT" "$cid" "$ro" --store "$store2" --read-only
"$PY" "$work/air.py" check "$ro/air.zarr"
if (echo x >"$ro/air.zarr/extra") 2>/dev/null; then
  fail "writing into the read-only mount succeeded"
fi
echo "writes are refused (read-only)"

step "6/6 list the CID straight from the store (no mount needed), then unmount"
echo "\$ ipldmount ls $cid"
"$IPLDMOUNT" ls "$cid" --store "$store2" | sed 's/^/  /'
echo "\$ ipldmount ls -l $cid/air.zarr"
"$IPLDMOUNT" ls -l "$cid/air.zarr" --store "$store2" | sed 's/^/  /'
"$IPLDMOUNT" unmount "$ro" >/dev/null
mounted "$ro" && fail "$ro is still mounted"
echo "unmounted $ro"

printf '\ndemo: OK -- dataset stored as %s\n' "$cid"
here=$(pwd)
cat <<EOF

Next steps (the demo's files are gone; these are yours):
  use this checkout's ipldmount:   export PATH="$here/.venv/bin:\$PATH"
  or install it for good:          pipx install "$here"     (or: pip install "$here" in a venv)
  mount a new, empty tree:         mkdir -p ~/data && ipldmount empty ~/data
  write zarr into it, then:        ipldmount sync ~/data      # prints the new root CID, writes its CAR
  stop (syncs first):              ipldmount unmount ~/data
  carry on later:                  ipldmount resume ~/data
  everything else:                 ipldmount --help
EOF
