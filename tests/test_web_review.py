"""What a review of issue 20 (aflow.web, aflow ui, schema 5, aflow.otel) found wrong: each
test failed before its fix, and its docstring tells what was wrong then."""

from __future__ import annotations

import pathlib
import sqlite3
import sys
import time
import uuid
from typing import Any

import anyio
import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.routing import Mount

import aflow
import aflow.otel
import aflow.web
from aflow.stores import MemoryStore, RunRecord, open_store
from tests import web_workflows as wf
from tests.test_web_dashboard import ACT, ROOT, client, gates, over, runtime_of, service


@pytest.fixture(autouse=True)
def _reset() -> None:
    wf.reset()


# --- retry / fork idempotency ------------------------------------------------------------------


async def test_retry_is_once_per_run_even_with_a_thousand_newer_runs(
    tmp_path: pathlib.Path,
) -> None:
    """README: "Retry and fork are once per run (and step): a second click, or a second
    operator, gets the run the first started". The lookup of the earlier retry goes through
    Feed.runs: the runs this process holds, then the store's 1,000 newest only. Once the
    retry is neither (another replica, a restart, keep_finished), the fork's duplicate
    idempotency key raises ValueError, the second lookup misses again, and the request
    fails with a 500 instead of answering the first retry (aflow/web/_app.py _api_action)."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    app = service(url)
    async with client(app) as http:
        rt = runtime_of(app)
        wf.FAIL.add("ship")
        failed = await rt.submit(wf.saga, order="o-r", on_error="continue")
        await failed.wait()
        wf.FAIL.clear()
        first = await http.post(f"/ops/aflow/api/runs/{failed.id}/retry", headers=ACT)
        assert first.status_code == 200, first.text
        await rt.get(first.json()["id"]).wait()
        store = rt.store
        assert store is not None
        now = time.time()
        for i in range(1001):  # a busy service: a thousand runs made since the retry
            await store.create_run(
                RunRecord(uuid.uuid4().hex, "other:wf", "{}", "fp", "succeeded", None, now + i, now)
            )
    app = service(url)  # the service was deployed again since (or another replica answers)
    async with client(app) as http:
        again = await http.post(f"/ops/aflow/api/runs/{failed.id}/retry", headers=ACT)
        assert again.status_code == 200, again.text
        assert again.json()["id"] == first.json()["id"]


# --- the dashboard's own store -----------------------------------------------------------------


async def test_a_dashboard_over_a_store_url_opens_it_again_in_its_next_lifespan(
    tmp_path: pathlib.Path,
) -> None:
    """close_store() closes the store but leaves _Dashboard._store set, and open_store()
    returns early when _store is not None: the second lifespan of the same app (a test
    client entered twice, an app started again in process) answers every request with
    "the store ... is not open" (a 409)."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with aflow.Runtime(store=url, workflows=[wf.__name__]) as rt:
        run = await rt.submit(wf.saga, order="o-l")
        await run.wait()
    board = aflow.web.app(url, actions=False)
    for _ in range(2):
        async with over(board) as http:  # type: ignore[arg-type]
            answer = await http.get(f"/api/runs/{run.id}")
            assert answer.status_code == 200, answer.text


# --- bulk cancel -------------------------------------------------------------------------------


async def test_cancel_many_does_not_wait_for_each_runs_reverts_in_turn() -> None:
    """cancel_many awaits feed.cancel() run by run, and Feed.cancel awaits each held run's
    whole unwinding (its reverts): with N sagas whose refunds take a while, the request
    takes N times that, and the later runs go on running (charging) meanwhile. Here the
    first run's refund is held: the second run is not even asked to cancel."""
    gates("ship", "refund")
    app = service()
    async with client(app) as http:
        rt = runtime_of(app)
        a = await rt.submit(wf.saga, order="a")
        b = await rt.submit(wf.saga, order="b")
        with anyio.fail_after(5):
            while wf.CALLS["ship"] < 2:  # noqa: ASYNC110  # both wait in ship, charges done
                await anyio.sleep(0.01)
        async with anyio.create_task_group() as tg:

            async def cancel_many() -> None:
                answer = await http.post(
                    "/ops/aflow/api/runs/cancel", params={"workflow": wf.saga.path}, headers=ACT
                )
                assert answer.status_code == 200, answer.text

            tg.start_soon(cancel_many)
            await wf.GATES["refund-started"].wait()
            await anyio.sleep(0.3)
            try:
                # both runs are told at once; neither keeps running while the other unwinds
                ships = [{s.key: s.state for s in r.report().steps or ()}["ship"] for r in (a, b)]
                assert ships == ["cancelled", "cancelled"], ships
            finally:
                wf.GATES["refund-go"].set()
                wf.GATES["ship-go"].set()


