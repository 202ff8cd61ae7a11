"""aflow.ops queries and reuse: step records, reusing (and modifying) earlier outputs, and
querying a stored run through Workflow.load."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest
from pydantic import BaseModel

import aflow
from aflow.ops import PythonOPTemplate, Step, Workflow, download_artifact, op

from .ops_helpers import WriteFile, add, read, run_wf, write

# --- step records ---------------------------------------------------------------------------------


async def test_workflow_query_status_and_step_record(tmp_path: Path) -> None:
    step0 = Step("step0", PythonOPTemplate(WriteFile), parameters={"msg": "hi", "number": 7})
    wf = Workflow("python", artifacts=tmp_path / "arts").add(step0)
    assert wf.query_status() == "Pending"
    assert await run_wf(wf) == "Succeeded"
    [record] = wf.query_step(name="step0")
    assert record.phase == "Succeeded"
    assert record.inputs.parameters == {"msg": "hi", "number": 7}
    assert record.attempts == 1
    assert record.started_at is not None
    assert record.finished_at is not None
    assert record.duration is not None
    assert record.duration >= 0
    got = download_artifact(record.outputs.artifacts["out_art"], path=tmp_path / "dl")
    assert [p.read_text() for p in got] == ["hi", "7"]
    # content-addressed objects beside the run's folder, read-only
    objects = [p for p in (tmp_path / "arts" / "objects").rglob("*") if p.is_file()]
    assert len(objects) == 2
    assert not os.access(objects[0], os.W_OK) or os.geteuid() == 0


# --- reuse ----------------------------------------------------------------------------------------


async def test_reuse_step_takes_earlier_outputs_optionally_modified(tmp_path: Path) -> None:
    calls: list[str] = []

    @op(outputs={"y": int})
    async def expensive(x: int):
        calls.append("expensive")
        return {"y": x * 100}

    def build() -> Workflow:
        e = Step("e", expensive, parameters={"x": 2})
        w = Step("w", write, parameters={"text": "kept"})
        c = Step("c", add, parameters={"x": e.outputs.parameters["y"]})
        r = Step("r", read, artifacts={"file": w.outputs.artifacts["file"]})
        return Workflow("reuse", artifacts=tmp_path / "one").add([e, w]).add([c, r])

    first = build()
    assert await run_wf(first) == "Succeeded"
    assert calls == ["expensive"]
    e_rec, w_rec = first.query_step(name=["e", "w"])
    e_rec.modify_output_parameter("y", 7)

    second = build()
    second._root = tmp_path / "two"  # another store: the reused files are brought over
    assert await run_wf(second, reuse_step=[e_rec, w_rec]) == "Succeeded"
    assert calls == ["expensive"]  # not run again
    assert second.query_step(name="c")[0].outputs.parameters["sum"].value == 8
    assert second.query_step(name="r")[0].outputs.parameters["text"].value == "kept"
    assert second.query_step(name="e")[0].reused
    with pytest.raises(KeyError, match="nope"):
        e_rec.modify_output_parameter("nope", 1)


class Point(BaseModel):
    x: int


async def test_reuse_without_a_store_keeps_values_as_they_are() -> None:
    @op(outputs={"p": Point})
    async def make():
        return {"p": Point(x=1)}

    @op(outputs={"x": int})
    async def read_point(p: Point):
        return {"x": p.x}

    def build() -> Workflow:
        mk = Step("mk", make)
        return (
            Workflow("w")
            .add(mk)
            .add(Step("rd", read_point, parameters={"p": mk.outputs.parameters["p"]}))
        )

    first = build()
    assert await run_wf(first) == "Succeeded"
    [record] = first.query_step(name="mk")
    record.modify_output_parameter("p", Point(x=41))
    second = build()
    assert await run_wf(second, reuse_step=[record]) == "Succeeded"
    assert second.query_step(name="rd")[0].outputs.parameters["x"].value == 41


async def test_modify_output_artifact_checks_the_shape(tmp_path: Path) -> None:
    wf = Workflow("w", artifacts=tmp_path).add(
        [
            Step("many", WriteFile, parameters={"msg": "m", "number": 1}),
            Step("one", write, parameters={"text": "t"}),
        ]
    )
    assert await run_wf(wf) == "Succeeded"
    many, one = wf.query_step(name=["many", "one"])
    single = one.outputs.artifacts["file"]
    assert single is not None
    with pytest.raises(TypeError, match="holds a list"):
        many.modify_output_artifact("out_art", single)


async def test_a_reused_step_is_not_recorded_skipped_by_its_guard(
    tmp_path: Path, counts: Path
) -> None:
    from tests import durable_workflows as dw

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with aflow.Runtime(store=url) as rt:
        first = dw.ops_mixed(fail=-1, limit=0)  # 9 > 0: maybe runs
        await first.submit(runtime=rt)
        assert await first.wait() == "Succeeded"
        reuse = first.query_step(name=["prep", "maybe"])
        second = dw.ops_mixed(fail=-1)  # 9 > 100 is false, but maybe is reused
        run = await second.submit(runtime=rt, reuse_step=reuse)
        assert await second.wait() == "Succeeded"
        here = await Workflow.load(run.id, runtime=rt)  # live in this runtime
    async with aflow.Runtime(store=url) as rt:
        stored = await Workflow.load(run.id, runtime=rt)
    for wf in (second, here, stored):
        records = {r.name: r for r in wf.query_step()}
        assert (records["maybe"].phase, records["maybe"].reused) == ("Succeeded", True)
        assert records["after-maybe"].phase == "Succeeded"


# --- queries of a stored run ----------------------------------------------------------------------


async def test_a_keyed_resubmit_queries_the_stored_run(tmp_path: Path, counts: Path) -> None:
    from tests import durable_workflows as dw

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with aflow.Runtime(store=url) as rt:
        first = dw.ops_files(start=5)
        await first.submit(runtime=rt, idempotency_key="k1")
        assert await first.wait() == "Succeeded"
    async with aflow.Runtime(store=url) as rt:
        again = dw.ops_files(start=5)
        await again.submit(runtime=rt, idempotency_key="k1")  # nothing runs twice
        assert await again.wait() == "Succeeded"
    records = {r.name: r for r in again.query_step()}
    assert records["consume"].outputs.parameters["text"].value == "hello 5"
    [path] = download_artifact(records["produce"].outputs.artifacts["out"], tmp_path / "dl")
    assert path.read_text() == "hello 5"


async def test_load_follows_a_run_another_runtime_drives(tmp_path: Path, counts: Path) -> None:
    from tests import durable_workflows as dw

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with aflow.Runtime(store=url) as owner, aflow.Runtime(store=url) as other:
        wf = dw.ops_files(start=7)
        os.environ["AFLOW_HANG"] = "consume"  # consume blocks: the run stays running
        consuming = anyio.Event()

        def on_event(event: aflow.Event) -> None:
            if event.name == "task_started" and event.node == "consume":
                consuming.set()

        try:
            run = await wf.submit(runtime=owner, on_event=on_event)
            await consuming.wait()
            watched = await Workflow.load(run.id, runtime=other)
            assert watched.query_status() == "Running"
            with pytest.raises(RuntimeError, match="read from the store"):
                watched.run
            await run.cancel()
        finally:
            del os.environ["AFLOW_HANG"]
        with anyio.fail_after(10):
            assert await watched.wait(poll=0.01) == "Failed"
        assert watched.query_step(name="produce")[0].phase == "Succeeded"


async def test_load_reads_statuses_skips_slices_and_reuse_from_the_store(
    tmp_path: Path, counts: Path
) -> None:
    from tests import durable_workflows as dw

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with aflow.Runtime(store=url) as rt:
        first = dw.ops_mixed(fail=2)
        await first.submit(runtime=rt)
        assert await first.wait() == "Succeeded"
        live = {r.name: (r.phase, [s.phase for s in r.slices]) for r in first.query_step()}
        [prep] = first.query_step(name="prep")
        second = dw.ops_mixed(fail=2)
        run = await second.submit(runtime=rt, reuse_step=[prep])
        await second.wait()
    async with aflow.Runtime(store=url) as rt:
        loaded = await Workflow.load(first.run.id, runtime=rt)
        again = await Workflow.load(run.id, runtime=rt)
        store = rt.store
        assert store is not None
        await store.set_status(run.id, "cancelling")
        cancelling = await Workflow.load(run.id, runtime=rt)
    stored = {r.name: (r.phase, [s.phase for s in r.slices]) for r in loaded.query_step()}
    assert stored == live
    assert live["maybe"] == ("Skipped", [])
    assert live["after-maybe"] == ("Skipped", [])
    assert live["sq"] == ("Succeeded", ["Succeeded", "Succeeded", "Failed", "Succeeded"])
    assert [r.key for r in loaded.query_step(key="sq-2")] == ["sq-2"]
    assert again.query_step(name="prep")[0].reused
    assert cancelling.query_status() == "Running"


async def test_a_stored_failed_sliced_step_shows_every_slice(tmp_path: Path) -> None:
    from tests import durable_workflows as dw

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with aflow.Runtime(store=url) as rt:
        live = dw.ops_gaps(n=4)
        await live.submit(runtime=rt)
        assert await live.wait() == "Failed"
    async with aflow.Runtime(store=url) as rt:
        stored = await Workflow.load(live.run.id, runtime=rt)

    def view(wf: Workflow) -> dict[str, tuple[str, list[str]]]:
        return {r.name: (r.phase, [s.phase for s in r.slices]) for r in wf.query_step()}

    assert view(stored) == view(live)
    assert view(live)["gate"][1][:3] == ["Cancelled", "Succeeded", "Failed"]
    assert view(live)["after"] == ("Pending", [])  # never started: the run failed first
    assert [r.key for r in stored.query_step(key="gate-2")] == ["gate-2"]


@pytest.mark.slow
async def test_terminate_asks_another_process_run_to_stop_through_the_store(
    tmp_path: Path, counts: Path
) -> None:
    from tests import durable_workflows as dw

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with aflow.Runtime(store=url) as owner, aflow.Runtime(store=url) as other:
        wf = dw.ops_files(start=7)
        os.environ["AFLOW_HANG"] = "consume"  # consume blocks: the run stays running
        consuming = anyio.Event()

        def on_event(event: aflow.Event) -> None:
            if event.name == "task_started" and event.node == "consume":
                consuming.set()

        try:
            run = await wf.submit(runtime=owner, on_event=on_event)
            await consuming.wait()
            watched = await Workflow.load(run.id, runtime=other)
            await watched.terminate()  # through the store: the owner's process stops it
            assert other.store is not None
            assert (await other.store.get_run(run.id)).status in ("cancelling", "cancelled")
            with anyio.fail_after(20):
                await run.wait()
        finally:
            del os.environ["AFLOW_HANG"]
        assert run.status is aflow.RunStatus.CANCELLED
