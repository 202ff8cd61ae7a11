"""Typed operators at work: a DAG that fans out over slices, a condition, and reuse.

A "screening" workflow: generate candidate sizes, simulate each one in a slice
(at most two at once), write a report file from the scores, and only flag the
best candidate when it clears a threshold. Then run it again, reusing the
expensive simulation with one score changed. Run it with
``python examples/typed_ops.py``.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Annotated

import aflow
from aflow.ops import (
    DAG,
    Artifact,
    Slices,
    Step,
    Workflow,
    download_artifact,
    op,
)

simulations = 0


@op(outputs={"sizes": list[int]})
async def candidates(count: int) -> dict[str, list[int]]:
    return {"sizes": [10 * (i + 1) for i in range(count)]}


@op(outputs={"score": float})
async def simulate(size: int) -> dict[str, float]:
    global simulations
    simulations += 1
    await asyncio.sleep(0.01)  # stands in for an expensive computation
    return {"score": 1.0 - abs(size - 30) / 100}


@op(outputs={"report": Artifact(Path), "best": float})
def report(scores: list[float], workdir: Path) -> dict[str, object]:  # runs in a thread
    lines = [f"candidate {i}: {s:.2f}" for i, s in enumerate(scores)]
    (workdir / "report.txt").write_text("\n".join(lines) + "\n")
    return {"report": Path("report.txt"), "best": max(scores)}


@op(outputs={"message": str})
async def flag(best: float, report: Annotated[Path, Artifact(Path)]) -> dict[str, str]:
    count = len(report.read_text().splitlines())
    return {"message": f"best score {best:.2f} among {count} candidates"}


def screening(folder: Path) -> Workflow:
    gen = Step("candidates", candidates, parameters={"count": 5})
    sim = Step(
        "simulate",
        simulate,
        parameters={"size": gen.outputs.parameters["sizes"]},
        # one group of the five candidates, two at a time (dflow's group_size and pool_size)
        slices=Slices(
            input_parameter=["size"], output_parameter=["score"], group_size=5, pool_size=2
        ),
        key="simulate-{{item}}",
        retries=1,
    )
    rep = Step("report", report, parameters={"scores": sim.outputs.parameters["score"]})
    good = Step(
        "flag",
        flag,
        parameters={"best": rep.outputs.parameters["best"]},
        artifacts={"report": rep.outputs.artifacts["report"]},
        when=f"{rep.outputs.parameters['best']} >= 0.95",
    )
    return Workflow("screening", dag=DAG().add([good, rep, sim, gen]), artifacts=folder)


async def main(folder: Path) -> dict[str, object]:
    first = screening(folder)
    async with aflow.Runtime():
        await first.submit()
        status = await first.wait()
        print("first run:", status, {r.name: r.phase for r in first.query_step()})
        print(first.query_step(name="flag")[0].outputs.parameters["message"].value)
        print("slice keys:", [s.key for s in first.query_step(name="simulate")[0].slices])

        # Again, reusing the simulation with every score lowered: the flag is skipped.
        [sim] = first.query_step(name="simulate")
        scores = sim.outputs.parameters["score"].value
        sim.modify_output_parameter("score", [s - 0.2 for s in scores])
        second = screening(folder)
        await second.submit(reuse_step=[sim])
        print("second run:", await second.wait(), {r.name: r.phase for r in second.query_step()})
    [path] = download_artifact(
        second.query_step(name="report")[0].outputs.artifacts["report"], folder / "out"
    )
    print(path.read_text(), end="")
    return {
        "simulations": simulations,
        "flag": second.query_step(name="flag")[0].phase,
        "report": path.read_text(),
    }


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp)))
