"""Time, injectable: every wait and deadline of a run goes through a :class:`Clock`.

The system clock is the event loop's (``anyio.current_time``); tests pass
``aflow.testing.FakeClock``, whose virtual time jumps to the next deadline as
soon as every task is blocked, so "retry after 30 s" takes microseconds.
"""

from __future__ import annotations

import math
import time
from types import TracebackType
from typing import Protocol, Self, final, runtime_checkable

import anyio

__all__ = ["Clock", "DeadlineScope", "SystemClock", "wall_time"]


class DeadlineScope(Protocol):
    """A cancel scope with a deadline, as the scheduler uses one (``anyio.CancelScope`` is one)."""

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None: ...

    def cancel(self) -> None: ...

    @property
    def cancel_called(self) -> bool: ...

    @property
    def cancelled_caught(self) -> bool: ...


@runtime_checkable
class Clock(Protocol):
    """What the scheduler needs from time."""

    def now(self) -> float:
        """The current time in seconds (only differences matter)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        ...

    def cancel_scope(self, timeout: float | None, *, shield: bool = False) -> DeadlineScope:
        """A cancel scope that cancels itself ``timeout`` seconds from now (never if None)."""
        ...

    # Optional: ``wall() -> float``, seconds since the epoch, for what other processes
    # read (leases, a run's stored deadline); ``time.time()`` when a clock has none.


@final
class SystemClock:
    """The event loop's clock."""

    __slots__ = ()

    def now(self) -> float:
        """The loop's monotonic time."""
        return anyio.current_time()

    async def sleep(self, seconds: float) -> None:
        """``anyio.sleep``."""
        await anyio.sleep(seconds)

    def cancel_scope(self, timeout: float | None, *, shield: bool = False) -> anyio.CancelScope:
        """An anyio cancel scope with a deadline on the loop's clock."""
        deadline = math.inf if timeout is None else anyio.current_time() + timeout
        return anyio.CancelScope(deadline=deadline, shield=shield)

    def wall(self) -> float:
        """Seconds since the epoch (``time.time()``): what leases and stored deadlines use,
        since other processes read them."""
        return time.time()


SYSTEM_CLOCK = SystemClock()


def wall_time(clock: Clock | None) -> float:
    """The wall time of ``clock`` (a clock without ``wall()`` uses ``time.time()``)."""
    wall = getattr(clock, "wall", None)
    return float(wall()) if wall is not None else time.time()
