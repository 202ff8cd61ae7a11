"""The runs router: list, read, cancel and resume runs, and follow one's progress (SSE)."""

from __future__ import annotations

import contextlib
import json
import math
import reprlib
from collections.abc import AsyncGenerator, Sequence
from typing import Annotated, Any, cast, get_args

import anyio
from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from pydantic import BaseModel
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .._events import Event
from .._exceptions import ResumeMismatch, RunEnded, RunNotFound, WaitTimeout
from .._runtime._handle import Run
from .._runtime._report import (
    EventReport,
    RunReport,
    RunState,
    history_events,
    names_of,
    report_of_record,
    report_of_run,
)
from .._runtime._runtime import Runtime
from ..stores._base import RunRecord, StoredRunStatus
from ._lifespan import CLOSING_KEY, RuntimeDep

__all__ = ["EventStream", "Sent", "Value", "runs_router"]

#: Seconds between two looks at the store while following a run another process drives.
STORE_POLL = 0.5
#: Seconds of silence after which an event stream sends a comment (proxies close idle
#: connections).
KEEP_ALIVE = 15.0
#: The most runs one list answer holds; the store is asked for at most this many of a
#: status before the other filters apply.
MAX_LIST = 1000
#: The longest ``GET /{run_id}/values/{name}`` waits for a value (seconds).
MAX_VALUE_WAIT = 60.0

_STATES = frozenset(get_args(RunState))


def runs_router(
    *, actions: bool = True, send: bool = True, tags: Sequence[str] = ("runs",)
) -> APIRouter:
    """An ``APIRouter`` over the service's runs (mount it with a prefix)::

        app.include_router(aflow.fastapi.runs_router(), prefix="/runs")

    ``GET /`` lists runs, newest first (``status``, ``workflow``, ``idempotency_key``,
    ``since``/``until`` on creation time, ``limit``); ``GET /{run_id}`` is one run
    with its steps (:class:`aflow.RunReport`); ``GET /{run_id}/events`` streams its
    events as server-sent events (:class:`EventStream`). With ``actions`` (the
    default), ``POST /{run_id}/cancel`` and ``POST /{run_id}/resume``; guard them with
    the router's ``dependencies=`` or your own auth. With ``send`` (the default),
    ``POST /{run_id}/send/{event}`` sends an event to the run (:meth:`Runtime.send`;
    the JSON body is its payload, ``?message_id=`` or an ``Idempotency-Key`` header
    makes a redelivery a no-op; 202) and ``GET /{run_id}/values/{name}?timeout=`` reads
    a value the run published (:meth:`Runtime.get_event`). A run this process holds is
    read live; any other from the runtime's store. An unknown run is a 404; a run that
    has ended is a 409 to a send.
    """
    router = APIRouter(tags=list(tags))
    if send:
        _add_send_routes(router)

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

        def wanted(
            status_now: str, flow: str | None, key: str | None, created: float | None
        ) -> bool:
            at = created or 0.0
            return (
                (status is None or status_now == status)
                and (workflow is None or flow == workflow)
                and (idempotency_key is None or key == idempotency_key)
                and (since is None or at >= since)
                and (until is None or at < until)
            )

        found: list[tuple[float, RunReport | RunRecord]] = []
        held: set[str] = set()
        for handle in (*rt._runs.values(), *reversed(rt._history.values())):
            if handle.id in held:
                continue
            held.add(handle.id)
            report = report_of_run(handle, steps=False)
            if wanted(report.status, report.workflow, report.idempotency_key, report.created_at):
                found.append((report.created_at or 0.0, report))
        store = rt.store
        if store is not None:
            stored = None
            if status is not None and status in StoredRunStatus._value2member_map_:
                stored = StoredRunStatus(status)
            if status is None or stored is not None:
                for record in await store.list_runs(stored, MAX_LIST):
                    # a run this process holds is reported live (its record may lag)
                    if record.run_id in held:
                        continue
                    held.add(record.run_id)
                    if wanted(
                        str(record.status),
                        record.workflow,
                        record.idempotency_key,
                        record.created_at,
                    ):
                        found.append((record.created_at, record))
        found.sort(key=lambda item: item[0], reverse=True)
        # (a stored run's values are read only for the runs answered)
        return [_as_report(rt, item) for _, item in found[:limit]]

    @router.get("/{run_id}", response_model=RunReport)
    async def read_run(rt: RuntimeDep, run_id: str, steps: bool = True) -> RunReport:
        try:
            _check_id(run_id)
            return await rt.report(run_id, steps=steps)
        except RunNotFound as exc:
            raise HTTPException(404, f"no run {_short(run_id)}") from exc

    @router.get("/{run_id}/events", response_class=EventStream)
    async def run_events(rt: RuntimeDep, run_id: str) -> EventStream:
        try:
            _check_id(run_id)
            source = await _event_source(rt, run_id)
        except RunNotFound as exc:
            raise HTTPException(404, f"no run {_short(run_id)}") from exc
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
            raise HTTPException(404, f"no run {_short(run_id)}")
        try:
            _check_id(run_id)
            await store.request_cancel(run_id, "RunCancelled: cancelled over HTTP")
        except RunNotFound as exc:
            raise HTTPException(404, f"no run {_short(run_id)}") from exc
        return await rt.report(run_id, steps=False)

    @router.post("/{run_id}/resume", response_model=RunReport)
    async def resume_run(rt: RuntimeDep, run_id: str) -> RunReport:
        """Take up a run a dead process left (or recovery parked) in the store; 409 if
        it cannot be (finished, a live process holds it, its workflow changed)."""
        if rt.store is None:
            raise HTTPException(409, "this service's runtime has no store: nothing to resume")
        try:
            _check_id(run_id)
            handle = await rt.resume(run_id)
        except RunNotFound as exc:
            raise HTTPException(404, f"no run {_short(run_id)}") from exc
        except ResumeMismatch as exc:
            raise HTTPException(409, str(exc)) from exc
        return handle.report(steps=False)

    return router


