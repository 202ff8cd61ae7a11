"""aflow inside an application: a Runtime owned by the app, runs outliving their requests.

This is the shape of a FastAPI lifespan or an aiohttp cleanup context, without
the web framework: ``handle_request`` returns a run id at once, the run goes
on in the runtime, and a later "request" reads its status and result.
"""

from __future__ import annotations

import anyio

import aflow


@aflow.task
async def render_report(user: str) -> str:
    await anyio.sleep(0.02)
    return f"report for {user}"


@aflow.task
async def email(report: str, to: str) -> str:
    await anyio.sleep(0.01)
    return f"emailed '{report}' to {to}"


async def handle_request(rt: aflow.Runtime, user: str) -> str:
    """POST /reports: start the work and answer 202 with the run id."""
    run = await rt.submit(render_report.s(user) | email.s(f"{user}@example.com"))
    return run.id


async def main() -> None:
    async with aflow.Runtime(max_concurrency=32) as rt:  # the app's lifespan
        run_ids = [await handle_request(rt, user) for user in ("ada", "grace", "linus")]
        print("accepted:", [rid[:8] for rid in run_ids])
        for rid in run_ids:  # GET /reports/{id}
            run = rt.get(rid)
            result = await run.result()
            print(f"  {rid[:8]} {run.status.value}: {result}")


if __name__ == "__main__":
    anyio.run(main)
