"""The dashboard as an ASGI app (Starlette): the JSON API, the pages over it, and the
event streams that keep them live."""

from __future__ import annotations

import contextlib
import datetime
import inspect
import json
import math
import re
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeAlias

import anyio
import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from .._exceptions import AflowError, ResumeMismatch, RunNotFound
from .._feed import (
    MAX_LIST,
    RUNTIME_KEY,
    STATES,
    Feed,
    RunEvents,
    RunFilter,
    ShapeNode,
    short,
)
from .._runtime._report import RunReport, StepReport
from .._runtime._runtime import Runtime
from ..stores import open_store
from ..stores._base import Store
from ._layout import DrawNode, render_svg
from ._views import GraphView, graph_view, step_detail, timeline_svg

__all__ = ["Authorize", "app"]

#: Above this many nodes a run's page shows a table of its steps instead of its graph.
MAX_GRAPH = 500
#: Times past this (the year 9999) are refused as filters.
_LAST_TIME = 253402300799.0
#: Past this many nodes drawn, a run's page reloads its live part at most every 2 s.
LIVE_BIG = 100
#: Steps per page of a run's table.
PAGE = 100
#: Past this many steps a run's timeline shows each step's last attempt (from its
#: report), not every attempt and revert (from its history).
BIG_HISTORY = 2000
#: The header an action's request carries (the pages' script sends it): a form another
#: site posts cannot, so a browser's cookies alone cannot trigger an action.
ACTION_HEADER = "x-aflow-action"

#: ``authorize(request, action, run_id)``: True lets the action through (``action`` is
#: ``cancel``, ``resume``, ``retry``, ``fork`` or ``cancel_many``; ``run_id`` None for
#: the last). May be a coroutine function.
Authorize: TypeAlias = Callable[[Request, str, str | None], bool | Awaitable[bool]]

_HERE = Path(__file__).parent
_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_UNFINISHED = ("pending", "running", "suspended", "cancelling", "reverting", "parked", "waiting")