class Sent(BaseModel):
    """The answer to ``POST /runs/{run_id}/send/{event}``."""

    run_id: str
    event: str
    #: False: this message was sent already (the run takes it once)
    delivered: bool


class Value(BaseModel):
    """The answer to ``GET /runs/{run_id}/values/{name}``."""

    run_id: str
    name: str
    value: Any


def _add_send_routes(router: APIRouter) -> None:
    @router.post("/{run_id}/send/{event}", response_model=Sent, status_code=202)
    async def send_event(
        rt: RuntimeDep,
        request: Request,
        run_id: str,
        event: str,
        message_id: Annotated[
            str | None, Query(description="sent once per run, event and message id")
        ] = None,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    ) -> Sent:
        """Send ``event`` to the run: an ``aflow.wait_for(event)`` (or ``aflow.receive``)
        in it takes the JSON body as its value (no body: ``null``). Kept if the run has
        not got to its wait yet. A webhook's redelivery with the same message id (the
        query's ``message_id``, else the ``Idempotency-Key`` header) is a no-op
        (``delivered`` false), so answer it 2xx and let the provider stop retrying."""
        body = await request.body()
        try:
            payload = json.loads(body) if body.strip() else None
        except (ValueError, RecursionError) as exc:  # (nested past Python's limit)
            raise HTTPException(422, f"the body of an event is JSON: {exc}") from exc
        try:
            _check_id(run_id)
            delivered = await rt.send(
                run_id, event, payload, message_id=message_id or idempotency_key
            )
        except RunNotFound as exc:
            raise HTTPException(404, f"no run {_short(run_id)}") from exc
        except RunEnded as exc:
            raise HTTPException(409, str(exc)) from exc
        return Sent(run_id=run_id, event=event, delivered=delivered)

    @router.get("/{run_id}/values/{name}", response_model=Value)
    async def read_value(
        rt: RuntimeDep,
        run_id: str,
        name: str,
        timeout: Annotated[
            float, Query(ge=0, le=MAX_VALUE_WAIT, description="seconds to wait for it")
        ] = 0.0,
    ) -> Value:
        """The value the run published under ``name`` (``aflow.set_event``), waiting up
        to ``timeout`` seconds for it: 404 if it is not set by then, 409 if the run ended
        without setting it."""
        try:
            _check_id(run_id)
            value = await rt.get_event(run_id, name, timeout=timeout)
        except RunNotFound as exc:
            raise HTTPException(404, f"no run {_short(run_id)}") from exc
        except WaitTimeout as exc:
            raise HTTPException(404, f"run {_short(run_id)} has not set {name!r}") from exc
        except RunEnded as exc:
            raise HTTPException(409, str(exc)) from exc
        try:
            shown = jsonable_encoder(value)
        except (TypeError, ValueError):  # a pickle run's value JSON cannot hold
            shown = repr(value)
        return Value(run_id=run_id, name=name, value=shown)


