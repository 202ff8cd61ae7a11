"""Runs as data for the web surfaces (``aflow.fastapi``'s router, ``aflow.web``): list
them with filters, report one, follow its events, read its graph's shape, cancel it.

A :class:`Feed` reads a runtime's runs (live, then from its store) or, with no runtime
(``aflow ui`` over a store), a store's alone: the same models either way. Nothing here
imports a web framework but :class:`RunEvents` (a Starlette response): only the surfaces,
which have Starlette, import this module.
"""

from __future__ import annotations

import contextlib
import json
import math
import reprlib
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast, get_args

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ._events import Event
from ._exceptions import AflowError, RunNotFound
from ._graph import Graph
from ._runtime._handle import Run
from ._runtime._report import (
    EventReport,
    RunReport,
    RunState,
    history_events,
    names_of,
    report_of_record,
    report_of_run,
)
from ._runtime._runtime import Runtime
from ._serialize import serializer_for
from ._workflow import ShapeNode, shape_of
from .stores._base import RunRecord, Store, StoredRunStatus

__all__ = [
    "CLOSING_KEY",
    "KEEP_ALIVE",
    "MAX_LIST",
    "RUNTIME_KEY",
    "STATES",
    "STORE_POLL",
    "Feed",
    "RunEvents",
    "RunFilter",
    "ShapeNode",
    "check_id",
    "short",
]

#: Seconds between two looks at the store while following a run another process drives.
STORE_POLL = 0.5
#: Seconds of silence after which an event stream sends a comment (proxies close idle
#: connections).
KEEP_ALIVE = 15.0
#: Where a service's lifespan (``aflow.fastapi.lifespan``) puts its runtime.
RUNTIME_KEY = "aflow_runtime"
#: Where a service's lifespan (``aflow.fastapi.lifespan``) puts the event it sets when
#: the process is told to stop: event streams end then (the server waits for them).
CLOSING_KEY = "aflow_closing"
#: The most runs one list answer holds; the store is asked for at most this many of a
#: status before the other filters apply.
MAX_LIST = 1000

STATES = frozenset(get_args(RunState))

_STORED_ENDS = frozenset(
    {
        StoredRunStatus.SUCCEEDED,
        StoredRunStatus.FAILED,
        StoredRunStatus.REVERTED,
        StoredRunStatus.CANCELLED,
    }
)


@dataclass(frozen=True, slots=True)
class RunFilter:
    """Which runs a list wants (every field ``None``: all)."""

    status: str | None = None
    workflow: str | None = None
    idempotency_key: str | None = None
    #: created at or after / before (epoch seconds)
    since: float | None = None
    until: float | None = None
    #: a piece of the run's id, workflow or key (case-insensitive)
    search: str | None = None

    def wants(self, status: str, flow: str | None, key: str | None, created: float | None) -> bool:
        at = created or 0.0
        return (
            (self.status is None or status == self.status)
            and (self.workflow is None or flow == self.workflow)
            and (self.idempotency_key is None or key == self.idempotency_key)
            and (self.since is None or at >= self.since)
            and (self.until is None or at < self.until)
        )

    def matches(self, run_id: str, flow: str | None, key: str | None) -> bool:
        if not self.search:
            return True
        needle = self.search.casefold()
        return any(needle in (text or "").casefold() for text in (run_id, flow, key))


def check_id(run_id: str) -> None:
    """:class:`RunNotFound` for an id no store can hold (a NUL, text that is not UTF-8):
    no run has it, and a store asked for it fails instead of saying so."""
    if "\x00" in run_id:
        raise RunNotFound(run_id, "any store (a run id holds no NUL)")
    try:
        run_id.encode()
    except UnicodeEncodeError:
        raise RunNotFound(run_id, "any store (a run id is UTF-8 text)") from None


def short(run_id: str) -> str:
    """A run id as an error message shows it (quoted, cut if long)."""
    return reprlib.repr(run_id)


