"""The daemon's process-wide settings, each checked in a fresh interpreter (they last for its life)."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Allocates 8 buffers of 1 MiB (leaves in flight, FUSE writes), fills and frees them, 16 times over,
# as the daemon does while a file is written; prints the page faults taken after the first round.
FAULTS = """
import resource, sys
from ipldmount.adapters.fuse.daemon import keep_freed_buffers
taken = keep_freed_buffers() if sys.argv[1] == "tuned" else None
def round_():
    buffers = [bytearray(1 << 20) for _ in range(8)]
    for buffer in buffers:
        buffer[::4096] = b"x" * 256
round_()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(16):
    round_()
print(taken, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    result = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True)
    taken, faults = result.stdout.split()
    return taken, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_leaf_buffers_are_reused_without_new_page_faults() -> None:
    taken, tuned = _faults("tuned")
    assert taken == "True"
    _, default = _faults("default")
    assert default >= 16 * 8 * 200  # freed, the heap goes back to the kernel: 256 new faults per MiB...
    assert tuned < 16 * 8 * 8  # ...unless it is kept for the next buffers
