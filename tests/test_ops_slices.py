"""aflow.ops slices: fan-out over parameters and artifacts, stacked results, the pool,
success thresholds, and slice keys."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

import aflow
from aflow.ops import Artifact, PythonOPTemplate, Slices, Step, Workflow, download_artifact, op

from .ops_helpers import PeakProbe, add, run_wf, total

# --- fan-out and stacking -------------------------------------------------------------------------


async def test_slices_stack_results_in_input_order_with_templated_keys() -> None:
    finished: list[int] = []
    gates = [anyio.Event() for _ in range(4)]

    @op(outputs={"y": int})
    async def square(x: int):
        if x < 3:  # finish in reverse order: each item waits for the next one
            await gates[x + 1].wait()
        finished.append(x)
        gates[x].set()
        return {"y": x * x}

    sq = Step(
        "sq",
        PythonOPTemplate(
            square, slices=Slices("{{item}}", input_parameter=["x"], output_parameter=["y"])
        ),
        parameters={"x": [0, 1, 2, 3]},
        key="square-{{item}}",
    )
    tot = Step("tot", total, parameters={"values": sq.outputs.parameters["y"]})
    wf = Workflow("slices").add(sq).add(tot)
    with anyio.fail_after(10):
        assert await run_wf(wf) == "Succeeded"
    assert finished == [3, 2, 1, 0]
    [record] = wf.query_step(name="sq")
    assert record.outputs.parameters["y"].value == [0, 1, 4, 9]
    assert [s.key for s in record.slices] == [f"square-{i}" for i in range(4)]
    assert [s.outputs.parameters["y"].value for s in record.slices] == [0, 1, 4, 9]
    assert [r.key for r in wf.query_step(key="square-2")] == ["square-2"]
    assert wf.query_step(name="tot")[0].outputs.parameters["total"].value == 14


async def test_slices_over_an_upstream_list_and_over_artifacts() -> None:
    @op(outputs={"xs": list[int]})
    async def numbers(n: int):
        return {"xs": list(range(n))}

    @op(outputs={"f": Artifact(Path)})
    async def write_one(x: int, workdir: Path):
        (workdir / f"{x}.txt").write_text(str(x * 10))
        return {"f": Path(f"{x}.txt")}

    @op(outputs={"v": int})
    async def read_one(f: Artifact(Path)):
        return {"v": int(f.read_text())}

    @op(outputs={"names": list[str]})
    async def read_all(fs: Artifact(list[Path])):
        return {"names": [p.name for p in fs]}

    nums = Step("nums", numbers, parameters={"n": 3})
    files = Step(
        "files",
        write_one,
        parameters={"x": nums.outputs.parameters["xs"]},
        slices=Slices(input_parameter=["x"], output_artifact=["f"]),
    )
    values = Step(
        "values",
        read_one,
        artifacts={"f": files.outputs.artifacts["f"]},
        slices=Slices(input_artifact=["f"], output_parameter=["v"]),
    )
    names = Step("names", read_all, artifacts={"fs": files.outputs.artifacts["f"]})
    wf = Workflow("fan").add(nums).add(files).add([values, names])
    assert await run_wf(wf) == "Succeeded"
    assert wf.query_step(name="values")[0].outputs.parameters["v"].value == [0, 10, 20]
    assert wf.query_step(name="names")[0].outputs.parameters["names"].value == [
        "0.txt",
        "1.txt",
        "2.txt",
    ]


async def test_stacked_file_outputs_keep_slice_positions(tmp_path: Path) -> None:
    @op(outputs={"f": Artifact(Path), "tag": str})
    async def mk(i: int, workdir: Path):
        if i == 1:
            raise ValueError("no 1")
        (workdir / f"{i}.txt").write_text(str(i))
        return {"f": Path(f"{i}.txt"), "tag": f"tag-{i}"}

    @op(outputs={"names": list[str | None]})
    async def names(fs: Artifact(list[Path])):  # type: ignore[valid-type]
        return {"names": [None if f is None else f.name for f in fs]}

    sliced = Slices(input_parameter=["i"], output_parameter=["tag"], output_artifact=["f"])
    m = Step("m", mk, parameters={"i": [0, 1, 2]}, slices=sliced, continue_on_num_success=2)
    n = Step("n", names, artifacts={"fs": m.outputs.artifacts["f"]})
    wf = Workflow("w", artifacts=tmp_path).add(m).add(n)
    assert await run_wf(wf) == "Succeeded"
    assert wf.query_step(name="m")[0].outputs.parameters["tag"].value == ["tag-0", None, "tag-2"]
    assert wf.query_step(name="n")[0].outputs.parameters["names"].value == ["0.txt", None, "2.txt"]
    got = download_artifact(wf.query_step(name="m")[0].outputs.artifacts["f"], tmp_path / "dl")
    assert [p.name for p in got] == ["0.txt", "2.txt"]


# --- the pool and success thresholds --------------------------------------------------------------


@pytest.mark.parametrize(
    ("pool", "group", "peak"),
    # as in dflow: every group at once, the items of each pool_size at a time
    [(2, 9, 2), (1, 9, 1), (None, 3, 3), (1, 3, 3), (2, 4, 5), (-1, 3, 9), (3, 1, 9)],
)
async def test_the_slice_pool_bounds_what_runs_at_once(
    pool: int | None, group: int, peak: int
) -> None:
    probe = PeakProbe(fill=peak)
    slices = Slices(input_parameter=["x"], output_parameter=["x"], pool_size=pool, group_size=group)
    wf = Workflow("pool").add(Step("p", probe.op, parameters={"x": list(range(9))}, slices=slices))
    with anyio.fail_after(10):
        assert await run_wf(wf) == "Succeeded"
    assert probe.peak == peak
    assert wf.query_step()[0].outputs.parameters["x"].value == list(range(9))


async def test_a_failed_slice_fails_the_step_unless_a_threshold_lets_it_go_on() -> None:
    @op(outputs={"y": int})
    async def picky(x: int):
        if x % 3 == 0:
            raise ValueError(f"no {x}")
        return {"y": x}

    slices = Slices(input_parameter=["x"], output_parameter=["y"], group_size=4, pool_size=1)
    strict = Workflow("s").add(Step("p", picky, parameters={"x": [1, 2, 3, 4]}, slices=slices))
    assert await run_wf(strict) == "Failed"
    [record] = strict.query_step()
    assert isinstance(record.error, ValueError)
    assert [s.phase for s in record.slices] == ["Succeeded", "Succeeded", "Failed", "Skipped"]

    by_count = Step(
        "p", picky, parameters={"x": [1, 2, 3, 4]}, slices=slices, continue_on_num_success=3
    )
    wf = Workflow("n").add(by_count)
    assert await run_wf(wf) == "Succeeded"
    assert wf.query_step()[0].outputs.parameters["y"].value == [1, 2, None, 4]

    by_ratio = Step(
        "p",
        picky,
        parameters={"x": [0, 1, 3, 6]},
        slices=slices,
        continue_on_success_ratio=0.5,
    )
    wf = Workflow("r").add(by_ratio)
    assert await run_wf(wf) == "Failed"
    error = wf.query_step()[0].error
    assert isinstance(error, aflow.errors.SlicesBelowThreshold)
    assert (error.succeeded, error.total) == (1, 4)


# --- definitions and keys -------------------------------------------------------------------------


def test_slice_definitions_are_checked() -> None:
    with pytest.raises(aflow.errors.SignatureError, match="sliced input 'x' takes a list"):
        Step("s", add, parameters={"x": 1}, slices=Slices(input_parameter=["x"]))
    with pytest.raises(aflow.errors.SignatureError, match="expected int"):
        Step("s", add, parameters={"x": [1, "2"]}, slices=Slices(input_parameter=["x"]))
    with pytest.raises(aflow.errors.SignatureError, match="Slices names input 'nope'"):
        Step("s", add, parameters={"x": [1]}, slices=Slices(input_parameter=["nope"]))
    with pytest.raises(aflow.errors.SignatureError, match="need slices"):
        Step("s", add, parameters={"x": 1}, continue_on_num_success=1)
    s = Step("s", add, parameters={"x": [1]}, slices=Slices(input_parameter=["x"]))
    with pytest.raises(aflow.errors.SignatureError, match="stack it"):
        s.outputs.parameters["sum"]
    with pytest.raises(ValueError, match="pool_size"):
        Slices(input_parameter=["x"], pool_size=0)


def test_slice_keys_may_not_clash_with_other_keys() -> None:
    sliced = Slices(input_parameter=["x"], output_parameter=["sum"])
    a = Step("a", add, parameters={"x": [1, 2]}, slices=sliced, key="job-{{item}}")
    b = Step("b", add, parameters={"x": [3, 4]}, slices=sliced, key="job-{{item}}")
    with pytest.raises(aflow.errors.DuplicateTaskError, match="job-"):
        aflow.compile(Workflow("k").add([a, b]))
    s = Step("s", add, parameters={"x": [1]}, slices=sliced)
    plain = Step("s-0", add, parameters={"x": 1})
    with pytest.raises(aflow.errors.DuplicateTaskError, match="s-0"):
        aflow.compile(Workflow("k").add([s, plain]))


async def test_overlapping_slice_key_templates_keep_their_own_checkpoints(
    tmp_path: Path,
) -> None:
    sliced = Slices(input_parameter=["x"], output_parameter=["sum"])
    xs = list(range(11))
    a = Step("a", add, parameters={"x": xs, "y": 0}, slices=sliced, key="p{{item}}")
    b = Step("b", add, parameters={"x": xs, "y": 100}, slices=sliced, key="p1{{item}}")
    plain = Step("p01", add, parameters={"x": 1})  # "p01" is no slice key: str(1) is "1"
    # both steps have a slice keyed "p10"; their work dirs and outputs stay apart
    wf = Workflow("w", artifacts=tmp_path).add([a, b, plain])
    assert await run_wf(wf) == "Succeeded"
    assert sorted(r.name for r in wf.query_step(key="p10")) == ["a", "b"]
    assert wf.query_step(name="a")[0].outputs.parameters["sum"].value == xs
    assert wf.query_step(name="b")[0].outputs.parameters["sum"].value == [x + 100 for x in xs]