class Feed:
    """The runs a web surface shows: ``runtime``'s (live, then from its store), or with
    no runtime ``store``'s alone (read with the JSON serializer; a pickle run's values
    are not read)."""

    def __init__(self, runtime: Runtime | None = None, store: Store | None = None) -> None:
        if runtime is None and store is None:
            raise ValueError("a Feed reads a runtime or a store")
        self.runtime = runtime
        self._store = store

    @property
    def store(self) -> Store | None:
        """Where stored runs are read."""
        if self.runtime is not None:
            return self.runtime.store
        return self._store

    def held(self, run_id: str) -> Run[Any] | None:
        """The run, if this process holds it (active or recently finished)."""
        rt = self.runtime
        if rt is None:
            return None
        return rt._runs.get(run_id) or rt._history.get(run_id)

    def _reader(self, record: RunRecord) -> Callable[[str], Any]:
        if self.runtime is not None:
            return self.runtime._rebuilder.reader_of(record)
        if record.serializer == "json":
            return serializer_for("json").loads
        return _unreadable

    def _graph(self, record: RunRecord) -> Graph | None:
        if self.runtime is None:
            return None
        try:
            return self.runtime._rebuilder.graph_of(record)
        except AflowError:  # not registered here, or changed: the records alone
            return None

    # --- lists and reports -------------------------------------------------------------

    async def runs(self, wanted: RunFilter, limit: int = 100, offset: int = 0) -> list[RunReport]:
        """Runs, newest first: those this process holds (live), then the store's."""
        found: list[tuple[float, RunReport | RunRecord]] = []
        held: set[str] = set()
        rt = self.runtime
        if rt is not None:
            for handle in (*rt._runs.values(), *reversed(rt._history.values())):
                if handle.id in held:
                    continue
                held.add(handle.id)
                report = report_of_run(handle, steps=False)
                if wanted.wants(
                    report.status, report.workflow, report.idempotency_key, report.created_at
                ) and wanted.matches(report.id, report.workflow, report.idempotency_key):
                    found.append((report.created_at or 0.0, report))
        store = self.store
        status = wanted.status
        if store is not None:
            stored = None
            if status is not None and status in StoredRunStatus._value2member_map_:
                stored = StoredRunStatus(status)
            if status is None or stored is not None:
                for record in await store.list_runs(stored, MAX_LIST):
                    if record.run_id in held:  # reported live (its record may lag)
                        continue
                    held.add(record.run_id)
                    if wanted.wants(
                        str(record.status),
                        record.workflow,
                        record.idempotency_key,
                        record.created_at,
                    ) and wanted.matches(record.run_id, record.workflow, record.idempotency_key):
                        found.append((record.created_at, record))
        found.sort(key=lambda item: item[0], reverse=True)
        # (a stored run's values are read only for the runs answered)
        return [self._as_report(item) for _, item in found[offset : offset + limit]]

    def _as_report(self, item: RunReport | RunRecord) -> RunReport:
        if isinstance(item, RunReport):
            return item
        return report_of_record(item, None, (), self._reader(item), None)

    async def report(self, run_id: str, *, steps: bool = True) -> RunReport:
        """One run as data (:class:`RunNotFound` if neither holds it)."""
        check_id(run_id)
        if self.runtime is not None:
            return await self.runtime.report(run_id, steps=steps)
        store = self._store
        assert store is not None
        record = await store.get_run(run_id)
        loads = self._reader(record)
        if not steps:
            return report_of_record(record, None, (), loads, None)
        nodes = await store.load_nodes(run_id)
        history = await store.load_history(run_id)
        waits = await store.load_waits(run_id) if hasattr(store, "load_waits") else None
        return report_of_record(record, nodes, history, loads, None, waits)

    async def shape(self, run_id: str) -> list[ShapeNode] | None:
        """The run's graph as steps and edges, when this process holds the run or can
        rebuild it, else what its store keeps of it; ``None``: not known."""
        check_id(run_id)
        handle = self.held(run_id)
        if handle is not None:
            return shape_of(handle.graph)
        store = self.store
        if store is None:
            raise RunNotFound(run_id, "this runtime (active or recently finished; no store)")
        record = await store.get_run(run_id)
        graph = self._graph(record)
        if graph is not None:
            return shape_of(graph)
        load_shape = getattr(store, "load_shape", None)
        if load_shape is None:
            return None
        text = await load_shape(record.fingerprint)
        return None if text is None else shape_of_text(text)

    async def history(self, run_id: str, report: RunReport | None = None) -> list[EventReport]:
        """The run's events so far (a stored run's from its transitions; one this process
        holds from its ``report`` with steps, made if not given)."""
        check_id(run_id)
        handle = self.held(run_id)
        if handle is not None and (self.store is None or handle._execution._journal is None):
            # (a run in memory: its report's events; a durable one's history has every
            # attempt and revert with its times)
            from ._runtime._report import events_of_run

            if report is None or report.steps is None or report.source != "live":
                report = report_of_run(handle)
            return events_of_run(report)
        store = self.store
        if store is None:
            raise RunNotFound(run_id, "this runtime (active or recently finished; no store)")
        record = await store.get_run(run_id)
        history = await store.load_history(run_id)
        return [event for _, event in history_events(record, history, self._names(record))]

    def _names(self, record: RunRecord) -> dict[str, str] | None:
        graph = self._graph(record)
        return None if graph is None else names_of(graph)

    # --- events ------------------------------------------------------------------------

    async def events(self, run_id: str) -> AsyncGenerator[EventReport, None]:
        """The events of a run so far then as they happen, until it ends: a run this
        process holds from its state, any other from its store's history (followed by
        polling while another process drives it). :class:`RunNotFound` at once if
        neither has it."""
        check_id(run_id)
        handle = self.held(run_id)
        if handle is not None:
            return _live_events(handle)
        store = self.store
        if store is None:
            raise RunNotFound(run_id, "this runtime (active or recently finished; no store)")
        record = await store.get_run(run_id)
        return self._stored_events(record.run_id)

    async def _stored_events(self, run_id: str) -> AsyncGenerator[EventReport, None]:
        """A stored run's events from its history, read again until the run ends: each
        event is sent once (known by the transition it comes from). If this process takes
        the run up meanwhile (recovery, a resume), its history still says what happens
        (every transition of a stored run is on record): it is read again as the run ends
        here, or every :data:`STORE_POLL` seconds."""
        store = self.store
        assert store is not None
        sent: set[tuple[int, int]] = set()
        names: dict[str, str] | None = None
        named = False
        while True:
            record = await store.get_run(run_id)
            if not named:
                try:
                    names = self._names(record)
                except Exception:  # (not rebuildable here: its steps are named by their keys)
                    names = None
                named = True
            history = await store.load_history(run_id)
            done = record.status in _STORED_ENDS
            for where, event in history_events(record, history, names):
                if where in sent:
                    continue
                if event.node is None and where[0] >= 0 and not done:
                    continue  # (no end event while unfinished)
                sent.add(where)
                yield event
            if done:
                return
            held = self.held(run_id)
            if held is not None:  # this process runs it now: look again when it ends here
                with anyio.move_on_after(STORE_POLL):
                    await held.wait()
            else:
                await anyio.sleep(STORE_POLL)

    # --- actions -----------------------------------------------------------------------

    async def cancel(self, run_id: str, reason: str = "cancelled over HTTP") -> RunReport:
        """Cancel a run: one this process holds is cancelled and awaited (it unwinds);
        any other is asked to cancel through the store (its process unwinds it)."""
        check_id(run_id)
        handle = self.held(run_id)
        if handle is not None:
            await handle.cancel()
            return handle.report()
        store = self.store
        if store is None:
            raise RunNotFound(run_id, "this runtime (active or recently finished; no store)")
        await store.request_cancel(run_id, f"RunCancelled: {reason}")
        return await self.report(run_id, steps=False)

    async def ask_to_cancel(self, run_id: str, reason: str = "cancelled over HTTP") -> None:
        """Ask a run to cancel, without waiting for it to unwind (many at once)."""
        check_id(run_id)
        handle = self.held(run_id)
        if handle is None:
            store = self.store
            if store is None:
                raise RunNotFound(run_id, "this runtime (active or recently finished; no store)")
            await store.request_cancel(run_id, f"RunCancelled: {reason}")
            return
        handle._cancel_asked = True
        if handle._remote_cancel is not None and not handle._finished.is_set():
            await handle._remote_cancel()
        handle._execution.cancel()


