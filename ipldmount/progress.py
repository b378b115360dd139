"""Progress lines for long operations, shown only when stderr is a terminal."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


class Progress:
    """Counts blocks and bytes, redrawing one status line at most ten times a second.

    With a total (bytes of a CAR file being read, or blocks of an archive being
    written) the line shows how far along it is and an estimate of the time left.
    """

    def __init__(
        self,
        label: str,
        stream: TextIO | None = None,
        *,
        total_bytes: int | None = None,
        total_blocks: int | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self.total_bytes, self.total_blocks = total_bytes, total_blocks
        self.blocks = 0
        self.nbytes = 0
        self._clock = clock or time.monotonic
        self._started = self._drawn = self._clock()

    def __call__(self, blocks: int, nbytes: int) -> None:
        self.blocks, self.nbytes = blocks, nbytes
        now = self._clock()
        if self.enabled and now - self._drawn >= 0.1:
            self._drawn = now
            self._draw()

    def fraction(self) -> float | None:
        """How much is done, from 0 to 1, when the total is known."""
        if self.total_bytes:
            return min(self.nbytes / self.total_bytes, 1.0)
        if self.total_blocks:
            return min(self.blocks / self.total_blocks, 1.0)
        return None

    def line(self) -> str:
        elapsed = max(self._clock() - self._started, 1e-9)
        rate = self.nbytes / elapsed / 2**20
        count = f"{self.blocks}" + (f"/{self.total_blocks}" if self.total_blocks else "")
        size = f"{self.nbytes / 2**20:.1f}" + (f"/{self.total_bytes / 2**20:.1f}" if self.total_bytes else "")
        text = f"{self.label}: {count} blocks, {size} MiB, {rate:.1f} MiB/s"
        done = self.fraction()
        if done is not None:
            text = f"{self.label}: {done:6.1%}  " + text.removeprefix(f"{self.label}: ")
            if 0 < done < 1:
                text += f", {_duration(elapsed * (1 - done) / done)} left"
        return text

    def _draw(self, end: str = "") -> None:
        self.stream.write(f"\r{self.line()}\033[K{end}")
        self.stream.flush()

    def done(self) -> None:
        if self.enabled:
            self._draw("\n")


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
