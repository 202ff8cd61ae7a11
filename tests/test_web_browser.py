"""aflow.web in a real browser: Debian's Chromium (scripts/ensure-chromium), driven by
Playwright, against a real uvicorn server on 127.0.0.1 serving a FastAPI service with the
dashboard mounted under /ops/aflow. No browser is downloaded: Playwright launches the
system's (``AFLOW_CHROMIUM`` names another). Screenshots go to ``.test-output/``.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import uvicorn
from fastapi import FastAPI
from PIL import Image
from playwright.async_api import Browser, Page, async_playwright

import aflow
import aflow.fastapi
import aflow.web
from tests import web_workflows as wf
from tests.test_web_dashboard import gates

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHOTS = ROOT / ".test-output" / "screenshots"
#: What the machine's set-up installs (scripts/ensure-chromium); never downloaded.
CHROMIUM = os.environ.get("AFLOW_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
#: The flags a headless Chromium needs here: root (no sandbox), no GPU, and no calls home
#: (this machine's network is closed: they would fail, many at a time).
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HAVE_CHROMIUM = pathlib.Path(CHROMIUM).exists()
WAIT_MS = 10_000

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _reset() -> None:
    wf.reset()


@asynccontextmanager
async def serving(store: str | None = None) -> AsyncIterator[tuple[str, aflow.Runtime]]:
    """A uvicorn server on 127.0.0.1 (a free port, bound here), in this event loop: the
    service's runtime is this test's to drive. Yields the dashboard's URL."""
    app = FastAPI(lifespan=aflow.fastapi.lifespan(store=store, workflows=[wf.__name__]))
    app.mount("/ops/aflow", aflow.web.app(title="orders"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
    )
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:  # (uvicorn has no event for it)
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        runtime = app.state.aflow_runtime
        yield f"http://127.0.0.1:{port}/ops/aflow", runtime
    finally:
        server.should_exit = True
        await task
        sock.close()


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    if not HAVE_CHROMIUM:
        pytest.fail(f"no Chromium at {CHROMIUM}: run scripts/ensure-chromium (make test does)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield browser
        finally:
            await browser.close()


async def new_page(browser: Browser) -> Page:
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on(
        "console", lambda message: errors.append(message.text) if message.type == "error" else None
    )
    page.errors = errors  # type: ignore[attr-defined]
    return page


async def shot(page: Page, name: str) -> pathlib.Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


def node(key: str, state: str | None = None) -> str:
    found = f'svg.aflow-graph g.node[data-key="{key}"]'
    return found if state is None else f'{found}[data-state="{state}"]'


def mostly(path: pathlib.Path, box: dict[str, float], scale: float = 1.0) -> tuple[int, int, int]:
    """The most common colour inside ``box`` of a screenshot (the node's fill, as shown)."""
    with Image.open(path) as image:
        left, top = int(box["x"] * scale) + 3, int(box["y"] * scale) + 3
        right = int((box["x"] + box["width"]) * scale) - 3
        bottom = int((box["y"] + box["height"]) * scale) - 3
        area = image.convert("RGB").crop((left, top, right, bottom))
        counts = area.getcolors(maxcolors=1 << 20) or []
    (_, colour) = max(counts)
    return colour  # type: ignore[no-any-return]


async def test_a_node_turns_from_running_to_succeeded_live() -> None:
    gates("charge")
    async with serving() as (url, rt), chromium() as browser:
        run = await rt.submit(wf.saga, order="o-1")
        await wf.GATES["charge-started"].wait()
        page = await new_page(browser)
        await page.goto(f"{url}/")
        await page.click(f'a[href$="/runs/{run.id}"]')
        await page.wait_for_selector(node("charge", "running"))
        assert await page.get_attribute(node("ship"), "data-state") == "pending"
        await shot(page, "run-running")
        wf.GATES["charge-go"].set()  # no reload: the page follows the run's events
        await page.wait_for_selector(node("charge", "succeeded"))
        await page.wait_for_selector(node("ship", "succeeded"))
        await page.wait_for_selector("#run-status:text('succeeded')")
        await shot(page, "run-succeeded")
        assert page.errors == []  # type: ignore[attr-defined]


async def test_a_node_s_detail_opens_from_the_graph() -> None:
    wf.FAIL.add("ship")
    async with serving() as (url, rt), chromium() as browser:
        run = await rt.submit(wf.saga, order="o-2")
        await run.wait()
        page = await new_page(browser)
        await page.goto(f"{url}/runs/{run.id}")
        await page.click(node("ship") + " a")
        await page.wait_for_selector("h1:has-text('Step')")
        assert await page.inner_text("#step-state") == "failed"
        assert "ship failed <on purpose>" in await page.inner_text(".error-box")
        assert "Traceback" in await page.inner_text("pre.traceback")
        rows = await page.locator("table.attempts tbody tr").all_inner_texts()
        assert len(rows) == 1
        assert "failed" in rows[0]
        await shot(page, "step-failed")
        await page.click("text=run " + run.id)
        await page.wait_for_selector(node("charge", "reverted"))
        assert page.errors == []  # type: ignore[attr-defined]


async def test_cancelling_a_running_saga_shows_its_reverts(tmp_path: pathlib.Path) -> None:
    gates("charge", "refund")
    async with serving(f"sqlite:///{tmp_path / 'runs.db'}") as (url, rt), chromium() as browser:
        run = await rt.submit(wf.saga, order="o-3")
        await wf.GATES["charge-started"].wait()
        page = await new_page(browser)
        await page.goto(f"{url}/runs/{run.id}")
        await page.wait_for_selector(node("charge", "running"))
        page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
        await page.click("button[data-action=cancel]")
        # the refund is held: the run shows it reverting first
        await wf.GATES["refund-started"].wait()
        await page.wait_for_selector(node("charge", "reverting"))
        await shot(page, "run-reverting")
        wf.GATES["refund-go"].set()
        await page.wait_for_selector(node("charge", "reverted"))
        await page.wait_for_selector(node("reserve", "reverted"))
        await page.wait_for_selector("#run-status:text('cancelled')")
        assert await page.get_attribute(node("ship"), "data-state") == "pending"
        assert wf.REVERTED == ["charge", "reserve"]
        bars = page.locator("svg.aflow-timeline rect.tl-bar")
        titles = [await bars.nth(i).text_content() or "" for i in range(await bars.count())]
        # reserve, quote, charge (cancelled), then the two reverts, with their times
        assert sum("revert reverted" in t for t in titles) == 2, titles
        assert len(titles) == 5, titles
        await shot(page, "run-cancelled")
        assert page.errors == []  # type: ignore[attr-defined]


async def test_what_a_person_sees_the_graph_its_colours_and_the_failed_node() -> None:
    wf.FAIL.add("ship")
    async with serving() as (url, rt), chromium() as browser:
        run = await rt.submit(wf.saga, order="o-4", on_error="continue")
        await run.wait()
        page = await new_page(browser)
        await page.goto(f"{url}/runs/{run.id}")
        await page.wait_for_selector(node("ship", "failed"))
        path = await shot(page, "graph-failed")
        boxes = {}
        for key in ("reserve", "quote", "charge", "ship"):
            box = await page.locator(node(key) + " rect").first.bounding_box()
            assert box is not None
            boxes[key] = box
        # drawn top to bottom: the group above charge, ship below it
        assert boxes["reserve"]["y"] == boxes["quote"]["y"] < boxes["charge"]["y"]
        assert boxes["charge"]["y"] < boxes["ship"]["y"]
        for key in ("reserve", "quote", "charge"):
            r, g, b = mostly(path, boxes[key])
            assert g > r + 15, (key, (r, g, b))  # green: succeeded
        r, g, b = mostly(path, boxes["ship"])
        assert r > g + 15, ("ship", (r, g, b))  # red: the failed node
        assert r > b + 15, ("ship", (r, g, b))


async def test_a_10000_step_run_loads_in_under_a_second_and_pages(tmp_path: pathlib.Path) -> None:
    url_store = f"sqlite:///{tmp_path / 'runs.db'}"
    async with serving(url_store) as (url, rt), chromium() as browser:
        run = await rt.submit(wf.wide, n=10_000)
        await run.wait()
        page = await new_page(browser)
        began = time.perf_counter()
        await page.goto(f"{url}/runs/{run.id}", wait_until="load")
        took = time.perf_counter() - began
        timing = await page.evaluate(
            "() => { const t = performance.getEntriesByType('navigation')[0];"
            " return [t.responseEnd - t.requestStart, t.loadEventEnd - t.startTime]; }"
        )
        print(
            f"10,000-step run page: {took * 1000:.0f} ms to load in the test; the browser "
            f"says {timing[0]:.0f} ms for the answer, {timing[1]:.0f} ms to its load event"
        )
        # one grouped node with its counts, and a paged table
        group = page.locator("svg.aflow-graph g.node.group")
        assert await group.count() == 1
        assert "10000" in (await group.text_content() or "")
        assert "page 1 of 100" in await page.inner_text("main")
        first = await page.locator("table.steps tbody tr").first.get_attribute("data-key")
        await page.click("a[rel=next]")
        await page.wait_for_selector("text=page 2 of 100")
        second = await page.locator("table.steps tbody tr").first.get_attribute("data-key")
        assert first != second
        assert await page.locator("table.steps tbody tr").count() == 100
        await shot(page, "big-run")
        # past 500 nodes drawn: a table instead of the graph
        chain = await rt.submit(wf.long, n=600)
        await chain.wait()
        await page.goto(f"{url}/runs/{chain.id}")
        assert await page.locator("svg.aflow-graph").count() == 0
        assert "600 nodes: too many to draw" in await page.inner_text("main")
        assert await page.locator("table.steps tbody tr").count() == 100
        await page.click("a[rel=next]")
        await page.wait_for_selector("text=page 2 of 6")
        assert page.errors == []  # type: ignore[attr-defined]


async def test_the_runs_list_updates_without_a_reload() -> None:
    gates("charge")
    async with serving() as (url, rt), chromium() as browser:
        page = await new_page(browser)
        await page.goto(f"{url}/")
        await page.wait_for_selector("text=No runs match.")
        run = await rt.submit(wf.saga, order="o-5")
        await wf.GATES["charge-started"].wait()
        await page.wait_for_selector(f'tr[data-run-id="{run.id}"] .badge:text("running")')
        wf.GATES["charge-go"].set()
        await run.wait()
        await page.wait_for_selector(f'tr[data-run-id="{run.id}"] .badge:text("succeeded")')
        await shot(page, "runs")
        assert page.errors == []  # type: ignore[attr-defined]


def test_screenshots_folder_is_ignored_by_git() -> None:
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert ".test-output/" in ignored