def shape_of_text(text: str) -> list[ShapeNode] | None:
    """A shape as a store keeps it (JSON: ``[[key, task, kind, [parent, ...]], ...]``),
    checked as data: ``None`` if it is not that."""
    try:
        rows = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(rows, list):
        return None
    found: list[ShapeNode] = []
    for row in rows:
        if not (
            isinstance(row, list)
            and len(row) == 4
            and all(isinstance(part, str) for part in row[:3])
            and isinstance(row[3], list)
            and all(isinstance(parent, str) for parent in row[3])
        ):
            return None
        found.append(ShapeNode(row[0], row[1], row[2], tuple(row[3])))
    return found


def _unreadable(text: str) -> Any:
    raise ValueError("written with a serializer this process does not read")


async def _live_events(handle: Run[Any]) -> AsyncGenerator[EventReport, None]:
    # (closed with this generator: the run's listener goes at once, not when collected)
    subscribed = cast("AsyncGenerator[Event, None]", handle.events(replay=True))
    async with contextlib.aclosing(subscribed) as events:
        async for event in events:
            yield EventReport.of(event, replayed=event.replayed)


def closing_of(scope: Mapping[str, Any], key: str) -> anyio.Event | None:
    """The event a service's lifespan sets (under ``key``) when the process is told to
    stop, from a request's scope."""
    found = (scope.get("state") or {}).get(key)
    if found is None:
        app_state = getattr(scope.get("app"), "state", None)
        found = getattr(app_state, key, None)
    return found if isinstance(found, anyio.Event) else None