def _when(at: float | None) -> str:
    if at is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _took(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def _show(value: Any) -> str:
    try:
        return json.dumps(value, indent=2, ensure_ascii=False, default=repr)
    except (TypeError, ValueError, RecursionError):
        return repr(value)


def _local(at: float | None) -> str:
    """A time as a date picker's value (local time, to the minute)."""
    if at is None:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M", time.localtime(at))


def segment(text: str) -> str:
    """A run id or step key as one segment of a URL's path: quoted (``/`` too), and with a
    ``~`` before it if it starts with one or is all dots (which browsers would take as
    ``.`` or ``..``, and move up a folder). See :func:`_param`."""
    quoted = urllib.parse.quote(text, safe="")
    if text.startswith("~") or not text.strip("."):
        return "~" + quoted
    return quoted


_ENV.filters.update(
    when=_when,
    took=_took,
    show=_show,
    local=_local,
    seg=segment,
    qs=lambda s: urllib.parse.quote(s, safe=""),
)

#: The scope key set when the path was decoded from the raw path, keeping ``%2F`` and
#: ``%25`` as they are (see :class:`_RawSegments`).
_KEPT = "aflow.kept_escapes"


def _param(request: Request, name: str) -> str:
    """A path parameter as :func:`segment` wrote it: ``%2F`` and ``%25`` decoded (a run id
    with a ``/``), one leading ``~`` dropped."""
    value: str = request.path_params[name]
    if request.scope.get(_KEPT):
        value = re.sub(r"%(25|2[fF])", lambda m: "%" if m[1] == "25" else "/", value)
    return value[1:] if value.startswith("~") else value


class _RawSegments:
    """Routes on the raw path with ``%2F`` (and ``%25``) left encoded, so that a run id
    or step key with a ``/`` stays one segment (the server decodes it before routing)."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    def __getattr__(self, name: str) -> Any:  # (app.state, app.router: the Starlette app's)
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = scope.get("raw_path")
        if scope["type"] == "http" and raw and b"%" in raw:
            path = _kept(raw.decode("latin-1").partition("?")[0], scope)
            if path is not None:
                scope = {**scope, "path": path, _KEPT: True}
        await self.app(scope, receive, send)


def _kept(raw: str, scope: Scope) -> str | None:
    """The request's path with the ``%2F`` and ``%25`` of its part below the mount left
    encoded; ``None`` if the raw path is not what the server decoded (a proxy rewrote
    it) or the mount's prefix cannot be found in it."""
    if urllib.parse.unquote(raw) != scope["path"]:
        return None
    prefix = str(scope.get("root_path", ""))
    # (the raw segments that make the mount's prefix, decoded as the server did)
    segments = raw.split("/")
    for count in range(len(segments) + 1):
        head = "/".join(segments[:count])
        if urllib.parse.unquote(head) == prefix:
            rest = "/".join(segments[count:])
            rest = rest.replace("%25", "%2525").replace("%2F", "%252F").replace("%2f", "%252F")
            return prefix + ("/" if count else "") + urllib.parse.unquote(rest)
    return None


class _Dashboard:
    """One mounted dashboard: where it reads runs, and what it lets a person do."""

    def __init__(
        self,
        source: Runtime | Store | str | None,
        *,
        actions: bool,
        authorize: Authorize | None,
        title: str,
        max_graph: int,
    ) -> None:
        self.source = source
        self.actions = actions
        self.authorize = authorize
        self.title = title
        self.max_graph = max_graph
        self._store: Store | None = source if isinstance(source, Store) else None
        self._opening = anyio.Lock()
        self._opened = False
        #: set when the process serving the dashboard alone is told to stop (aflow ui):
        #: its event streams end, so the server does not wait for them
        self.closing: anyio.Event | None = None
        #: where ``aflow.ops`` keeps the runs' files (None: beside the store, as ops does)
        self.artifacts: Path | None = None

    async def open_store(self) -> None:
        """Open the store named by URL (the app's lifespan, or its first request when
        mounted: a mounted app's lifespan is not run)."""
        if not isinstance(self.source, str) or self._opened:
            return
        async with self._opening:
            if self._store is not None:  # (opened while this request waited)
                return
            store = open_store(self.source, read_only=not self.actions, create=False)
            await store.open()
            self._store = store
            self._opened = True

    async def close_store(self) -> None:
        """Close the store it opened (its lifespan's end; the next one opens it again)."""
        if self._opened and self._store is not None:
            store, self._store, self._opened = self._store, None, False
            await store.close()

    async def feed(self, request: Request) -> Feed:
        source = self.source
        if isinstance(source, Runtime):
            return Feed(source)
        if source is None:
            found = (request.scope.get("state") or {}).get(RUNTIME_KEY)
            if found is None:
                found = getattr(request.app.state, RUNTIME_KEY, None)
            if not isinstance(found, Runtime):
                raise HTTPException(
                    500,
                    "no aflow Runtime here: give the application "
                    "lifespan=aflow.fastapi.lifespan(...), or aflow.web.app(runtime_or_store)",
                )
            return Feed(found)
        await self.open_store()
        assert self._store is not None
        return Feed(None, self._store)

    async def check_action(self, request: Request, action: str, run_id: str | None) -> None:
        if not self.actions:
            raise HTTPException(403, "actions are off on this dashboard")
        if request.headers.get(ACTION_HEADER) is None:
            raise HTTPException(
                403, f"an action's request carries the {ACTION_HEADER} header (the page sends it)"
            )
        if self.authorize is not None:
            allowed = self.authorize(request, action, run_id)
            if inspect.isawaitable(allowed):
                allowed = await allowed
            if allowed is not True:  # (a redirect, a role name, an unawaited coroutine: no)
                raise HTTPException(403, f"not allowed to {action}")


def app(
    source: Runtime | Store | str | None = None,
    *,
    actions: bool = True,
    authorize: Authorize | None = None,
    title: str = "aflow",
    max_graph: int = MAX_GRAPH,
    artifacts: str | Path | None = None,
) -> ASGIApp:
    """The runs dashboard, an ASGI app to mount in a Starlette / FastAPI service::

        app.mount("/aflow", aflow.web.app())          # the runtime of aflow.fastapi.lifespan
        app.mount("/aflow", aflow.web.app(runtime))   # or a runtime, a Store, a store URL

    Pages: ``/`` the runs (filters, live), ``/runs/{id}`` one run (its graph, live
    over server-sent events; a table past ``max_graph`` nodes; a timeline),
    ``/runs/{id}/steps/{key}`` one step. The JSON API under ``/api`` serves the same
    models as :mod:`aflow.fastapi`. ``actions`` (cancel, resume, retry, fork, cancel
    many) need the ``X-Aflow-Action`` header the pages send, and ``authorize``'s yes:
    hook your service's auth there (``True`` lets an action through; reading is not
    guarded here: guard the mount). Over a store alone (no runtime) resume, retry and
    fork are not offered: they run the workflow, which a runtime does. ``artifacts``:
    the folder ``aflow.ops`` keeps files in, when workflows name their own
    (``Workflow(artifacts=...)``); by default the one beside the store, as ops's.
    """
    board = _Dashboard(
        source, actions=actions, authorize=authorize, title=title, max_graph=max_graph
    )
    board.artifacts = None if artifacts is None else Path(artifacts)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await board.open_store()
        try:
            yield
        finally:
            await board.close_store()

    routes = [
        Route("/", _page_runs(board)),
        Route("/runs/{run_id}", _page_run(board)),
        Route("/runs/{run_id}/steps/{key:path}", _page_step(board)),
        Route("/api/runs", _api_runs(board)),
        Route("/api/runs/cancel", _api_cancel_many(board), methods=["POST"]),
        Route("/api/runs/{run_id}", _api_run(board)),
        Route("/api/runs/{run_id}/graph", _api_graph(board)),
        Route("/api/runs/{run_id}/events", _api_events(board)),
        Route("/api/runs/{run_id}/steps/{key:path}", _api_step(board)),
        Route("/api/runs/{run_id}/artifacts/{sha}", _api_artifact(board)),
        Route("/api/runs/{run_id}/{action}", _api_action(board), methods=["POST"]),
        Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
    ]
    board_app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={AflowError: _aflow_error, HTTPException: _http_error},
    )
    board_app.state.dashboard = board
    return _RawSegments(board_app)


