"""aflow.ops: dflow-style typed operators, artifacts, slices, conditions, queries and reuse."""

from __future__ import annotations

import os
import pathlib
import sys
import threading
from pathlib import Path
from typing import Annotated, Any, TypedDict

import anyio
import anyio.lowlevel
import pytest
from pydantic import BaseModel

import aflow
from aflow import ops
from aflow.ops import (
    DAG,
    OP,
    OPIO,
    Artifact,
    OPIOSign,
    Parameter,
    PythonOPTemplate,
    Slices,
    Step,
    Workflow,
    download_artifact,
    op,
)

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


# --- operators used below ------------------------------------------------------------------------


class WriteFile(OP):
    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign({"msg": str, "number": int})

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign({"out_art": Artifact(list[Path])})

    def execute(self, op_in: OPIO) -> OPIO:
        (op_in.workdir / "msg.txt").write_text(op_in["msg"])
        (op_in.workdir / "results.txt").write_text(str(op_in["number"]))
        return OPIO({"out_art": [Path("msg.txt"), Path("results.txt")]})


@op(outputs={"sum": int})
async def add(x: int, y: int = 1):
    return {"sum": x + y}


@op(outputs={"text": str})
def to_text(x: int):
    return {"text": str(x)}


class Sum(TypedDict):
    total: int


@op
async def total(values: list[int | None]) -> Sum:
    return {"total": sum(v for v in values if v is not None)}


@op(outputs={"file": Artifact(Path)})
async def write(text: str, workdir: Path):
    (workdir / "note.txt").write_text(text)
    return {"file": Path("note.txt")}


@op(outputs={"text": str})
async def read(file: Annotated[Path, Artifact(Path)]):
    return {"text": file.read_text()}


@op(outputs={"y": int})
async def boom(x: int):
    raise ValueError(f"boom {x}")


@op(outputs={"y": int})
async def wrong_type(x: int):
    return {"y": "5"}


@op(outputs={"y": int, "z": int})
async def missing_key(x: int):
    return {"y": 1}


class PeakProbe:
    """An op that counts how many of its calls run at once; each call holds on until
    ``fill`` calls are in flight (so a bound that is too loose shows), then yields a little."""

    def __init__(self, fill: int) -> None:
        self.in_flight = 0
        self.peak = 0
        self.full = anyio.Event()
        probe = self

        @op(outputs={"x": int})
        async def probe_op(x: int):
            probe.in_flight += 1
            probe.peak = max(probe.peak, probe.in_flight)
            if probe.in_flight == fill:
                probe.full.set()
            await probe.full.wait()
            for _ in range(5):
                await anyio.lowlevel.checkpoint()  # let any unbounded sibling start
            probe.in_flight -= 1
            return {"x": x}

        self.op = probe_op


async def run_wf(wf: Workflow, **submit: Any) -> str:
    async with aflow.Runtime():
        await wf.submit(**submit)
        return await wf.wait()


# --- the seed's hello world ----------------------------------------------------------------------


async def test_hello_world_downloads_both_files(tmp_path: Path) -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        import dflow_style  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    paths = await dflow_style.main(tmp_path)
    assert sorted(p.name for p in paths) == ["msg.txt", "results.txt"]
    assert (tmp_path / "msg.txt").read_text() == "HelloWorld!"
    assert (tmp_path / "results.txt").read_text() == "1"


async def test_typed_ops_example_reuses_the_simulation(tmp_path: Path) -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        import typed_ops  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    typed_ops.simulations = 0
    outcome = await typed_ops.main(tmp_path)
    assert outcome["simulations"] == 5  # the second run reused them all
    assert outcome["flag"] == "Skipped"  # the lowered scores miss the threshold
    assert outcome["report"].splitlines()[2] == "candidate 2: 0.80"


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


# --- typed boundaries ----------------------------------------------------------------------------


def test_a_literal_of_the_wrong_type_is_refused_when_the_step_is_built() -> None:
    with pytest.raises(
        aflow.errors.SignatureError, match=r"input 'number': expected int, got str"
    ) as info:
        Step("step0", WriteFile, parameters={"msg": "hi", "number": "5"})
    assert info.value.task == "step0"
    assert info.value.argument == "number"


def test_a_missing_input_is_a_build_time_error_naming_step_and_key() -> None:
    with pytest.raises(aflow.errors.MissingInputError) as info:
        Step("step0", WriteFile, parameters={"msg": "hi"})
    assert info.value.task == "step0"
    assert info.value.missing == ("number",)


def test_unknown_inputs_and_misplaced_artifacts_are_refused() -> None:
    with pytest.raises(aflow.errors.SignatureError, match="has no input 'nope'"):
        Step("s", WriteFile, parameters={"msg": "a", "number": 1, "nope": 2})
    producer = Step("w", write, parameters={"text": "x"})
    with pytest.raises(aflow.errors.SignatureError, match="is a parameter, but is wired to"):
        Step("s", add, parameters={"x": producer.outputs.artifacts["file"]})
    with pytest.raises(aflow.errors.SignatureError, match="no output parameter 'nope'"):
        producer.outputs.parameters["nope"]
    with pytest.raises(aflow.errors.SignatureError, match="is given in artifacts="):
        Step("r", read, parameters={"file": "x.txt"})


