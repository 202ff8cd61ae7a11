"""Helpers for testing code that uses aflow (and for aflow's own tests)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, final

import anyio
import anyio.abc
import anyio.lowlevel
import structlog.testing

from ._runtime._current import INJECTIONS, Injection

if TYPE_CHECKING:
    from ._runtime._runtime import Runtime

__all__ = ["FakeClock", "Injection", "capture_events", "inject_failure", "send_when_waiting"]


@contextmanager
def capture_events() -> Iterator[list[MutableMapping[str, Any]]]:
    """Capture aflow's structlog events as dicts while the block runs.

    Each entry has ``event`` (``task_started``, ``run_succeeded``...),
    ``log_level`` and the fixed keys ``run_id``, ``node``, ``task``,
    ``attempt`` and ``duration_s`` where they apply. Assert on these, never
    on rendered text.
    """
    with structlog.testing.capture_logs() as entries:
        yield entries


async def send_when_waiting(
    runtime: Runtime,
    run_id: str,
    event: str,
    payload: Any = None,
    *,
    message_id: str | None = None,
    timeout: float = 30.0,
) -> bool:
    """Send ``event`` to run ``run_id`` once the run waits for it (a wait for it shows in
    its report), and return what :meth:`aflow.Runtime.send` returned.

    A test of "the event comes after the wait began" needs this: a plain ``send`` just
    after ``submit`` usually lands before the run gets to its wait (which works too,
    differently: the event is kept). ``timeout`` is in real seconds: the helper fails
    with ``TimeoutError`` naming what the run does wait for. A run of this runtime is
    watched without letting a :class:`FakeClock` jump meanwhile; a run another process
    drives is read from the store every few milliseconds (a fake clock may jump then).
    """
    from ._runtime._report import report_of_run

    seen: object = None
    with anyio.move_on_after(timeout):
        while True:
            try:
                handle = runtime.get(run_id)
            except KeyError:
                handle = None
            report = (
                report_of_run(handle, steps=False)
                if handle is not None
                else await runtime.report(run_id, steps=False)
            )
            seen = [(w.key, w.event) for w in report.waits]
            if any(wait.event == event for wait in report.waits):
                return await runtime.send(run_id, event, payload, message_id=message_id)
            if report.finished:
                raise AssertionError(
                    f"run {run_id} ended ({report.status}) before it waited for {event!r}"
                )
            if handle is not None and not handle._detached:
                await anyio.lowlevel.checkpoint()  # (a fake clock sees a busy task)
            else:
                await anyio.sleep(0.005)
    raise TimeoutError(
        f"run {run_id} did not wait for {event!r} within {timeout} s (it waits for: {seen})"
    )


@final
class FakeClock:
    """Virtual time for tests: waits and deadlines complete without real waiting.

    Use it as an async context manager and pass it to the run::

        async with aflow.testing.FakeClock() as clock:
            await aflow.run(workflow, clock=clock)   # a 30 s backoff takes no time
            assert clock.now() >= 30

    With ``autojump=True`` (the default) time jumps to the next deadline as
    soon as every task is blocked. Note that a task waiting for a worker
    thread counts as blocked. Call :meth:`advance` to move time by hand.
    """

    def __init__(self, start: float = 0.0, *, autojump: bool = True) -> None:
        self._now = start
        #: wall time moves with virtual time (leases, stored deadlines)
        self._wall_origin = time.time() - start
        self._autojump = autojump
        self._timers: list[tuple[float, int, _Timer]] = []
        self._seq = itertools.count()
        self._registered: anyio.Event | None = None
        self._tg: anyio.abc.TaskGroup | None = None

    def now(self) -> float:
        """The virtual time."""
        return self._now

    def wall(self) -> float:
        """Seconds since the epoch, as the wall clock would say after the virtual time
        that has passed (what leases and a run's stored deadline are read with)."""
        return self._wall_origin + self._now

    def _add(self, when: float, fire: Callable[[], object]) -> _Timer:
        timer = _Timer(fire)
        heapq.heappush(self._timers, (when, next(self._seq), timer))
        if self._registered is not None:
            self._registered.set()
        return timer

    async def sleep(self, seconds: float) -> None:
        """Wait until virtual time has moved ``seconds`` on."""
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        woken = anyio.Event()
        timer = self._add(self._now + seconds, woken.set)
        try:
            await woken.wait()
        finally:
            timer.live = False  # a cancelled sleep must not pull time forward later

    def cancel_scope(self, timeout: float | None, *, shield: bool = False) -> _FakeDeadline:
        """A cancel scope cancelled when virtual time reaches now + ``timeout``."""
        scope = anyio.CancelScope(shield=shield)
        timer = None if timeout is None else self._add(self._now + timeout, scope.cancel)
        return _FakeDeadline(scope, timer)

    def advance(self, seconds: float) -> None:
        """Move virtual time on by ``seconds``, firing every timer that falls due."""
        self._now += seconds
        while self._timers and self._timers[0][0] <= self._now:
            _, _, timer = heapq.heappop(self._timers)
            if timer.live:
                timer.live = False
                timer.fire()

    def _jump(self) -> None:
        while self._timers and not self._timers[0][2].live:
            heapq.heappop(self._timers)  # a scope that ended, a sleep that was cancelled
        if self._timers:
            self.advance(max(0.0, self._timers[0][0] - self._now))

    async def _drive(self) -> None:
        while True:
            await _all_tasks_blocked()
            if any(timer.live for _, _, timer in self._timers):
                self._jump()
                await anyio.lowlevel.checkpoint()
            else:
                self._registered = anyio.Event()
                await self._registered.wait()
                self._registered = None

    async def __aenter__(self) -> FakeClock:
        if self._autojump:
            self._tg = anyio.create_task_group()
            await self._tg.__aenter__()
            self._tg.start_soon(self._drive)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)
            self._tg = None


