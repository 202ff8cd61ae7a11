"""Concurrency limits: a global bound and a named one, shown with a peak-in-flight probe."""

from __future__ import annotations

import anyio

import aflow

in_flight = {"all": 0, "db": 0}
peak = {"all": 0, "db": 0}


def enter(kind: str) -> None:
    for key in ("all", kind):
        in_flight[key] += 1
        peak[key] = max(peak[key], in_flight[key])


def leave(kind: str) -> None:
    for key in ("all", kind):
        in_flight[key] -= 1


@aflow.task(limit="db")
async def query(i: int) -> int:
    enter("db")
    await anyio.sleep(0.01)
    leave("db")
    return i


@aflow.task
async def compute(i: int) -> int:
    enter("cpu")
    await anyio.sleep(0.01)
    leave("cpu")
    return i * i


async def main() -> None:
    peak.setdefault("cpu", 0)
    in_flight.setdefault("cpu", 0)
    workflow = aflow.group([*(query.s(i) for i in range(30)), *(compute.s(i) for i in range(30))])
    values = await aflow.run(workflow, max_concurrency=10, limits={"db": 3})
    print(
        f"{len(values)} results; peak in flight: {peak['all']} (limit 10), "
        f"db: {peak['db']} (limit 3)"
    )
    assert peak["all"] <= 10
    assert peak["db"] <= 3


if __name__ == "__main__":
    anyio.run(main)