async def test_a_wired_value_of_the_wrong_type_fails_the_step_and_nothing_downstream_runs() -> None:
    ran: list[str] = []

    @op(outputs={"x": int})
    async def record(x: int):
        ran.append("downstream")
        return {"x": x}

    text = Step("text", to_text, parameters={"x": 5})
    bad = Step("bad", add, parameters={"x": text.outputs.parameters["text"]})  # str into int
    after = Step("after", record, parameters={"x": bad.outputs.parameters["sum"]})
    wf = Workflow("typed").add(text).add(bad).add(after)
    assert await run_wf(wf) == "Failed"
    [failed] = wf.query_step(phase="Failed")
    assert failed.key == "bad"
    error = failed.error
    assert isinstance(error, aflow.errors.OpIOError)
    assert (error.op, error.direction, error.key, error.expected) == ("add", "input", "x", "int")
    assert error.actual.startswith("str")
    assert ran == []
    assert wf.query_step(name="after")[0].phase == "Pending"
    with pytest.raises(aflow.errors.OpIOError):
        await wf.run.result()


@pytest.mark.parametrize(
    ("operator", "key", "expected", "actual"),
    [
        (wrong_type, "y", "int", "str ('5')"),
        (missing_key, "z", "int", "nothing (the key is missing)"),
    ],
)
async def test_outputs_are_checked(
    operator: type[OP], key: str, expected: str, actual: str
) -> None:
    wf = Workflow("out").add(Step("s", operator, parameters={"x": 1}))
    assert await run_wf(wf) == "Failed"
    error = wf.query_step(name="s")[0].error
    assert isinstance(error, aflow.errors.OpIOError)
    assert (error.direction, error.key, error.expected, error.actual) == (
        "output",
        key,
        expected,
        actual,
    )


async def test_an_output_artifact_that_does_not_exist_fails_the_step() -> None:
    @op(outputs={"f": Artifact(Path)})
    async def liar():
        return {"f": Path("never-written.txt")}

    wf = Workflow("liar").add(Step("s", liar))
    assert await run_wf(wf) == "Failed"
    error = wf.query_step(name="s")[0].error
    assert isinstance(error, aflow.errors.OpIOError)
    assert error.key == "f"
    assert "missing path" in error.actual


async def test_defaults_typeddict_outputs_and_parameter_objects() -> None:
    class Scale(OP):
        @classmethod
        def get_input_sign(cls) -> OPIOSign:
            return OPIOSign({"x": int, "factor": Parameter(int, default=3)})

        @classmethod
        def get_output_sign(cls) -> OPIOSign:
            return OPIOSign({"y": int})

        async def execute(self, op_in: OPIO) -> OPIO:
            return OPIO({"y": op_in["x"] * op_in["factor"]})

    a = Step("a", add, parameters={"x": 1})  # y defaults to 1
    b = Step("b", Scale, parameters={"x": a.outputs.parameters["sum"]})
    with pytest.raises(
        aflow.errors.SignatureError, match="at \\[0\\]"
    ):  # a list of references is no wiring
        Step("c", total, parameters={"values": [b.outputs.parameters["y"]]})
    c = Step("c", add, parameters={"x": b.outputs.parameters["y"], "y": 10})
    assert await aflow.run(Workflow("w").add(a).add(b).add(c)) == {"c": {"sum": 16}}


async def test_sync_ops_run_in_a_worker_thread_and_async_ops_on_the_loop() -> None:
    seen: dict[str, int] = {}

    @op(outputs={"t": int})
    def in_thread():
        seen["sync"] = threading.get_ident()
        return {"t": 1}

    @op(outputs={"t": int})
    async def on_loop():
        seen["async"] = threading.get_ident()
        return {"t": 1}

    assert await run_wf(Workflow("t").add([Step("a", in_thread), Step("b", on_loop)])) == (
        "Succeeded"
    )
    assert seen["async"] == threading.get_ident()
    assert seen["sync"] != threading.get_ident()


# --- artifacts and working directories -----------------------------------------------------------


async def test_each_attempt_gets_a_fresh_workdir_and_the_process_cwd_never_changes(
    tmp_path: Path,
) -> None:
    cwd = os.getcwd()
    workdirs: list[Path] = []

    @op(outputs={"f": Artifact(Path)})
    async def flaky(workdir: Path):
        assert os.getcwd() == cwd
        leftovers = list(workdir.iterdir())  # noqa: ASYNC240
        workdirs.append(workdir)
        (workdir / "partial.txt").write_text(str(len(workdirs)))
        if len(workdirs) < 3:
            raise OSError("transient")
        assert leftovers == []  # nothing of the failed attempts leaks in
        return {"f": Path("partial.txt")}

    @op(outputs={"n": int})
    async def other(workdir: Path):
        workdirs.append(workdir)
        return {"n": len(list(workdir.iterdir()))}  # noqa: ASYNC240

    s = Step("s", flaky, retries=2)
    t = Step("t", other)
    wf = Workflow("fresh", artifacts=tmp_path).add(s).add(t)
    assert await run_wf(wf) == "Succeeded"
    assert len(set(workdirs)) == 4
    assert wf.query_step(name="s")[0].attempts == 3
    assert wf.query_step(name="t")[0].outputs.parameters["n"].value == 0
    [f] = download_artifact(wf.query_step(name="s")[0].outputs.artifacts["f"], tmp_path / "out")
    assert f.read_text() == "3"


