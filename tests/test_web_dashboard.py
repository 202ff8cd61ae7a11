"""aflow.web: the dashboard's JSON API and pages, in process (httpx over ASGI), mounted in
a FastAPI service and alone over a store; tests/test_web_browser.py drives it in Chromium."""

from __future__ import annotations

import datetime
import math
import pathlib
import signal
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.routing import Mount

import aflow
import aflow.fastapi
import aflow.web
from aflow.stores import open_store
from tests import web_workflows as wf
from tests.test_fastapi_router import client, sse

ACT = {"X-Aflow-Action": "1"}
ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _reset() -> None:
    wf.reset()


def gates(*names: str) -> None:
    for name in names:
        wf.GATES[f"{name}-started"] = anyio.Event()
        wf.GATES[f"{name}-go"] = anyio.Event()


def service(store: str | None = None, **options: Any) -> FastAPI:
    """A FastAPI service with aflow's lifespan and the dashboard mounted under /ops/aflow."""
    app = FastAPI(lifespan=aflow.fastapi.lifespan(store=store, workflows=[wf.__name__]))
    app.mount("/ops/aflow", aflow.web.app(**options))
    return app


@asynccontextmanager
async def over(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app with its lifespan run (as a server does)."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            yield http


def runtime_of(app: FastAPI) -> aflow.Runtime:
    found = app.state.aflow_runtime
    assert isinstance(found, aflow.Runtime)
    return found


def svg_of(page: str) -> ET.Element:
    start = page.index('<svg xmlns="http://www.w3.org/2000/svg" class="aflow-graph"')
    end = page.index("</svg>", start) + len("</svg>")
    return ET.fromstring(page[start:end])


def drawn_states(page: str) -> dict[str, str]:
    ns = "{http://www.w3.org/2000/svg}"
    return {
        g.attrib["data-key"]: g.attrib["data-state"]
        for g in svg_of(page).iter(f"{ns}g")
        if "data-key" in g.attrib
    }


# --- mounted in a service ---------------------------------------------------------------------


async def test_a_run_is_listed_drawn_and_followed_live_under_the_mount_prefix() -> None:
    gates("charge")
    app = service()
    async with client(app) as http:
        rt = runtime_of(app)
        run = await rt.submit(wf.saga, order="o-1")
        await wf.GATES["charge-started"].wait()

        listed = (await http.get("/ops/aflow/api/runs")).json()
        assert [(r["id"], r["status"]) for r in listed] == [(run.id, "running")]
        page = (await http.get("/ops/aflow/")).text
        assert f'href="/ops/aflow/runs/{run.id}"' in page  # links keep the mount's prefix

        graph = (await http.get(f"/ops/aflow/api/runs/{run.id}/graph")).json()
        nodes = {n["key"]: (n["state"], n["parents"]) for n in graph["nodes"]}
        assert nodes == {
            "reserve": ("succeeded", []),
            "quote": ("succeeded", []),
            "charge": ("running", ["reserve", "quote"]),  # (the group's join looked through)
            "ship": ("pending", ["charge"]),
        }
        page = (await http.get(f"/ops/aflow/runs/{run.id}")).text
        assert drawn_states(page) == {
            "reserve": "succeeded",
            "quote": "succeeded",
            "charge": "running",
            "ship": "pending",
        }
        assert f'data-events="/ops/aflow/api/runs/{run.id}/events"' in page

        wf.GATES["charge-go"].set()
        stream = await http.get(f"/ops/aflow/api/runs/{run.id}/events")
        names = [name for name, _ in sse(stream.text)]
        assert names[0] == "run_started"
        assert names[-2:] == ["run_succeeded", "end"]
        assert ("task_succeeded", "ship") in [(n, d.get("node")) for n, d in sse(stream.text)]
        page = (await http.get(f"/ops/aflow/runs/{run.id}")).text
        assert set(drawn_states(page).values()) == {"succeeded"}


async def test_a_step_page_shows_its_inputs_attempts_error_and_revert() -> None:
    wf.FAIL.add("ship")
    app = service()
    async with client(app) as http:
        rt = runtime_of(app)
        run = await rt.submit(wf.saga, order="o-2")
        await run.wait()
        detail = (await http.get(f"/ops/aflow/api/runs/{run.id}/steps/ship")).json()
        assert detail["step"]["state"] == "failed"
        assert detail["step"]["error"]["type"] == "RuntimeError"
        assert "ship failed <on purpose>" in detail["step"]["error"]["traceback"]
        assert detail["parents"] == ["charge"]
        assert detail["inputs"] == {"from charge": "paid-rsv-o-2"}
        assert [(a["kind"], a["outcome"]) for a in detail["attempts"]] == [("run", "failed")]
        charge = (await http.get(f"/ops/aflow/api/runs/{run.id}/steps/charge")).json()
        assert charge["step"]["state"] == "reverted"
        assert [(a["kind"], a["outcome"]) for a in charge["attempts"]] == [
            ("run", "succeeded"),
            ("revert", "reverted"),
        ]
        page = (await http.get(f"/ops/aflow/runs/{run.id}/steps/ship")).text
        assert "ship failed &lt;on purpose&gt;" in page  # escaped, with its traceback
        assert 'class="traceback"' in page
        page = (await http.get(f"/ops/aflow/runs/{run.id}/steps/charge")).text
        assert "<h2>Revert</h2>" in page
        missing = await http.get(f"/ops/aflow/api/runs/{run.id}/steps/nope")
        assert missing.status_code == 404
        assert "no step 'nope'" in missing.json()["detail"]


async def test_a_fan_out_is_one_node_with_counts_by_state() -> None:
    wf.GATES["item"] = anyio.Event()  # (present: items 3, 10, 17 fail)
    app = service()
    async with client(app) as http:
        rt = runtime_of(app)
        run = await rt.submit(wf.fan, n=20, on_error="continue")
        await run.wait()
        graph = (await http.get(f"/ops/aflow/api/runs/{run.id}/graph")).json()
        (group,) = [n for n in graph["nodes"] if n["members"]]
        assert len(group["members"]) == 20
        assert group["counts"] == {"succeeded": 17, "failed": 3}
        assert group["state"] == "failed"  # the worst of its members
        total = next(n for n in graph["nodes"] if n["task"] == "total")
        assert total["parents"] == [group["key"]]
        page = (await http.get(f"/ops/aflow/runs/{run.id}")).text
        assert drawn_states(page)[group["key"]] == "failed"


async def test_lists_filter_search_and_page() -> None:
    app = service()
    async with client(app) as http:
        rt = runtime_of(app)
        done = [await rt.submit(wf.saga, order=f"o-{i}") for i in range(5)]
        for run in done:
            await run.wait()
        wf.FAIL.add("quote")
        failed = await rt.submit(wf.saga, order="bad", idempotency_key=None)
        await failed.wait()
        every = (await http.get("/ops/aflow/api/runs")).json()
        assert [r["id"] for r in every] == [failed.id, *reversed([r.id for r in done])]
        reverted = (await http.get("/ops/aflow/api/runs", params={"status": "reverted"})).json()
        assert [r["id"] for r in reverted] == [failed.id]
        found = (await http.get("/ops/aflow/api/runs", params={"q": done[2].id[:10]})).json()
        assert [r["id"] for r in found] == [done[2].id]
        second = (await http.get("/ops/aflow/api/runs", params={"limit": 2, "offset": 2})).json()
        assert [r["id"] for r in second] == [r["id"] for r in every[2:4]]
        page = (await http.get("/ops/aflow/", params={"limit": 2, "page": 2})).text
        assert every[2]["id"] in page
        assert every[1]["id"] not in page
        assert 'rel="next"' in page
        assert 'rel="prev"' in page
        # a date picker's local time, or ISO 8601 with an offset
        # (a microsecond early: x * 1e6 may round up past the run's own time)
        newest = datetime.datetime.fromtimestamp(
            (math.floor(every[0]["created_at"] * 1e6) - 1) / 1e6
        )
        since = (await http.get("/ops/aflow/api/runs", params={"since": newest.isoformat()})).json()
        assert [r["id"] for r in since] == [failed.id]
        # (an ISO time holds microseconds: a millisecond before the oldest run)
        oldest = datetime.datetime.fromtimestamp(every[-1]["created_at"] - 1e-3, datetime.UTC)
        until = (await http.get("/ops/aflow/api/runs", params={"until": oldest.isoformat()})).json()
        assert until == []
        for bad in ({"status": "lost"}, {"since": "yesterday"}, {"limit": "0"}):
            answer = await http.get("/ops/aflow/api/runs", params=bad)
            assert answer.status_code == 422, bad
            assert next(iter(bad)) in answer.text


async def test_a_big_run_pages_its_steps_and_draws_no_graph_past_the_limit() -> None:
    app = service()
    async with client(app) as http:
        rt = runtime_of(app)
        long = await rt.submit(wf.long, n=600)
        await long.wait()
        page = (await http.get(f"/ops/aflow/runs/{long.id}")).text
        assert 'class="aflow-graph"' not in page
        assert "600 nodes: too many to draw" in page
        assert "page 1 of 6" in page
        keys = [s.key for s in long.steps()]
        second = (await http.get(f"/ops/aflow/runs/{long.id}", params={"page": 2})).text
        assert f'data-key="{keys[100]}"' in second
        assert f'data-key="{keys[99]}"' not in second
        # a fan-out of 10,000 is drawn: one node; its steps are paged
        wide = await rt.submit(wf.wide, n=10_000)
        await wide.wait()
        began = time.perf_counter()
        page = (await http.get(f"/ops/aflow/runs/{wide.id}", params={"page": 7})).text
        took = time.perf_counter() - began
        assert 'class="aflow-graph"' in page
        assert "page 7 of 100" in page
        print(f"a 10,000-step run's page 7 rendered in {took * 1000:.0f} ms")
        only = (
            await http.get(
                f"/ops/aflow/runs/{wide.id}", params={"state": "succeeded", "q": "noop#9999"}
            )
        ).text
        assert "1 shown" in only


# --- actions ----------------------------------------------------------------------------------


async def test_cancel_from_the_dashboard_unwinds_the_saga() -> None:
    gates("charge", "refund")
    wf.GATES["refund-go"].set()
    app = service()
    async with client(app) as http:
        rt = runtime_of(app)
        run = await rt.submit(wf.saga, order="o-3")
        await wf.GATES["charge-started"].wait()
        refused = await http.post(f"/ops/aflow/api/runs/{run.id}/cancel")
        assert refused.status_code == 403  # no action header: a form of another site
        assert "x-aflow-action" in refused.text
        assert run.status.value == "running"
        answer = await http.post(f"/ops/aflow/api/runs/{run.id}/cancel", headers=ACT)
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "cancelled"
        # the interrupted step is reverted too (TaskFlow's rule), in reverse order
        assert wf.REVERTED == ["charge", "reserve"]
        assert wf.CALLS["ship"] == 0
        report = (await http.get(f"/ops/aflow/api/runs/{run.id}")).json()
        states = {s["key"]: s["state"] for s in report["steps"]}
        assert states == {
            "reserve": "reverted",
            "quote": "succeeded",
            "charge": "reverted",
            "ship": "pending",
        }


async def test_actions_are_off_or_refused_by_the_hosts_auth() -> None:
    seen: list[tuple[str, str | None]] = []

    async def authorize(request: Any, action: str, run_id: str | None) -> bool:
        seen.append((action, run_id))
        return request.headers.get("authorization") == "Bearer ok"

    app = service(authorize=authorize)
    async with client(app) as http:
        rt = runtime_of(app)
        run = await rt.submit(wf.saga, order="o-4")
        await run.wait()
        answer = await http.post(f"/ops/aflow/api/runs/{run.id}/cancel", headers=ACT)
        assert answer.status_code == 403
        assert seen == [("cancel", run.id)]
        answer = await http.post(
            "/ops/aflow/api/runs/cancel",
            params={"status": "running"},
            headers={**ACT, "authorization": "Bearer ok"},
        )
        assert answer.json() == {"cancelled": [], "failed": {}}
        assert seen[-1] == ("cancel_many", None)
        page = (await http.get(f"/ops/aflow/runs/{run.id}")).text
        assert 'data-action="retry"' not in page  # (no store: retry needs one)
    off = service(actions=False)
    async with client(off) as http:
        run = await runtime_of(off).submit(wf.saga, order="o-5")
        await run.wait()
        answer = await http.post(f"/ops/aflow/api/runs/{run.id}/cancel", headers=ACT)
        assert answer.status_code == 403
        assert "actions are off" in answer.text
        assert "data-action" not in (await http.get(f"/ops/aflow/runs/{run.id}")).text


async def test_cancel_many_by_filter(tmp_path: pathlib.Path) -> None:
    gates("charge")
    app = service()
    async with client(app) as http:
        rt = runtime_of(app)
        a = await rt.submit(wf.saga, order="a")
        b = await rt.submit(wf.saga, order="b")
        await wf.GATES["charge-started"].wait()
        ended = await rt.submit(wf.long, n=2)
        await ended.wait()
        everything = await http.post("/ops/aflow/api/runs/cancel", headers=ACT)
        assert everything.status_code == 422  # no filter: say all=true
        answer = await http.post(
            "/ops/aflow/api/runs/cancel", params={"workflow": wf.saga.path}, headers=ACT
        )
        assert sorted(answer.json()["cancelled"]) == sorted([a.id, b.id])
        await a.wait()  # (asked, all at once: each unwinds on its own)
        await b.wait()
        assert a.status.value == "cancelled"
        assert b.status.value == "cancelled"
        assert ended.status.value == "succeeded"


async def test_retry_and_fork_of_a_durable_run(tmp_path: pathlib.Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    app = service(url)
    async with client(app) as http:
        rt = runtime_of(app)
        wf.FAIL.add("ship")
        failed = await rt.submit(wf.saga, order="o-6", on_error="continue")
        await failed.wait()
        assert failed.status.value == "failed"
        wf.FAIL.clear()
        answer = await http.post(f"/ops/aflow/api/runs/{failed.id}/retry", headers=ACT)
        assert answer.status_code == 200, answer.text
        retried = rt.get(answer.json()["id"])
        await retried.wait()
        assert retried.status.value == "succeeded"
        # what succeeded and was not undone is reused: only ship runs again
        assert dict(wf.CALLS) == {"reserve": 1, "quote": 1, "charge": 1, "ship": 2}
        # a second click (another tab, another operator) gets the same retry, not another
        twice = await http.post(f"/ops/aflow/api/runs/{failed.id}/retry", headers=ACT)
        assert twice.status_code == 200
        assert twice.json()["id"] == retried.id
        assert wf.CALLS["ship"] == 2
        again = await http.post(f"/ops/aflow/api/runs/{retried.id}/retry", headers=ACT)
        assert again.status_code == 409  # it succeeded
        forked_answer = await http.post(
            f"/ops/aflow/api/runs/{retried.id}/fork", json={"step": "charge"}, headers=ACT
        )
        assert forked_answer.status_code == 200, forked_answer.text
        forked = rt.get(forked_answer.json()["id"])
        await forked.wait()
        # charge and what follows it run again; reserve and quote are reused
        assert dict(wf.CALLS) == {"reserve": 1, "quote": 1, "charge": 2, "ship": 3}
        store = rt.store
        assert store is not None
        alone = aflow.web.app(store, actions=False)  # (a live report does not flag reuse)
        async with over(alone) as stored:
            report = (await stored.get(f"/api/runs/{forked.id}")).json()
        reused = {s["key"]: s["reused"] for s in report["steps"]}
        assert reused == {"reserve": True, "quote": True, "charge": False, "ship": False}
        bad = await http.post(
            f"/ops/aflow/api/runs/{retried.id}/fork", json={"step": "nope"}, headers=ACT
        )
        assert bad.status_code == 404
        bad = await http.post(f"/ops/aflow/api/runs/{retried.id}/fork", json=[1], headers=ACT)
        assert bad.status_code == 422


# --- alone over a store -------------------------------------------------------------------


async def test_alone_over_a_store_it_draws_another_processs_run_with_its_pending_steps(
    store_url: str,
) -> None:
    gates("charge")
    async with aflow.Runtime(store=store_url) as driver:
        run = await driver.submit(wf.saga, order="o-7")
        await wf.GATES["charge-started"].wait()
        store = open_store(store_url, read_only=True, create=False)
        await store.open()
        try:
            board = Starlette(routes=[Mount("/", aflow.web.app(store, actions=False))])
            async with over(board) as http:
                graph = (await http.get(f"/api/runs/{run.id}/graph")).json()
                assert graph["edges"] is True  # from the shape the store keeps
                assert {n["key"]: n["state"] for n in graph["nodes"]} == {
                    "reserve": "succeeded",
                    "quote": "succeeded",
                    "charge": "running",
                    "ship": "pending",
                }
                listed = (await http.get("/api/runs")).json()
                assert [(r["id"], r["source"]) for r in listed] == [(run.id, "store")]
                answer = await http.post(f"/api/runs/{run.id}/cancel", headers=ACT)
                assert answer.status_code == 403
                wf.GATES["charge-go"].set()
                await run.wait()
                stream = await http.get(f"/api/runs/{run.id}/events")
                assert [n for n, _ in sse(stream.text)][-2:] == ["run_succeeded", "end"]
                page = (await http.get(f"/runs/{run.id}")).text
                assert set(drawn_states(page).values()) == {"succeeded"}
                steps = (await http.get(f"/api/runs/{run.id}/steps/charge")).json()
                assert steps["step"]["result"] == "paid-rsv-o-7"
                assert [a["outcome"] for a in steps["attempts"]] == ["succeeded"]
        finally:
            await store.close()


async def test_alone_over_a_store_cancel_goes_through_the_store(tmp_path: pathlib.Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    gates("charge")
    async with aflow.Runtime(store=url, lease=0.3) as driver:  # (renewed every 0.1 s)
        run = await driver.submit(wf.saga, order="o-8")
        await wf.GATES["charge-started"].wait()
        board = aflow.web.app(url)  # a URL: the app opens and closes the store itself
        async with over(board) as http:
            answer = await http.post(f"/api/runs/{run.id}/cancel", headers=ACT)
            assert answer.status_code == 200, answer.text
            assert answer.json()["status"] == "cancelling"
            # (resume, retry, fork run the workflow: not over a store alone)
            refused = await http.post(f"/api/runs/{run.id}/retry", headers=ACT)
            assert refused.status_code == 409
        await run.wait()  # its process sees the request as it renews its lease, and unwinds
        assert run.status.value == "cancelled"
        assert wf.REVERTED == ["charge", "reserve"]


# --- hostile input ----------------------------------------------------------------------------


@aflow.task
async def odd(x: int) -> int:
    raise ValueError("<script>alert('step')</script>")


async def test_hostile_ids_keys_and_errors_are_inert(tmp_path: pathlib.Path) -> None:
    key = "</svg><script>alert(1)</script>/\x1b[31mkey"
    app = service()
    async with client(app) as http:
        rt = runtime_of(app)
        evil = "<img src=x onerror=alert(1)>"
        run = await rt.submit(odd.s(1).set(name=key), run_id=evil)
        await run.wait()
        page = (await http.get(f"/ops/aflow/runs/{quote(evil, safe='')}")).text
        assert "<img src=x" not in page
        assert "<script>alert" not in page
        svg_of(page)  # well-formed
        assert "&lt;script&gt;alert(&#x27;step&#x27;)" in page or "&lt;script&gt;" in page
        detail = await http.get(
            f"/ops/aflow/api/runs/{quote(evil, safe='')}/steps/{quote(key, safe='')}"
        )
        assert detail.status_code == 200, detail.text
        assert detail.json()["step"]["key"] == key
        for path in (
            "/ops/aflow/runs/nope",
            "/ops/aflow/api/runs/nope",
            "/ops/aflow/api/runs/nope/graph",
            "/ops/aflow/api/runs/%00/events",
        ):
            assert (await http.get(path)).status_code == 404, path
        for sha in ("../../etc/passwd", "a" * 64, "x"):
            answer = await http.get(f"/ops/aflow/api/runs/{run.id}/artifacts/{quote(sha, safe='')}")
            assert answer.status_code == 404, sha
        raw = await http.get(f"/ops/aflow/api/runs/{run.id}/artifacts/../../../../etc/passwd")
        assert raw.status_code in (404, 405)
        assert "root:" not in raw.text
        answer = await http.post(f"/ops/aflow/api/runs/{run.id}/explode", headers=ACT)
        assert answer.status_code == 404


async def test_a_steps_files_are_listed_and_downloaded(tmp_path: pathlib.Path) -> None:
    from aflow.ops import Step, Workflow
    from tests.ops_helpers import read, write

    for root in (None, tmp_path / "files"):  # ops's own folder, and one a workflow names
        flow = Workflow("notes", artifacts=root)
        made = Step("w", write, parameters={"text": "hello <files>"})
        flow.add(made).add(Step("r", read, artifacts={"file": made.outputs.artifacts["file"]}))
        async with aflow.Runtime() as rt:
            await flow.submit(runtime=rt)
            assert await flow.wait() == "Succeeded"
            run_id = flow.run.id
            board = Starlette(routes=[Mount("/", aflow.web.app(rt, artifacts=root))])
            async with over(board) as http:
                detail = (await http.get(f"/api/runs/{run_id}/steps/w")).json()
                (file,) = detail["artifacts"]
                assert file["name"] == "note.txt"
                assert file["size"] == len("hello <files>")
                page = (await http.get(f"/runs/{run_id}/steps/w")).text
                assert f"/api/runs/{run_id}/artifacts/{file['sha']}?name=note.txt" in page
                got = await http.get(
                    f"/api/runs/{run_id}/artifacts/{file['sha']}", params={"name": "note.txt"}
                )
                assert got.status_code == 200
                assert got.text == "hello <files>"
                assert 'filename="note.txt"' in got.headers["content-disposition"]
                # a file of another run, or none, is not served by this run's page
                other = "0" * 64
                assert (await http.get(f"/api/runs/{run_id}/artifacts/{other}")).status_code == 404


async def test_a_mounted_dashboard_without_a_runtime_says_what_is_missing() -> None:
    app = FastAPI()
    app.mount("/aflow", aflow.web.app())
    async with over(app) as http:
        answer = await http.get("/aflow/api/runs")
        assert answer.status_code == 500
        assert "lifespan=aflow.fastapi.lifespan" in answer.text


async def test_pages_say_what_may_frame_them_and_run_in_them() -> None:
    app = service()
    async with client(app) as http:
        page = await http.get("/ops/aflow/")
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy
        assert "frame-ancestors 'self'" in policy
        assert page.headers["x-frame-options"] == "SAMEORIGIN"
        assert page.headers["x-content-type-options"] == "nosniff"


def test_the_script_and_templates_live_in_the_package_folder() -> None:
    """(hatch puts the package folder in the wheel whole, data files too)"""
    here = pathlib.Path(aflow.web.__file__).parent
    for name in ("static/aflow.js", "static/aflow.css", "templates/run.html"):
        assert (here / name).is_file(), name
    assert "X-Aflow-Action" in (here / "static/aflow.js").read_text()


# --- aflow ui ---------------------------------------------------------------------------------


@pytest.mark.slow
async def test_aflow_ui_serves_a_store_read_only_and_stops_on_sigint(
    tmp_path: pathlib.Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with aflow.Runtime(store=url) as rt:
        run = await rt.submit(wf.saga, order="o-ui")
        await run.wait()
    process = await anyio.open_process(
        [sys.executable, "-m", "aflow.cli", "--store", url, "ui", "--port", "0"],
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        with anyio.fail_after(30):
            line = b""
            async for chunk in process.stdout:
                line += chunk
                if b"\n" in line:
                    break
        text = line.decode()
        assert "(read-only," in text
        base = text.split()[2].rstrip("/")
        async with httpx.AsyncClient() as http:
            listed = (await http.get(f"{base}/api/runs")).json()
            assert [r["id"] for r in listed] == [run.id]
            graph = (await http.get(f"{base}/api/runs/{run.id}/graph")).json()
            assert [n["key"] for n in graph["nodes"]] == ["reserve", "quote", "charge", "ship"]
            page = await http.get(f"{base}/runs/{run.id}")
            assert page.status_code == 200
            assert 'data-action="cancel"' not in page.text
            refused = await http.post(f"{base}/api/runs/{run.id}/cancel", headers=ACT)
            assert refused.status_code == 403
    finally:
        process.send_signal(signal.SIGINT)
        with anyio.fail_after(15):
            code = await process.wait()
        await process.aclose()
    assert code in (0, 3)  # (3: interrupted, as the other commands say it)


async def test_aflow_ui_refuses_a_store_that_is_not_there(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "none.db"
    done = await anyio.run_process(
        [sys.executable, "-m", "aflow.cli", "--store", f"sqlite:///{missing}", "ui"],
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert b"aflow: " in done.stderr
    assert not (tmp_path / "none.db").is_file()