async def stream_events(
    feed: Feed,
    run_id: str,
    source: AsyncGenerator[EventReport, None],
    send: Callable[[bytes, bool], Any],
    disconnected: Callable[[], Any],
    closing: anyio.Event | None,
) -> None:
    """Send a run's events as server-sent events (see ``aflow.fastapi.EventStream``):
    ``send(body, more)`` sends bytes; ``disconnected()`` returns when the client goes;
    ``closing`` ends the stream early (the service stops)."""
    followed = feed.held(run_id)  # (its end is reported even once the runtime let it go)
    to_send, to_read = anyio.create_memory_object_stream[EventReport | None](math.inf)
    pumping = anyio.CancelScope()

    async def pump() -> None:
        with pumping:
            async with to_send, contextlib.aclosing(source) as events:
                async for event in events:
                    await to_send.send(event)

    async def until_closing(closing: anyio.Event) -> None:
        await closing.wait()
        pumping.cancel()  # (what was read is sent, then the end)

    async def until_disconnect() -> None:
        await disconnected()
        tg.cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(pump)
        tg.start_soon(until_disconnect)
        if closing is not None:
            tg.start_soon(until_closing, closing)
        number = 0
        async with to_read:
            while True:
                with anyio.move_on_after(KEEP_ALIVE) as waited:
                    try:
                        event = await to_read.receive()
                    except anyio.EndOfStream:
                        break
                if waited.cancelled_caught:
                    await send(b": keep-alive\n\n", True)
                    continue
                assert event is not None
                number += 1
                body = f"id: {number}\nevent: {event.name}\ndata: {event.model_dump_json()}\n\n"
                await send(body.encode(), True)
        end = b""
        report: RunReport | None = None
        try:
            report = await feed.report(run_id, steps=False)
        except RunNotFound:  # dropped from the history meanwhile, and no store
            if followed is not None:
                report = followed.report(steps=False)
        if report is not None:
            number += 1
            end = f"id: {number}\nevent: end\ndata: {report.model_dump_json()}\n\n".encode()
        await send(end, False)
        tg.cancel_scope.cancel()


class RunEvents(Response):
    """A run's events as a ``text/event-stream`` response (see :func:`stream_events`);
    it ends early when ``closing`` is set, or the event the service's lifespan puts
    under :data:`CLOSING_KEY`."""

    media_type = "text/event-stream"

    def __init__(
        self,
        feed: Feed,
        run_id: str,
        source: AsyncGenerator[EventReport, None],
        closing: anyio.Event | None = None,
    ) -> None:
        super().__init__(media_type=self.media_type)
        self._feed, self._run_id, self._source = feed, run_id, source
        self._closing = closing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})

        async def send_body(body: bytes, more: bool) -> None:
            await send({"type": "http.response.body", "body": body, "more_body": more})

        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        closing = closing_of(scope, CLOSING_KEY) or self._closing
        await stream_events(
            self._feed, self._run_id, self._source, send_body, disconnected, closing
        )