async def test_directories_dicts_and_local_files_as_artifacts(tmp_path: Path) -> None:
    local = tmp_path / "input.txt"
    local.write_text("from the caller")

    @op  # dflow's own form: the outputs in the return annotation
    async def tree(
        src: Artifact(Path), workdir: Path
    ) -> {
        "d": Artifact(Path),  # noqa: UP037 - ruff reads the keys as quoted annotations
        "m": Artifact(dict[str, Path]),  # noqa: UP037, F821
    }:
        (workdir / "out" / "sub").mkdir(parents=True)
        (workdir / "out" / "sub" / "deep.txt").write_text(src.read_text().upper())
        (workdir / "a.txt").write_text("A")
        (workdir / "b.txt").write_text("B")
        return {"d": Path("out"), "m": {"first": Path("a.txt"), "second": Path("b.txt")}}

    @op(outputs={"text": str})
    async def look(d: Artifact(Path), m: Artifact(dict[str, Path])):
        assert d.is_dir()
        return {
            "text": (d / "sub" / "deep.txt").read_text()
            + m["first"].read_text()
            + m["second"].read_text()
        }

    t = Step("t", tree, artifacts={"src": local})
    u = Step("u", look, artifacts={"d": t.outputs.artifacts["d"], "m": t.outputs.artifacts["m"]})
    wf = Workflow("trees", artifacts=tmp_path / "store").add(t).add(u)
    assert await run_wf(wf) == "Succeeded", [r.error for r in wf.query_step()]
    assert wf.query_step(name="u")[0].outputs.parameters["text"].value == "FROM THE CALLERAB"
    [d] = download_artifact(wf.query_step(name="t")[0].outputs.artifacts["d"], tmp_path / "dl")
    assert (d / "sub" / "deep.txt").read_text() == "FROM THE CALLER"
    assert local.read_text() == "from the caller"


async def test_artifacts_default_beside_the_sqlite_store(
    tmp_path: Path, counts: pathlib.Path
) -> None:
    from tests import durable_workflows as dw

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with aflow.Runtime(store=url) as rt:
        wf = dw.ops_files(start=3)  # built by an @aflow.workflow: durable
        run = await wf.submit(runtime=rt)
        assert await run.result() == {"consume": {"text": "hello 3"}}
    assert (tmp_path / "runs.db.artifacts" / "objects").is_dir()
    [path] = download_artifact(wf.query_step(name="produce")[0].outputs.artifacts["out"], tmp_path)
    assert path.read_text() == "hello 3"
    # later, another runtime (another process, say) reads the run back from the store
    async with aflow.Runtime(store=url):
        again = await Workflow.load(run.id)
    assert again.query_status() == "Succeeded"
    records = {r.name: r for r in again.query_step()}
    assert records["consume"].outputs.parameters["text"].value == "hello 3"
    assert records["produce"].attempts == 1
    assert records["produce"].started_at is not None
    [copy] = download_artifact(records["produce"].outputs.artifacts["out"], tmp_path / "again")
    assert copy.read_text() == "hello 3"


async def test_a_plain_workflow_cannot_run_durably(tmp_path: Path) -> None:
    wf = Workflow("w").add(Step("a", add, parameters={"x": 1}))
    async with aflow.Runtime(store=f"sqlite:///{tmp_path / 'r.db'}"):
        with pytest.raises(aflow.errors.DefinitionError, match=r"@aflow\.workflow"):
            await wf.submit()


async def test_submit_needs_a_runtime() -> None:
    wf = Workflow("w").add(Step("a", add, parameters={"x": 1}))
    with pytest.raises(RuntimeError, match=r"needs a running aflow\.Runtime"):
        await wf.submit()


# --- ordering: sequence, parallel, DAG -----------------------------------------------------------


async def test_add_runs_steps_in_sequence_and_lists_in_parallel() -> None:
    events = {name: anyio.Event() for name in ("b", "c")}
    order: list[str] = []

    def waiter(name: str, other: str) -> type[OP]:
        @op(outputs={"ok": bool})
        async def step():
            order.append(f"start {name}")
            events[name].set()
            await events[other].wait()  # both must run at once, or this never ends
            order.append(f"end {name}")
            return {"ok": True}

        return step

    @op(outputs={"ok": bool})
    async def mark(tag: str):
        order.append(tag)
        return {"ok": True}

    wf = Workflow("seq")
    wf.add(Step("a", mark, parameters={"tag": "a"}))
    wf.add([Step("b", waiter("b", "c")), Step("c", waiter("c", "b"))])
    wf.add(Step("d", mark, parameters={"tag": "d"}))
    with anyio.fail_after(10):
        assert await run_wf(wf) == "Succeeded"
    assert order[0] == "a"
    assert order[-1] == "d"
    assert set(order[1:3]) == {"start b", "start c"}


async def test_a_dag_orders_by_wiring_and_explicit_dependencies_add_to_it() -> None:
    order: list[str] = []

    @op(outputs={"x": int})
    async def mark(tag: str, x: int = 0):
        order.append(tag)
        await anyio.lowlevel.checkpoint()
        return {"x": x + 1}

    a = Step("a", mark, parameters={"tag": "a"})
    side = Step("side", mark, parameters={"tag": "side"})
    b = Step(
        "b",
        mark,
        parameters={"tag": "b", "x": a.outputs.parameters["x"]},
        dependencies=[side],  # adds to the wiring: b waits for a *and* side
    )
    dag = DAG().add([b, side, a])  # added out of order on purpose
    wf = Workflow("dag", dag=dag)
    assert await run_wf(wf) == "Succeeded"
    assert order.index("b") > order.index("a")
    assert order.index("b") > order.index("side")
    assert wf.query_step(name="b")[0].outputs.parameters["x"].value == 2


def test_cycles_duplicates_and_foreign_steps_are_build_errors() -> None:
    a = Step("a", add, parameters={"x": 1})
    b = Step("b", add, parameters={"x": a.outputs.parameters["sum"]})
    a.dependencies = (b,)  # only a later change can close a loop
    with pytest.raises(aflow.errors.CycleError, match=r"cycle: (a -> b -> a|b -> a -> b)"):
        aflow.compile(Workflow("c", dag=DAG().add([a, b])))
    a.dependencies = ()
    with pytest.raises(aflow.errors.SignatureError, match="is not in workflow"):
        aflow.compile(Workflow("c").add(b))
    with pytest.raises(aflow.errors.DuplicateTaskError):
        aflow.compile(Workflow("c").add(a).add(Step("a", add, parameters={"x": 2})))
    x = Step("x", add, parameters={"x": 1})
    y = Step("y", add, parameters={"x": 1}, dependencies=[x])
    with pytest.raises(aflow.errors.SignatureError, match="depends on step 'x'"):
        aflow.compile(Workflow("c", dag=DAG().add([y])))