async def _all_tasks_blocked() -> None:
    """Return once every other task waits on something (a future, an event, a thread)
    and nothing is queued on the loop that could wake one.

    ``anyio.wait_all_tasks_blocked`` polls every 0.1 s on asyncio; this spins on
    ``sleep(0)`` first, so a jump of the fake clock costs microseconds, not 100 ms.
    A task waiting on a future that a queued callback is about to resolve is not
    blocked: asyncio's ready queue must be empty, and (uvloop does not show its
    queue) the tasks must stay blocked for a few loop turns in a row.
    """
    try:
        me = asyncio.current_task()
    except RuntimeError:  # not on asyncio (trio)
        await anyio.wait_all_tasks_blocked()
        return
    loop = asyncio.get_running_loop()
    ready = getattr(loop, "_ready", None)  # asyncio's queue of callbacks due now
    spins = 0
    settled = 0
    while True:
        await asyncio.sleep(0)
        waiting = (getattr(t, "_fut_waiter", None) for t in asyncio.all_tasks() if t is not me)
        if all(w is not None and not w.done() for w in waiting) and not ready:
            settled += 1
            if settled >= _SETTLE_TURNS:
                return
            continue
        settled = 0
        spins += 1
        if spins >= 1000:  # something is busy for real (a CPU-bound task): back off
            await asyncio.sleep(0.001)


#: Loop turns every task must stay blocked before virtual time may jump (callbacks
#: chained through call_soon resolve within them).
_SETTLE_TURNS = 4


@final
class _Timer:
    __slots__ = ("fire", "live")

    def __init__(self, fire: Callable[[], object]) -> None:
        self.fire = fire
        self.live = True


@final
class _FakeDeadline:
    """An anyio cancel scope whose virtual deadline is dropped when the scope exits."""

    __slots__ = ("_scope", "_timer")

    def __init__(self, scope: anyio.CancelScope, timer: _Timer | None) -> None:
        self._scope = scope
        self._timer = timer

    def __enter__(self) -> _FakeDeadline:
        self._scope.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self._timer is not None:
            self._timer.live = False
        return bool(self._scope.__exit__(exc_type, exc, tb))

    def cancel(self) -> None:
        self._scope.cancel()

    @property
    def cancel_called(self) -> bool:
        return self._scope.cancel_called

    @property
    def cancelled_caught(self) -> bool:
        return self._scope.cancelled_caught


@contextmanager
def inject_failure(
    node: str,
    *,
    raises: BaseException | None = None,
    hang: bool = False,
    cancel: bool = False,
    attempt: int | None = 1,
) -> Iterator[Injection]:
    """Make the node with this key (or task name) misbehave while the block runs.

    Exactly one of: ``raises=`` an exception instance (raised instead of
    calling the task), ``hang=True`` (the attempt never finishes, so a
    timeout or a cancellation has to end it), ``cancel=True`` (the run is
    cancelled from inside that attempt, as ``run.cancel()`` would). Only
    attempt ``attempt`` misbehaves (``None``: every attempt). Reverts are
    never affected. The yielded object counts ``hits``::

        with aflow.testing.inject_failure("charge", raises=PaymentDeclined()) as plan:
            with pytest.raises(PaymentDeclined):
                await order_saga(order)
        assert plan.hits == 1
    """
    actions = [raises is not None, hang, cancel]
    if sum(actions) != 1:
        raise ValueError("inject_failure needs exactly one of raises=, hang=True, cancel=True")
    action = "raise" if raises is not None else "hang" if hang else "cancel"
    plan = Injection(node, attempt, action, raises)
    INJECTIONS.setdefault(node, []).append(plan)
    try:
        yield plan
    finally:
        INJECTIONS[node].remove(plan)
        if not INJECTIONS[node]:
            del INJECTIONS[node]
