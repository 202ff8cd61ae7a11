"""aflow.ops does what dflow does (issue 19): output defaults, user classes as parameter
types, parameters passed by value, artifact sub-paths kept by download_artifact,
TransientError / FatalError and the template's retry policies and timeout, dflow's
options that mean nothing in-process, and Slices' group_size / pool_size."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import typing
from pathlib import Path
from typing import Annotated, Any

import anyio
import anyio.lowlevel
import pytest

import aflow
from aflow.errors import FatalError, TransientError
from aflow.ops import (
    OP,
    OPIO,
    Artifact,
    ArtifactValue,
    OPIOSign,
    Parameter,
    PythonOPTemplate,
    Slices,
    Step,
    Workflow,
    download_artifact,
    op,
)
from aflow.testing import FakeClock

from .ops_helpers import PeakProbe, run_wf

ROOT = Path(__file__).resolve().parent.parent

# --- 1. an output parameter left out takes its default ----------------------------------------


class Quiet(OP):
    """Gives ``n`` only: ``note`` and ``tag`` take their defaults, ``must`` has none."""

    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign({"give_must": Parameter(bool, default=True)})

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign(
            {
                "n": int,
                "note": Parameter(str, default="none"),
                "tags": Parameter(list[str], default=[]),
                "must": Parameter(int),
            }
        )

    async def execute(self, op_in: OPIO) -> OPIO:
        out = OPIO({"n": 1})
        if op_in["give_must"]:
            out["must"] = 2
        return out


@op(outputs={"text": str})
async def echo(text: str):
    return {"text": text}


async def test_an_output_parameter_left_out_takes_its_default() -> None:
    quiet = Step("quiet", Quiet)
    reader = Step("reader", echo, parameters={"text": quiet.outputs.parameters["note"]})
    wf = Workflow("w").add(quiet).add(reader)
    assert await run_wf(wf) == "Succeeded"
    outputs = wf.query_step(name="quiet")[0].outputs.parameters
    assert outputs["note"].value == "none"
    assert outputs["tags"].value == []
    assert wf.query_step(name="reader")[0].outputs.parameters["text"].value == "none"

    # without a default, leaving it out still fails the step
    wf = Workflow("w").add(Step("quiet", Quiet, parameters={"give_must": False}))
    assert await run_wf(wf) == "Failed"
    error = wf.query_step()[0].error
    assert isinstance(error, aflow.errors.OpIOError)
    assert (error.direction, error.key) == ("output", "must")


async def test_a_template_gives_defaults_to_output_parameters() -> None:
    @op(outputs={"y": int, "z": str})
    async def partial(x: int):
        return {"y": x}

    template = PythonOPTemplate(partial, output_parameter_default={"z": "unset"})
    wf = Workflow("w").add(Step("p", template, parameters={"x": 3}))
    assert await run_wf(wf) == "Succeeded"
    assert wf.query_step()[0].outputs.parameters["z"].value == "unset"
    with pytest.raises(TypeError, match="no output parameter 'nope'"):
        PythonOPTemplate(partial, output_parameter_default={"nope": 1})


# --- 2. user classes as parameter types -------------------------------------------------------


class Hello:
    def __init__(self, name: str = "hi") -> None:
        self.name = name


class Other:
    pass


class MakeHello(OP):
    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign({"name": str, "wrong": Parameter(bool, default=False)})

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign({"hello": Hello, "all": list[Hello]})

    async def execute(self, op_in: OPIO) -> OPIO:
        hello = Other() if op_in["wrong"] else Hello(op_in["name"])
        return OPIO({"hello": hello, "all": [Hello(op_in["name"])]})


class Greet(OP):
    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign({"foo": Hello})

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign({"text": str})

    async def execute(self, op_in: OPIO) -> OPIO:
        return OPIO({"text": f"{op_in['foo'].name}!"})


async def test_a_user_class_as_a_parameter_type_is_checked_by_isinstance() -> None:
    literal = Step("lit", Greet, parameters={"foo": Hello("lit")})
    make = Step("make", MakeHello, parameters={"name": "wired"})
    greet = Step("greet", Greet, parameters={"foo": make.outputs.parameters["hello"]})
    wf = Workflow("w").add([literal, make]).add(greet)
    assert await run_wf(wf) == "Succeeded"
    assert wf.query_step(name="lit")[0].outputs.parameters["text"].value == "lit!"
    assert wf.query_step(name="greet")[0].outputs.parameters["text"].value == "wired!"

    with pytest.raises(aflow.errors.SignatureError, match=r"'bad'.*input 'foo'.*Hello"):
        Step("bad", Greet, parameters={"foo": Other()})
    wrong = Step("make", MakeHello, parameters={"name": "x", "wrong": True})
    wf = Workflow("w").add(wrong)
    assert await run_wf(wf) == "Failed"
    error = wf.query_step()[0].error
    assert isinstance(error, aflow.errors.OpIOError)
    assert (error.direction, error.key) == ("output", "hello")
    assert "Hello" in error.expected
    assert "Other" in error.actual


class _NoSchema(typing.TypedDict):  # pydantic wants typing_extensions' TypedDict before 3.12
    hello: Hello


def _op_taking(tp: Any, where: str = "input") -> type[OP]:
    class Taking(OP):
        @classmethod
        def get_input_sign(cls) -> OPIOSign:
            return OPIOSign({"foo": tp} if where == "input" else {})

        @classmethod
        def get_output_sign(cls) -> OPIOSign:
            return OPIOSign({"bar": tp} if where == "output" else {})

        async def execute(self, op_in: OPIO) -> OPIO:
            return OPIO()

    return Taking


@pytest.mark.parametrize("tp", [_NoSchema, 5, "Hello", list[5]])  # type: ignore[valid-type]
@pytest.mark.parametrize("where", ["input", "output"])
def test_a_type_that_cannot_be_checked_is_a_signature_error_naming_the_step(
    tp: Any, where: str
) -> None:
    key = "foo" if where == "input" else "bar"
    with pytest.raises(aflow.errors.SignatureError) as caught:
        Step("odd-step", _op_taking(tp, where))  # nothing given: the type alone is refused
    error = caught.value
    assert error.task == "odd-step"
    assert error.argument == key
    assert f"{where} {key!r} is typed" in str(error)
    assert not isinstance(error, RuntimeError)  # (pydantic's own errors are RuntimeErrors)


class DurableHello(OP):
    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        return OPIOSign({"x": int})

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        return OPIOSign({"hello": Hello})

    async def execute(self, op_in: OPIO) -> OPIO:
        return OPIO({"hello": Hello()})


@aflow.workflow
def hello_flow(sliced: bool) -> Workflow:
    slices = Slices(input_parameter=["x"], output_parameter=["hello"]) if sliced else None
    x: Any = [1, 2] if sliced else 1
    return Workflow("hello").add(Step("greeter", DurableHello, parameters={"x": x}, slices=slices))


@pytest.mark.parametrize(("sliced", "key"), [(False, "greeter"), (True, "greeter-0")])
async def test_a_durable_run_stores_outputs_with_its_serializer_naming_the_step(
    tmp_path: Path, sliced: bool, key: str
) -> None:
    async with aflow.Runtime(store=f"sqlite:///{tmp_path / 'r.db'}") as rt:
        wf = hello_flow(sliced=sliced)
        await wf.submit(runtime=rt)
        assert await wf.wait() == "Failed"
        [record] = wf.query_step()
    error = record.error
    assert isinstance(error, aflow.errors.SerializationError)  # not a bare ExceptionGroup
    assert error.task == key
    assert "Hello" in error.type
    assert record.attempts == 1  # not retried: it would fail the same way
    if sliced:
        assert record.slices[0].phase == "Failed"
        assert any("slice 'greeter-0' of step 'greeter'" in n for n in error.__notes__)


# --- 3. parameters pass by value --------------------------------------------------------------


@op(outputs={"data": Any})
async def produce_data():
    return {"data": {"xs": [1, 2]}}


@op(outputs={"data": Any})
async def mutate(data: Any):
    data["xs"].append(99)
    data["new"] = True
    return {"data": data}


@op(outputs={"xs": list})
def mutate_list(xs: list, extra: list = [0]):  # noqa: B006 - a shared default, on purpose
    xs.append("changed")
    extra.append(1)
    return {"xs": xs + extra}


async def test_a_step_changing_its_input_changes_neither_its_source_nor_the_literal() -> None:
    first = Step("first", produce_data)
    second = Step("second", mutate, parameters={"data": first.outputs.parameters["data"]})
    third = Step("third", mutate, parameters={"data": first.outputs.parameters["data"]})
    literal = {"xs": [5]}
    direct = Step("direct", mutate, parameters={"data": literal})
    items = [[1], [2]]
    sliced = Step(
        "sliced",
        mutate_list,
        parameters={"xs": items},
        slices=Slices(input_parameter=["xs"], output_parameter=["xs"]),
    )
    wf = Workflow("w").add([first, direct, sliced]).add([second, third])
    assert await run_wf(wf) == "Succeeded"
    assert wf.query_step(name="first")[0].outputs.parameters["data"].value == {"xs": [1, 2]}
    for name in ("second", "third"):  # each changed its own copy only
        value = wf.query_step(name=name)[0].outputs.parameters["data"].value
        assert value == {"xs": [1, 2, 99], "new": True}
    assert literal == {"xs": [5]}
    assert wf.query_step(name="direct")[0].inputs.parameters["data"] == {"xs": [5]}
    # slices get copies too, and a mutable default is fresh for every call
    assert items == [[1], [2]]
    stacked = wf.query_step(name="sliced")[0].outputs.parameters["xs"].value
    assert stacked == [[1, "changed", 0, 1], [2, "changed", 0, 1]]


async def test_a_parameter_that_cannot_be_copied_is_refused_naming_op_and_key() -> None:
    @op(outputs={"ok": bool})
    async def locked(lock: Any):
        return {"ok": True}

    wf = Workflow("w").add(Step("l", locked, parameters={"lock": threading.Lock()}))
    assert await run_wf(wf) == "Failed"
    error = wf.query_step()[0].error
    assert isinstance(error, aflow.errors.OpIOError)
    assert error.op.endswith("locked")
    assert (error.direction, error.key) == ("input", "lock")
    assert "copied" in error.expected


# --- 4. download_artifact keeps sub-paths -----------------------------------------------------


@op(outputs={"outs": Artifact(list[Path]), "single": Artifact(Path)})
def tasks(count: int, elsewhere: str, workdir: Path):
    outs: list[Path] = []
    for i in range(count):
        path = workdir / f"task.{i:04d}" / "OUTCAR"
        path.parent.mkdir(parents=True)
        path.write_text(f"outcar {i}")
        outs.append(path if i % 2 else path.relative_to(workdir))  # absolute or relative
    (workdir / "top.txt").write_text("top")
    outs.append(Path("top.txt"))
    (workdir / "deep" / "er").mkdir(parents=True)
    (workdir / "deep" / "er" / "x.txt").write_text("x")
    outs.append(Path("deep/er"))  # a folder in a sub-folder
    outs.append(Path(elsewhere))  # outside the work dir: its name only
    return {"outs": outs, "single": Path("task.0000/OUTCAR")}


async def test_download_artifact_recreates_the_sub_paths_of_the_work_dir(tmp_path: Path) -> None:
    elsewhere = tmp_path / "far" / "away.txt"
    elsewhere.parent.mkdir()
    elsewhere.write_text("away")
    step = Step("t", tasks, parameters={"count": 2, "elsewhere": str(elsewhere)})
    wf = Workflow("w", artifacts=tmp_path / "store").add(step)
    assert await run_wf(wf) == "Succeeded"
    [record] = wf.query_step()
    got = download_artifact(record.outputs.artifacts["outs"], tmp_path / "dl")
    rel = [p.relative_to(tmp_path / "dl").as_posix() for p in got]
    assert rel == ["task.0000/OUTCAR", "task.0001/OUTCAR", "top.txt", "deep/er", "away.txt"]
    assert (tmp_path / "dl" / "task.0001" / "OUTCAR").read_text() == "outcar 1"
    assert (tmp_path / "dl" / "deep" / "er" / "x.txt").read_text() == "x"
    [single] = download_artifact(record.outputs.artifacts["single"], tmp_path / "one")
    assert single == tmp_path / "one" / "task.0000" / "OUTCAR"
    again = download_artifact(record.outputs.artifacts["outs"], tmp_path / "dl", skip_exists=True)
    assert again == got


@op(outputs={"out": Artifact(Path)})
def one_task(i: int, workdir: Path):
    path = workdir / "task" / "OUTCAR"
    path.parent.mkdir()
    path.write_text(f"slice {i}")
    return {"out": Path("task/OUTCAR")}


@op(outputs={"back": Artifact(Path)})
def give_back(src: Annotated[Path, Artifact(Path)]):
    return {"back": src}


async def test_members_that_land_on_one_another_go_into_numbered_folders(tmp_path: Path) -> None:
    sliced = Step(
        "s",
        one_task,
        parameters={"i": [0, 1]},
        slices=Slices(input_parameter=["i"], output_artifact=["out"]),
    )
    wf = Workflow("w", artifacts=tmp_path / "store").add(sliced)
    assert await run_wf(wf) == "Succeeded"
    got = download_artifact(wf.query_step(name="s")[0].outputs.artifacts["out"], tmp_path / "dl")
    rel = [p.relative_to(tmp_path / "dl").as_posix() for p in got]
    assert rel == ["0/task/OUTCAR", "1/task/OUTCAR"]
    assert [p.read_text() for p in got] == ["slice 0", "slice 1"]


async def test_an_input_file_given_back_keeps_only_its_name(tmp_path: Path) -> None:
    make = Step("make", one_task, parameters={"i": 7})
    back = Step("back", give_back, artifacts={"src": make.outputs.artifacts["out"]})
    wf = Workflow("w", artifacts=tmp_path / "store").add(make).add(back)
    assert await run_wf(wf) == "Succeeded"
    [made] = download_artifact(wf.query_step(name="make")[0].outputs.artifacts["out"], tmp_path)
    assert made == tmp_path / "task" / "OUTCAR"
    [path] = download_artifact(
        wf.query_step(name="back")[0].outputs.artifacts["back"], tmp_path / "dl"
    )
    assert path == tmp_path / "dl" / "OUTCAR"  # not inputs/src/OUTCAR: where aflow put it
    assert path.read_text() == "slice 7"


@pytest.mark.parametrize(
    "path",
    ["../OUTCAR", "/etc/OUTCAR", "a//OUTCAR", "a/./OUTCAR", "a/../OUTCAR", "a/other", "", 5],
)
async def test_a_manifest_s_path_is_checked_like_the_rest(tmp_path: Path, path: Any) -> None:
    wf = Workflow("w", artifacts=tmp_path / "store").add(
        Step("make", one_task, parameters={"i": 1})
    )
    assert await run_wf(wf) == "Succeeded"
    value = wf.query_step()[0].outputs.artifacts["out"]
    assert value is not None
    assert value.manifest["path"] == "task/OUTCAR"
    crafted = ArtifactValue(value.root, {**value.manifest, "path": path}, "one", "run-x", "make")
    with pytest.raises(aflow.errors.UntrustedManifest, match="run run-x, step 'make'"):
        download_artifact(crafted, tmp_path / "dl")
    assert not (tmp_path / "dl").exists()
    # a manifest from before sub-paths were kept: its name only
    old = ArtifactValue(value.root, {k: v for k, v in value.manifest.items() if k != "path"}, "one")
    assert download_artifact(old, tmp_path / "old") == [tmp_path / "old" / "OUTCAR"]


# --- 5. TransientError, FatalError, retry policies and timeouts -------------------------------


def _flaky(errors: list[BaseException]) -> tuple[type[OP], list[int]]:
    """An op raising ``errors`` in turn, then succeeding; and the list of its calls."""
    calls: list[int] = []

    @op(outputs={"calls": int})
    async def flaky():
        calls.append(len(calls) + 1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return {"calls": len(calls)}

    return flaky, calls


async def test_retry_on_transient_error_retries_transient_errors_only() -> None:
    flaky, calls = _flaky([TransientError("busy"), TransientError("busy")])
    wf = Workflow("w").add(Step("f", PythonOPTemplate(flaky, retry_on_transient_error=2)))
    assert await run_wf(wf) == "Succeeded"
    assert calls == [1, 2, 3]
    assert wf.query_step()[0].attempts == 3

    flaky, calls = _flaky([TransientError("busy")] * 3)
    wf = Workflow("w").add(Step("f", PythonOPTemplate(flaky, retry_on_transient_error=2)))
    assert await run_wf(wf) == "Failed"  # up to N retries
    assert calls == [1, 2, 3]

    flaky, calls = _flaky([ValueError("a bug")])
    wf = Workflow("w").add(Step("f", PythonOPTemplate(flaky, retry_on_transient_error=2)))
    assert await run_wf(wf) == "Failed"
    assert calls == [1]
    assert isinstance(wf.query_step()[0].error, ValueError)


async def test_a_fatal_error_is_never_retried() -> None:
    for template in (
        PythonOPTemplate(_flaky([FatalError("no")])[0], retry_on_failure=3),
        _flaky([FatalError("no")])[0],
    ):
        wf = Workflow("w").add(Step("f", template, retries=3))
        assert await run_wf(wf) == "Failed"
        [record] = wf.query_step()
        assert record.attempts == 1
        assert isinstance(record.error, FatalError)
    # and neither is a slice's
    calls: list[int] = []

    @op(outputs={"y": int})
    async def fatal(x: int):
        calls.append(x)
        raise FatalError(f"no {x}")

    sliced = Slices(input_parameter=["x"], output_parameter=["y"])
    wf = Workflow("w").add(Step("s", fatal, parameters={"x": [1]}, slices=sliced, retries=3))
    assert await run_wf(wf) == "Failed"
    assert calls == [1]


async def test_retry_on_failure_retries_any_error_but_a_fatal_one() -> None:
    for option in ("retry_on_failure", "retry_on_failure_and_error"):
        flaky, calls = _flaky([ValueError("1"), TransientError("2")])
        template = PythonOPTemplate(flaky, **{option: 2})
        wf = Workflow("w").add(Step("f", template))
        assert await run_wf(wf) == "Succeeded"
        assert calls == [1, 2, 3]


async def test_the_step_s_retry_on_limits_retries_to_those_errors() -> None:
    flaky, calls = _flaky([ConnectionError("1"), TimeoutError("2"), ConnectionError("3")])
    step = Step("f", flaky, retries=5, retry_on=(ConnectionError, TimeoutError))
    assert await run_wf(Workflow("w").add(step)) == "Succeeded"
    assert calls == [1, 2, 3, 4]

    flaky, calls = _flaky([ConnectionError("1"), ValueError("2")])
    step = Step("f", flaky, retries=5, retry_on=ConnectionError)
    wf = Workflow("w").add(step)
    assert await run_wf(wf) == "Failed"
    assert calls == [1, 2]
    assert isinstance(wf.query_step()[0].error, ValueError)

    # the step's own settings win over its template's
    flaky, calls = _flaky([ValueError("1"), ValueError("2")])
    template = PythonOPTemplate(flaky, retry_on_transient_error=5)
    wf = Workflow("w").add(Step("f", template, retry_on=ValueError, retries=1))
    assert await run_wf(wf) == "Failed"
    assert calls == [1, 2]

    with pytest.raises(aflow.errors.SignatureError, match="retry_on"):
        Step("f", flaky, retry_on="ValueError")  # type: ignore[arg-type]


async def test_a_sliced_step_retries_each_slice_by_the_same_rule() -> None:
    tries: dict[int, int] = {}

    @op(outputs={"y": int})
    async def shaky(x: int):
        tries[x] = tries.get(x, 0) + 1
        if tries[x] == 1:
            raise TransientError(f"busy {x}")
        if x == 2:
            raise ValueError("2 is a bug")
        return {"y": x}

    sliced = Slices(input_parameter=["x"], output_parameter=["y"])
    template = PythonOPTemplate(shaky, slices=sliced, retry_on_transient_error=3)
    step = Step("s", template, parameters={"x": [1, 2, 3]}, continue_on_num_success=2)
    wf = Workflow("w").add(step)
    assert await run_wf(wf) == "Succeeded"
    assert tries == {1: 2, 2: 2, 3: 2}  # 2's ValueError is not retried
    assert wf.query_step()[0].outputs.parameters["y"].value == [1, None, 3]


def _sleepy() -> tuple[type[OP], list[int]]:
    calls: list[int] = []

    @op(outputs={"ok": bool})
    async def sleepy():
        calls.append(1)
        if len(calls) == 1:
            await anyio.sleep_forever()  # the first call runs into the timeout
        return {"ok": True}

    return sleepy, calls


@pytest.mark.parametrize(
    ("options", "status", "count"),
    [
        ({"timeout": 30}, "Failed", 1),
        ({"timeout": 30, "retry_on_failure": 1}, "Succeeded", 2),
        ({"timeout": 30, "retry_on_transient_error": 1}, "Failed", 1),
        ({"timeout": 30, "retry_on_transient_error": 1, "timeout_as_transient_error": True},
         "Succeeded", 2),
    ],
)  # fmt: skip
async def test_the_template_s_timeout_applies_to_each_call(
    options: dict[str, Any], status: str, count: int
) -> None:
    sleepy, calls = _sleepy()
    wf = Workflow("w").add(Step("s", PythonOPTemplate(sleepy, **options)))
    with anyio.fail_after(10):
        async with FakeClock() as clock, aflow.Runtime(clock=clock):
            await wf.submit()
            assert await wf.wait() == status
    assert len(calls) == count
    assert clock.now() == pytest.approx(30)
    if status == "Failed":
        assert isinstance(wf.query_step()[0].error, aflow.errors.TaskTimeout)


async def test_a_step_retry_on_rule_applies_to_its_timeouts_too() -> None:
    sleepy, calls = _sleepy()
    step = Step("s", sleepy, timeout=5, retries=2, retry_on=TimeoutError)  # TaskTimeout is one
    other, other_calls = _sleepy()
    refused = Step("r", other, timeout=5, retries=2, retry_on=ValueError)
    wf = Workflow("w").add([step, refused])
    with anyio.fail_after(10):
        async with FakeClock() as clock, aflow.Runtime(clock=clock):
            await wf.submit()
            assert await wf.wait() == "Failed"
    assert len(calls) == 2
    assert len(other_calls) == 1
    assert isinstance(wf.query_step(name="r")[0].error, aflow.errors.TaskTimeout)


def test_transient_and_fatal_errors_are_aflow_errors_dflow_code_can_import() -> None:
    from aflow import ops

    assert ops.TransientError is TransientError
    assert ops.FatalError is FatalError
    assert ops.IgnoredOption is aflow.errors.IgnoredOption
    assert issubclass(aflow.errors.IgnoredOption, UserWarning)
    for name in ("TransientError", "FatalError", "IgnoredOption"):
        assert name in aflow.errors.__all__
        assert name not in ops.__all__  # aflow.errors is their one home


def _in_a_process(code: str) -> list[dict[str, Any]]:
    """Run ``code`` in a fresh interpreter; the warnings it issued, as dicts."""
    script = textwrap.dedent(
        """
        import json, warnings
        warnings.simplefilter("always")
        from aflow.ops import OP, OPIOSign, PythonOPTemplate, Slices
        class Nop(OP):
            pass
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
        {body}
            except Exception as exc:
                print(json.dumps({{"error": type(exc).__name__, "text": str(exc)}}))
        for w in caught:
            print(json.dumps({{"category": w.category.__name__, "text": str(w.message),
                              "file": w.filename}}))
        """
    ).format(body=textwrap.indent(textwrap.dedent(code), " " * 8))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_an_option_without_meaning_here_warns_once_per_name_per_process() -> None:
    found = _in_a_process(
        """
        PythonOPTemplate(Nop, image="python:3.8", requests={"cpu": "1"})
        PythonOPTemplate(Nop, image="python:3.9", requests={"cpu": "2"}, envs={"A": "1"})
        PythonOPTemplate(Nop, image=None, upload_dflow=True, tmp_root="/tmp")  # dflow's defaults
        Slices(input_parameter=["x"], shuffle=True, create_dir=True)
        Slices(input_parameter=["x"], shuffle=True)
        PythonOPTemplate(Nop, retry_on_error=2)
        PythonOPTemplate(Nop, retry_on_transient_error=1, retry_on_failure=2)
        """
    )
    assert all(w["category"] == "IgnoredOption" for w in found)
    texts = [w["text"] for w in found]
    assert [t.split(" is ignored")[0] for t in texts] == [
        "PythonOPTemplate(requests=...)",
        "PythonOPTemplate(image=...)",
        "PythonOPTemplate(envs=...)",
        "Slices(shuffle=...)",
        "Slices(create_dir=...)",
        "PythonOPTemplate(retry_on_error=...)",
        "PythonOPTemplate(retry_on_failure=...)",
    ]
    assert "no container" in texts[1]
    assert all(w["file"] == "<string>" for w in found)  # pointing at the caller's line


def test_an_option_dflow_does_not_have_is_refused() -> None:
    cases = [
        ("PythonOPTemplate(Nop, imagee='x')", "TypeError", "unexpected keyword argument 'imagee'"),
        ("Slices(input_parameter=['x'], pool_sise=2)", "TypeError", "'pool_sise'"),
        ("Slices(input_parameter=['x'], sub_path=True)", "ValueError", "sub_path"),
        ("PythonOPTemplate(Nop, timeout=0)", "ValueError", "timeout"),
        ("PythonOPTemplate(Nop, retry_on_failure=-1)", "ValueError", "retry_on_failure"),
    ]
    for code, error, text in cases:
        [found] = _in_a_process(code)  # nothing warned either
        assert found.get("error") == error, code
        assert text in found["text"], code


# --- 6. Slices: group_size and pool_size as in dflow ------------------------------------------


async def test_groups_run_at_once_and_each_group_s_items_pool_size_at_a_time() -> None:
    probe = PeakProbe(fill=2)  # two groups of three, each one item at a time: two at once
    slices = Slices(input_parameter=["x"], output_parameter=["x"], group_size=3, pool_size=1)
    wf = Workflow("w").add(Step("p", probe.op, parameters={"x": list(range(6))}, slices=slices))
    with anyio.fail_after(10):
        assert await run_wf(wf) == "Succeeded"
    assert probe.peak == 2
    assert wf.query_step()[0].outputs.parameters["x"].value == list(range(6))

    probe = PeakProbe(fill=4)  # pool_size=-1: all of a group at once
    slices = Slices(input_parameter=["x"], output_parameter=["x"], group_size=4, pool_size=-1)
    wf = Workflow("w").add(Step("p", probe.op, parameters={"x": list(range(4))}, slices=slices))
    with anyio.fail_after(10):
        assert await run_wf(wf) == "Succeeded"
    assert probe.peak == 4


async def test_a_pooled_group_stops_starting_items_once_one_fails() -> None:
    started: list[int] = []

    @op(outputs={"y": int})
    async def picky(x: int):
        started.append(x)
        await anyio.lowlevel.checkpoint()
        if x == 1:
            raise ValueError("no 1")
        await anyio.sleep_forever()  # cancelled by the failure
        return {"y": x}

    slices = Slices(input_parameter=["x"], output_parameter=["y"], group_size=6, pool_size=2)
    wf = Workflow("w").add(Step("p", picky, parameters={"x": list(range(6))}, slices=slices))
    with anyio.fail_after(10):
        assert await run_wf(wf) == "Failed"
    assert started == [0, 1]
    phases = [s.phase for s in wf.query_step()[0].slices]
    assert phases == ["Cancelled", "Failed", "Skipped", "Skipped", "Skipped", "Skipped"]