# --- submit, wait, status ------------------------------------------------------------------------


async def test_submit_returns_at_once_and_wait_reports_without_raising() -> None:
    release = anyio.Event()
    started = anyio.Event()

    @op(outputs={"ok": bool})
    async def gate():
        started.set()
        await release.wait()
        raise RuntimeError("declined")

    wf = Workflow("w").add(Step("g", gate))
    async with aflow.Runtime():
        run = await wf.submit()
        await started.wait()
        assert wf.query_status() == "Running"
        assert wf.query_step(name="g")[0].phase == "Running"
        release.set()
        assert await wf.wait() == "Failed"
        with pytest.raises(RuntimeError, match="declined"):
            await run.result()


# --- conditions ----------------------------------------------------------------------------------


async def test_when_expressions_and_callables_skip_steps_which_queries_still_show() -> None:
    ran: list[str] = []

    @op(outputs={"x": int})
    async def mark(tag: str, x: int = 0):
        ran.append(tag)
        return {"x": x}

    s1 = Step("s1", add, parameters={"x": 4})  # sum = 5
    big = Step("big", mark, parameters={"tag": "big"}, when=f"{s1.outputs.parameters['sum']} > 5")
    small = Step(
        "small", mark, parameters={"tag": "small"}, when=f"{s1.outputs.parameters['sum']} <= 5"
    )
    odd = Step("odd", mark, parameters={"tag": "odd"}, when=lambda seen: seen["s1"]["sum"] % 2)
    uses_big = Step(
        "uses-big", mark, parameters={"tag": "uses-big", "x": big.outputs.parameters["x"]}
    )
    after = Step("after", mark, parameters={"tag": "after"})
    wf = Workflow("cond").add(s1).add([big, small, odd]).add(uses_big).add(after)
    assert await run_wf(wf) == "Succeeded"
    assert sorted(ran) == ["after", "odd", "small"]
    phases = {r.name: r.phase for r in wf.query_step()}
    assert phases == {
        "s1": "Succeeded",
        "big": "Skipped",
        "small": "Succeeded",
        "odd": "Succeeded",
        "uses-big": "Skipped",  # it reads a skipped step's output
        "after": "Succeeded",  # ordering only: it runs after a skipped step
    }
    assert [r.name for r in wf.query_step(phase="Skipped")] == ["big", "uses-big"]
    assert [r.name for r in wf.query_step(name=["s1", "after"])] == ["s1", "after"]


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('true')",
        "{{steps.s1.outputs.parameters.sum}}.__class__",
        "[x for x in (1,)]",
        "'a' * 100000000",
        "lambda: 1",
        "open",
    ],
)
def test_when_expressions_are_evaluated_safely(expression: str) -> None:
    try:
        step = Step("t", add, parameters={"x": 1}, when=expression)
    except aflow.errors.SignatureError:
        return  # refused when built
    # what parses must still be harmless: only the multiplication case gets here
    assert step.when is not None
    with pytest.raises(TypeError):
        step.when.evaluate({})  # type: ignore[union-attr]


def test_when_expressions_name_real_outputs() -> None:
    s1 = Step("s1", add, parameters={"x": 4})
    t = Step("t", add, parameters={"x": 1}, when="{{steps.s1.outputs.parameters.nope}} > 1")
    with pytest.raises(aflow.errors.SignatureError, match="no output parameter 'nope'"):
        aflow.compile(Workflow("w").add(s1).add(t))
    u = Step("u", add, parameters={"x": 1}, when="{{steps.ghost.outputs.parameters.sum}} > 1")
    with pytest.raises(aflow.errors.SignatureError, match="step 'ghost'"):
        aflow.compile(Workflow("w").add(s1).add(u))


async def test_expression_values_are_typed_not_pasted_text() -> None:
    @op(outputs={"word": str})
    async def say():
        return {"word": "a b"}

    s = Step("s", say)
    yes = Step(
        "yes", add, parameters={"x": 1}, when=f"{s.outputs.parameters['word']} == 'a b' && true"
    )
    no = Step("no", add, parameters={"x": 1}, when=f"{s.outputs.parameters['word']} in ['x', 'y']")
    wf = Workflow("w").add(s).add([yes, no])
    assert await run_wf(wf) == "Succeeded"
    assert {r.name: r.phase for r in wf.query_step()} == {
        "s": "Succeeded",
        "yes": "Succeeded",
        "no": "Skipped",
    }


async def test_continue_on_failed_goes_on_and_skips_what_reads_the_failed_step() -> None:
    f = Step("f", boom, parameters={"x": 1}, continue_on_failed=True)
    reader = Step("reader", add, parameters={"x": f.outputs.parameters["y"]})
    after = Step("after", add, parameters={"x": 2})
    wf = Workflow("w").add(f).add([reader, after])
    assert await run_wf(wf) == "Succeeded"
    assert {r.name: r.phase for r in wf.query_step()} == {
        "f": "Failed",
        "reader": "Skipped",
        "after": "Succeeded",
    }
    assert isinstance(wf.query_step(name="f")[0].error, ValueError)


# --- retries and timeouts really apply -----------------------------------------------------------


