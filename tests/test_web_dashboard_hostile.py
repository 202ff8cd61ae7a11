"""aflow.web attacked: a hostile user (text that tries to run script, requests that try to
act without the page, odd queries) and a demanding operator (runs that vanish, clients
that leave, big runs, stores other processes write, ``aflow ui`` as a process, what cancel,
retry and fork mean).

In process over httpx (ASGI), in a real uvicorn where a socket matters, in Chromium
(tests/test_web_browser.py's helpers) for the scariest text, and ``aflow ui`` as a
subprocess. Tests marked xfail(strict) name a bug found here.
"""

from __future__ import annotations

import asyncio
import html
import html.parser
import json
import os
import pathlib
import re
import reprlib
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.responses import RedirectResponse

import aflow
import aflow.fastapi
import aflow.web
from aflow.stores import NodeRecord, RunRecord, open_store
from aflow.stores._base import RecordState, StoredRunStatus
from tests import web_hostile_workflows as hw
from tests.test_fastapi_router import client, sse
from tests.test_web_dashboard import runtime_of
from tests.test_web_hostile import Request

ACT = {"X-Aflow-Action": "1"}
ROOT = pathlib.Path(__file__).resolve().parent.parent
WORKFLOWS = hw.__name__


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    hw.reset()
    yield
    hw.reset()


def service(
    store: str | None = None, runtime: dict[str, Any] | None = None, **options: Any
) -> FastAPI:
    """A FastAPI service with aflow's lifespan and the dashboard under /ops."""
    app = FastAPI(
        lifespan=aflow.fastapi.lifespan(store=store, workflows=[WORKFLOWS], **(runtime or {}))
    )
    app.mount("/ops", aflow.web.app(**options))
    return app


@asynccontextmanager
async def over(app: Starlette, *, raise_errors: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app with its lifespan run (as a server does)."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_errors)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            yield http


def sqlite_url(tmp_path: pathlib.Path) -> str:
    return f"sqlite:///{tmp_path / 'runs.db'}"


async def until(predicate: Any, timeout: float = 10.0) -> None:
    """Poll ``predicate`` (sync or async) until true, at most ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        while True:
            found = predicate()
            if hasattr(found, "__await__"):
                found = await found
            if found:
                return
            await anyio.sleep(0.02)


# --- what a page may hold -------------------------------------------------------------------

#: Every element the pages draw (HTML and the inline SVGs); anything else came from data.
TAGS = frozenset(
    [
        "html",
        "head",
        "meta",
        "title",
        "link",
        "script",
        "body",
        "header",
        "nav",
        "span",
        "main",
        "h1",
        "h2",
        "h3",
        "p",
        "form",
        "label",
        "select",
        "option",
        "input",
        "button",
        "div",
        "table",
        "thead",
        "tbody",
        "tr",
        "th",
        "td",
        "small",
        "code",
        "dl",
        "dt",
        "dd",
        "section",
        "details",
        "summary",
        "pre",
        "strong",
        "ul",
        "li",
        "a",
        "br",
        "svg",
        "style",
        "defs",
        "marker",
        "path",
        "g",
        "rect",
        "text",
    ]
)
#: Attributes whose value is a URL the page or its script follows.
URLS = {"href", "src", "action", "data-url", "data-events", "data-refresh", "data-live-list"}


class _Elements(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))
        self._in_script = tag == "script"

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.scripts.append(data)


def inert(page: str, base: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """Check that ``page`` holds only the elements the templates draw: no script but the
    dashboard's own file, no event handler attribute, no link out of the dashboard.
    Returns the elements (tag, attributes)."""
    parser = _Elements()
    parser.feed(page)
    parser.close()
    assert not parser.scripts, parser.scripts
    for tag, attrs in parser.tags:
        assert tag in TAGS, (tag, attrs)
        for name, value in attrs:
            assert not name.startswith("on"), (tag, name, value)
            assert name.replace("-", "").replace("_", "").isalnum(), (tag, name)
            if name in URLS and value is not None:
                assert value.startswith((base + "/", "?", "data:,")), (tag, name, value)
                assert "javascript:" not in value.lower(), (tag, name, value)
        if tag == "script":
            assert dict(attrs).get("src") == f"{base}/static/aflow.js", attrs
    return parser.tags


def text_of(page: str) -> str:
    """The page's text as a person reads it (entities decoded)."""
    return html.unescape(re.sub(r"<[^>]*>", " ", page))


HOSTILE = {
    "script": hw.SCRIPT,
    "attribute": hw.ATTR,
    "jinja": hw.JINJA,
    "bidi": hw.BIDI,
    "url": "javascript:alert(1)//",
    "entity": "&lt;script&gt;&#60;img src=x onerror=alert(1)&#62;",
}


# --- XSS: what runs write ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(HOSTILE))
async def test_hostile_text_in_a_runs_id_key_steps_error_and_result_is_shown_inert(
    kind: str,
) -> None:
    text = HOSTILE[kind]
    run_id = text.replace("/", "|")  # (a run id with a slash is not reachable: see below)
    app = service()
    async with client(app) as http:
        rt = runtime_of(app)
        failed = await rt.submit(hw.hostile, text=text, run_id=run_id, idempotency_key=text)
        await failed.wait()
        assert failed.status.value == "failed"
        ok = await rt.submit(hw.echoed, text=text, idempotency_key=text + "!")
        await ok.wait()
        quoted = quote(run_id, safe="")
        pages = {
            "list": await http.get("/ops/"),
            "search": await http.get("/ops/", params={"q": text}),
            "run": await http.get(f"/ops/runs/{quoted}"),
            "fragment": await http.get(f"/ops/runs/{quoted}", params={"fragment": "1"}),
            "filtered": await http.get(f"/ops/runs/{quoted}", params={"q": text, "state": text}),
            "echo": await http.get(f"/ops/runs/{quoted}/steps/echo"),
            "failed step": await http.get(f"/ops/runs/{quoted}/steps/{quote(text, safe='')}"),
            "result": await http.get(f"/ops/runs/{ok.id}"),
            "result step": await http.get(f"/ops/runs/{ok.id}/steps/echo"),
        }
        for name, answer in pages.items():
            assert answer.status_code == 200, (name, answer.text[:300])
            inert(answer.text, "/ops")
        # a person reads the text as it is (escaped, not dropped or run)
        assert text in text_of(pages["run"].text)  # the id, the error, the key
        assert text in text_of(pages["failed step"].text)
        assert text in text_of(pages["result step"].text)
        assert text in text_of(pages["search"].text)  # (the search box keeps it)
        assert json.dumps(text, ensure_ascii=False)[1:-1] in text_of(pages["result"].text)
        # the JSON API gives the text back byte for byte
        detail = (await http.get(f"/ops/api/runs/{quoted}/steps/{quote(text, safe='')}")).json()
        assert detail["step"]["key"] == text
        assert detail["step"]["error"]["message"] == text
        assert detail["inputs"] == {"from echo": text}
        report = (await http.get(f"/ops/api/runs/{ok.id}")).json()
        assert report["result"] == text
        assert report["idempotency_key"] == text + "!"


async def test_control_characters_nul_and_a_megabyte_are_shown_inert() -> None:
    huge = hw.SCRIPT * (1_000_000 // len(hw.SCRIPT))
    app = service()
    async with client(app) as http:
        rt = runtime_of(app)
        run = await rt.submit(hw.hostile, text=hw.CONTROL + huge)
        await run.wait()
        began = time.perf_counter()
        for path in (f"/ops/runs/{run.id}", f"/ops/runs/{run.id}/steps/echo", "/ops/"):
            answer = await http.get(path)
            assert answer.status_code == 200, path
            inert(answer.text, "/ops")
        assert time.perf_counter() - began < 10
        page = (await http.get(f"/ops/runs/{run.id}")).text
        assert len(page) > 1_000_000  # (the error is shown whole on the run's page)
        # the graph is XML: what XML cannot hold is replaced, not passed on
        start = page.index('<svg xmlns="http://www.w3.org/2000/svg" class="aflow-graph"')
        svg = page[start : page.index("</svg>", start) + 6]
        assert "\x00" not in svg
        assert "\x07" not in svg
        import xml.etree.ElementTree as ET

        ET.fromstring(svg)  # well-formed


async def test_hostile_text_a_store_holds_is_shown_inert(tmp_path: pathlib.Path) -> None:
    """What another process (or a person with the database) wrote: a hostile workflow
    name, parameters, error, step keys, results and a graph shape with a cycle and
    parents that are not there. The dashboard over the store alone shows it inert."""
    url = sqlite_url(tmp_path)
    async with aflow.Runtime(store=url) as rt:  # (creates the store)
        done = await rt.submit(hw.echoed, text="ok")
        await done.wait()
    store = open_store(url)
    await store.open()
    try:
        now = time.time()
        keys = [hw.SCRIPT, hw.ATTR, "javascript:alert(1)", hw.CONTROL.replace("\x00", "")]
        await store.create_run(
            RunRecord(
                run_id="evil-1",
                workflow=hw.SCRIPT,
                params=json.dumps({"x": hw.ATTR}),
                fingerprint="f" * 16,
                status=StoredRunStatus.FAILED,
                idempotency_key=hw.ATTR,
                created_at=now,
                updated_at=now,
                ended_at=now,
                error=f"ValueError: {hw.SCRIPT}",
            )
        )
        await store.write_nodes(
            "evil-1",
            [
                NodeRecord(
                    keys[0], RecordState.SUCCEEDED, 1, json.dumps(hw.SCRIPT), None, now, now
                ),
                NodeRecord(keys[1], RecordState.FAILED, 1, None, f"X: {hw.ATTR}", now, now),
                NodeRecord(keys[2], RecordState.SUCCEEDED, 1, "not json <b>", None, now, now),
            ],
        )
        shape = [
            [k, hw.JINJA, "task", [keys[(i + 1) % len(keys)], "ghost"]] for i, k in enumerate(keys)
        ]
        await store.save_shape("f" * 16, json.dumps(shape))
    finally:
        await store.close()
    board = aflow.web.app(url, actions=False)
    async with over(board) as http:
        for path in (
            "/",
            "/runs/evil-1",
            f"/runs/evil-1/steps/{quote(keys[0], safe='')}",
            f"/runs/evil-1/steps/{quote(keys[1], safe='')}",
            f"/runs/evil-1/steps/{quote(keys[2], safe='')}",
            f"/runs/evil-1/steps/{quote(keys[3], safe='')}",
        ):
            answer = await http.get(path)
            assert answer.status_code == 200, (path, answer.text[:300])
            inert(answer.text, "")
        page = (await http.get("/runs/evil-1")).text
        assert hw.SCRIPT in text_of(page)
        graph = (await http.get("/api/runs/evil-1/graph")).json()
        assert {n["key"] for n in graph["nodes"]} == set(keys)
        tasks = {n["key"]: n["task"] for n in graph["nodes"]}
        assert tasks[keys[3]] == hw.JINJA  # (a step not on record: named by the shape)


QUERIES = [
    {"q": hw.SCRIPT},
    {"workflow": hw.ATTR},
    {"idempotency_key": hw.SCRIPT},
    {"status": hw.ATTR},
    {"since": hw.SCRIPT},
    {"until": hw.ATTR},
    {"page": hw.SCRIPT},
    {"limit": hw.ATTR},
    {"fragment": hw.ATTR},
    {hw.ATTR: hw.SCRIPT},
    {"q": hw.JINJA, "since": "2026-01-01T00:00", "until": "2026-01-02T00:00+05:00"},
]


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: "+".join(q)[:20])
async def test_query_parameters_are_reflected_inert(query: dict[str, str]) -> None:
    app = service()
    async with client(app) as http:
        run = await runtime_of(app).submit(hw.echoed, text="x")
        await run.wait()
        for path in ("/ops/", f"/ops/runs/{run.id}", f"/ops/runs/{run.id}/steps/echo"):
            answer = await http.get(path, params=query)
            assert answer.status_code in (200, 422), (path, answer.status_code)
            inert(answer.text, "/ops")
            if answer.status_code == 422:
                assert answer.headers["content-type"].startswith("text/html")
        api = await http.get("/ops/api/runs", params=query)
        assert api.status_code in (200, 422)
        assert api.headers["content-type"] == "application/json"


@pytest.mark.slow
async def test_in_chromium_no_hostile_text_runs_script() -> None:
    from tests.test_web_browser import chromium, new_page, serving

    payload = (
        '<img src=x onerror="window.__xss=1;alert(1)">'
        '"><svg onload="window.__xss=2;alert(2)">'
        "</script><script>window.__xss=3;alert(3)</script>"
        "{{ 7*7 }}"
    )
    run_id = payload.replace("/", "|")
    hw.gates("hold")
    async with serving() as (url, rt), chromium() as browser:
        page = await new_page(browser)
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: dialogs.append(dialog.message))
        canvas = hw.echo.s(payload) | hw.hold.s().set(name=payload) | hw.explode.s()
        run = await rt.submit(canvas, run_id=run_id, idempotency_key=payload)
        await hw.GATES["hold-started"].wait()
        await page.goto(f"{url}/?q={quote(payload, safe='')}")
        await page.wait_for_selector("table.runs tr.run")
        assert await page.get_attribute("table.runs tr.run", "data-run-id") == run.id
        assert await page.input_value("input[name=q]") == payload
        await page.click("table.runs a")
        await page.wait_for_selector("#run-status:text('running')")
        hw.GATES["hold-go"].set()  # the page follows the run: its live part is replaced
        await page.wait_for_selector("#run-status:text('failed')")
        main = await page.inner_text("main")
        assert payload in main  # shown as text
        await page.click("svg.aflow-graph g.node[data-state=failed] a")
        await page.wait_for_selector("#step-state:text('failed')")
        assert payload in await page.inner_text(".error-box")
        assert await page.evaluate("() => window.__xss") is None
        assert dialogs == []
        assert page.errors == []  # type: ignore[attr-defined]


