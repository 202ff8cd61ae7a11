"""The TaskFlow seed example, ported: three parallel tasks, then a final sum.

Compared with TaskFlow, only the imports changed and ``async``/``await`` were
added: sync ``execute`` methods still work (they run in the executor), and
async ones run on the event loop. Run it with ``python examples/taskflow_style.py``.
"""

from __future__ import annotations

import asyncio
from concurrent.futures.thread import ThreadPoolExecutor
from typing import Any

import aflow
from aflow import engines
from aflow.patterns import linear_flow as lf
from aflow.patterns import unordered_flow as uf


class TaskA(aflow.Task):
    def execute(self, a: int) -> int:  # a plain def: runs in the executor's threads
        res_a = a * a
        print(f"task a result:{res_a}")
        return res_a


class TaskB(aflow.Task):
    async def execute(self, b: int) -> int:  # async def: runs on the event loop
        res_b = b * b
        print(f"task b result:{res_b}")
        return res_b


class TaskC(aflow.Task):
    def execute(self, c: int) -> int:
        res_c = c + 2
        print(f"task c result:{res_c}")
        return res_c


class FinalTask(aflow.Task):
    async def execute(self, res_a: int, res_b: int, res_c: int) -> int:
        final_res = res_a + res_b + res_c
        print(f"task final result:{final_res}")
        return final_res


def build_flow() -> lf.Flow:
    parallel_flow = uf.Flow("parallel_tasks").add(
        TaskA(name="taska", provides="res_a"),
        TaskB(name="taskb", provides="res_b"),
        TaskC(name="taskc", provides="res_c"),
    )
    main_flow = lf.Flow("main").add(
        parallel_flow,
        FinalTask(name="final", provides="final_res"),
    )
    return main_flow


async def main() -> dict[str, Any]:
    store = {"a": 1, "b": 2, "c": 3}
    with ThreadPoolExecutor(max_workers=3) as pool_executor:
        eng = engines.load(build_flow(), store=store, engine="parallel", executor=pool_executor)
        await eng.run()

    context = eng.storage.fetch_all()
    result = context.get("final_res")
    a_res = context.get("res_a")
    print(f"task A res: {a_res}, final_res: {result}")
    print("states:", {name: state.value for name, state in eng.states().items()})
    return context


if __name__ == "__main__":
    asyncio.run(main())