def _check_id(run_id: str) -> None:
    """:class:`RunNotFound` for an id no store can hold (a NUL, text that is not UTF-8):
    no run has it, and a store asked for it fails instead of saying so."""
    if "\x00" in run_id:
        raise RunNotFound(run_id, "any store (a run id holds no NUL)")
    try:
        run_id.encode()
    except UnicodeEncodeError:
        raise RunNotFound(run_id, "any store (a run id is UTF-8 text)") from None


def _short(run_id: str) -> str:
    return reprlib.repr(run_id)


def _as_report(rt: Runtime, item: RunReport | RunRecord) -> RunReport:
    if isinstance(item, RunReport):
        return item
    return report_of_record(item, None, (), rt._rebuilder.reader_of(item), None)


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
    # (closed with this generator: the run's listener goes at once, not when collected)
    subscribed = cast("AsyncGenerator[Event, None]", handle.events(replay=True))
    async with contextlib.aclosing(subscribed) as events:
        async for event in events:
            yield EventReport.of(event, replayed=event.replayed)


async def _stored_events(rt: Runtime, run_id: str) -> AsyncGenerator[EventReport, None]:
    """A stored run's events from its history, read again until the run ends: each
    event is sent once (known by the transition it comes from). If this process takes
    the run up meanwhile (recovery, a resume), its history still says what happens
    (every transition of a stored run is on record): it is read again as the run ends
    here, or every :data:`STORE_POLL` seconds."""
    store = rt.store
    assert store is not None
    sent: set[tuple[int, int]] = set()
    names: dict[str, str] | None = None
    while True:
        record = await store.get_run(run_id)
        if names is None:
            try:
                names = names_of(rt._rebuilder.graph_of(record))
            except Exception:  # (not rebuildable here: its steps are named by their keys)
                names = {}
        history = await store.load_history(run_id)
        done = record.status in _STORED_ENDS
        for where, event in history_events(record, history, names or None):
            if where in sent:
                continue
            if event.node is None and where[0] >= 0 and not done:
                continue  # (no end event while unfinished)
            sent.add(where)
            yield event
        if done:
            return
        held = _held(rt, run_id)
        if held is not None:  # this process runs it now: look again when it ends here
            with anyio.move_on_after(STORE_POLL):
                await held.wait()
        else:
            await anyio.sleep(STORE_POLL)


_STORED_ENDS = frozenset(
    {
        StoredRunStatus.SUCCEEDED,
        StoredRunStatus.FAILED,
        StoredRunStatus.REVERTED,
        StoredRunStatus.CANCELLED,
    }
)


class EventStream(Response):
    """A ``text/event-stream`` response of a run's events (server-sent events).

    Each event is ``event: <name>`` and ``data:`` its :class:`aflow.EventReport` as
    JSON, with an ``id`` counting from 1. The past comes first (``replayed``), then
    events as they happen; the stream ends when the run ends, with a last event
    ``end`` whose data is the run's :class:`aflow.RunReport` (without its steps).
    It ends too, the same way, when the service is told to stop (see
    :func:`aflow.fastapi.lifespan`): ``finished`` is then false in the report, and a
    client may follow the run again from another process. A comment is sent after
    :data:`KEEP_ALIVE` seconds of silence. A client that reconnects gets the whole
    stream again.
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

        pumping = anyio.CancelScope()

        async def pump() -> None:
            with pumping:
                async with to_send, contextlib.aclosing(self._source) as source:
                    async for event in source:
                        await to_send.send(event)

        async def until_closing(closing: anyio.Event) -> None:
            await closing.wait()
            pumping.cancel()  # (what was read is sent, then the end)

        async def until_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            tg.cancel_scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(pump)
            tg.start_soon(until_disconnect)
            closing = _closing_of(scope)
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


def _closing_of(scope: Scope) -> anyio.Event | None:
    """The event the service's lifespan sets when the process is told to stop."""
    found = (scope.get("state") or {}).get(CLOSING_KEY)
    if found is None:
        app_state = getattr(scope.get("app"), "state", None)
        found = getattr(app_state, CLOSING_KEY, None)
    return found if isinstance(found, anyio.Event) else None