async def test_retries_apply_to_ops() -> None:
    calls: list[int] = []

    @op(outputs={"n": int})
    async def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("again")
        return {"n": len(calls)}

    wf = Workflow("r").add(Step("f", flaky, retries=2))
    assert await run_wf(wf) == "Succeeded"
    [record] = wf.query_step()
    assert (record.attempts, record.outputs.parameters["n"].value) == (3, 3)
    calls.clear()
    wf = Workflow("r").add(Step("f", flaky, retries=1))
    assert await run_wf(wf) == "Failed"
    assert wf.query_step()[0].attempts == 2


async def test_timeouts_apply_to_ops() -> None:
    @op(outputs={"n": int})
    async def stuck():
        await anyio.sleep_forever()
        raise AssertionError

    wf = Workflow("t").add(Step("s", stuck, timeout=0.05, retries=1))
    with anyio.fail_after(10):
        assert await run_wf(wf) == "Failed"
    [record] = wf.query_step()
    assert isinstance(record.error, aflow.errors.TaskTimeout)
    assert record.attempts == 2


# --- slices --------------------------------------------------------------------------------------


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


@pytest.mark.parametrize(("pool", "group"), [(2, 1), (1, 1), (3, 2)])
async def test_the_slice_pool_bounds_what_runs_at_once(pool: int, group: int) -> None:
    probe = PeakProbe(fill=pool)
    slices = Slices(input_parameter=["x"], output_parameter=["x"], pool_size=pool, group_size=group)
    wf = Workflow("pool").add(Step("p", probe.op, parameters={"x": list(range(9))}, slices=slices))
    with anyio.fail_after(10):
        assert await run_wf(wf) == "Succeeded"
    assert probe.peak == pool
    assert wf.query_step()[0].outputs.parameters["x"].value == list(range(9))


async def test_a_failed_slice_fails_the_step_unless_a_threshold_lets_it_go_on() -> None:
    @op(outputs={"y": int})
    async def picky(x: int):
        if x % 3 == 0:
            raise ValueError(f"no {x}")
        return {"y": x}

    slices = Slices(input_parameter=["x"], output_parameter=["y"], pool_size=1)
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


# --- reuse ---------------------------------------------------------------------------------------


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


# --- durable: artifacts survive a process restart and a resumed run ------------------------------