async def _aflow_error(request: Request, exc: Exception) -> Response:
    """An error of aflow's an action met (a run that cannot be resumed...): a 404 or 409."""
    code = 404 if isinstance(exc, RunNotFound) else 409
    text = (
        str(exc)
        if isinstance(exc, (RunNotFound, ResumeMismatch))
        else f"{type(exc).__name__}: {exc}"
    )
    return await _http_error(request, HTTPException(code, text))


async def _http_error(request: Request, exc: Exception) -> Response:
    """JSON (``{"detail": ...}``, as FastAPI's) under ``/api``, a small page elsewhere."""
    assert isinstance(exc, HTTPException)
    path, root = request.scope["path"], str(request.scope.get("root_path", ""))
    if path.removeprefix(root).startswith("/api/"):  # (not the mount's prefix)
        return JSONResponse({"detail": exc.detail}, exc.status_code)
    page = _ENV.get_template("error.html").render(
        base=_base(request), title="aflow", fragment=False, code=exc.status_code, detail=exc.detail
    )
    return HTMLResponse(page, exc.status_code, headers=_PAGE_HEADERS)


# --- reading requests -------------------------------------------------------------------------


def _filter_of(request: Request) -> RunFilter:
    query = request.query_params

    def number(name: str) -> float | None:
        raw = query.get(name) or None
        if raw is None:
            return None
        try:
            at = float(raw)
        except ValueError:
            try:  # (a date picker's local time, or ISO 8601 with its offset)
                at = datetime.datetime.fromisoformat(raw).timestamp()
            except ValueError:
                at = math.nan
        if not 0 <= at < _LAST_TIME:  # (nan, inf, and times no clock shows, too)
            raise HTTPException(
                422, f"{name} is seconds since the epoch or an ISO 8601 time, got {raw!r}"
            )
        return at

    status = query.get("status") or None
    if status is not None and status not in STATES:
        raise HTTPException(422, f"unknown status {status!r}: one of {sorted(STATES)}")
    return RunFilter(
        status=status,
        workflow=query.get("workflow") or None,
        idempotency_key=query.get("idempotency_key") or None,
        since=number("since"),
        until=number("until"),
        search=query.get("q") or None,
    )


