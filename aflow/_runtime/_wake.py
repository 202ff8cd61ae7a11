"""The runtime's side of waits (issue 22): sending events to runs, reading the values they
publish, and taking up durable runs that were unloaded while they wait.

Every runtime with a store runs a :class:`Waker`: it looks for ``waiting`` runs that
are due (an event they wait for came, or a deadline passed) and for unloaded runs
cancelled meanwhile, claims each (one process wins) and resumes it; its wait nodes run
again and find their event or deadline. It looks at once when this process sends an
event or unloads a run, at the soonest deadline it knows of (on the runtime's clock, so
a fake clock drives it), and every ``poll`` seconds of real time for what other
processes did. A run whose workflow this process cannot rebuild is left to another.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, final

import anyio
import anyio.abc

from .._events import warn
from .._exceptions import AflowError, ResumeMismatch, RunEnded, RunNotFound, RunReleased
from ..stores._base import ENDED, Store, StoredRunStatus
from ._clock import SYSTEM_CLOCK, wall_time
from ._rebuild import FINISHED
from ._waits import wait_store, waits_of, wake_at

if TYPE_CHECKING:
    from ._durable import Durability
    from ._handle import Run
    from ._runtime import Runtime

__all__ = ["Waker", "get_event", "send"]

#: How many due runs one look takes up (the next look takes the rest).
_BATCH = 100


@final
class Waker:
    """A runtime's look for unloaded runs that are due (see the module's docstring)."""

    __slots__ = ("_durable", "_poke", "closed", "detached", "poll", "scope")

    def __init__(self, durable: Durability, poll: float) -> None:
        if not poll > 0:
            raise ValueError(f"poll must be a number of seconds > 0, got {poll!r}")
        self._durable = durable
        self.poll = poll
        #: handles on this process's runs that were unloaded, by run id, while someone
        #: holds them: taken up here, the handle follows the run again
        self.detached: weakref.WeakValueDictionary[str, Run[Any]] = weakref.WeakValueDictionary()
        self.scope = anyio.CancelScope()
        self._poke = anyio.Event()
        #: the runtime is closing: a run unloaded from now on is not followed here
        self.closed = False

    def poke(self) -> None:
        """Look now (an event was sent, a run unloaded)."""
        self._poke.set()

    async def keep_waking(self, store: Store) -> None:
        """The look, until the runtime closes."""
        durable = self._durable
        clock = durable._rt._clock or SYSTEM_CLOCK
        with self.scope:
            while True:
                self._poke = anyio.Event()
                try:
                    await self.wake_due(store)
                    await self._check_detached(store)
                    soonest = await store.next_wake()
                except Exception as exc:  # the store hiccupped: the next look tries again
                    warn("aflow_wake_failed", store=store.url, error=repr(exc))
                    soonest = None
                with anyio.move_on_after(self.poll):  # what other processes did
                    if soonest is None:
                        await self._poke.wait()
                    else:
                        delay = max(0.0, soonest - wall_time(clock))
                        with clock.cancel_scope(delay):  # the soonest deadline
                            await self._poke.wait()

    async def wake_due(self, store: Store) -> None:
        """Take up every due run this process can rebuild."""
        durable = self._durable
        rt = durable._rt
        now = wall_time(rt._clock)
        for record in await store.due_runs(now, _BATCH):
            if record.run_id in rt._runs or rt._closing:
                continue
            try:
                graph = durable.rebuilder.graph_of(record)
            except AflowError as exc:  # not this process's workflow: another takes it up
                durable.leases.warn_once(
                    "aflow_wake_skipped", run_id=record.run_id, reason=str(exc)
                )
                continue
            try:
                await durable.resume(record.run_id, graph=graph)
            except ResumeMismatch:  # another process claimed it first
                continue
            except Exception as exc:  # one broken run must not keep the others waiting
                durable.leases.warn_once(
                    "aflow_wake_failed", run_id=record.run_id, error=f"{type(exc).__name__}: {exc}"
                )

    async def _check_detached(self, store: Store) -> None:
        """A handle someone awaits on a run another process took up and ended: end it."""
        durable = self._durable
        for run_id, handle in list(self.detached.items()):
            if handle._finished._event is None:  # nobody waits on it
                continue
            record = await store.get_run(run_id)
            ended = FINISHED.get(record.status)
            if ended is not None:
                value, error = durable.rebuilder.outcome_of(record)
                self.detached.pop(run_id, None)
                handle._ended_elsewhere(ended, value, error)

    def take(self, run_id: str) -> Run[Any] | None:
        """The handle of an unloaded run taken up now, if someone holds it."""
        if not self.detached:  # (every durable run's start asks: the common answer, fast)
            return None
        return self.detached.pop(run_id, None)

    async def park(self, handle: Run[Any]) -> None:
        """A run was unloaded: record it ``waiting`` (or let go of it, if a cancel was
        asked meanwhile: it is then taken up to unwind), and keep its handle."""
        durable = self._durable
        store = durable.store
        assert store is not None
        execution = handle._execution
        due, events = wake_at(execution)
        with anyio.CancelScope(shield=True):
            try:
                parked = await store.park_waiting(
                    handle.id, durable.leases.owner, due, events, wall_time(durable._rt._clock)
                )
                if not parked:
                    await store.release(handle.id, durable.leases.owner)
            except Exception as exc:  # its lease lapses; recovery takes it up then
                warn("aflow_park_failed", run_id=handle.id, error=repr(exc))
        if self.closed:  # unloaded as the runtime closes: it waits in its store
            _end_released(handle)
            return
        self.detached[handle.id] = handle
        run_id = handle.id

        async def cancel_waiting() -> None:  # as `aflow cancel` does: the waker unwinds it
            await store.request_cancel(run_id, "RunCancelled: cancelled while it waited")
            self.poke()

        handle._remote_cancel = cancel_waiting
        if handle._cancel_asked and not handle._finished.is_set():
            # cancelled as it was being unloaded (the release won): ask the store now
            with anyio.CancelScope(shield=True):
                try:
                    await cancel_waiting()
                except Exception as exc:  # the store hiccupped: the caller cancels again
                    warn("aflow_park_failed", run_id=run_id, error=repr(exc))
        self.poke()

    def close(self) -> None:
        """The runtime closes: handles still awaited on unloaded runs end (the run stays
        waiting in the store; any runtime with it takes it up)."""
        self.closed = True
        self.scope.cancel()
        for handle in list(self.detached.values()):
            _end_released(handle)
        self.detached.clear()


def _end_released(handle: Run[Any]) -> None:
    """An unloaded run's handle, as its runtime closes: RunReleased (the run waits in its
    store; any runtime with it takes it up)."""
    if not handle._finished.is_set():
        why = "the runtime closed while the run waited; it waits in its store"
        handle._ended_elsewhere(handle.status, None, RunReleased(handle.id, why))


def _message_key(message_id: str | None) -> str:
    if message_id is not None and not isinstance(message_id, str):
        raise TypeError(f"message_id must be a str, got {type(message_id).__name__}")
    return "" if message_id is None else message_id


async def send(rt: Runtime, run_id: str, event: str, payload: Any, message_id: str | None) -> bool:
    """:meth:`Runtime.send` (see there)."""
    if not isinstance(event, str) or not event:
        raise ValueError(f"an event's name is a non-empty str, got {event!r}")
    key = _message_key(message_id)
    durable = rt._durable
    store = durable.store
    active = rt._runs.get(run_id)
    if store is None:
        handle = active or rt._history.get(run_id)
        if handle is None:
            raise RunNotFound(run_id, "this runtime (active or recently finished; no store)")
        waits = handle._execution._waits
        if waits is not None and waits.has(event, key):
            return False  # a redelivery, even to a run that has ended since
        if handle._finished.is_set() or handle._execution.closed:
            status = handle.status.value
            raise RunEnded(run_id, status, f"event {event!r} was not kept")
        return waits_of(handle._execution).put(event, key, payload)
    record = await store.get_run(run_id)
    text = (
        None
        if payload is None
        else durable.rebuilder.serializer_of(record).dumps(payload, task=f"event {event!r}")
    )
    now = wall_time(rt._clock)
    outcome, status = await wait_store(store).send_event(run_id, event, key, text, now)
    if outcome == "ended":
        raise RunEnded(run_id, str(status), f"event {event!r} was not kept")
    if outcome == "duplicate":
        return False
    if active is not None and active._execution._waits is not None:
        active._execution._waits.notify()  # a wait held in memory here looks again
    elif status == StoredRunStatus.WAITING and durable.waker is not None:
        durable.waker.poke()  # taken up here at once, if this process can
    return True


async def get_event(rt: Runtime, run_id: str, name: str, timeout: float | None) -> Any:
    """:meth:`Runtime.get_event` (see there). It always looks once, so ``timeout=0``
    reads what is there now."""
    from .._exceptions import WaitTimeout

    if timeout is not None and not (
        isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout >= 0
    ):  # (NaN fails >= too)
        raise ValueError(f"timeout must be a number of seconds >= 0 or None, got {timeout!r}")
    clock = rt._clock or SYSTEM_CLOCK
    deadline = None if timeout is None else clock.now() + timeout
    delay = 0.01
    while True:
        found, value, signal = await _look_for_value(rt, run_id, name)
        if found:
            return value
        left = None if deadline is None else deadline - clock.now()
        if left is not None and left <= 0:
            raise WaitTimeout(run_id, name, timeout or 0.0)
        with clock.cancel_scope(left):
            if rt._durable.store is None:
                assert signal is not None
                await signal.wait()
            else:  # set here (the signal), or in another process (a look at the store)
                with anyio.move_on_after(delay):
                    await (anyio.sleep_forever() if signal is None else signal.wait())
                delay = min(delay * 2, 0.5)


async def _look_for_value(rt: Runtime, run_id: str, name: str) -> tuple[bool, Any, Any]:
    """(found, the value, an event set when this process's run publishes anything)."""
    durable = rt._durable
    store = durable.store
    handle = rt._runs.get(run_id) or rt._history.get(run_id)
    waits = None if handle is None else handle._execution._waits
    if store is None:
        if handle is None:
            raise RunNotFound(run_id, "this runtime (active or recently finished; no store)")
        if waits is not None and name in waits.values:
            return True, waits.values[name], None
        if handle._finished.is_set():
            raise RunEnded(run_id, handle.status.value, f"it never set {name!r}")
        return False, None, waits_of(handle._execution).signal
    found, text = await wait_store(store).get_value(run_id, name)
    record = await store.get_run(run_id)
    if found:
        return (
            True,
            None if text is None else durable.rebuilder.serializer_of(record).loads(text),
            None,
        )
    if record.status in ENDED:
        raise RunEnded(run_id, str(record.status), f"it never set {name!r}")
    return False, None, None if waits is None else waits.signal