@pytest.mark.slow
async def test_artifacts_survive_a_crash_and_the_resumed_run_reads_them(
    store_url: str, counts: pathlib.Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.durable_workflows import read_counts
    from tests.test_durable import LEASE, crash_in

    if store_url.startswith("postgres"):
        monkeypatch.setenv("AFLOW_ARTIFACTS", str(tmp_path / "shared-artifacts"))
    run_id = await anyio.to_thread.run_sync(crash_in, store_url, "ops_files", "consume", counts)
    assert read_counts(counts) == {"produce": 1, "consume": 1}
    await anyio.sleep(LEASE * 1.5)  # the dead process's heartbeat goes stale
    async with aflow.Runtime(store=store_url, recover=True, lease=LEASE) as rt:
        run = rt.get(run_id)
        assert await run.result() == {"consume": {"text": "hello 1"}}
    # the file the dead process produced was read by the resumed run; produce ran once
    assert read_counts(counts) == {"produce": 1, "consume": 2}
    async with aflow.Runtime(store=store_url) as rt:
        wf = await Workflow.load(run_id, runtime=rt)
    [produce] = wf.query_step(name="produce")
    [path] = download_artifact(produce.outputs.artifacts["out"], tmp_path / "dl")
    assert path.read_text() == "hello 1"


async def test_retries_and_timeouts_apply_to_each_slice() -> None:
    tries: dict[int, int] = {}

    @op(outputs={"x": int})
    async def shaky(x: int):
        tries[x] = tries.get(x, 0) + 1
        if x == 2 and tries[x] == 1:
            raise ConnectionError("once")
        if x == 3 and tries[x] < 3:
            await anyio.sleep_forever()  # times out twice, then answers
        return {"x": x}

    sliced = Slices(input_parameter=["x"], output_parameter=["x"])
    ok = Step("s", shaky, parameters={"x": [1, 2, 3]}, slices=sliced, retries=2, timeout=0.05)
    wf = Workflow("w").add(ok)
    with anyio.fail_after(10):
        assert await run_wf(wf) == "Succeeded"
    [record] = wf.query_step()
    assert [s.attempts for s in record.slices] == [1, 2, 3]
    assert record.outputs.parameters["x"].value == [1, 2, 3]

    tries.clear()
    short = Step("s", shaky, parameters={"x": [3]}, slices=sliced, retries=1, timeout=0.05)
    wf = Workflow("w").add(short)
    with anyio.fail_after(10):
        assert await run_wf(wf) == "Failed"
    [record] = wf.query_step()
    assert isinstance(record.error, aflow.errors.TaskTimeout)
    assert record.slices[0].attempts == 2
    assert record.slices[0].phase == "Failed"


# --- regressions found in review ------------------------------------------------------------------


@pytest.mark.parametrize("sliced", [False, True])
async def test_timeouts_apply_to_sync_ops_too(sliced: bool) -> None:
    release = threading.Event()

    @op(outputs={"y": int})
    def slow(x: int):
        release.wait(5)  # blocks its thread until the timeout has fired
        return {"y": x}

    options: dict[str, Any] = {"timeout": 0.05}
    if sliced:
        options["slices"] = Slices(input_parameter=["x"], output_parameter=["y"])
    wf = Workflow("t").add(Step("s", slow, parameters={"x": [1] if sliced else 1}, **options))
    async with aflow.Runtime():
        await wf.submit()
        with anyio.fail_after(10):
            while wf.query_step()[0].phase == "Pending" or (wf.query_step()[0].started_at is None):
                await anyio.lowlevel.checkpoint()
            await anyio.sleep(0.1)  # the timeout fires while the thread is blocked
            release.set()
            assert await wf.wait() == "Failed"
    error = wf.query_step()[0].error
    assert isinstance(error, aflow.errors.TaskTimeout), error


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


async def test_max_concurrency_bounds_slices_and_steps_of_every_run() -> None:
    probe = PeakProbe(fill=2)
    sliced = Slices(input_parameter=["x"], output_parameter=["x"])  # no pool_size

    def build() -> Workflow:
        return Workflow("w").add(
            [
                Step("p", probe.op, parameters={"x": list(range(6))}, slices=sliced),
                Step("q", probe.op, parameters={"x": list(range(6))}, slices=sliced),
                Step("plain", probe.op, parameters={"x": 1}),
            ]
        )

    first, second = build(), build()
    async with aflow.Runtime(max_concurrency=2):  # shared by both runs, steps and slices
        await first.submit()
        await second.submit()
        with anyio.fail_after(10):
            assert await first.wait() == "Succeeded"
            assert await second.wait() == "Succeeded"
    assert probe.peak == 2


@pytest.mark.parametrize(
    "when",
    ["{{steps.s1.outputs.parameters.text}} > 5", lambda seen: seen["nope"]],
    ids=["expression", "callable"],
)
async def test_a_when_that_raises_fails_its_step_which_continue_on_failed_covers(
    when: Any,
) -> None:
    s1 = Step("s1", to_text, parameters={"x": 1})  # text "1": "1" > 5 raises TypeError
    s2 = Step("s2", add, parameters={"x": 1}, when=when, continue_on_failed=True, retries=2)
    s3 = Step("s3", add, parameters={"x": 2})
    wf = Workflow("w").add(s1).add(s2).add(s3)
    assert await run_wf(wf) == "Succeeded"
    records = {r.name: r for r in wf.query_step()}
    assert records["s2"].phase == "Failed"
    assert isinstance(records["s2"].error, aflow.errors.WhenError)
    assert records["s2"].attempts == 1  # a broken condition is not retried
    assert records["s3"].phase == "Succeeded"
    strict = Step("s2", add, parameters={"x": 1}, when=when)
    wf = Workflow("w").add(Step("s1", to_text, parameters={"x": 1})).add(strict)
    assert await run_wf(wf) == "Failed"
    assert isinstance(wf.query_step(name="s2")[0].error, aflow.errors.WhenError)


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


async def test_sync_ops_use_the_runtime_threads() -> None:
    barrier = threading.Barrier(2, timeout=0.3)
    together: list[bool] = []

    @op(outputs={"ok": bool})
    def meet(i: int):
        try:
            barrier.wait()
            together.append(True)
        except threading.BrokenBarrierError:
            together.append(False)
        return {"ok": True}

    steps = [Step(f"m{i}", meet, parameters={"i": i}) for i in range(2)]
    async with aflow.Runtime(threads=1):
        wf = Workflow("w").add(steps)
        await wf.submit()
        assert await wf.wait() == "Succeeded"
    assert together == [False, False]  # one thread: they never met
    barrier.reset()
    together.clear()
    async with aflow.Runtime(threads=2):
        wf = Workflow("w").add([Step(f"m{i}", meet, parameters={"i": i}) for i in range(2)])
        await wf.submit()
        assert await wf.wait() == "Succeeded"
    assert together == [True, True]


async def test_an_op_instance_need_not_be_hashable() -> None:
    import dataclasses

    @dataclasses.dataclass
    class Scale(OP):
        factor: int = 2

        @classmethod
        def get_input_sign(cls) -> OPIOSign:
            return OPIOSign({"x": int})

        @classmethod
        def get_output_sign(cls) -> OPIOSign:
            return OPIOSign({"y": int})

        async def execute(self, op_in: OPIO) -> OPIO:
            return OPIO({"y": op_in["x"] * self.factor})

    wf = Workflow("dc").add(Step("s", PythonOPTemplate(Scale(3)), parameters={"x": 2}))
    assert await aflow.run(wf) == {"s": {"y": 6}}


@pytest.mark.parametrize(
    "expression",
    ['"%0999999999d" % 1 == "x"', "-" * 2000 + "1 > 0", "1" + " + 1" * 3000 + " > 0"],
)
async def test_when_expressions_cannot_exhaust_memory_or_the_stack(expression: str) -> None:
    try:
        step = Step("t", add, parameters={"x": 1}, when=expression)
    except aflow.errors.SignatureError:
        return  # refused when built
    wf = Workflow("w").add(step)
    assert await run_wf(wf) == "Failed"
    assert isinstance(wf.query_step()[0].error, aflow.errors.WhenError)


async def test_directories_keep_empty_folders_and_manifests_stay_inside(tmp_path: Path) -> None:
    @op(outputs={"d": Artifact(Path)})
    async def tree(workdir: Path):
        (workdir / "out" / "empty" / "deeper").mkdir(parents=True)
        (workdir / "out" / "f.txt").write_text("f")
        return {"d": Path("out")}

    wf = Workflow("w", artifacts=tmp_path / "s").add(Step("t", tree))
    assert await run_wf(wf) == "Succeeded"
    value = wf.query_step()[0].outputs.artifacts["d"]
    assert value is not None
    [d] = download_artifact(value, tmp_path / "dl")
    assert (d / "empty" / "deeper").is_dir()
    assert (d / "f.txt").read_text() == "f"
    evil = ops.ArtifactValue(value.root, {"file": "0" * 64, "name": "../escape"}, "one")
    with pytest.raises(ValueError, match="outside"):
        download_artifact(evil, tmp_path / "dl2")


def test_op_functions_and_wiring_shapes_are_checked_when_built(tmp_path: Path) -> None:
    with pytest.raises(aflow.errors.SignatureError, match="named parameters only"):

        @op(outputs={})
        async def positional(x: int, /):
            return {}

    with pytest.raises(aflow.errors.SignatureError, match="given twice"):

        @op(outputs={})
        async def twice(x: Parameter(int, default=5) = 7):  # type: ignore[valid-type]
            return {}

    @op(outputs={"fs": Artifact(list[Path])})
    async def many():
        return {"fs": []}

    @op(outputs={})
    async def one(f: Artifact(Path), d: Artifact(dict[str, Path], optional=True) = None):  # type: ignore[valid-type]
        return {}

    m = Step("m", many)
    with pytest.raises(aflow.errors.SignatureError, match="is wired to"):
        Step("o", one, artifacts={"f": m.outputs.artifacts["fs"]})
    local = tmp_path / "x.txt"
    local.write_text("x")
    with pytest.raises(aflow.errors.SignatureError, match="dict of local paths"):
        Step("o", one, artifacts={"f": local, "d": local})
    sliced = Slices(input_parameter=["x", "y"])
    with pytest.raises(aflow.errors.SignatureError, match="one length"):
        Step("a", add, parameters={"x": [1, 2], "y": [1]}, slices=sliced)


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


async def test_work_dirs_go_when_the_run_succeeds_and_stay_when_it_fails(tmp_path: Path) -> None:
    @op(outputs={"f": Artifact(Path)})
    async def keep(workdir: Path):
        (workdir / "a.txt").write_text("a")
        return {"f": Path("a.txt")}

    ok = Workflow("ok", artifacts=tmp_path).add(Step("k", keep))
    assert await run_wf(ok, run_id="../../escape") == "Succeeded"
    assert not (tmp_path.parent.parent / "escape").exists()
    assert list((tmp_path / "work").iterdir()) == []

    @op(outputs={"y": int})
    async def fail(workdir: Path):
        (workdir / "clue.txt").write_text("why")
        raise RuntimeError("no")

    bad = Workflow("bad", artifacts=tmp_path).add(Step("f", fail))
    assert await run_wf(bad) == "Failed"
    clues = list((tmp_path / "work").rglob("clue.txt"))
    assert [c.read_text() for c in clues] == ["why"]  # kept to look into


@pytest.mark.slow
async def test_a_resumed_run_does_not_run_finished_slices_again(
    store_url: str, counts: pathlib.Path
) -> None:
    from tests.durable_workflows import read_counts
    from tests.test_durable import LEASE, crash_in

    run_id = await anyio.to_thread.run_sync(crash_in, store_url, "ops_slices", "slice-3", counts)
    assert read_counts(counts) == {"slice-1": 1, "slice-2": 1, "slice-3": 1}
    await anyio.sleep(LEASE * 1.5)  # the dead process's heartbeat goes stale
    async with aflow.Runtime(store=store_url, recover=True, lease=LEASE) as rt:
        run = rt.get(run_id)
        assert await run.result() == {"work": {"y": [10, 20, 30, 40]}}
        wf = await Workflow.load(run_id, runtime=rt)
        [record] = wf.query_step(name="work")
        assert [s.attempts for s in record.slices] == [1, 1, 1, 1]
    # slices 1 and 2 were on record; 3 ran again (at-least-once), 4 ran once
    assert read_counts(counts) == {"slice-1": 1, "slice-2": 1, "slice-3": 2, "slice-4": 1}


async def test_a_postgres_run_that_passes_files_needs_a_shared_folder(
    store_url: str, counts: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests import durable_workflows as dw

    monkeypatch.delenv("AFLOW_ARTIFACTS", raising=False)
    async with aflow.Runtime(store=store_url) as rt:
        wf = dw.ops_files(start=1)
        if store_url.startswith("postgres"):  # refused before anything runs
            with pytest.raises(aflow.errors.DefinitionError, match="AFLOW_ARTIFACTS"):
                await wf.submit(runtime=rt)
            assert await rt.store.list_runs() == []  # type: ignore[union-attr]
        else:  # beside the SQLite file
            await wf.submit(runtime=rt)
            assert await wf.wait() == "Succeeded"


# --- second review ------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_resumed_run_reads_the_local_file_as_it_was_first_read(
    tmp_path: Path, counts: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.durable_workflows import read_counts
    from tests.test_durable import LEASE, crash_in

    local = tmp_path / "input.txt"
    local.write_text("as submitted")
    monkeypatch.setenv("AFLOW_LOCAL_FILE", str(local))
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    run_id = await anyio.to_thread.run_sync(crash_in, url, "ops_local", "read-local", counts)
    local.write_text("changed afterwards")
    await anyio.sleep(LEASE * 1.5)
    async with aflow.Runtime(store=url, recover=True, lease=LEASE) as rt:
        assert await rt.get(run_id).result() == {"read": {"text": "as submitted"}}
    assert read_counts(counts) == {"read-local": 2}


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


async def test_a_durable_workflow_changed_after_its_builder_is_refused(
    tmp_path: Path, counts: Path
) -> None:
    from tests import durable_workflows as dw

    wf = dw.ops_files(start=1)
    wf.add(Step("extra", add, parameters={"x": 1}))
    async with aflow.Runtime(store=f"sqlite:///{tmp_path / 'r.db'}") as rt:
        with pytest.raises(aflow.errors.DefinitionError, match="changed after"):
            await wf.submit(runtime=rt)


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


async def test_submit_takes_an_event_listener() -> None:
    seen: list[tuple[str, str | None]] = []
    wf = Workflow("w").add(Step("a", add, parameters={"x": 1}))
    async with aflow.Runtime():
        await wf.submit(on_event=lambda e: seen.append((e.name, e.node)))
        await wf.wait()
    assert ("run_started", None) in seen
    assert ("task_succeeded", "a") in seen


async def test_quoted_references_and_logical_words_inside_strings() -> None:
    @op(outputs={"msg": str})
    async def say():
        return {"msg": "a||b"}

    s = Step("s", say)
    ref = s.outputs.parameters["msg"]
    yes = Step("yes", add, parameters={"x": 1}, when=f"'{ref}' == 'a||b' && true")
    also = Step("also", add, parameters={"x": 1}, when=f'"{ref}" != "a or b"')
    wf = Workflow("w").add(s).add([yes, also])
    assert await run_wf(wf) == "Succeeded"
    assert {r.name: r.phase for r in wf.query_step()} == {
        "s": "Succeeded",
        "yes": "Succeeded",
        "also": "Succeeded",
    }


def test_an_async_when_is_refused() -> None:
    async def later(seen: Any) -> bool:
        return False

    with pytest.raises(aflow.errors.SignatureError, match="not async"):
        Step("s", add, parameters={"x": 1}, when=later)


async def test_an_ops_own_timeout_error_is_not_a_slice_timeout() -> None:
    @op(outputs={"y": int})
    async def db(x: int):
        raise TimeoutError("the database did not answer")

    sliced = Slices(input_parameter=["x"], output_parameter=["y"])
    wf = Workflow("w").add(Step("s", db, parameters={"x": [1]}, slices=sliced, timeout=30))
    assert await run_wf(wf) == "Failed"
    error = wf.query_step()[0].error
    assert type(error) is TimeoutError
    assert "database" in str(error)


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


# --- third review ---------------------------------------------------------------------------------


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


async def test_any_change_after_the_builder_is_refused_for_a_durable_run(
    tmp_path: Path, counts: Path
) -> None:
    from tests import durable_workflows as dw

    wf = dw.ops_files(start=1)
    wf.steps[0].parameters["text"] = "changed"
    async with aflow.Runtime(store=f"sqlite:///{tmp_path / 'r.db'}") as rt:
        with pytest.raises(aflow.errors.DefinitionError, match="changed after"):
            await wf.submit(runtime=rt)
        await dw.ops_files(start=1).submit(runtime=rt)  # unchanged: accepted


def test_a_reference_inside_a_longer_string_is_refused() -> None:
    for text in (
        "'pre-{{steps.a.outputs.parameters.x}}' == 'pre-yes'",
        "'{{steps.a.outputs.parameters.x}}-suf' == 'yes-suf'",
    ):
        with pytest.raises(aflow.errors.SignatureError, match="inside a longer string"):
            Step("s", add, parameters={"x": 1}, when=text)
    Step("s", add, parameters={"x": 1}, when="'{{steps.a.outputs.parameters.x}}' == '__refund'")


@pytest.mark.slow
async def test_wait_takes_up_a_loaded_run_whose_process_died(
    tmp_path: Path, counts: pathlib.Path
) -> None:
    from tests.durable_workflows import read_counts
    from tests.test_durable import LEASE, crash_in

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    run_id = await anyio.to_thread.run_sync(crash_in, url, "ops_files", "consume", counts)
    async with aflow.Runtime(store=url, lease=LEASE) as rt:  # no recover=True
        wf = await Workflow.load(run_id, runtime=rt)
        assert wf.query_status() == "Running"
        with anyio.fail_after(10):
            assert await wf.wait(poll=0.05) == "Succeeded"
        assert await wf.run.result() == {"consume": {"text": "hello 1"}}
    assert read_counts(counts) == {"produce": 1, "consume": 2}


# --- fourth review --------------------------------------------------------------------------------


def test_the_bound_name_is_reserved_in_expressions() -> None:
    with pytest.raises(aflow.errors.SignatureError, match="reserved"):
        Step("s", add, parameters={"x": 1}, when="__aflow_ref_0 == 1")


async def test_a_builder_with_temp_paths_and_plain_objects_is_not_taken_for_changed(
    tmp_path: Path, counts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests import durable_workflows as dw

    local = tmp_path / "in.txt"
    local.write_text("x")
    monkeypatch.setenv("AFLOW_LOCAL_FILE", str(local))
    async with aflow.Runtime(store=f"sqlite:///{tmp_path / 'r.db'}") as rt:
        wf = dw.ops_local(start=1)
        monkeypatch.setenv("AFLOW_LOCAL_FILE", str(tmp_path / "moved.txt"))  # a rebuild differs
        (tmp_path / "moved.txt").write_text("y")
        await wf.submit(runtime=rt)
        assert await wf.wait() == "Succeeded"


@pytest.mark.slow
async def test_wait_raises_when_a_dead_run_cannot_be_taken_up(
    tmp_path: Path, counts: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests import durable_workflows as dw
    from tests.test_durable import LEASE, crash_in

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    run_id = await anyio.to_thread.run_sync(crash_in, url, "ops_files", "consume", counts)
    original = dw.ops_files.fn

    def redeployed(start: int) -> Workflow:  # a new version adds a step
        return original(start).add(Step("extra", add, parameters={"x": 1}))

    async with aflow.Runtime(store=url, lease=LEASE) as rt:
        wf = await Workflow.load(run_id, runtime=rt)
        monkeypatch.setattr(dw.ops_files, "fn", redeployed)
        with anyio.fail_after(10), pytest.raises(aflow.errors.ResumeMismatch, match="different"):
            await wf.wait(poll=0.05)