def _int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HTTPException(422, f"{name} is a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise HTTPException(422, f"{name} is from {low} to {high}, got {value}")
    return value


def _base(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


async def _report(feed: Feed, run_id: str, steps: bool = True) -> RunReport:
    try:
        return await feed.report(run_id, steps=steps)
    except RunNotFound as exc:
        raise HTTPException(404, f"no run {short(run_id)}") from exc


async def _shape(feed: Feed, run_id: str) -> list[ShapeNode] | None:
    try:
        return await feed.shape(run_id)
    except RunNotFound as exc:
        raise HTTPException(404, f"no run {short(run_id)}") from exc


def _json(model: Any) -> Response:
    if isinstance(model, list):
        body = "[" + ",".join(m.model_dump_json() for m in model) + "]"
    else:
        body = model.model_dump_json()
    return Response(body, media_type="application/json")


Endpoint: TypeAlias = Callable[[Request], Awaitable[Response]]


# --- the JSON API -----------------------------------------------------------------------------


def _api_runs(board: _Dashboard) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        feed = await board.feed(request)
        wanted = _filter_of(request)
        limit = _int(request, "limit", 100, 1, MAX_LIST)
        offset = _int(request, "offset", 0, 0, MAX_LIST)
        return _json(await feed.runs(wanted, limit, offset))

    return endpoint


def _api_run(board: _Dashboard) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        feed = await board.feed(request)
        steps = request.query_params.get("steps", "true").lower() not in ("0", "false", "no")
        return _json(await _report(feed, _param(request, "run_id"), steps))

    return endpoint


def _api_graph(board: _Dashboard) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        feed = await board.feed(request)
        run_id = _param(request, "run_id")
        shape = await _shape(feed, run_id)
        return _json(graph_view(await _report(feed, run_id), shape))

    return endpoint


def _api_step(board: _Dashboard) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        feed = await board.feed(request)
        detail = await _step_detail(feed, _param(request, "run_id"), _param(request, "key"))
        return _json(detail)

    return endpoint


async def _step_detail(feed: Feed, run_id: str, key: str) -> Any:
    report = await _report(feed, run_id)
    shape = await _shape(feed, run_id)
    events = await feed.history(run_id, report)
    parents = next((n.parents for n in shape or () if n.key == key), ())
    inputs = _live_inputs(feed, run_id, key, parents)
    detail = step_detail(report, key, shape, events, inputs)
    if detail is None:
        raise HTTPException(404, f"run {short(run_id)} has no step {key!r}")
    return detail


def _live_inputs(feed: Feed, run_id: str, key: str, parents: tuple[str, ...]) -> dict[str, Any]:
    """What a step was given, when this process holds the run: its arguments given as
    values and the outputs of the steps before it (reverted since, too). A stored run
    keeps its parameters and each step's output only (the page shows those)."""
    from .._runtime._report import jsonable

    handle = feed.held(run_id)
    if handle is None:
        return {}
    try:
        node = handle.graph.node(key)
    except KeyError:
        return {}
    found: dict[str, Any] = {}
    for i, arg in enumerate(node.args):
        found[f"arg {i}"] = jsonable(arg)
    for name, value in node.kwargs.items():
        found[name] = jsonable(value)
    for parent in parents:
        try:
            info = handle.step(parent)
        except KeyError:
            continue
        if info.state.value in ("succeeded", "reverting", "reverted", "revert_failed"):
            found[f"from {parent}"] = jsonable(info.result)
    return found


def _api_events(board: _Dashboard) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        feed = await board.feed(request)
        run_id = _param(request, "run_id")
        try:
            source = await feed.events(run_id)
        except RunNotFound as exc:
            raise HTTPException(404, f"no run {short(run_id)}") from exc
        return RunEvents(feed, run_id, source, board.closing)

    return endpoint


def _api_artifact(board: _Dashboard) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        feed = await board.feed(request)
        run_id, sha = _param(request, "run_id"), _param(request, "sha")
        name = request.query_params.get("name") or sha
        report = await _report(feed, run_id)
        from ._views import artifacts_in

        # only what a step of this run gave: the sha is not a key to the whole store
        if not any(
            a["sha"] == sha for step in report.steps or () for a in artifacts_in(step.result)
        ):
            raise HTTPException(404, f"run {short(run_id)} gave no artifact {sha!r}")
        path = _object_path(feed, sha, board.artifacts)
        return FileResponse(path, filename=Path(name).name or sha)

    return endpoint


def _object_path(feed: Feed, sha: str, root: Path | None) -> Path:
    from ..ops._artifacts import default_root

    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise HTTPException(404, "an artifact is named by its sha256 (64 hex digits)")
    if root is None:
        try:
            root = default_root(feed.store)
        except AflowError as exc:
            raise HTTPException(404, f"this store keeps no artifacts here: {exc}") from exc
    path = root / "objects" / sha[:2] / sha
    if path.is_symlink() or not path.is_file():
        raise HTTPException(404, f"no artifact {sha} in {root}")
    return path


# --- actions -------------------------------------------------------------------------------


def _api_action(board: _Dashboard) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        run_id, action = _param(request, "run_id"), request.path_params["action"]
        if action not in ("cancel", "resume", "retry", "fork"):
            raise HTTPException(404, f"no action {action!r}: cancel, resume, retry or fork")
        await board.check_action(request, action, run_id)
        feed = await board.feed(request)
        if action == "cancel":
            try:
                return _json(await feed.cancel(run_id, "cancelled from the dashboard"))
            except RunNotFound as exc:
                raise HTTPException(404, f"no run {short(run_id)}") from exc
        rt = feed.runtime
        if rt is None or rt.store is None:
            raise HTTPException(
                409, f"{action} runs the workflow: that needs a runtime with a store here"
            )
        if action == "resume":
            handle = await rt.resume(run_id)
            return _json(handle.report(steps=False))
        report = await _report(feed, run_id)
        if action == "retry":
            if report.status not in ("failed", "reverted", "cancelled"):
                raise HTTPException(
                    409, f"run {short(run_id)} is {report.status}: retry a run that failed"
                )
            reuse = [s.key for s in report.steps or () if s.state == "succeeded"]
            key = f"aflow-retry:{run_id}"
        else:
            body = await _body(request)
            step = body.get("step")
            if not isinstance(step, str):
                raise HTTPException(422, 'fork takes {"step": key}: the step to run again from')
            if not report.finished:  # (what it would reuse may still be reverted)
                raise HTTPException(
                    409, f"run {short(run_id)} is {report.status}: fork a run that has ended"
                )
            shape = await _shape(feed, run_id)
            reuse = _before(report, shape, step)
            key = f"aflow-fork:{run_id}:{step}"
        # Once per run (and step): a second click, or a second operator, gets the run the
        # first started, not another (a retried saga would charge twice).
        store = rt.store
        first = await store.run_of_key(key)
        if first is None:
            try:
                return _json((await rt.fork(run_id, reuse, run_key=key)).report(steps=False))
            except ValueError:  # (started meanwhile by another request, or process)
                first = await store.run_of_key(key)
                if first is None:
                    raise
        return _json(await _report(feed, first, steps=False))

    return endpoint


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        found = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise HTTPException(422, f"the body is JSON: {exc}") from exc
    if not isinstance(found, dict):
        raise HTTPException(422, "the body is a JSON object")
    return found


def _before(report: RunReport, shape: list[ShapeNode] | None, step: str) -> list[str]:
    """The succeeded steps a fork from ``step`` reuses: all but it and what follows it."""
    steps = {s.key: s for s in report.steps or ()}
    if step not in steps:
        raise HTTPException(404, f"run {short(report.id)} has no step {step!r}")
    again = {step}
    if shape is not None:
        children: dict[str, list[str]] = {}
        for node in shape:
            for parent in node.parents:
                children.setdefault(parent, []).append(node.key)
        todo = [step]
        while todo:
            for child in children.get(todo.pop(), ()):
                if child not in again:
                    again.add(child)
                    todo.append(child)
    return [k for k, s in steps.items() if s.state == "succeeded" and k not in again]


def _api_cancel_many(board: _Dashboard) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        await board.check_action(request, "cancel_many", None)
        feed = await board.feed(request)
        wanted = _filter_of(request)
        if wanted == RunFilter() and request.query_params.get("all") != "true":
            raise HTTPException(422, "cancel many runs by a filter (or all=true for every run)")
        cancelled: list[str] = []
        failed: dict[str, str] = {}
        for report in await feed.runs(wanted, MAX_LIST):
            if report.status not in _UNFINISHED or report.status in ("cancelling", "reverting"):
                continue  # (ended, or unwinding already: asked once is enough)
            held = feed.held(report.id)
            if held is not None and held._cancel_asked:
                continue
            try:  # (asked, not awaited: each unwinds on its own, all at once)
                await feed.ask_to_cancel(report.id, "cancelled from the dashboard (many at once)")
            except AflowError as exc:
                failed[report.id] = str(exc)
            else:
                cancelled.append(report.id)
        return JSONResponse({"cancelled": cancelled, "failed": failed})

    return endpoint


# --- pages ------------------------------------------------------------------------------------


def _page(board: _Dashboard, request: Request, name: str, **context: Any) -> HTMLResponse:
    fragment = request.query_params.get("fragment") == "1"
    template = _ENV.get_template(name)
    body = template.render(
        base=_base(request),
        title=board.title,
        actions=board.actions,
        fragment=fragment,
        **context,
    )
    return HTMLResponse(body, headers=_PAGE_HEADERS)


#: A page runs only its own script and is framed only by its own site (no clickjacking
#: of its buttons); inline styles are the graph's SVG's.
_PAGE_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; frame-ancestors 'self'; base-uri 'none'; form-action 'self'"
    ),
    "x-frame-options": "SAMEORIGIN",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}