# --- schema 5 ----------------------------------------------------------------------------------


class _SlowShapes(MemoryStore):
    """A store whose first save_shape is slow (a busy database), as after a deploy."""

    def __init__(self) -> None:
        super().__init__()
        self.slow = True

    async def save_shape(self, fingerprint: str, shape: str) -> None:
        if self.slow:
            self.slow = False
            await anyio.sleep(5)
        await super().save_shape(fingerprint, shape)


async def test_a_submit_cancelled_while_the_shape_is_saved_leaves_no_run_nobody_drives() -> None:
    """Durability.submit awaits _keep_shape() between store.create_run() and rt._start():
    a submit cancelled there (a client that disconnects under CancelOnDisconnect, a
    request timeout) leaves a PENDING run with its idempotency key that no process runs.
    The same key submitted again follows that run, which never ends (recover is off by
    default). Before schema 5 there was no await between the two unless reused steps were
    written. Save the shape before create_run (or after _start)."""
    store = _SlowShapes()
    async with aflow.Runtime(store=store, workflows=[wf.__name__]) as rt:
        with anyio.move_on_after(0.2):
            await rt.submit(wf.saga, order="o-k", idempotency_key="order-o-k")
        with anyio.fail_after(3):
            again = await rt.submit(wf.saga, order="o-k", idempotency_key="order-o-k")
            assert await again.result() == "shipped-paid-rsv-o-k"


