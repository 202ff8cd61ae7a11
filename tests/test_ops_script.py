"""A dflow script keeps its shape: ``wf.submit()`` / ``wf.wait()`` / queries in a plain
script with no event loop, ``with Workflow(...) as wf:`` building (and submitting) the
workflow, function-style ops called inside it, and ``upload_artifact``."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Annotated, Any, cast

import anyio
import pytest

import aflow
from aflow.errors import SignatureError
from aflow.ops import (
    OP,
    Artifact,
    PythonOPTemplate,
    Step,
    Workflow,
    download_artifact,
    op,
    upload_artifact,
)

ROOT = Path(__file__).resolve().parent.parent


@OP.function(outputs={"sum": int})
def add(x: int, y: int) -> dict[str, int]:
    return {"sum": x + y}


@OP.function(outputs={"text": str, "copy": Artifact(Path)})
def shout(src: Annotated[Path, Artifact(Path)], times: int = 2) -> dict[str, Any]:
    return {"text": src.read_text().upper() * times, "copy": src}


# --- in a plain script (these tests are sync: no event loop runs in their thread) -------------


def test_submit_wait_and_query_in_a_plain_script() -> None:
    wf = Workflow("plain").add(Step("s", PythonOPTemplate(add), parameters={"x": 1, "y": 2}))
    done = wf.submit()  # submits and returns: no loop, no await
    assert wf.query_status() in ("Running", "Succeeded")
    assert wf.wait() == "Succeeded"  # blocks, then gives the status as text
    assert wf.wait() == "Succeeded"  # again: the run has ended
    assert wf.query_status() == "Succeeded"
    assert wf.query_step(name="s")[0].outputs.parameters["sum"].value == 3
    assert wf.run.id == wf.query_step()[0].run_id  # the handle: a run of the script loop
    assert done is not None
    with pytest.raises(TypeError, match="runtime="):
        wf.submit(runtime=cast("aflow.Runtime", object()))  # (a runtime of no loop here)


def test_a_with_block_adds_the_steps_made_in_it_and_submits_at_its_end() -> None:
    with Workflow("block") as wf:
        first = Step("first", PythonOPTemplate(add), parameters={"x": 1, "y": 1})
        Step(
            "second",
            PythonOPTemplate(add),
            parameters={"x": first.outputs.parameters["sum"], "y": 5},
        )
    assert [s.name for s in wf.steps] == ["first", "second"]
    wf.wait()
    assert wf.query_status() == "Succeeded"
    assert wf.query_step(name="second")[0].outputs.parameters["sum"].value == 7


def test_function_style_ops_called_in_a_with_block_wire_by_their_outputs(tmp_path: Path) -> None:
    assert add(1, 2) == {"sum": 3}  # outside a workflow: the function itself
    (tmp_path / "a.txt").write_text("hi")
    art = upload_artifact(tmp_path / "a.txt")
    with Workflow("calls") as wf:
        a = add(1, 2)
        b = add(a["sum"], 10)
        c = add(x=a["sum"], y=100)
        d = add(b["sum"], c["sum"])
        s = shout(art, times=3)
    assert sorted(a) == ["sum"]
    assert [st.name for st in wf.steps] == ["add-0", "add-1", "add-2", "add-3", "shout-0"]
    assert d["sum"].step.name == "add-3"
    wf.wait()
    assert wf.query_status() == "Succeeded"
    values = {r.name: r.outputs.parameters for r in wf.query_step()}
    assert values["add-3"]["sum"].value == 116
    assert values["shout-0"]["text"].value == "HIHIHI"
    # the calls that do not read each other ran side by side: one stage, ordered by wiring
    assert len(wf._entry.stages) == 1
    assert s["copy"].step.name == "shout-0"
    with pytest.raises(SignatureError, match="two values"), Workflow("bad"):
        add(1, x=2)


def test_a_failed_run_in_a_script_is_failed_not_raised() -> None:
    @OP.function(outputs={"y": int})
    def broken(x: int) -> dict[str, int]:
        raise ValueError("no")

    with Workflow("fails") as wf:
        broken(1)
    wf.wait()
    assert wf.query_status() == "Failed"
    assert wf.query_step(name="broken-0")[0].phase == "Failed"


def test_upload_artifact_gives_an_input_and_a_replacement_output(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f1").write_text("one")
    (tmp_path / "x.txt").write_text("x")
    folder = upload_artifact(tmp_path / "d", artifacts=tmp_path / "store")
    files = upload_artifact([tmp_path / "x.txt", tmp_path / "d" / "f1"])
    assert folder.shape == "one"
    assert files.shape == "list"
    (tmp_path / "d" / "f1").write_text("changed later")  # the upload kept what was there
    [out] = download_artifact(folder, path=tmp_path / "dl")
    assert (out / "f1").read_text() == "one"
    with pytest.raises(FileNotFoundError):
        upload_artifact(tmp_path / "missing")

    wf = Workflow("up").add(
        Step("s", PythonOPTemplate(shout), artifacts={"src": upload_artifact(tmp_path / "x.txt")})
    )
    wf.submit()
    wf.wait()
    record = wf.query_step(name="s")[0]
    assert record.outputs.parameters["text"].value == "XX"
    record.modify_output_artifact("copy", upload_artifact(tmp_path / "d" / "f1"))
    [copy] = download_artifact(record.outputs.artifacts["copy"], path=tmp_path / "dl2")
    assert copy.read_text() == "changed later"


# --- a script's end ---------------------------------------------------------------------------


SCRIPT = textwrap.dedent(
    """
    import sys, threading
    from aflow.ops import OP, PythonOPTemplate, Step, Workflow

    script_ended = threading.Event()

    @OP.function(outputs={"sum": int})
    def slow_add(x: int, y: int) -> dict:
        script_ended.wait(30)  # the script's body is over before any step ends
        with open(sys.argv[1], "a") as f:
            f.write(f"{x + y}\\n")
        return {"sum": x + y}

    with Workflow("ends") as wf:
        a = slow_add(1, 2)
        slow_add(a["sum"], 1)
    print(wf.query_status(), flush=True)
    script_ended.set()
    """
)


@pytest.mark.slow
def test_a_script_that_submits_and_ends_still_sees_its_workflow_through(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in ("Running", "Pending")
    assert out.read_text().split() == ["3", "4"]


async def test_under_a_running_loop_the_with_block_leaves_submitting_to_the_caller() -> None:
    with Workflow("async") as wf:
        add(1, 2)
    assert wf.query_status() == "Pending"  # not submitted: a running loop needs an await
    async with aflow.Runtime():
        run = await wf.submit()
        assert await wf.wait() == "Succeeded"
    assert await run.result() == {"add-0": {"sum": 3}}


# --- stopping a run (dflow's terminate) ---------------------------------------------------------


def test_terminate_in_a_plain_script_stops_the_run() -> None:
    started = threading.Event()

    @op(outputs={"y": int})
    async def hang(x: int):
        started.set()
        await anyio.sleep_forever()
        return {"y": x}

    with Workflow("stopped") as wf:
        first = Step("first", hang, parameters={"x": 1})
        Step("second", add, parameters={"x": first.outputs.parameters["y"], "y": 1})
    assert started.wait(10)
    done = wf.terminate()  # returns once the run has stopped
    assert done is not None
    assert wf.query_status() == "Failed"
    phases = {r.name: r.phase for r in wf.query_step()}
    assert phases == {"first": "Cancelled", "second": "Pending"}
    with pytest.raises(RuntimeError, match="not been submitted"):
        Workflow("never").terminate()


async def test_terminate_under_a_running_loop_is_awaited() -> None:
    started = anyio.Event()

    @op(outputs={"y": int})
    async def wait_forever(x: int):
        started.set()
        await anyio.sleep_forever()
        return {"y": x}

    wf = Workflow("stopped").add(Step("s", wait_forever, parameters={"x": 1}))
    async with aflow.Runtime():
        run = await wf.submit()
        with anyio.fail_after(10):
            await started.wait()
            await wf.terminate()
        assert wf.query_status() == "Failed"
        assert run.status is aflow.RunStatus.CANCELLED
    assert wf.query_step(name="s")[0].phase == "Cancelled"


async def test_a_condition_that_changes_what_it_reads_changes_no_output() -> None:
    @op(outputs={"xs": list[int]})
    async def make():
        return {"xs": [1, 2]}

    def greedy(seen: dict[str, Any]) -> bool:
        seen["m"]["xs"].append(99)
        return True

    m = Step("m", make)
    wf = (
        Workflow("w")
        .add(m)
        .add(Step("s", PythonOPTemplate(add), parameters={"x": 1, "y": 2}, when=greedy))
    )
    async with aflow.Runtime():
        await wf.submit()
        assert await wf.wait() == "Succeeded"
    assert wf.query_step(name="m")[0].outputs.parameters["xs"].value == [1, 2]
