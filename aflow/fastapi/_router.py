"""The runs router: list, read, cancel and resume runs, and follow one's progress (SSE)."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from pydantic import BaseModel

from .._exceptions import ResumeMismatch, RunEnded, RunNotFound, WaitTimeout
from .._feed import MAX_LIST, STATES, Feed, RunEvents, RunFilter, check_id, short
from .._runtime._report import EventReport, RunReport
from .._runtime._runtime import Runtime
from ._lifespan import RuntimeDep

__all__ = ["EventStream", "Sent", "Value", "runs_router"]

#: The longest ``GET /{run_id}/values/{name}`` waits for a value (seconds).
MAX_VALUE_WAIT = 60.0


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
        if status is not None and status not in STATES:
            raise HTTPException(422, f"unknown status {status!r}: one of {sorted(STATES)}")
        wanted = RunFilter(status, workflow, idempotency_key, since, until)
        return await Feed(rt).runs(wanted, limit)

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
            source = await Feed(rt).events(run_id)
        except RunNotFound as exc:
            raise HTTPException(404, f"no run {_short(run_id)}") from exc
        return EventStream(source, rt, run_id)

    if not actions:
        return router

    @router.post("/{run_id}/cancel", response_model=RunReport)
    async def cancel_run(rt: RuntimeDep, run_id: str) -> RunReport:
        """Cancel a run and wait until it has stopped (unwound); a run another process
        drives is asked to cancel through the store (its process unwinds it)."""
        try:
            return await Feed(rt).cancel(run_id)
        except RunNotFound as exc:
            raise HTTPException(404, f"no run {_short(run_id)}") from exc

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


_check_id = check_id
_short = short


class EventStream(RunEvents):
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

    def __init__(self, source: AsyncGenerator[EventReport, None], rt: Runtime, run_id: str) -> None:
        super().__init__(Feed(rt), run_id, source)
