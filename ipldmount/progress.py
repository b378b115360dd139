"""Progress lines for long operations, shown only when stderr is a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Counts blocks and bytes, redrawing one status line at most ten times a second."""

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self.blocks = 0
        self.nbytes = 0
        self._started = self._drawn = time.monotonic()

    def __call__(self, blocks: int, nbytes: int) -> None:
        self.blocks, self.nbytes = blocks, nbytes
        now = time.monotonic()
        if self.enabled and now - self._drawn >= 0.1:
            self._drawn = now
            self._draw()

    def _draw(self, end: str = "") -> None:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        rate = self.nbytes / elapsed / 2**20
        self.stream.write(
            f"\r{self.label}: {self.blocks} blocks, {self.nbytes / 2**20:.1f} MiB ({rate:.1f} MiB/s){end}"
        )
        self.stream.flush()

    def done(self) -> None:
        if self.enabled:
            self._draw("\n")