def _page_runs(board: _Dashboard) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        feed = await board.feed(request)
        wanted = _filter_of(request)
        page = _int(request, "page", 1, 1, MAX_LIST)
        size = _int(request, "limit", 50, 1, 500)
        runs = await feed.runs(wanted, size + 1, (page - 1) * size)
        query = {k: v for k, v in request.query_params.items() if k not in ("page", "fragment")}
        return _page(
            board,
            request,
            "runs.html",
            runs=runs[:size],
            more=len(runs) > size,
            page=page,
            wanted=wanted,
            states=sorted(STATES),
            query=urllib.parse.urlencode(query),
            live_actions=board.actions and feed.runtime is not None,
        )

    return endpoint


def _page_run(board: _Dashboard) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        feed = await board.feed(request)
        run_id = _param(request, "run_id")
        report = await _report(feed, run_id)
        shape = await _shape(feed, run_id)
        view = graph_view(report, shape)
        steps = report.steps or []
        big = len(view.nodes) > board.max_graph
        state = request.query_params.get("state") or None
        search = (request.query_params.get("q") or "").casefold()
        shown: list[StepReport] = [
            s
            for s in steps
            if (state is None or s.state == state) and (not search or search in s.key.casefold())
        ]
        page = _int(request, "page", 1, 1, 1_000_000)
        pages = max(1, -(-len(shown) // PAGE))
        page = min(page, pages)
        # (a big run's timeline is its first steps' last attempts: its history, 20,000
        # transitions for 10,000 steps, is not read for every look at the page)
        events = None if len(steps) > BIG_HISTORY else await feed.history(run_id, report)
        return _page(
            board,
            request,
            "run.html",
            run=report,
            graph=None if big else _svg(view, _base(request), run_id),
            big=big or len(view.nodes) > LIVE_BIG or len(steps) > MAX_GRAPH,
            nodes=len(view.nodes),
            steps=shown[(page - 1) * PAGE : page * PAGE],
            matching=len(shown),
            page=page,
            pages=pages,
            state=state or "",
            search=request.query_params.get("q") or "",
            step_states=sorted({s.state for s in steps}),
            timeline=timeline_svg(report, events, now=time.time()),
            runs_actions=feed.runtime is not None and feed.store is not None,
        )

    return endpoint


def _svg(view: GraphView, base: str, run_id: str) -> str:
    quoted = segment(run_id)
    drawn = [
        DrawNode(
            key=node.key,
            label=node.task,
            state=node.state,
            parents=tuple(node.parents),
            counts=node.counts or None,
            href=None if node.members else f"{base}/runs/{quoted}/steps/{segment(node.key)}",
        )
        for node in view.nodes
    ]
    return render_svg(drawn, title=f"run {run_id}")


def _page_step(board: _Dashboard) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        feed = await board.feed(request)
        run_id, key = _param(request, "run_id"), _param(request, "key")
        detail = await _step_detail(feed, run_id, key)
        report = await _report(feed, run_id, steps=False)
        return _page(
            board,
            request,
            "step.html",
            run=report,
            detail=detail,
            step=detail.step,
            big=sum(report.counts.values()) > MAX_GRAPH,
            runs_actions=feed.runtime is not None and feed.store is not None,
        )

    return endpoint
