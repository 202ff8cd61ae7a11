"""Waits inside a run: a node (or a task body) that waits for a named event sent to its
run, or for a time; and values a run publishes (issue 22).

The public calls: the nodes :func:`wait_for`, :func:`sleep` and :func:`sleep_until`,
and, inside a task's body, ``await`` :func:`receive` and :func:`set_event`.

Each wait has a *consumer* name: the wait node's key, or ``<key>#receive<n>`` for the
n-th :func:`receive` of an attempt of a task body. A wait takes the oldest event of
its name nobody took that was sent by its deadline, and the same one again if it runs
again (a resumed run, a retried body); its deadline is fixed when it first begins.
Without a store these live on the run (:class:`WaitState`); with one, in the store, so
a wait run again in another process finds them.

A durable run whose every node in flight is a wait node (not a body's
:func:`receive`: a body's state cannot be stored) is *unloaded*
(:func:`maybe_unload`): it stops like a released run, undoing nothing, and its store
records it ``waiting``, with no owner and no task anywhere; a runtime takes it up when
an event it waits for comes or its first deadline passes, and its wait nodes run again
(see ``_wake.py``).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, final

import anyio

from .._exceptions import SignatureError, StoreError, WaitTimeout
from .._task import task
from ._clock import wall_time
from ._current import ATTEMPT, locate
from ._run_state import Phase, StopReason

if TYPE_CHECKING:
    from .._canvas import Signature
    from ..stores._base import Store
    from ._scheduler import Execution

__all__ = [
    "POLL",
    "WaitState",
    "maybe_unload",
    "receive",
    "set_event",
    "sleep",
    "sleep_until",
    "wait_for",
    "waits_of",
]

#: Seconds (real time) between two looks at the store while a wait of a durable run is
#: held in memory: another process may have sent its event.
POLL = 1.0


@final
class WaitState:
    """A run's waits: made when it first waits, sends, or is sent to."""

    __slots__ = (
        "blocked",
        "deadlines",
        "events",
        "held",
        "parked",
        "receives",
        "signal",
        "unloading",
        "values",
    )

    def __init__(self) -> None:
        #: a run without a store: the events sent to it, as [name, message id, payload,
        #: consumer], in the order sent
        self.events: list[list[Any]] = []
        #: a run without a store: the values it published, and each wait's deadline
        self.values: dict[str, Any] = {}
        self.deadlines: dict[str, float | None] = {}
        #: the waits blocked now: consumer -> (event or None, deadline or None, since)
        self.held: dict[str, tuple[str | None, float | None, float]] = {}
        #: how many of those are wait nodes (the run may be unloaded while they wait)
        self.blocked = 0
        #: the run is being unloaded, and the waits it was unloaded with
        self.unloading = False
        self.parked: dict[str, tuple[str | None, float | None, float]] = {}
        #: (node key, attempt) -> how many receive() calls that attempt made
        self.receives: dict[tuple[str, int], int] = {}
        #: set when something arrives (an event, a value); a new one each time
        self.signal = anyio.Event()

    def notify(self) -> None:
        """Something arrived: every wait of the run looks again."""
        signal, self.signal = self.signal, anyio.Event()
        signal.set()

    def has(self, name: str, message_id: str) -> bool:
        """That message was kept already (a run without a store)."""
        return any(e[0] == name and e[1] == message_id for e in self.events)

    def put(self, name: str, message_id: str, payload: Any) -> bool:
        """Keep an event (a run without a store); False if that message was kept already."""
        if self.has(name, message_id):
            return False
        self.events.append([name, message_id, payload, None])
        self.notify()
        return True

    def take(self, name: str, consumer: str) -> tuple[bool, Any]:
        """What :meth:`Store.take_event` does, in memory."""
        for event in self.events:
            if event[0] == name and event[3] == consumer:
                return True, event[2]
        for event in self.events:
            if event[0] == name and event[3] is None:
                event[3] = consumer
                return True, event[2]
        return False, None

    def waiting_for(self) -> list[tuple[str, str | None, float | None, float]]:
        """The waits blocked now (or unloaded with the run): (consumer, event, deadline,
        since)."""
        held = self.parked if self.unloading else self.held
        return [(key, *wait) for key, wait in held.items()]


def waits_of(execution: Execution) -> WaitState:
    """The run's :class:`WaitState` (made now if it has none)."""
    waits = execution._waits
    if waits is None:
        waits = execution._waits = WaitState()
    return waits


def wait_store(store: Store) -> Store:
    """``store``, if it keeps events and waits (a store written for an older aflow may not)."""
    if not hasattr(store, "take_event"):
        raise StoreError(
            f"the store {store.url} keeps no events or waits ({type(store).__name__} has no "
            "send_event/take_event...): durable waits need a store of aflow 0.2 or later"
        )
    return store