# --- CSRF and auth --------------------------------------------------------------------------


async def test_actions_without_the_pages_header_are_refused_whatever_the_request(
    tmp_path: pathlib.Path,
) -> None:
    """A form on another site (form-encoded, no custom header), a link (GET), a text/plain
    fetch: none acts. With the header, a form-encoded fork body is still refused."""
    hw.gates("second")
    app = service(sqlite_url(tmp_path))
    async with client(app) as http:
        rt = runtime_of(app)
        run = await rt.submit(hw.chain3, x=1)
        await hw.GATES["second-started"].wait()
        base = f"/ops/api/runs/{run.id}"
        cross_site = {"origin": "https://evil.example", "referer": "https://evil.example/"}
        for action in ("cancel", "resume", "retry", "fork"):
            url = f"{base}/{action}"
            plain = {**cross_site, "content-type": "text/plain"}
            for attempt in (
                {"data": {"step": "first"}, "headers": cross_site},  # a form
                {"content": b'{"step": "first"}', "headers": plain},  # a no-cors fetch
                {"json": {"step": "first"}, "headers": cross_site},
            ):
                answer = await http.post(url, **attempt)  # type: ignore[arg-type]
                assert answer.status_code == 403, (action, answer.text)
                assert "x-aflow-action" in answer.json()["detail"]
            assert (await http.get(f"{base}/{action}")).status_code == 405  # a link
        everything = await http.post(
            "/ops/api/runs/cancel", params={"all": "true"}, data={"all": "true"}, headers=cross_site
        )
        assert everything.status_code == 403
        # a fetch from another site that sends the header is preflighted: not let through
        preflight = await http.options(
            f"{base}/cancel",
            headers={
                **cross_site,
                "access-control-request-method": "POST",
                "access-control-request-headers": "x-aflow-action",
            },
        )
        assert "access-control-allow-origin" not in preflight.headers
        assert "access-control-allow-headers" not in preflight.headers
        assert run.status.value == "running"
        assert hw.CALLS == {"first": 1, "second": 1}  # nothing forked, retried or resumed
        form = await http.post(f"{base}/fork", data={"step": "first"}, headers=ACT)
        assert form.status_code == 422  # (the page's script sends JSON)
        hw.GATES["second-go"].set()
        await run.wait()
        assert run.status.value == "succeeded"
        assert hw.REVERTED == []


