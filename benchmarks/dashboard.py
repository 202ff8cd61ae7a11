"""The dashboard's pages for a big run: how long a 10,000-step run's page takes to answer.

Usage: ``python benchmarks/dashboard.py [--steps N] [--repeat N] [--quick] [--markdown PATH]``

A run of ``--steps`` steps side by side (one grouped node in its graph, its steps paged)
and one of 600 steps in a chain (a table instead of its graph), each read by
``aflow.web`` in process (httpx over ASGI) three ways: from the runtime that holds it,
from its SQLite store with the runtime (a durable run), and from the store alone (as
``aflow ui``). Each answer is timed whole (the app's work and the response body), the
median of ``--repeat``. Target (issue 20): a 10,000-step run's page under 1 s. What a
browser adds (parsing, layout, the page's script) is measured by
``tests/test_web_browser.py``, which prints it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# (this folder's http.py would stand for the standard library's http package)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
import httpx  # noqa: E402

sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _markdown import replace_section  # noqa: E402

import aflow  # noqa: E402
import aflow.web  # noqa: E402
from aflow.stores import open_store  # noqa: E402

TARGET_S = 1.0


@aflow.task
async def noop(x: int) -> int:
    return x


@aflow.workflow
def wide(n: int) -> Any:
    return aflow.group(noop.s(i) for i in range(n))


@aflow.workflow
def long(n: int) -> Any:
    return aflow.chain(*(noop.s(0) if i == 0 else noop.s() for i in range(n)))


async def timed(http: httpx.AsyncClient, url: str, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        answer = await http.get(url)
        times.append(time.perf_counter() - began)
        assert answer.status_code == 200, (url, answer.status_code)
    return statistics.median(times)


async def measure(steps: int, repeat: int) -> list[tuple[str, str, float]]:
    # (a durable run's workflow lives in a module another process can import: this one's)
    import dashboard

    wide, long = dashboard.wide, dashboard.long
    rows: list[tuple[str, str, float]] = []
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'runs.db'}"
        for where, store in (("held, in memory", None), ("held, durable (SQLite)", url)):
            async with aflow.Runtime(store=store) as rt:
                big = await rt.submit(wide, n=steps)
                await big.wait()
                chain = await rt.submit(long, n=600)
                await chain.wait()
                app = aflow.web.app(rt)
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://b") as http:
                    for what, path in pages(big.id, chain.id, steps):
                        rows.append((where, what, await timed(http, path, repeat)))
        alone = open_store(url, read_only=True, create=False)
        await alone.open()
        try:
            app = aflow.web.app(alone)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://b") as http:
                listed = (await http.get("/api/runs")).json()
                by_workflow = {r["workflow"].rsplit(":", 1)[-1]: r["id"] for r in listed}
                for what, path in pages(by_workflow["wide"], by_workflow["long"], steps):
                    rows.append(("store alone (aflow ui)", what, await timed(http, path, repeat)))
        finally:
            await alone.close()
    return rows


def pages(big: str, chain: str, steps: int) -> list[tuple[str, str]]:
    return [
        (f"run page, {steps:,} steps (page 7)", f"/runs/{big}?page=7"),
        (f"graph API, {steps:,} steps", f"/api/runs/{big}/graph"),
        (f"step page, {steps:,}-step run", f"/runs/{big}/steps/noop"),
        ("run page, 600-step chain (table)", f"/runs/{chain}"),
        ("runs list", "/"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="2,000 steps, 3 repeats")
    parser.add_argument("--markdown", type=Path, help="write/update this file's section")
    args = parser.parse_args()
    steps, repeat = (2_000, min(args.repeat, 3)) if args.quick else (args.steps, args.repeat)
    rows = asyncio.run(measure(steps, repeat))
    lines = [
        f"Median of {repeat} answers each, in process (httpx over ASGI); "
        f"`python benchmarks/dashboard.py --steps {steps} --repeat {repeat}`. Target: a "
        f"{steps:,}-step run's page under {TARGET_S:g} s.\n",
        "| read from | page | ms | target | |",
        "|---|---|---:|---:|---|",
    ]
    for where, what, seconds in rows:
        target = what.startswith("run page,") and "steps" in what
        verdict = ("met" if seconds < TARGET_S else "missed") if target else ""
        shown = f"< {TARGET_S * 1000:.0f}" if target else ""
        lines.append(f"| {where} | {what} | {seconds * 1000:.0f} | {shown} | {verdict} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown is not None:
        replace_section(args.markdown, "Dashboard pages", text)
        print(f"markdown: {args.markdown}")


if __name__ == "__main__":
    main()