# --- the nodes -------------------------------------------------------------------------------


def _seconds(value: float | timedelta | None, owner: str, argument: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise SignatureError(
            owner, f"must be seconds or a timedelta, got {type(value).__name__}", argument
        )
    if not (seconds >= 0 and math.isfinite(seconds)):
        raise SignatureError(owner, f"must be >= 0 seconds and finite, got {value!r}", argument)
    return seconds


def _event_name(name: object, owner: str) -> str:
    if not isinstance(name, str) or not name:
        raise SignatureError(owner, f"an event's name is a non-empty str, got {name!r}", "event")
    return name


def _passed_on(inputs: tuple[Any, ...]) -> Any:
    """What a sleep node passes on: its one input (a chain's parent's result), else None
    (several: as a tuple)."""
    if not inputs:
        return None
    return inputs[0] if len(inputs) == 1 else inputs


@task(name="wait_for")
async def _wait_for(*inputs: Any, event: str, timeout: float | None = None) -> Any:
    """The body of :func:`wait_for` (the parent's result, if any, is ignored)."""
    del inputs
    return await _wait("aflow.wait_for()", event, timeout, None, node=True)


@task(name="sleep")
async def _sleep(*inputs: Any, seconds: float | None = None, until: float | None = None) -> Any:
    """The body of :func:`sleep` and :func:`sleep_until`: it passes its input on."""
    await _wait("aflow.sleep()", None, seconds, until, node=True)
    return _passed_on(inputs)


def wait_for(event: str, *, timeout: float | timedelta | None = None) -> Signature[Any]:
    """A node that waits for event ``event`` sent to its run, and gives its payload.

    Send it with ``await runtime.send(run_id, event, payload)`` (from any process with
    the run's store, ``aflow send``, or the web-service router's POST). An event sent
    before the run gets here is kept, and taken when it does. Past ``timeout`` (seconds
    or a ``timedelta``, fixed when the wait first begins: a resume keeps it) the node
    fails with :class:`aflow.errors.WaitTimeout`, and the run unwinds and compensates as
    for any failure. In a chain, the parent's result is not passed on: the payload is.

    With a store, a run whose every running node is a wait is unloaded while it waits
    (no task, no memory), and taken up by a runtime when its event comes or its deadline
    passes::

        order_saga = charge.s(order) | aflow.wait_for("paid", timeout=timedelta(hours=1)) | ship.s()
    """
    name = _event_name(event, "aflow.wait_for")
    seconds = _seconds(timeout, "aflow.wait_for", "timeout")
    return _wait_for.s(event=name, timeout=seconds).set(name=f"wait_for:{name}")


def sleep(delay: float | timedelta) -> Signature[Any]:
    """A durable timer: a node that waits ``delay`` (seconds or a ``timedelta``) from when
    it first begins, then passes its input on (a chain's parent's result). With a store
    the run is unloaded meanwhile, and a timer fires once, even across restarts."""
    if delay is None:
        raise SignatureError("aflow.sleep", "must be seconds or a timedelta, got None", "delay")
    seconds = _seconds(delay, "aflow.sleep", "delay")
    return _sleep.s(seconds=seconds)


def sleep_until(when: datetime) -> Signature[Any]:
    """A node that waits until ``when`` (a timezone-aware ``datetime``), then passes its
    input on; see :func:`sleep`."""
    if not isinstance(when, datetime):
        raise SignatureError(
            "aflow.sleep_until", f"must be a datetime, got {type(when).__name__}", "when"
        )
    if when.tzinfo is None or when.utcoffset() is None:
        raise SignatureError(
            "aflow.sleep_until",
            f"must be timezone-aware (e.g. datetime.now(UTC) + timedelta(days=1)), got {when}",
            "when",
        )
    return _sleep.s(until=when.timestamp()).set(name="sleep_until")


# --- in a task's body ------------------------------------------------------------------------


async def receive(event: str, *, timeout: float | timedelta | None = None) -> Any:
    """Inside a task's body: wait for event ``event`` sent to this run, and return its
    payload (:class:`aflow.errors.WaitTimeout` past ``timeout``).

    The body stays in memory while it waits, so a durable run is not unloaded (a wait
    node, :func:`wait_for`, is). The event and the deadline are kept in the store all
    the same: a body run again (a retry, a resume after a crash) receives the same
    event, and keeps its first deadline.
    """
    name = _event_name(event, "aflow.receive")
    seconds = _seconds(timeout, "aflow.receive", "timeout")
    return await _wait("aflow.receive()", name, seconds, None, node=False)


async def set_event(name: str, value: Any) -> None:
    """Inside a task's body: publish ``value`` under ``name`` on this run (a later call
    replaces it). A caller reads it with ``await runtime.get_event(run_id, name)``, from
    any process with the run's store, while the run goes on (a checkout link, say)."""
    name = _event_name(name, "aflow.set_event")
    execution, step = locate("aflow.set_event()")
    run = _top(execution)  # (a nested run's values are its run's)
    waits = waits_of(run)
    journal = run._journal
    if journal is not None:
        node = execution._nodes[step if step >= 0 else ~step]
        text = journal.encode(f"{node.key} (set_event {name!r})", value)
        clock = run._clock
        await wait_store(journal.store).set_value(run.run_id, name, text, wall_time(clock))
    waits.values[name] = value
    waits.notify()


async def _wait(
    what: str, event: str | None, seconds: float | None, until: float | None, *, node: bool
) -> Any:
    """Wait for ``event`` (``None``: only the deadline) until ``until`` or ``seconds``
    from the wait's first beginning; return the event's payload (None for a timer)."""
    execution, step = locate(what)
    if step < 0:
        raise RuntimeError(f"{what} cannot wait inside a revert: a compensation must not block")
    run = _top(execution)  # a nested run (a retried flow's) waits for its run's events
    waits = waits_of(run)
    node_of_wait = execution._nodes[step]
    key = execution._key_prefix + node_of_wait.key
    # A wait node given an attempt timeout of its own (.set(timeout=)) stays loaded: the
    # timeout runs on this attempt, which an unloaded run would start over. So does one
    # in a nested run (its run is unloaded, or not, as a whole).
    unloadable = node and node_of_wait.options.timeout is None and run is execution
    if node:
        consumer = key
    else:
        attempt = ATTEMPT.get(1)
        made = waits.receives.get((key, attempt), 0) + 1
        waits.receives[key, attempt] = made
        consumer = f"{key}#receive{made}"
    clock = run._clock
    now = wall_time(clock)
    deadline = until if until is not None else None if seconds is None else now + seconds
    journal = run._journal
    run_id = run.run_id
    store = None if journal is None else wait_store(journal.store)
    if store is not None:
        deadline = await store.begin_wait(run_id, consumer, event, deadline, now)
    else:
        deadline = waits.deadlines.setdefault(consumer, deadline)
    began = now
    while True:
        if waits.unloading:
            # The run is being unloaded with this wait in it: taking an event (or firing)
            # now would finish the node after the run was recorded as waiting for it.
            # Leave the event in the store (the parked run is then due at once) and let
            # the stop cancel this wait.
            await anyio.sleep_forever()
        if event is not None:
            if store is not None:
                assert journal is not None
                found, text = await store.take_event(run_id, event, consumer, deadline)
                if found:
                    return None if text is None else journal.serializer.loads(text)
            else:
                found, value = waits.take(event, consumer)
                if found:
                    return value
        now = wall_time(clock)
        if deadline is not None and now >= deadline:
            if event is None:
                return None
            waited = seconds if seconds is not None else max(0.0, deadline - began)
            raise WaitTimeout(run_id, event, waited, key)
        signal = waits.signal
        waits.held[consumer] = (event, deadline, began)
        if unloadable:
            waits.blocked += 1
        try:
            if unloadable:
                maybe_unload(execution)  # (then this wait is cancelled as it blocks)
            with clock.cancel_scope(None if deadline is None else deadline - now):
                if store is not None:
                    with anyio.move_on_after(POLL):  # another process may send it
                        await signal.wait()
                else:
                    await signal.wait()
        finally:
            waits.held.pop(consumer, None)
            if unloadable:
                waits.blocked -= 1


def _top(execution: Execution) -> Execution:
    """The run a nested run (a retried flow's, a subflow's) belongs to."""
    while execution._parent is not None:
        execution = execution._parent  # type: ignore[assignment]
    return execution


def maybe_unload(execution: Execution) -> None:
    """Unload a durable run whose every node in flight is a blocked wait node, if its
    runtime lets it (see the module's docstring)."""
    waits = execution._waits
    if (
        waits is None
        or not waits.blocked
        or waits.unloading
        or not execution.unload_waits
        or execution._running != waits.blocked
        or execution._ready
        or execution._parked
        or not execution.starting
        or execution._phase is not Phase.FORWARD
    ):
        return
    waits.unloading = True
    waits.parked = dict(waits.held)
    execution._stop(StopReason.RELEASE)


def wake_at(execution: Execution) -> tuple[float | None, list[str]]:
    """When an unloaded run is due (its first deadline, or its own; None: only an event
    wakes it) and the events it waits for."""
    waits = execution._waits
    assert waits is not None
    deadlines = [d for _, d, _ in waits.parked.values() if d is not None]
    own = execution.run_deadline()
    if own is not None:
        deadlines.append(own)
    events = sorted({e for e, _, _ in waits.parked.values() if e is not None})
    return (min(deadlines) if deadlines else None), events
