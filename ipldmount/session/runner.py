"""How a front door runs the blocking parts of the session's requests, and how they take turns.

A session's request (a write, a close, a sync) has parts that may wait on the disk or hash a
mebibyte, and parts that only touch memory. A front door with an event loop (the FUSE adapter)
hands the first kind to a worker thread, and other requests run meanwhile: that is where they
interleave, and why the session re-checks what it knows after each such wait. A caller without
an event loop (a test, a script) runs everything in place with :class:`InPlace`.

The session's requests are coroutines that await only what the runner gives them: no event loop
library is imported here, and with :class:`InPlace` a request finishes without ever suspending
(:func:`run_in_place` drives one).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class TurnLock(Protocol):
    """Tree changes and sync take turns: a lock whose waiters do not block the event loop."""

    async def __aenter__(self) -> object: ...

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> object: ...

    def locked(self) -> bool: ...


class Runner(Protocol):
    """Where blocking work runs, and the lock the session's changes and syncs take turns with."""

    async def in_thread(self, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)`` away from the caller's event loop (a worker thread); its result."""
        ...

    def lock(self) -> TurnLock:
        """A new lock of the runner's kind."""
        ...


class _PlainLock:
    """The lock of a caller with no event loop: nothing else can run while it is held."""

    def __init__(self) -> None:
        self._held = False

    async def __aenter__(self) -> None:
        if self._held:  # no other request can release it: it would wait forever
            raise RuntimeError("the session lock is taken twice by one request")
        self._held = True

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._held = False

    def locked(self) -> bool:
        return self._held


class InPlace:
    """Blocking work runs where the request runs: for callers without an event loop."""

    async def in_thread(self, call: Callable[..., T], *args: Any) -> T:
        return call(*args)

    def lock(self) -> TurnLock:
        return _PlainLock()


def run_in_place(request: Coroutine[Any, Any, T]) -> T:
    """The result of a session request under :class:`InPlace`, which never suspends."""
    try:
        request.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    request.close()
    raise RuntimeError("a session request waited for something InPlace does not provide")
