"""Writing back ahead of the commit: what a store wrote without an fsync, made durable meanwhile.

Blocks are written without an fsync each (nothing refers to them yet) and made durable together
by the commit that first refers to them: one ``syncfs`` before the root is written. Left to the
kernel, most of their bytes are still in memory by then (it writes back after about 30 s), and
the commit waits while all of them go to disk: 2 s for 100,000 small blocks, longer than the
commit's own work. :class:`WritebackAhead` flushes the filesystem in a thread of its own a moment
after writes, so the disk works while the writer goes on, and the commit's flush finds little
left. Durability is still only ever promised by that flush: this one is an early start, and its
failures are logged, not raised (the commit's own flush raises them).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

DELAY = 0.5  # seconds between the first unflushed write and the flush: a moment's writes go together
IDLE = 5.0  # seconds without writes after which the thread ends (a new write starts another)


class WritebackAhead:
    """Calls *flush* in a background thread a moment (*delay*) after :meth:`written` is called,
    once for all the writes of that moment, for as long as writes go on."""

    def __init__(self, flush: Callable[[], None], *, delay: float = DELAY, idle: float = IDLE) -> None:
        self._flush = flush
        self._delay = delay
        self._idle = idle
        self._pending = False  # a write is not covered by a flush started after it
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._condition = threading.Condition()
        self.flushes = 0  # how many flushes ran (for tests and benchmarks)

    def written(self) -> None:
        """Say that something was written: a flush starts within *delay*, unless one is due."""
        if self._pending and self._pid == os.getpid():
            return  # a flush that has not started yet covers this write too
        with self._condition:
            if self._pid != os.getpid():  # a forked child: its parent's thread is not here
                self._thread, self._pid = None, os.getpid()
            self._pending = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ipldmount-writeback", daemon=True)
                self._thread.start()
            else:
                self._condition.notify()

    def _run(self) -> None:
        while self._wait_for_writes():
            time.sleep(self._delay)  # let the writes of this moment gather
            with self._condition:
                self._pending = False  # from here on, a write calls for the next flush
            try:
                self._flush()
            except OSError as exc:
                log.warning("flushing ahead of the commit failed (the commit's own flush will say): %s", exc)
            self.flushes += 1

    def _wait_for_writes(self) -> bool:
        """True once a write wants a flush; False (and the thread ends) after *idle* without one."""
        with self._condition:
            if not self._pending:
                self._condition.wait(self._idle)
            if not self._pending:
                self._thread = None
                return False
            return True