async def test_actions_off_refuses_every_crafted_action(tmp_path: pathlib.Path) -> None:
    hw.gates("second")
    app = service(sqlite_url(tmp_path), actions=False)
    async with client(app) as http:
        rt = runtime_of(app)
        run = await rt.submit(hw.chain3, x=1)
        await hw.GATES["second-started"].wait()
        for path, body in (
            (f"/ops/api/runs/{run.id}/cancel", None),
            (f"/ops/api/runs/{run.id}/resume", None),
            (f"/ops/api/runs/{run.id}/retry", None),
            (f"/ops/api/runs/{run.id}/fork", {"step": "first"}),
            ("/ops/api/runs/cancel?all=true", None),
            ("/ops/api/runs/nope/cancel", None),  # (no run: refused before it is looked up)
        ):
            answer = await http.post(path, json=body, headers={**ACT, "authorization": "x"})
            assert answer.status_code == 403, path
            assert "actions are off" in answer.json()["detail"]
        for path in ("/ops/", f"/ops/runs/{run.id}", f"/ops/runs/{run.id}/steps/first"):
            assert "data-action" not in (await http.get(path)).text, path
        hw.GATES["second-go"].set()
        await run.wait()
        assert run.status.value == "succeeded"


async def test_an_authorize_that_raises_lets_nothing_through() -> None:
    def authorize(request: Any, action: str, run_id: str | None) -> bool:
        raise RuntimeError("the auth service is down")

    hw.gates("second")
    app = service(authorize=authorize)
    async with app.router.lifespan_context(app) as state:
        from tests.test_fastapi_router import _with_state

        transport = httpx.ASGITransport(app=_with_state(app, state), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            run = await runtime_of(app).submit(hw.chain3, x=1)
            await hw.GATES["second-started"].wait()
            answer = await http.post(f"/ops/api/runs/{run.id}/cancel", headers=ACT)
            assert answer.status_code == 500
            many = await http.post("/ops/api/runs/cancel?all=true", headers=ACT)
            assert many.status_code == 500
            assert run.status.value == "running"
            hw.GATES["second-go"].set()
            await run.wait()
            assert run.status.value == "succeeded"


async def test_authorize_is_asked_for_every_action_with_its_run(tmp_path: pathlib.Path) -> None:
    seen: list[tuple[str, str | None]] = []

    def authorize(request: Any, action: str, run_id: str | None) -> bool:
        seen.append((action, run_id))
        return False

    app = service(sqlite_url(tmp_path), authorize=authorize)
    async with client(app) as http:
        hw.GATES["third-fails"] = anyio.Event()
        run = await runtime_of(app).submit(hw.chain3, x=1)
        await run.wait()
        for action, body in (
            ("cancel", None),
            ("resume", None),
            ("retry", None),
            ("fork", {"step": "second"}),
        ):
            answer = await http.post(f"/ops/api/runs/{run.id}/{action}", json=body, headers=ACT)
            assert answer.status_code == 403, action
        answer = await http.post("/ops/api/runs/cancel?status=running", headers=ACT)
        assert answer.status_code == 403
        odd = await http.post(f"/ops/api/runs/{quote(hw.ATTR, safe='')}/cancel", headers=ACT)
        assert odd.status_code == 403
        assert seen == [
            ("cancel", run.id),
            ("resume", run.id),
            ("retry", run.id),
            ("fork", run.id),
            ("cancel_many", None),
            ("cancel", hw.ATTR),
        ]
        assert dict(hw.CALLS) == {"first": 1, "second": 1, "third": 1}


@pytest.mark.parametrize("answer", [None, False, 0, ""], ids=repr)
async def test_an_authorize_saying_no_in_any_falsy_way_refuses(answer: Any) -> None:
    async def authorize(request: Any, action: str, run_id: str | None) -> Any:
        return answer

    hw.gates("second")
    app = service(authorize=authorize)
    async with client(app) as http:
        run = await runtime_of(app).submit(hw.chain3, x=1)
        await hw.GATES["second-started"].wait()
        refused = await http.post(f"/ops/api/runs/{run.id}/cancel", headers=ACT)
        assert refused.status_code == 403
        assert "not allowed to cancel" in refused.json()["detail"]
        hw.GATES["second-go"].set()
        await run.wait()
        assert run.status.value == "succeeded"


async def test_an_authorize_answering_anything_but_true_refuses() -> None:
    async def authorize(request: Any, action: str, run_id: str | None) -> Any:
        return RedirectResponse("/login")  # (what an auth layer says to someone logged out)

    hw.gates("second")
    app = service(authorize=authorize)
    async with client(app) as http:
        run = await runtime_of(app).submit(hw.chain3, x=1)
        await hw.GATES["second-started"].wait()
        try:
            answer = await http.post(f"/ops/api/runs/{run.id}/cancel", headers=ACT)
            assert answer.status_code == 403
            assert run.status.value == "running"
        finally:
            hw.GATES["second-go"].set()
            await run.wait()


async def test_cancel_many_cancels_only_unfinished_runs_the_filter_matches() -> None:
    hw.gates("second")
    app = service()
    async with client(app) as http:
        rt = runtime_of(app)
        done = await rt.submit(hw.echoed, text="done")
        await done.wait()
        a = await rt.submit(hw.chain3, x=1, idempotency_key="alpha")
        b = await rt.submit(hw.chain3, x=2, idempotency_key="beta")
        await until(lambda: hw.CALLS["second"] == 2)
        many = "/ops/api/runs/cancel"
        # the list's "Cancel matching" button, on a list no filter narrows, cancels nothing
        listed = (await http.get("/ops/", params={"status": "", "q": ""})).text
        (button,) = re.findall(r'data-action="cancel-many" data-url="([^"]*)"', listed)
        assert 'data-confirm="' in listed.split('data-action="cancel-many"')[1].split(">")[0]
        answer = await http.post(html.unescape(button), headers=ACT)
        assert answer.status_code == 422
        for params in ({}, {"all": "false"}, {"all": "1"}, {"status": ""}, {"q": ""}):
            answer = await http.post(many, params=params, headers=ACT)
            assert answer.status_code == 422, params
        for params in ({"status": "lost"}, {"since": "tomorrow"}):
            answer = await http.post(many, params=params, headers=ACT)
            assert answer.status_code == 422, params
        answer = await http.post(many, params={"status": "succeeded"}, headers=ACT)
        assert answer.json() == {"cancelled": [], "failed": {}}
        answer = await http.post(many, params={"q": "alpha"}, headers=ACT)  # (the key)
        assert answer.json() == {"cancelled": [a.id], "failed": {}}
        await a.wait()  # (asked to cancel: it unwinds on its own)
        assert (a.status.value, b.status.value) == ("cancelled", "running")
        answer = await http.post(many, params={"all": "true"}, headers=ACT)
        assert answer.json() == {"cancelled": [b.id], "failed": {}}
        again = await http.post(many, params={"all": "true"}, headers=ACT)
        assert again.json() == {"cancelled": [], "failed": {}}
        await b.wait()
        assert done.status.value == "succeeded"
        assert b.status.value == "cancelled"
        assert hw.CALLS["third"] == 0
        assert sorted(hw.REVERTED) == ["first", "first", "second", "second"]


async def test_actions_on_runs_that_cannot_take_them(tmp_path: pathlib.Path) -> None:
    hw.gates("second")
    app = service(sqlite_url(tmp_path))
    async with client(app) as http:
        rt = runtime_of(app)
        hw.GATES["third-fails"] = anyio.Event()
        failed = await rt.submit(hw.chain3, x=1, on_error="continue")
        hw.GATES["second-go"].set()
        await failed.wait()
        assert failed.status.value == "failed"
        del hw.GATES["third-fails"]
        api = f"/ops/api/runs/{failed.id}"
        cases = [
            (f"{api}/fork", {"step": "nope"}, 404, "no step 'nope'"),
            (f"{api}/fork", {"step": ["first"]}, 422, "fork takes"),
            (f"{api}/fork", {}, 422, "fork takes"),
            (f"{api}/fork", [1], 422, "a JSON object"),
            (f"{api}/fork", "first", 422, "a JSON object"),
            (f"{api}/resume", None, 409, "finished already"),
            (f"{api}/explode", None, 404, "no action"),
            ("/ops/api/runs/nope/fork", {"step": "first"}, 404, "nope"),
            ("/ops/api/runs/nope/retry", None, 404, "nope"),
            ("/ops/api/runs/nope/resume", None, 404, "nope"),
            ("/ops/api/runs/nope/cancel", None, 404, "nope"),
        ]
        for path, body, code, words in cases:
            answer = await http.post(path, json=body, headers=ACT)
            assert answer.status_code == code, (path, body, answer.text)
            assert words in answer.json()["detail"], (path, body, answer.text)
        bad_json = await http.post(f"{api}/fork", content=b"{", headers=ACT)
        assert bad_json.status_code == 422
        deep = await http.post(f"{api}/fork", content=b"[" * 100_000, headers=ACT)
        assert deep.status_code == 422  # (too deep for json: not a 500)
        assert dict(hw.CALLS) == {"first": 1, "second": 1, "third": 1}  # nothing ran again
        hw.gates("second")
        running = await rt.submit(hw.chain3, x=1)
        await hw.GATES["second-started"].wait()
        retried = await http.post(f"/ops/api/runs/{running.id}/retry", headers=ACT)
        assert retried.status_code == 409
        assert "is running" in retried.json()["detail"]
        resumed = await http.post(f"/ops/api/runs/{running.id}/resume", headers=ACT)
        assert resumed.status_code == 200  # (this process runs it: it is the same run)
        assert resumed.json()["id"] == running.id
        hw.GATES["second-go"].set()
        await running.wait()
        assert hw.CALLS["second"] == 2  # (resumed: not run twice)
    memory = service()  # no store: retry, fork and resume run nothing
    async with client(memory) as http:
        rt = runtime_of(memory)
        hw.GATES["third-fails"] = anyio.Event()
        failed = await rt.submit(hw.chain3, x=1)
        await failed.wait()
        for action, body in (("retry", None), ("fork", {"step": "third"}), ("resume", None)):
            answer = await http.post(f"/ops/api/runs/{failed.id}/{action}", json=body, headers=ACT)
            assert answer.status_code == 409, (action, answer.text)
            assert "needs a runtime with a store" in answer.json()["detail"]
        page = (await http.get(f"/ops/runs/{failed.id}/steps/third")).text
        assert 'data-action="fork"' not in page


async def test_a_fork_of_a_run_still_running_is_refused(tmp_path: pathlib.Path) -> None:
    hw.gates("second")
    app = service(sqlite_url(tmp_path))
    async with client(app) as http:
        rt = runtime_of(app)
        run = await rt.submit(hw.chain3, x=1)
        await hw.GATES["second-started"].wait()
        try:
            page = (await http.get(f"/ops/runs/{run.id}/steps/second")).text
            assert 'data-action="fork"' not in page  # (the page does not offer it)
            answer = await http.post(
                f"/ops/api/runs/{run.id}/fork", json={"step": "second"}, headers=ACT
            )
            assert answer.status_code == 409, answer.text
        finally:
            hw.GATES["second-go"].set()
            for handle in list(rt._runs.values()):
                await handle.wait()


# --- what cancel, retry and fork mean -------------------------------------------------------


@pytest.mark.parametrize("durable", [False, True], ids=["memory", "sqlite"])
async def test_cancel_of_a_run_waiting_for_an_event_unwinds_it(
    durable: bool, tmp_path: pathlib.Path
) -> None:
    app = service(sqlite_url(tmp_path) if durable else None)
    async with client(app) as http:
        rt = runtime_of(app)
        run = await rt.submit(hw.paid, x=1)

        async def waiting() -> bool:
            report = (await http.get(f"/ops/api/runs/{run.id}")).json()
            return bool(report["waits"])

        await until(waiting)
        page = (await http.get(f"/ops/runs/{run.id}")).text
        assert "Waiting for: <code>payment</code>" in page
        assert 'data-action="cancel"' in page
        answer = await http.post(f"/ops/api/runs/{run.id}/cancel", headers=ACT)
        assert answer.status_code == 200, answer.text

        async def cancelled() -> bool:
            report = (await http.get(f"/ops/api/runs/{run.id}")).json()
            return report["status"] == "cancelled"

        await until(cancelled)
        assert hw.REVERTED == ["first"]
        assert hw.CALLS["third"] == 0
        with pytest.raises(aflow.errors.RunEnded):  # (the payment comes too late)
            await rt.send(run.id, "payment", {"paid": True})
        assert hw.CALLS["third"] == 0


@pytest.mark.parametrize("where", ["held", "store"])
async def test_cancel_of_a_finished_run_changes_nothing(where: str, tmp_path: pathlib.Path) -> None:
    """Cancel is idempotent, as the runs router's is (and Flower's revoke): a run that has
    ended is answered with its report, unchanged; nothing of it is undone."""
    url = sqlite_url(tmp_path)
    async with aflow.Runtime(store=url, workflows=[WORKFLOWS]) as rt:
        ok = await rt.submit(hw.chain3, x=1)
        await ok.wait()
        hw.GATES["third-fails"] = anyio.Event()
        bad = await rt.submit(hw.chain3, x=1)
        await bad.wait()
        board = aflow.web.app(rt if where == "held" else url)
        async with over(board) as http:
            reverted = list(hw.REVERTED)
            for run, status in ((ok, "succeeded"), (bad, "reverted")):
                for _ in range(2):
                    answer = await http.post(f"/api/runs/{run.id}/cancel", headers=ACT)
                    assert answer.status_code == 200, answer.text
                    assert answer.json()["status"] == status
                    assert answer.json()["finished"] is True
                stored = (await http.get(f"/api/runs/{run.id}")).json()
                assert stored["status"] == status
                assert stored["error"] is None or "cancel" not in stored["error"]["message"]
            assert reverted == hw.REVERTED  # no revert ran again
    store = open_store(url, read_only=True, create=False)
    await store.open()
    try:
        assert (await store.get_run(ok.id)).status == StoredRunStatus.SUCCEEDED
        assert (await store.get_run(bad.id)).status == StoredRunStatus.REVERTED
    finally:
        await store.close()


@pytest.mark.parametrize("durable", [False, True], ids=["memory", "sqlite"])
async def test_two_operators_cancelling_at_once_undo_the_run_once(
    durable: bool, tmp_path: pathlib.Path
) -> None:
    hw.gates("second")
    app = service(sqlite_url(tmp_path) if durable else None)
    async with client(app) as http:
        rt = runtime_of(app)
        run = await rt.submit(hw.chain3, x=1)
        await hw.GATES["second-started"].wait()
        answers: list[httpx.Response] = []

        async def cancel(path: str) -> None:
            answers.append(await http.post(path, headers=ACT))

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(cancel, f"/ops/api/runs/{run.id}/cancel")
            tg.start_soon(cancel, "/ops/api/runs/cancel?status=running")
        assert [a.status_code for a in answers] == [200] * 4
        assert run.status.value == "cancelled"
        assert hw.REVERTED == ["second", "first"]  # once each, newest first
        assert hw.CALLS["third"] == 0


async def test_retry_of_a_reverted_run_runs_every_step_again(tmp_path: pathlib.Path) -> None:
    app = service(sqlite_url(tmp_path))
    async with client(app) as http:
        rt = runtime_of(app)
        hw.GATES["third-fails"] = anyio.Event()
        old = await rt.submit(hw.chain3, x=1)
        await old.wait()
        assert old.status.value == "reverted"
        assert hw.REVERTED == ["third", "second", "first"]
        del hw.GATES["third-fails"]
        answer = await http.post(f"/ops/api/runs/{old.id}/retry", headers=ACT)
        assert answer.status_code == 200, answer.text
        new = rt.get(answer.json()["id"])
        assert new.id != old.id
        await new.wait()
        assert new.status.value == "succeeded"
        assert await new.result() == 4
        # what was undone is not reused: every step ran again
        assert dict(hw.CALLS) == {"first": 2, "second": 2, "third": 2}
        alone = aflow.web.app(rt.store, actions=False)
        async with over(alone) as stored:
            report = (await stored.get(f"/api/runs/{new.id}")).json()
        assert {s["key"]: s["reused"] for s in report["steps"]} == {
            "first": False,
            "second": False,
            "third": False,
        }


async def test_a_fork_reuses_exactly_what_came_before_its_step(tmp_path: pathlib.Path) -> None:
    app = service(sqlite_url(tmp_path))
    async with client(app) as http:
        rt = runtime_of(app)
        run = await rt.submit(hw.chain3, x=1)
        await run.wait()
        reused: dict[str, dict[str, bool]] = {}
        alone = aflow.web.app(rt.store, actions=False)  # (a live report does not flag reuse)
        async with over(alone) as stored:
            for step in ("first", "second", "third"):
                answer = await http.post(
                    f"/ops/api/runs/{run.id}/fork", json={"step": step}, headers=ACT
                )
                assert answer.status_code == 200, answer.text
                forked = rt.get(answer.json()["id"])
                await forked.wait()
                assert await forked.result() == 4
                report = (await stored.get(f"/api/runs/{forked.id}")).json()
                reused[step] = {s["key"]: s["reused"] for s in report["steps"]}
        assert reused["first"] == {"first": False, "second": False, "third": False}
        assert reused["second"] == {"first": True, "second": False, "third": False}
        assert reused["third"] == {"first": True, "second": True, "third": False}
        assert dict(hw.CALLS) == {"first": 2, "second": 3, "third": 4}


async def test_the_list_is_newest_first_across_live_and_stored_runs_and_picks_up_new_ones(
    tmp_path: pathlib.Path,
) -> None:
    url = sqlite_url(tmp_path)
    app = service(url)
    async with aflow.Runtime(store=url, workflows=[WORKFLOWS]) as other, client(app) as http:
        rt = runtime_of(app)
        made = []
        for i in range(6):
            owner = other if i % 2 == 0 else rt
            run = await owner.submit(hw.chain3, x=i)
            await run.wait()
            made.append(run.id)
        listed = (await http.get("/ops/api/runs")).json()
        assert [r["id"] for r in listed] == made[::-1]
        assert {r["source"] for r in listed} == {"live", "store"}

        def rows(page: str) -> list[str]:
            return re.findall(r'<tr class="run [^"]*" data-run-id="([^"]*)"', page)

        fragment = (await http.get("/ops/", params={"fragment": "1"})).text
        assert rows(fragment) == made[::-1]
        assert "<html" not in fragment  # (only the live part: the page swaps it in)
        hw.gates("second")
        newest = await other.submit(hw.chain3, x=9)  # another process's, still running
        await hw.GATES["second-started"].wait()
        fragment = (await http.get("/ops/", params={"fragment": "1"})).text
        assert rows(fragment)[0] == newest.id
        assert 'badge state-running">running' in fragment
        paged = (await http.get("/ops/", params={"limit": "2", "page": "2"})).text
        assert rows(paged) == made[::-1][1:3]
        hw.GATES["second-go"].set()
        await newest.wait()


async def test_a_retried_run_is_listed_under_its_workflow(tmp_path: pathlib.Path) -> None:
    app = service(sqlite_url(tmp_path))
    async with client(app) as http:
        rt = runtime_of(app)
        hw.GATES["third-fails"] = anyio.Event()
        old = await rt.submit(hw.chain3, x=7)
        await old.wait()
        del hw.GATES["third-fails"]
        answer = await http.post(f"/ops/api/runs/{old.id}/retry", headers=ACT)
        new = rt.get(answer.json()["id"])
        await new.wait()
        report = (await http.get(f"/ops/api/runs/{new.id}")).json()
        assert (report["workflow"], report["params"]) == (hw.chain3.path, {"x": 7})
        listed = (await http.get("/ops/api/runs", params={"workflow": hw.chain3.path})).json()
        assert [r["id"] for r in listed] == [new.id, old.id]


async def test_a_recovered_run_keeps_its_workflow_and_key(tmp_path: pathlib.Path) -> None:
    url = sqlite_url(tmp_path)
    hw.gates("second")
    async with aflow.Runtime(store=url, shutdown_timeout=0) as first:  # (released as it closes)
        run = await first.submit(hw.chain3, x=3, idempotency_key="order-3")
        await hw.GATES["second-started"].wait()
    hw.gates("second")
    app = service(url)  # (its lifespan recovers the released run)
    async with client(app) as http:
        await hw.GATES["second-started"].wait()
        try:
            report = (await http.get(f"/ops/api/runs/{run.id}")).json()
            assert report["source"] == "live"
            assert report["workflow"] == hw.chain3.path
            assert report["idempotency_key"] == "order-3"
            found = (await http.get("/ops/api/runs", params={"idempotency_key": "order-3"})).json()
            assert [r["id"] for r in found] == [run.id]
        finally:
            hw.GATES["second-go"].set()
            await runtime_of(app).get(run.id).wait()


async def test_a_run_whose_id_has_a_slash_can_be_opened() -> None:
    app = service()
    async with client(app) as http:
        run = await runtime_of(app).submit(hw.echoed, text="x", run_id="orders/2026/1")
        await run.wait()
        listed = (await http.get("/ops/")).text
        link = re.search(r'href="(/ops/runs/orders[^"]*)"', listed)
        assert link is not None
        assert link.group(1) == "/ops/runs/orders%2F2026%2F1"
        assert (await http.get(link.group(1))).status_code == 200
        assert (await http.get("/ops/api/runs/orders%2F2026%2F1")).status_code == 200


async def test_a_step_keyed_dot_dot_can_be_opened_from_its_link() -> None:
    app = service()
    async with client(app) as http:
        run = await runtime_of(app).submit(hw.echo.s("x").set(name=".."), run_id=".")
        await run.wait()
        listed = (await http.get("/ops/")).text
        (link,) = re.findall(r'<td><a href="([^"]*)">\.</a>', listed)
        assert "<h1>Run <code>.</code>" in (await http.get(html.unescape(link))).text, link
        report = (await http.get("/ops/api/runs/%2E")).json()
        assert report["id"] == "."
        page = (await http.get("/ops/runs/%2E")).text
        links = set(re.findall(r'href="([^"]*/steps/[^"]*)"', page))
        assert links
        for link in links:
            answer = await http.get(html.unescape(link))
            assert answer.status_code == 200
            assert "<h1>Step <code>..</code>" in answer.text, link


@pytest.mark.parametrize("bound", ["nan", "inf", "-inf", "1e300", "-1e300"])
async def test_a_time_filter_out_of_any_clock_is_a_422(bound: str) -> None:
    app = service()
    async with client(app) as http:
        for name in ("since", "until"):
            for path in ("/ops/", "/ops/api/runs"):
                answer = await http.get(path, params={name: bound})
                assert answer.status_code == 422, (path, name, answer.status_code)


# --- runs that vanish, clients that leave ---------------------------------------------------


@asynccontextmanager
async def uvicorn_serving(app: Any) -> AsyncIterator[str]:
    """A real uvicorn on 127.0.0.1 (a free port bound here) in this event loop; yields
    its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
    )
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        with anyio.fail_after(10):
            while not server.started:  # (uvicorn has no event for it)
                if task.done():
                    task.result()
                await anyio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


async def follow(http: httpx.AsyncClient, url: str, seen: anyio.Event, leave: anyio.Event) -> int:
    """Follow ``url``'s event stream, reading all along; ``seen`` is set at its first
    event; at ``leave`` the client goes away (the connection closes). Returns the status."""
    async with http.stream("GET", url) as answer:
        async with anyio.create_task_group() as tg:

            async def read() -> None:
                async for chunk in answer.aiter_text():
                    if "event: " in chunk:
                        seen.set()
                seen.set()

            tg.start_soon(read)
            await leave.wait()
            tg.cancel_scope.cancel()
        return answer.status_code


@pytest.mark.parametrize("source", ["held", "store"])
async def test_clients_that_leave_mid_stream_leave_no_task_behind(
    source: str, tmp_path: pathlib.Path
) -> None:
    url = sqlite_url(tmp_path)
    hw.gates("second")
    async with aflow.Runtime(store=url, workflows=[WORKFLOWS]) as rt:
        run = await rt.submit(hw.chain3, x=1)
        await hw.GATES["second-started"].wait()
        board = aflow.web.app(rt if source == "held" else url)

        def listeners() -> int:
            return len(run._execution._events.listeners)

        async with uvicorn_serving(board) as base:
            baseline = len(asyncio.all_tasks())
            before = listeners()
            leave = anyio.Event()
            seen = [anyio.Event() for _ in range(20)]
            statuses: list[int] = []
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:

                async def one(seen: anyio.Event) -> None:
                    statuses.append(await follow(http, f"/api/runs/{run.id}/events", seen, leave))

                async with anyio.create_task_group() as tg:
                    for each in seen:
                        tg.start_soon(one, each)
                    with anyio.fail_after(10):
                        for each in seen:
                            await each.wait()
                    if source == "held":
                        assert listeners() == before + 20
                    leave.set()
            assert statuses == [200] * 20
            # the server saw them go: their streams, pumps and listeners are gone
            await until(lambda: len(asyncio.all_tasks()) <= baseline)
            assert listeners() == before
            assert run.status.value == "running"  # (a client leaving cancels nothing)
        hw.GATES["second-go"].set()
        await run.wait()
        assert run.status.value == "succeeded"


async def test_a_run_dropped_from_the_history_is_a_404_not_a_500() -> None:
    app = service(runtime={"keep_finished": 1})
    async with client(app) as http:
        rt = runtime_of(app)
        gone = await rt.submit(hw.chain3, x=1)
        await gone.wait()
        page = await http.get(f"/ops/runs/{gone.id}")
        assert page.status_code == 200
        newer = await rt.submit(hw.chain3, x=2)  # (keeps one finished run: this one)
        await newer.wait()
        for path in (
            f"/ops/runs/{gone.id}",
            f"/ops/runs/{gone.id}?fragment=1",
            f"/ops/runs/{gone.id}/steps/first",
            f"/ops/api/runs/{gone.id}",
            f"/ops/api/runs/{gone.id}/graph",
            f"/ops/api/runs/{gone.id}/steps/first",
            f"/ops/api/runs/{gone.id}/events",
        ):
            answer = await http.get(path)
            assert answer.status_code == 404, path
            if "/api/" not in path:
                inert(answer.text, "/ops")
        listed = (await http.get("/ops/api/runs")).json()
        assert [r["id"] for r in listed] == [newer.id]


async def test_a_stream_open_when_its_run_leaves_the_history_still_follows_it() -> None:
    """A run followed while it is dropped from the runtime's history (a newer run ends)
    is streamed to its end: the stream holds the run, not its place in the history."""
    app = service(runtime={"keep_finished": 1})
    async with served_state(app) as (rt, state):
        hw.gates("second")
        run = await rt.submit(hw.chain3, x=1)
        await hw.GATES["second-started"].wait()
        request = Request(app, f"/ops/api/runs/{run.id}/events", state)
        async with anyio.create_task_group() as tg:
            tg.start_soon(request)
            await request.until(b'"node":"second"')
            hw.GATES["second-go"].set()
            await run.wait()
            for i in range(2):  # two newer runs end: the followed one leaves the history
                newer = await rt.submit(hw.echoed, text=str(i))
                await newer.wait()
            assert rt._history.get(run.id) is None
            with anyio.fail_after(10):
                await request.complete.wait()
        names = [name for name, _ in request.events()]
        assert names[0] == "run_started"
        assert "run_succeeded" in names
        assert ("task_succeeded", "third") in [(n, d.get("node")) for n, d in request.events()]


async def test_a_stream_ends_with_its_end_event_even_when_the_run_is_not_kept() -> None:
    app = service(runtime={"keep_finished": 0})
    async with client(app) as http:
        rt = runtime_of(app)
        hw.gates("second")
        run = await rt.submit(hw.chain3, x=1)
        await hw.GATES["second-started"].wait()
        async with anyio.create_task_group() as tg:

            async def release() -> None:
                await anyio.wait_all_tasks_blocked()
                hw.GATES["second-go"].set()

            tg.start_soon(release)
            stream = await http.get(f"/ops/api/runs/{run.id}/events")
        events = sse(stream.text)
        assert [name for name, _ in events][-2:] == ["run_succeeded", "end"]
        assert events[-1][1]["status"] == "succeeded"


@asynccontextmanager
async def served_state(app: FastAPI) -> AsyncIterator[tuple[aflow.Runtime, Any]]:
    async with app.router.lifespan_context(app) as state:
        yield state["aflow_runtime"], state


# --- load, size and bounds ------------------------------------------------------------------


async def test_hundreds_of_concurrent_looks_at_one_run(tmp_path: pathlib.Path) -> None:
    hw.gates("second")
    app = service(sqlite_url(tmp_path))
    async with client(app) as http:
        rt = runtime_of(app)
        run = await rt.submit(hw.chain3, x=1)
        await hw.GATES["second-started"].wait()
        paths = [
            f"/ops/runs/{run.id}",
            f"/ops/runs/{run.id}?fragment=1",
            f"/ops/runs/{run.id}/steps/first",
            f"/ops/api/runs/{run.id}",
            f"/ops/api/runs/{run.id}/graph",
            f"/ops/api/runs/{run.id}/steps/second",
            "/ops/",
            "/ops/api/runs",
        ]
        codes: list[int] = []

        async def look(path: str) -> None:
            codes.append((await http.get(path)).status_code)

        began = time.perf_counter()
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for i in range(400):
                    tg.start_soon(look, paths[i % len(paths)])
                    if i == 200:  # (the run moves on meanwhile)
                        hw.GATES["second-go"].set()
        took = time.perf_counter() - began
        print(f"400 concurrent looks at one run: {took:.2f} s")
        assert codes == [200] * 400
        await run.wait()
        assert run.status.value == "succeeded"


@pytest.mark.slow
async def test_a_10000_step_run_s_graph_step_and_page_answer_fast(tmp_path: pathlib.Path) -> None:
    url = sqlite_url(tmp_path)
    async with aflow.Runtime(store=url, workflows=[WORKFLOWS]) as rt:
        wide = await rt.submit(hw.wide, n=10_000)
        await wide.wait()
        long = await rt.submit(hw.long, n=1_000)
        await long.wait()
        for board in (aflow.web.app(rt), aflow.web.app(url, actions=False)):
            async with over(board) as http:
                took: dict[str, float] = {}

                async def timed(
                    name: str, path: str, took: dict[str, float] = took
                ) -> httpx.Response:
                    began = time.perf_counter()
                    answer = await http.get(path)
                    took[name] = time.perf_counter() - began
                    assert answer.status_code == 200, (path, answer.text[:200])
                    return answer

                graph = (await timed("graph", f"/api/runs/{wide.id}/graph")).json()
                (group,) = graph["nodes"]
                assert group["counts"] == {"succeeded": 10_000}
                assert len(group["members"]) == 10_000
                step = (await timed("step", f"/api/runs/{wide.id}/steps/noop%235000")).json()
                assert step["step"]["result"] == 4999
                page = (await timed("step page", f"/runs/{wide.id}/steps/noop%235000")).text
                assert "4999" in page
                page = (await timed("page", f"/runs/{wide.id}?page=100")).text
                assert "page 100 of 100" in page
                chain = (await timed("chain graph", f"/api/runs/{long.id}/graph")).json()
                assert len(chain["nodes"]) == 1_000
                page = (await timed("chain page", f"/runs/{long.id}")).text
                assert "1000 nodes: too many to draw" in page
                print({name: f"{t * 1000:.0f} ms" for name, t in took.items()})
                assert max(took.values()) < 5, took


async def test_paging_and_limits_out_of_range_are_refused_not_crashed() -> None:
    app = service()
    async with client(app) as http:
        rt = runtime_of(app)
        runs = []
        for i in range(3):
            run = await rt.submit(hw.long, n=150 if i == 0 else 1)
            await run.wait()
            runs.append(run)
        big = runs[0].id
        huge = "9" * 5000  # (more digits than int() takes)
        refused = [
            ("/ops/", {"page": "0"}),
            ("/ops/", {"page": "-1"}),
            ("/ops/", {"page": "1001"}),
            ("/ops/", {"page": huge}),
            ("/ops/", {"page": "1.5"}),
            ("/ops/", {"limit": "0"}),
            ("/ops/", {"limit": "501"}),
            ("/ops/", {"limit": "1e9"}),
            ("/ops/api/runs", {"limit": "1001"}),
            ("/ops/api/runs", {"limit": huge}),
            ("/ops/api/runs", {"offset": "-1"}),
            ("/ops/api/runs", {"offset": "1001"}),
            (f"/ops/runs/{big}", {"page": "0"}),
            (f"/ops/runs/{big}", {"page": "1000001"}),
            (f"/ops/runs/{big}", {"page": huge}),
        ]
        for path, params in refused:
            answer = await http.get(path, params=params)
            assert answer.status_code == 422, (path, params, answer.status_code)
        answer = await http.get("/ops/", params={"page": "1000", "limit": "500"})
        assert answer.status_code == 200
        assert "No runs match." in answer.text
        answer = await http.get("/ops/api/runs", params={"offset": "1000", "limit": "1000"})
        assert answer.json() == []
        # a run's page past its last is its last
        last = await http.get(f"/ops/runs/{big}", params={"page": "1000000"})
        assert "page 2 of 2" in last.text
        keys = [s.key for s in runs[0].steps()]
        rows = re.findall(r'<tr class="step [^"]*" data-key="([^"]*)"', last.text)
        assert rows == keys[100:150]


async def test_results_json_cannot_hold_and_huge_ones_are_shown() -> None:
    app = service()
    async with client(app) as http:
        rt = runtime_of(app)
        odd = await rt.submit(hw.opaque.s(1))
        await odd.wait()
        report = (await http.get(f"/ops/api/runs/{odd.id}")).json()
        assert report["result"] == reprlib.repr(hw.Opaque())  # (its short repr)
        for path in (f"/ops/runs/{odd.id}", f"/ops/runs/{odd.id}/steps/opaque"):
            page = (await http.get(path)).text
            inert(page, "/ops")
            assert "&lt;Opaque &lt;/scr" in page
        big = await rt.submit(hw.big_text.s(2_000_000))
        await big.wait()
        page = await http.get(f"/ops/runs/{big.id}/steps/big_text")
        assert page.status_code == 200
        inert(page.text, "/ops")
        assert page.text.count("x") >= 1_999_000
        assert (await http.get(f"/ops/api/runs/{big.id}")).json()["result"].startswith("<b>xx")


# --- pickles --------------------------------------------------------------------------------


async def test_a_pickle_run_is_shown_without_unpickling_anything(tmp_path: pathlib.Path) -> None:
    url = sqlite_url(tmp_path)
    async with aflow.Runtime(store=url, serializer="pickle", workflows=[WORKFLOWS]) as rt:
        run = await rt.submit(hw.pickled, mark="in-process")
        await run.wait()
        hw.GATES["third-fails"] = anyio.Event()  # (a failed one, to retry)
        failed = await rt.submit(hw.chain3, x=1, on_error="continue")
        await failed.wait()
    hw.UNPICKLED.clear()
    paths = [
        "/",
        "/api/runs",
        f"/runs/{run.id}",
        f"/runs/{run.id}/steps/bomb",
        f"/api/runs/{run.id}",
        f"/api/runs/{run.id}/graph",
        f"/api/runs/{run.id}/steps/bomb",
        f"/api/runs/{run.id}/events",
        f"/runs/{failed.id}/steps/second",
    ]
    alone = aflow.web.app(url, actions=False)
    async with over(alone) as http:
        for path in paths:
            assert (await http.get(path)).status_code == 200, path
        report = (await http.get(f"/api/runs/{run.id}")).json()
        assert report["status"] == "succeeded"
        assert report["result"] is None
        assert [s["result"] for s in report["steps"]] == [None]
    app = service(url)  # a JSON runtime's dashboard over the same store
    async with client(app) as http:
        for path in paths:
            assert (await http.get(f"/ops{path}")).status_code == 200, path
        retried = await http.post(f"/ops/api/runs/{failed.id}/retry", headers=ACT)
        assert retried.status_code == 409  # (it would read pickles)
        assert "serializer 'pickle'" in retried.json()["detail"]
    assert hw.UNPICKLED == []


# --- aflow ui, a process --------------------------------------------------------------------


@asynccontextmanager
async def aflow_ui(
    url: str, *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[str, Any]]:
    """``aflow ui`` on a free port; yields its URL (parsed from what it prints) and the
    process. Stopped (SIGINT, then killed) if the test has not stopped it."""
    process = await anyio.open_process(
        [sys.executable, "-m", "aflow.cli", "--store", url, "ui", "--port", "0", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    try:
        assert process.stdout is not None
        line = b""
        with anyio.fail_after(30):
            async for chunk in process.stdout:
                line += chunk
                if b"\n" in line:
                    break
        text = line.decode()
        assert text.startswith("aflow ui: http://127.0.0.1:"), text
        yield text.split()[2].rstrip("/"), process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
            with anyio.move_on_after(10):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.aclose()


@pytest.mark.slow
async def test_aflow_ui_never_unpickles_a_stored_run(tmp_path: pathlib.Path) -> None:
    url = sqlite_url(tmp_path)
    trace = tmp_path / "unpickled.txt"
    async with aflow.Runtime(store=url, serializer="pickle", workflows=[WORKFLOWS]) as rt:
        run = await rt.submit(hw.pickled, mark="other-process")
        await run.wait()
    env = {"AFLOW_TEST_UNPICKLE_TRACE": str(trace)}
    async with aflow_ui(url, env=env) as (base, _), httpx.AsyncClient(base_url=base) as http:
        for path in (
            "/",
            f"/runs/{run.id}",
            f"/runs/{run.id}/steps/bomb",
            f"/api/runs/{run.id}",
            f"/api/runs/{run.id}/steps/bomb",
            f"/api/runs/{run.id}/events",
        ):
            assert (await http.get(path)).status_code == 200, path
        assert (await http.get(f"/api/runs/{run.id}")).json()["result"] is None
    assert not trace.exists()
    # (the trace works: the same value unpickled in a process leaves it)
    done = await anyio.run_process(
        [
            sys.executable,
            "-c",
            "import pickle, sys; from tests import web_hostile_workflows as hw; "
            "pickle.loads(pickle.dumps(hw.Bomb('check')))",
        ],
        cwd=ROOT,
        env={**os.environ, "AFLOW_TEST_UNPICKLE_TRACE": str(trace)},
    )
    assert done.returncode == 0
    assert trace.read_text() == "check\n"


@pytest.mark.slow
async def test_aflow_ui_follows_a_store_another_process_writes(store_url: str) -> None:
    async with aflow.Runtime(store=store_url, workflows=[WORKFLOWS]) as rt:
        first = await rt.submit(hw.chain3, x=0)  # (the store exists before aflow ui opens it)
        await first.wait()
        async with aflow_ui(store_url) as (base, process):
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                hw.gates("second")
                followed = await rt.submit(hw.chain3, x=1)
                await hw.GATES["second-started"].wait()
                stream: list[httpx.Response] = []
                codes: list[int] = []

                async def follow() -> None:
                    stream.append(await http.get(f"/api/runs/{followed.id}/events", timeout=30))

                async def look() -> None:
                    while len(stream) == 0:
                        codes.append((await http.get("/api/runs")).status_code)
                        codes.append((await http.get(f"/runs/{followed.id}")).status_code)

                made = []
                async with anyio.create_task_group() as tg:
                    tg.start_soon(follow)
                    tg.start_soon(look)
                    for i in range(10):  # written while aflow ui reads
                        run = await rt.submit(hw.echoed, text=str(i))
                        await run.wait()
                        made.append(run.id)
                    hw.GATES["second-go"].set()
                    await followed.wait()
                assert set(codes) == {200}
                names = [name for name, _ in sse(stream[0].text)]
                assert names[0] == "run_started"
                assert names[-2:] == ["run_succeeded", "end"]
                listed = [r["id"] for r in (await http.get("/api/runs")).json()]
                assert listed == [*made[::-1], followed.id, first.id]
                refused = await http.post(f"/api/runs/{followed.id}/cancel", headers=ACT)
                assert refused.status_code == 403
            began = time.perf_counter()
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(10):
                await process.wait()
            assert time.perf_counter() - began < 5
        # the store aflow ui read is the writer's still: a run goes on being written
        after = await rt.submit(hw.echoed, text="after")
        assert await after.result() == "after"


async def test_aflow_ui_refuses_modules_without_actions(tmp_path: pathlib.Path) -> None:
    url = sqlite_url(tmp_path)
    done = await anyio.run_process(
        [sys.executable, "-m", "aflow.cli", "--store", url, "ui", "--allow-module", WORKFLOWS],
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert b"--allow-module is for --allow-actions" in done.stderr
    assert not (tmp_path / "runs.db").exists()


@pytest.mark.slow
async def test_aflow_ui_with_actions_cancels_and_retries_in_its_own_process(
    tmp_path: pathlib.Path,
) -> None:
    url = sqlite_url(tmp_path)
    hw.GATES["third-fails"] = anyio.Event()
    async with aflow.Runtime(store=url, workflows=[WORKFLOWS], lease=0.3) as rt:
        failed = await rt.submit(hw.chain3, x=1)
        await failed.wait()
        assert failed.status.value == "reverted"
        del hw.GATES["third-fails"]
        hw.gates("second")
        running = await rt.submit(hw.chain3, x=2)
        await hw.GATES["second-started"].wait()
        ui = aflow_ui(url, "--allow-actions", "--allow-module", WORKFLOWS)
        async with ui as (base, _), httpx.AsyncClient(base_url=base, timeout=20) as http:
            answer = await http.post(f"/api/runs/{failed.id}/retry", headers=ACT)
            assert answer.status_code == 200, answer.text
            retried = answer.json()["id"]
            stream = await http.get(f"/api/runs/{retried}/events", timeout=30)
            assert sse(stream.text)[-1][1]["status"] == "succeeded"  # (run over there)
            page = (await http.get(f"/runs/{running.id}")).text
            assert 'data-action="cancel"' in page
            answer = await http.post(f"/api/runs/{running.id}/cancel", headers=ACT)
            assert answer.status_code == 200, answer.text
            assert answer.json()["status"] == "cancelling"
        with anyio.fail_after(10):  # (its process here sees the request as it renews its lease)
            await running.wait()
        assert running.status.value == "cancelled"
        assert hw.REVERTED[-2:] == ["second", "first"]
        stored = await rt.retrieve(retried)
        assert await stored.result() == 4
        assert hw.CALLS["first"] == 2  # (the retry ran in aflow ui's process, not here)


@pytest.mark.slow
async def test_aflow_ui_stops_promptly_while_a_client_follows_a_run(
    tmp_path: pathlib.Path,
) -> None:
    url = sqlite_url(tmp_path)
    async with aflow.Runtime(store=url, workflows=[WORKFLOWS]) as rt:
        waiting = await rt.submit(hw.paid, x=1)  # (waits for an event no one sends)

        async def unloaded() -> bool:
            return (await rt.report(waiting.id, steps=False)).status == "waiting"

        await until(unloaded)
        ui = aflow_ui(url)
        async with ui as (base, process), httpx.AsyncClient(base_url=base, timeout=10) as http:
            leave, seen = anyio.Event(), anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(follow, http, f"/api/runs/{waiting.id}/events", seen, leave)
                with anyio.fail_after(10):
                    await seen.wait()
                began = time.perf_counter()
                process.send_signal(signal.SIGTERM)
                with anyio.move_on_after(3):
                    await process.wait()
                took = time.perf_counter() - began
                leave.set()
            assert process.returncode is not None, f"still serving {took:.1f} s after SIGTERM"
        await rt.send(waiting.id, "payment", 1)
        await (await rt.retrieve(waiting.id)).wait()


@pytest.mark.slow
async def test_aflow_ui_stops_promptly_on_sigterm_when_idle(tmp_path: pathlib.Path) -> None:
    url = sqlite_url(tmp_path)
    async with aflow.Runtime(store=url, workflows=[WORKFLOWS]) as rt:
        run = await rt.submit(hw.echoed, text="x")
        await run.wait()
    async with aflow_ui(url) as (base, process):
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            assert (await http.get(f"/runs/{run.id}")).status_code == 200
        began = time.perf_counter()
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(10):
            code = await process.wait()
        assert time.perf_counter() - began < 3
        assert code in (0, -signal.SIGTERM)
        assert process.stderr is not None
        errors = b"".join([chunk async for chunk in process.stderr])
        assert b"Traceback" not in errors


# --- waits as drawn -------------------------------------------------------------------------


async def drawn_states_of(http: httpx.AsyncClient, prefix: str, run_id: str) -> dict[str, str]:
    """The states the graph API gives and the page draws (they must agree)."""
    graph = (await http.get(f"{prefix}/api/runs/{run_id}/graph")).json()
    states = {n["key"]: n["state"] for n in graph["nodes"]}
    page = (await http.get(f"{prefix}/runs/{run_id}")).text
    drawn = dict(re.findall(r'<g class="node[^"]*" data-key="([^"]*)" data-state="([^"]*)"', page))
    assert drawn == states
    return states


async def test_a_wait_in_memory_is_drawn_waiting() -> None:
    async with aflow.Runtime() as rt:
        run = await rt.submit(hw.paid, x=1)
        async with over(aflow.web.app(rt)) as http:

            async def waiting() -> bool:
                return bool((await http.get(f"/api/runs/{run.id}")).json()["waits"])

            await until(waiting)
            states = await drawn_states_of(http, "", run.id)
            assert states == {
                "first": "succeeded",
                "wait_for:payment": "waiting",
                "third": "pending",
            }
            await rt.send(run.id, "payment", 1)
            await run.wait()
            assert set((await drawn_states_of(http, "", run.id)).values()) == {"succeeded"}


async def test_a_second_wait_for_the_same_event_is_drawn_waiting() -> None:
    async with aflow.Runtime() as rt:
        run = await rt.submit(hw.paid_twice, x=1)
        async with over(aflow.web.app(rt)) as http:

            async def waiting_for(key: str) -> bool:
                waits = (await http.get(f"/api/runs/{run.id}")).json()["waits"]
                return [w["key"] for w in waits] == [key]

            await until(lambda: waiting_for("wait_for:payment"))
            await rt.send(run.id, "payment", 1, message_id="one")
            await until(lambda: waiting_for("wait_for:payment#2"))
            try:
                states = await drawn_states_of(http, "", run.id)
                assert states["wait_for:payment#2"] == "waiting"
            finally:
                await rt.send(run.id, "payment", 2, message_id="two")
                await run.wait()


@pytest.mark.parametrize("board", ["store alone", "mounted"])
async def test_a_durable_wait_is_drawn_waiting_not_cancelled(
    board: str, tmp_path: pathlib.Path
) -> None:
    url = sqlite_url(tmp_path)
    async with aflow.Runtime(store=url, workflows=[WORKFLOWS]) as rt:
        run = await rt.submit(hw.paid, x=1)

        async def unloaded() -> bool:
            return (await rt.report(run.id, steps=False)).status == "waiting"

        await until(unloaded)
        try:
            async with over(aflow.web.app(url if board == "store alone" else rt)) as http:
                states = await drawn_states_of(http, "", run.id)
                assert states["wait_for:payment"] == "waiting"
                step = (await http.get(f"/api/runs/{run.id}/steps/wait_for:payment")).json()
                assert step["step"]["state"] == "waiting"
        finally:
            await rt.send(run.id, "payment", 1)
            await (await rt.retrieve(run.id)).wait()


async def test_words_the_dashboard_routes_use_are_run_ids_like_any_other() -> None:
    app = service(title=hw.SCRIPT)
    async with client(app) as http:
        rt = runtime_of(app)
        for run_id in ("cancel", "static", "api", "steps", "events", "graph"):
            run = await rt.submit(hw.echoed, text=run_id, run_id=run_id)
            await run.wait()
            report = await http.get(f"/ops/api/runs/{run_id}")
            assert report.status_code == 200, run_id
            assert report.json()["result"] == run_id
            page = await http.get(f"/ops/runs/{run_id}")
            assert page.status_code == 200, run_id
            inert(page.text, "/ops")  # (the title too)
            graph = await http.get(f"/ops/api/runs/{run_id}/graph")
            assert graph.json()["nodes"][0]["key"] == "echo"
            assert (await http.get(f"/ops/runs/{run_id}/steps/echo")).status_code == 200
        listed = (await http.get("/ops/")).text
        inert(listed, "/ops")
        assert f"Runs · {hw.SCRIPT}" in text_of(listed)
        missing = await http.get(f"/ops/runs/{quote(hw.ATTR, safe='')}")
        assert missing.status_code == 404
        inert(missing.text, "/ops")
        assert hw.ATTR in text_of(missing.text)
