"""Checked by ``mypy --strict`` (make lint), never run: flows and engines type-check."""

from __future__ import annotations

from typing import Any, assert_type

import aflow
import aflow.retry
from aflow import engines
from aflow.patterns import graph_flow as gf
from aflow.patterns import linear_flow as lf
from aflow.patterns import unordered_flow as uf


class Reserve(aflow.Task):
    default_provides = "reservation"

    async def execute(self, order: str) -> str:
        return order

    async def revert(
        self, order: str, result: Any, flow_failures: dict[str, aflow.Failure]
    ) -> None:
        pass


@aflow.task(provides="total")
async def add(x: int, y: int) -> int:
    return x + y


async def build_and_run() -> None:
    assert_type(await add(1, 2), int)  # the decorator keeps the signature
    flow = lf.Flow("main", retry=aflow.retry.Times(3, provides="attempt")).add(
        Reserve(rebind={"order": "o"}),
        uf.Flow("u").add(add, add.s(1, 2).set(name="add2", provides="total2")),
    )
    graph = gf.Flow("g").add(flow)
    engine = engines.load(graph, store={"o": "x"}, engine="parallel", max_workers=4)
    await engine.run()
    assert_type(engine.storage.fetch_all(), dict[str, Any])
    assert_type(engine.state, aflow.RunStatus)
    assert_type(await engines.run(graph), dict[str, Any])
    assert_type(await flow, dict[str, Any])
    engines.load(graph, engine=3)  # type: ignore[arg-type]