def _schema_4_store(path: pathlib.Path) -> str:
    async def make() -> str:
        store = open_store(f"sqlite:///{path}")
        await store.open()
        try:
            now = time.time()
            record = RunRecord(uuid.uuid4().hex, "mod:wf", "{}", "fp", "succeeded", None, now, now)
            await store.create_run(record)
            return record.run_id
        finally:
            await store.close()

    run_id = anyio.run(make)
    db = sqlite3.connect(path)
    db.execute("DROP TABLE aflow_shapes")
    db.execute("UPDATE aflow_meta SET value = '4' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    return run_id


@pytest.mark.slow
async def test_aflow_ui_shows_a_schema_4_store_read_only(tmp_path: pathlib.Path) -> None:
    """Schema 5 only adds a table of shapes the dashboard reads when it is there
    (Feed.shape: getattr(store, "load_shape")). Yet `aflow ui` (read-only by default)
    refuses a store at schema 4 ("open it once for writing ... to migrate it"): to look
    at the runs of workers still on the previous aflow, an operator must migrate the
    store (--allow-actions does it silently), after which those workers refuse it on
    their next start ("newer than this aflow's 4"). A read-only open could accept 4 and
    draw the graph from the steps on record."""
    path = tmp_path / "runs.db"
    run_id = await anyio.to_thread.run_sync(_schema_4_store, path)
    process = await anyio.open_process(
        [sys.executable, "-m", "aflow.cli", "--store", f"sqlite:///{path}", "ui", "--port", "0"],
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        line = b""
        with anyio.move_on_after(20):
            async for chunk in process.stdout:
                line += chunk
                if b"\n" in line:
                    break
        assert line.startswith(b"aflow ui: "), line
        base = line.decode().split()[2].rstrip("/")
        async with httpx.AsyncClient() as http:
            assert [r["id"] for r in (await http.get(f"{base}/api/runs")).json()] == [run_id]
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()
        await process.aclose()


# --- aflow ui and the Host header --------------------------------------------------------------


@pytest.mark.slow
async def test_aflow_ui_refuses_a_host_it_does_not_serve(tmp_path: pathlib.Path) -> None:
    """`aflow ui` serves any Host header. A page on evil.example that rebinds its name to
    127.0.0.1 (DNS rebinding) is then same-origin with the dashboard: it reads every run's
    parameters and results and, with --allow-actions, sends X-Aflow-Action itself and
    cancels runs. A local tool's server should only answer its own host names
    (TrustedHostMiddleware with localhost/127.0.0.1/the --host given)."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with aflow.Runtime(store=url) as rt:
        await (await rt.submit(wf.saga, order="o-h")).wait()
    process = await anyio.open_process(
        [sys.executable, "-m", "aflow.cli", "--store", url, "ui", "--port", "0"], cwd=ROOT
    )
    try:
        assert process.stdout is not None
        line = b""
        with anyio.fail_after(30):
            async for chunk in process.stdout:
                line += chunk
                if b"\n" in line:
                    break
        base = line.decode().split()[2].rstrip("/")
        async with httpx.AsyncClient() as http:
            rebound = await http.get(f"{base}/api/runs", headers={"Host": "evil.example:8765"})
        assert rebound.status_code in (400, 403, 421), rebound.text[:200]
    finally:
        process.terminate()
        await process.wait()
        await process.aclose()


# --- big runs ----------------------------------------------------------------------------------


async def test_pages_of_a_run_with_thousands_of_steps_refresh_at_the_slow_pace() -> None:
    """The 2 s refresh (data-big) is chosen by nodes *drawn* (LIVE_BIG = 100), but a page's
    cost is its steps: a 10,000-step fan-out is one grouped node, so its run page is
    refreshed every 300 ms while each render takes ~0.17 s (runtime) to ~0.37 s (store
    alone) of the host's event loop. step.html sets no data-big at all: a step page of the
    same run (~0.5 s a render: the whole report and history are read for one step) is
    refreshed every 300 ms on any event of the run. (aflow.js also starts the next refresh
    300 ms after the previous one *started*: slow renders overlap and may land out of
    order.)"""
    app = service()
    async with client(app) as http:
        rt = runtime_of(app)
        run = await rt.submit(wf.wide, n=1000)
        await run.wait()
        page = (await http.get(f"/ops/aflow/runs/{run.id}")).text
        assert 'data-big="true"' in page
        step = (await http.get(f"/ops/aflow/runs/{run.id}/steps/noop")).text
        assert 'data-big="true"' in step


# --- error pages -------------------------------------------------------------------------------


async def test_an_error_page_carries_the_pages_security_headers() -> None:
    """_http_error renders HTML without _PAGE_HEADERS: a 404 page (which echoes the run id
    the URL gave) has no CSP, no frame-ancestors, no nosniff, unlike every other page."""
    app = service()
    async with client(app) as http:
        answer = await http.get("/ops/aflow/runs/nope")
        assert answer.status_code == 404
        assert "content-security-policy" in answer.headers
        assert answer.headers.get("x-frame-options") == "SAMEORIGIN"


async def test_a_page_error_under_a_mount_path_with_api_in_it_is_a_page() -> None:
    """_http_error picks JSON when "/api/" is anywhere in the full URL path, mount prefix
    included: mounted at /api/ops (a common place for internal tools), a missing run's
    *page* is answered as JSON. Test the route path (get_route_path), not the URL."""
    starlette = Starlette(routes=[Mount("/api/ops", aflow.web.app(aflow.Runtime()))])
    rt_app: Any = starlette
    async with over(rt_app) as http:
        answer = await http.get("/api/ops/runs/nope")
        assert answer.status_code == 404
        assert answer.headers["content-type"].startswith("text/html"), answer.text


async def test_a_mount_prefix_with_a_percent_in_it_still_routes() -> None:
    """_RawSegments rewrites the whole path from the raw one, the mount prefix included:
    mounted under a path parameter (/t/{tenant}/aflow) whose value holds a "%" (raw
    %25), the rewritten path no longer starts with the decoded root_path, so
    get_route_path() gives the full path and every dashboard URL is a 404, a plain run
    id's too. Rewrite only the part after the root_path."""
    rt = aflow.Runtime()
    async with rt:
        run = await rt.submit(wf.saga, order="o-p", run_id="plain")
        await run.wait()
        mounted: Any = Starlette(routes=[Mount("/t/{tenant}/aflow", aflow.web.app(rt))])
        async with over(mounted) as http:
            assert (await http.get("/t/acme/aflow/api/runs/plain")).status_code == 200
            assert (await http.get("/t/50%25/aflow/api/runs/plain")).status_code == 200


# --- aflow.otel --------------------------------------------------------------------------------


@aflow.task
def blocking(x: int) -> int:
    return x + 1


async def test_a_sync_bodys_span_says_where_it_ran() -> None:
    """The issue asks for an executor attribute; _RunObserver._start writes
    aflow.executor="loop" for every node, a sync body run in a worker thread (or the
    Runtime's executor) included: the attribute never says anything."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with aflow.otel.instrument(tracer_provider=provider):
        await aflow.run(blocking.s(1))
    (node,) = [s for s in exporter.get_finished_spans() if s.name == "node blocking"]
    assert node.attributes is not None
    assert node.attributes["aflow.executor"] != "loop"
    provider.shutdown()
