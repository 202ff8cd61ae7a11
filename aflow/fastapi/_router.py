"""The runs router: list, read, cancel and resume runs, and follow one's progress (SSE)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Annotated, Any, get_args

import anyio
from fastapi import APIRouter, HTTPException, Query
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .._exceptions import ResumeMismatch, RunNotFound
from .._runtime._handle import Run
from .._runtime._report import (
    EventReport,
    RunReport,
    RunState,
    events_of_history,
    report_of_record,
    report_of_run,
)
from .._runtime._runtime import Runtime
from ..stores._base import StoredRunStatus
from ._lifespan import RuntimeDep

__all__ = ["EventStream", "runs_router"]

#: Seconds between two looks at the store while following a run another process drives.
STORE_POLL = 0.5
#: Seconds of silence after which an event stream sends a comment (proxies close idle
#: connections).
KEEP_ALIVE = 15.0
#: The most runs one list answer holds; the store is asked for at most this many of a
#: status before the other filters apply.
MAX_LIST = 1000

_STATES = frozenset(get_args(RunState))


def runs_router(*, actions: bool = True, tags: Sequence[str] = ("runs",)) -> APIRouter:
    """An ``APIRouter`` over the service's runs (mount it with a prefix)::

        app.include_router(aflow.fastapi.runs_router(), prefix="/runs")

    ``GET /`` lists runs, newest first (``status``, ``workflow``, ``idempotency_key``,
    ``since``/``until`` on creation time, ``limit``); ``GET /{run_id}`` is one run
    with its steps (:class:`aflow.RunReport`); ``GET /{run_id}/events`` streams its
    events as server-sent events (:class:`EventStream`). With ``actions`` (the
    default), ``POST /{run_id}/cancel`` and ``POST /{run_id}/resume``; guard them with
    the router's ``dependencies=`` or your own auth. A run this process holds is read
    live; any other from the runtime's store. An unknown run is a 404.
    """
    router = APIRouter(tags=list(tags))

    @router.get("", response_model=list[RunReport])
    async def list_runs(
        rt: RuntimeDep,
        status: Annotated[str | None, Query(description="a RunReport status word")] = None,
        workflow: str | None = None,
        idempotency_key: str | None = None,
        since: Annotated[float | None, Query(description="created at or after (epoch s)")] = None,
        until: Annotated[float | None, Query(description="created before (epoch s)")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 100,
    ) -> list[RunReport]:
        if status is not None and status not in _STATES:
            raise HTTPException(422, f"unknown status {status!r}: one of {sorted(_STATES)}")

        def wanted(report: RunReport) -> bool:
            created = report.created_at or 0.0
            return (
                (status is None or report.status == status)
                and (workflow is None or report.workflow == workflow)
                and (idempotency_key is None or report.idempotency_key == idempotency_key)
                and (since is None or created >= since)
                and (until is None or created < until)
            )

        found: dict[str, RunReport] = {}
        for handle in (*rt._runs.values(), *reversed(rt._history.values())):
            report = report_of_run(handle, steps=False)
            if wanted(report):
                found[report.id] = report
        store = rt.store
        if store is not None:
            stored = None
            if status is not None and status in StoredRunStatus._value2member_map_:
                stored = StoredRunStatus(status)
            if status is None or stored is not None:
                rebuilder = rt._rebuilder
                for record in await store.list_runs(stored, MAX_LIST):
                    if record.run_id in found:
                        continue
                    try:
                        loads: Callable[[str], Any] = rebuilder.serializer_of(record).loads
                    except ResumeMismatch:
                        loads = _unreadable
                    report = report_of_record(record, None, (), loads, None)
                    if wanted(report):
                        found[report.id] = report
        ordered = sorted(found.values(), key=lambda r: r.created_at or 0.0, reverse=True)
        return ordered[:limit]

    @router.get("/{run_id}", response_model=RunReport)
    async def read_run(rt: RuntimeDep, run_id: str, steps: bool = True) -> RunReport:
        try:
            return await rt.report(run_id, steps=steps)
        except RunNotFound as exc:
            raise HTTPException(404, f"no run {run_id!r}") from exc

    @router.get("/{run_id}/events", response_class=EventStream)
    async def run_events(rt: RuntimeDep, run_id: str) -> EventStream:
        try:
            source = await _event_source(rt, run_id)
        except RunNotFound as exc:
            raise HTTPException(404, f"no run {run_id!r}") from exc
        return EventStream(source, rt, run_id)

    if not actions:
        return router

    @router.post("/{run_id}/cancel", response_model=RunReport)
    async def cancel_run(rt: RuntimeDep, run_id: str) -> RunReport:
        """Cancel a run and wait until it has stopped (unwound); a run another process
        drives is asked to cancel through the store (its process unwinds it)."""
        handle = _held(rt, run_id)
        if handle is not None:
            await handle.cancel()
            return handle.report()
        store = rt.store
        if store is None:
            raise HTTPException(404, f"no run {run_id!r}")
        try:
            await store.request_cancel(run_id, "RunCancelled: cancelled over HTTP")
        except RunNotFound as exc:
            raise HTTPException(404, f"no run {run_id!r}") from exc
        return await rt.report(run_id, steps=False)

    @router.post("/{run_id}/resume", response_model=RunReport)
    async def resume_run(rt: RuntimeDep, run_id: str) -> RunReport:
        """Take up a run a dead process left (or recovery parked) in the store; 409 if
        it cannot be (finished, a live process holds it, its workflow changed)."""
        if rt.store is None:
            raise HTTPException(409, "this service's runtime has no store: nothing to resume")
        try:
            handle = await rt.resume(run_id)
        except RunNotFound as exc:
            raise HTTPException(404, f"no run {run_id!r}") from exc
        except ResumeMismatch as exc:
            raise HTTPException(409, str(exc)) from exc
        return handle.report(steps=False)

    return router


def _unreadable(text: str) -> Any:
    raise ValueError("written with a serializer this runtime does not read")


def _held(rt: Runtime, run_id: str) -> Run[Any] | None:
    return rt._runs.get(run_id) or rt._history.get(run_id)


async def _event_source(rt: Runtime, run_id: str) -> AsyncGenerator[EventReport, None]:
    """The events of a run so far then as they happen, until it ends: a run this process
    holds from its state, any other from its store's history (followed by polling while
    another process drives it). :class:`RunNotFound` at once if neither has it."""
    handle = _held(rt, run_id)
    if handle is not None:
        return _live_events(handle)
    store = rt.store
    if store is None:
        raise RunNotFound(run_id, "this runtime (active or recently finished; no store)")
    record = await store.get_run(run_id)
    return _stored_events(rt, record.run_id)


async def _live_events(handle: Run[Any]) -> AsyncGenerator[EventReport, None]:
    async for event in handle.events(replay=True):
        yield EventReport.of(event, replayed=event.replayed)


async def _stored_events(rt: Runtime, run_id: str) -> AsyncGenerator[EventReport, None]:
    store = rt.store
    assert store is not None
    sent = 0
    while True:
        record = await store.get_run(run_id)
        history = await store.load_history(run_id)
        events = events_of_history(record, history)
        done = record.status in (
            StoredRunStatus.SUCCEEDED,
            StoredRunStatus.FAILED,
            StoredRunStatus.REVERTED,
            StoredRunStatus.CANCELLED,
        )
        if not done and events and events[-1].node is None and len(events) > 1:
            events = events[:-1]  # (no end event while unfinished)
        for event in events[sent:]:
            yield event
        sent = max(sent, len(events))
        if done:
            return
        held = _held(rt, run_id)
        if held is not None:  # this process took it up (recovery): follow it live
            async for event in _live_events(held):
                if not event.replayed:
                    yield event
            return
        await anyio.sleep(STORE_POLL)


class EventStream(Response):
    """A ``text/event-stream`` response of a run's events (server-sent events).

    Each event is ``event: <name>`` and ``data:`` its :class:`aflow.EventReport` as
    JSON, with an ``id`` counting from 1. The past comes first (``replayed``), then
    events as they happen; the stream ends when the run ends, with a last event
    ``end`` whose data is the run's :class:`aflow.RunReport` (without its steps).
    A comment is sent after :data:`KEEP_ALIVE` seconds of silence. A client that
    reconnects gets the whole stream again.
    """

    media_type = "text/event-stream"

    def __init__(self, source: AsyncGenerator[EventReport, None], rt: Runtime, run_id: str) -> None:
        super().__init__(media_type=self.media_type)
        self._source = source
        self._rt = rt
        self._run_id = run_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"),
                ],
            }
        )
        to_send, to_read = anyio.create_memory_object_stream[EventReport | None](math.inf)

        async def pump() -> None:
            async with to_send, contextlib.aclosing(self._source) as source:
                async for event in source:
                    await to_send.send(event)

        async def until_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            tg.cancel_scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(pump)
            tg.start_soon(until_disconnect)
            number = 0
            async with to_read:
                while True:
                    with anyio.move_on_after(KEEP_ALIVE) as waited:
                        try:
                            event = await to_read.receive()
                        except anyio.EndOfStream:
                            break
                    if waited.cancelled_caught:
                        await send(
                            {
                                "type": "http.response.body",
                                "body": b": keep-alive\n\n",
                                "more_body": True,
                            }
                        )
                        continue
                    assert event is not None
                    number += 1
                    body = f"id: {number}\nevent: {event.name}\ndata: {event.model_dump_json()}\n\n"
                    await send(
                        {"type": "http.response.body", "body": body.encode(), "more_body": True}
                    )
            end = b""
            try:
                report = await self._rt.report(self._run_id, steps=False)
            except RunNotFound:  # (dropped from the history meanwhile, and no store)
                pass
            else:
                number += 1
                end = f"id: {number}\nevent: end\ndata: {report.model_dump_json()}\n\n".encode()
            await send({"type": "http.response.body", "body": end, "more_body": False})
            tg.cancel_scope.cancel()
