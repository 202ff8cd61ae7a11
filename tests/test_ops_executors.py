"""dflow ops run elsewhere (issue 21): ``Step(executor="process")`` runs an op's
``execute`` in a worker process with its work dir as the current directory, so dflow
code that writes relative paths works unchanged; on Dask it runs on a worker (with
``op_in.workdir``, the worker's directory being shared)."""

from __future__ import annotations

import os
import pathlib
import threading
from typing import Any

import anyio
import pytest

from aflow.errors import SerializationError, SignatureError
from aflow.ops import (
    OP,
    OPIO,
    OPIOSign,
    PythonOPTemplate,
    Slices,
    Step,
    Steps,
    Workflow,
    download_artifact,
)
from tests import ops_elsewhere as oe
from tests.ops_helpers import add, run_wf


async def test_a_dflow_op_writing_relative_paths_runs_in_its_work_dir_in_a_worker(
    tmp_path: pathlib.Path,
) -> None:
    here = os.getcwd()
    wf = Workflow("hello", artifacts=tmp_path / "arts")
    hello = Step(
        "hello",
        PythonOPTemplate(oe.WriteRelative),
        parameters={"msg": "Hello", "number": 3},
        executor="process",
    )
    again = Step(
        "again",
        PythonOPTemplate(oe.read_relative),
        artifacts={"files": hello.outputs.artifacts["out_art"]},
        executor="process",
    )
    wf.add(hello)
    wf.add(again)
    assert await run_wf(wf) == "Succeeded", [s.error for s in wf.query_step()]
    assert os.getcwd() == here  # (this process's directory was never changed)
    [done] = wf.query_step(name="hello")
    out = done.outputs.parameters
    assert out["pid"].value != os.getpid()
    work = pathlib.Path(out["cwd"].value)
    assert work.is_relative_to(tmp_path / "arts" / "work")  # its own work dir...
    assert not await anyio.Path(work).exists()  # ...removed once its outputs were stored
    files = download_artifact(done.outputs.artifacts["out_art"], tmp_path / "out")
    assert sorted(p.read_text() for p in files) == ["3", "Hello"]
    assert sorted(str(p.relative_to(tmp_path / "out")) for p in files) == [
        "msg.txt",
        "sub/results.txt",  # (a sub-folder of the work dir keeps its path, as in dflow)
    ]
    [read] = wf.query_step(name="again")
    assert read.outputs.parameters["text"].value == "Hello"  # (the first file of the list)
    assert read.outputs.parameters["cwd"].value != work


async def test_slices_each_run_in_a_work_dir_of_their_own(tmp_path: pathlib.Path) -> None:
    wf = Workflow("squares", artifacts=tmp_path / "arts")
    step = Step(
        "sq",
        PythonOPTemplate(
            oe.square_here, slices=Slices(input_parameter=["n"], output_parameter=["square", "cwd"])
        ),
        parameters={"n": [1, 2, 3, 4]},
        executor="process",
    )
    wf.add(step)
    assert await run_wf(wf) == "Succeeded", [s.error for s in wf.query_step()]
    [done] = wf.query_step(name="sq")
    assert done.outputs.parameters["square"].value == [1, 4, 9, 16]
    assert len(set(done.outputs.parameters["cwd"].value)) == 4


async def test_an_op_runs_on_the_executor_its_step_names(elsewhere: Any) -> None:
    wf = Workflow("where")
    wf.add(Step("w", PythonOPTemplate(oe.where_am_i), executor=elsewhere))
    wf.add(Step("a", PythonOPTemplate(add), parameters={"x": 1}, executor=elsewhere))
    assert await run_wf(wf) == "Succeeded", [s.error for s in wf.query_step()]
    assert wf.query_step(name="w")[0].outputs.parameters["pid"].value != os.getpid()
    assert wf.query_step(name="a")[0].outputs.parameters["sum"].value == 2


class Local(OP):  # (an instance holding a lock cannot be sent)
    def __init__(self) -> None:
        self.lock = threading.Lock()

    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign({})

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign({})

    def execute(self, op_in: OPIO) -> OPIO:
        return OPIO()


async def test_what_cannot_go_is_named() -> None:
    wf = Workflow("unsent")
    wf.add(Step("l", PythonOPTemplate(Local()), executor="process"))
    assert await run_wf(wf) == "Failed"
    [failed] = wf.query_step(name="l")
    assert isinstance(failed.error, SerializationError)
    assert "'Local': cannot serialise a tests.test_ops_executors.Local at the op" in str(
        failed.error
    )
    wf = Workflow("unsent-input")
    wf.add(
        Step(
            "w",
            PythonOPTemplate(oe.where_am_i),
            parameters={"x": lambda: 1},  # (copied as itself, but named, not sent)
            executor="process",
        )
    )
    assert await run_wf(wf) == "Failed"
    [failed] = wf.query_step(name="w")
    assert isinstance(failed.error, SerializationError)
    assert "'where_am_i': cannot serialise a builtins.function at input 'x'" in str(failed.error)


def test_step_executor_values_are_checked() -> None:
    with pytest.raises(SignatureError, match=r"step 'w'.*executor must be"):
        Step("w", PythonOPTemplate(oe.where_am_i), executor="threads")
    with pytest.raises(SignatureError, match="Steps or a DAG"):
        Step("t", Steps("inner"), executor="process")
    with pytest.raises(SignatureError, match=r"get_input_sign\(\) must return an OPIOSign"):
        Step("d", PythonOPTemplate(SignAsDict))


class SignAsDict(Local):
    @classmethod
    def get_input_sign(cls) -> Any:
        return {"x": int}
