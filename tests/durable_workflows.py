"""Workflows for the durable-run tests; importable by the subprocesses that get killed.

Side effects are counted in the JSON file named by ``AFLOW_COUNTS``; ``AFLOW_HANG``
names a step (``B`` or ``revert-B``) that blocks the first time it runs, so the
test can kill the process right there; ``wait_here`` always blocks.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import anyio

import aflow
from aflow import ops
from aflow._runtime._current import EXECUTION


async def bump(name: str) -> int:
    """Count one call of ``name``; the step named by ``AFLOW_HANG`` then blocks, once.

    A blocked step says so on stdout (``hanging NAME``), so the test that started
    this process knows when to kill it, with no polling.
    """
    count = _count(name)
    if os.environ.get("AFLOW_HANG") == name and count == 1:
        await hang(name)
    return count


def read_counts(path: pathlib.Path) -> dict[str, int]:
    """The counts so far (empty before anything ran)."""
    return dict(json.loads(path.read_text())) if path.exists() else {}


def _count(name: str) -> int:
    return count_in(pathlib.Path(os.environ["AFLOW_COUNTS"]), name)


def count_in(path: pathlib.Path, name: str) -> int:
    """Count one call of ``name`` in the JSON file ``path``; the count so far."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data[name] = data.get(name, 0) + 1
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)
    return int(data[name])


async def hang(name: str) -> None:
    print(f"hanging {name}", flush=True)
    await anyio.sleep_forever()  # until the test kills the process (or cancels the run)


@aflow.task
async def step_a(x: int) -> int:
    await bump("A")
    return x + 1


@step_a.revert
async def undo_a(x: int, *, result: Any) -> None:
    await bump("revert-A")


@aflow.task
async def step_b(x: int) -> int:
    await bump("B")
    return x * 2


@step_b.revert
async def undo_b(x: int, *, result: Any) -> None:
    await bump("revert-B")


@aflow.task
async def step_c(x: int) -> int:
    await bump("C")
    return x + 100


@aflow.task
async def step_c_fails(x: int) -> int:
    await bump("C")
    raise RuntimeError("card declined")


@aflow.workflow
def abc(start: int) -> Any:
    return step_a.s(start) | step_b.s() | step_c.s()


@aflow.workflow
def abc_fails(start: int) -> Any:
    return step_a.s(start) | step_b.s() | step_c_fails.s()


class Opaque:
    pass


@aflow.task
async def opaque(x: int) -> Opaque:
    return Opaque()


@aflow.workflow
def a_then_opaque(start: int) -> Any:
    return step_a.s(start) | opaque.s()


@aflow.workflow
def fan(n: int) -> Any:
    return aflow.chord((step_a.s(i) for i in range(n)), total.s())


@aflow.task
async def total(xs: list[int]) -> int:
    return sum(xs)


@aflow.task
async def wait_here(x: int) -> int:
    await bump("W")
    await hang("W")
    return x


@wait_here.revert
async def undo_wait(x: int, *, result: Any) -> None:
    await bump("revert-W")


@aflow.workflow
def a_then_wait(start: int) -> Any:
    return step_a.s(start) | wait_here.s()


# --- for the resume tests (tests/test_resume.py) ------------------------------------------


@aflow.task
async def book(x: int) -> int:
    await bump(f"book-{x}")
    return x * 10


@book.revert
async def unbook(x: int, *, result: Any) -> None:
    await bump(f"unbook-{x}:{result if isinstance(result, int) else 'failure'}")


@aflow.workflow
def booked(n: int) -> Any:
    return book.map(list(range(1, n + 1))) | step_c_fails.s()


@aflow.task
async def note_failure(error: BaseException) -> Opaque:
    await bump("errback")
    return Opaque()  # nobody's input: it is never serialised


@aflow.workflow
def abc_fails_with_errback(start: int) -> Any:
    return (step_a.s(start) | step_c_fails.s()).on_error(note_failure.s())


@aflow.workflow
def a_and_failing_c(start: int) -> Any:
    return aflow.group(step_a.s(start), step_c_fails.s(start))


@aflow.task
async def stuck(x: int) -> int:
    return x


@stuck.revert
async def unstick(x: int, *, result: Any) -> None:
    await anyio.sleep_forever()


@aflow.workflow
def stuck_then_fails(start: int) -> Any:
    return stuck.s(start) | step_c_fails.s()


@aflow.task
async def nul_error(x: int) -> int:
    raise ValueError("bad\x00byte")


@aflow.workflow
def a_then_nul(start: int) -> Any:
    return step_a.s(start) | nul_error.s()


@aflow.task
async def flaky(x: int) -> int:
    if await bump("flaky") == 1:
        raise OSError("connection reset")
    return x


@aflow.workflow
def flaky_once(start: int) -> Any:
    return flaky.s(start).set(retries=1)


@aflow.task
async def sees_its_start(x: int) -> int:
    """Count what the SQLite store (``AFLOW_DB``) says of this step while it runs."""
    import contextlib
    import sqlite3

    with contextlib.closing(sqlite3.connect(os.environ["AFLOW_DB"])) as db:
        row = db.execute("SELECT state FROM aflow_nodes WHERE key = 'sees_its_start'").fetchone()
    _count(f"on record: {row[0] if row else None}")
    return x


@sees_its_start.revert
async def forget_start(x: int, *, result: Any) -> None:
    pass


@aflow.workflow
def a_then_sees_its_start(start: int) -> Any:
    return step_a.s(start) | sees_its_start.s()


@aflow.workflow
def sees_its_start_first(start: int) -> Any:
    return sees_its_start.s(start) | step_a.s()


@aflow.task
async def pair(xs: list[int]) -> int:
    return sum(xs)


@pair.revert
async def unpair(xs: list[int], *, result: Any) -> None:
    await bump(f"unpair:{xs}")


@aflow.workflow
def grouped_pair_fails(start: int) -> Any:
    return aflow.group(step_a.s(start), step_a.s(start + 1)) | pair.s() | step_c_fails.s()


@aflow.task
async def charge_fails(x: int) -> int:
    await bump("charge")
    raise RuntimeError("card declined")


@charge_fails.revert
async def refund(x: int, *, result: Any) -> None:
    await bump("refund")


@aflow.workflow
def a_charge_fails_with_errback(start: int) -> Any:
    return (step_a.s(start) | charge_fails.s()).on_error(note_failure.s())


@aflow.task
async def nap(x: int) -> int:
    await anyio.sleep(0.1)
    return x


@aflow.workflow
def napping(start: int) -> Any:
    return nap.s(start)


# --- for the second review's regression tests ---------------------------------------------


@aflow.workflow
def ab_charge_fails_with_errback(start: int) -> Any:
    return (step_a.s(start) | step_b.s() | charge_fails.s()).on_error(note_failure.s())


@aflow.task
async def one(x: int) -> int:
    await bump(f"one-{x}")
    return x


@one.revert
async def undo_one(x: int, *, result: Any) -> None:
    await bump(f"undo-one-{x}")


@aflow.workflow
def below_threshold(start: int) -> Any:
    members = aflow.group(step_c_fails.s(start), step_c_fails.s(start + 1), one.s(start))
    return aflow.chord(members.set(min_success=2), total.s())


class Charge(aflow.Task):
    default_provides = "charged"

    async def execute(self, amount: int) -> int:
        await bump("charge")
        return amount

    async def revert(self, amount: int, result: Any) -> None:
        await bump("refund")


class Ship(aflow.Task):
    async def execute(self, charged: int) -> None:
        await bump("ship")
        raise RuntimeError("no truck")


@aflow.workflow
def retried_pay(amount: int) -> Any:
    from aflow.patterns import linear_flow

    return linear_flow.Flow("order").add(
        linear_flow.Flow("pay", retry=aflow.retry.Times(2)).add(Charge(inject={"amount": amount})),
        Ship(),
    )


@aflow.task
async def charge_refund_fails(x: int) -> int:
    await bump("charge")
    raise RuntimeError("card declined")


@charge_refund_fails.revert
async def refund_fails(x: int, *, result: Any) -> None:
    await bump("refund-attempt")
    raise OSError("refund service down")


@aflow.workflow
def refund_fails_with_errback(start: int) -> Any:
    return (step_a.s(start) | charge_refund_fails.s()).on_error(note_failure.s())


class Probe(aflow.Task):
    default_provides = "probe"

    async def execute(self) -> int:
        await bump("probe")
        return 1


class Book(aflow.Task):
    async def execute(self, probe: int) -> int:
        await bump("book")
        return 2


def _never(_: Any) -> bool:
    return False


@aflow.workflow
def retried_flow_ends_early(start: int) -> Any:
    from aflow.patterns import graph_flow

    probe, book = Probe(), Book()
    pay = graph_flow.Flow("pay", retry=aflow.retry.Times(2)).add(probe, book)
    pay.link(probe, book, decider=_never)
    return pay


@aflow.task
async def op(name: str) -> str:
    await bump(name)
    return name


@op.revert
async def undo_op(name: str, *, result: Any) -> None:
    await bump(f"undo-{name}")


@aflow.task
async def fails_now(name: str) -> str:
    raise RuntimeError(f"{name} failed")


@aflow.workflow
def two_branches_and_a_failure() -> Any:
    return aflow.group(op.si("a") | op.si("b"), op.si("c") | op.si("d"), fails_now.si("z"))


# --- typed operators (aflow.ops) ---------------------------------------------------------


class Produce(ops.OP):
    """Writes ``text`` to ``out.txt`` and returns it as an artifact."""

    @classmethod
    def get_input_sign(cls) -> ops.OPIOSign:
        return ops.OPIOSign({"text": str})

    @classmethod
    def get_output_sign(cls) -> ops.OPIOSign:
        return ops.OPIOSign({"out": ops.Artifact(pathlib.Path)})

    def execute(self, op_in: ops.OPIO) -> ops.OPIO:
        _count("produce")
        (op_in.workdir / "out.txt").write_text(op_in["text"])
        return ops.OPIO({"out": pathlib.Path("out.txt")})


class Consume(ops.OP):
    """Reads the artifact it is given (blocking the first time when ``AFLOW_HANG`` names
    its counter)."""

    counter = "consume"

    @classmethod
    def get_input_sign(cls) -> ops.OPIOSign:
        return ops.OPIOSign({"src": ops.Artifact(pathlib.Path)})

    @classmethod
    def get_output_sign(cls) -> ops.OPIOSign:
        return ops.OPIOSign({"text": str})

    async def execute(self, op_in: ops.OPIO) -> ops.OPIO:
        await bump(self.counter)
        return ops.OPIO({"text": op_in["src"].read_text()})


@aflow.workflow
def ops_files(start: int) -> ops.Workflow:
    """produce -> consume, passing a file."""
    produce = ops.Step("produce", Produce, parameters={"text": f"hello {start}"})
    consume = ops.Step("consume", Consume, artifacts={"src": produce.outputs.artifacts["out"]})
    return ops.Workflow("files").add(produce).add(consume)


class SliceWork(ops.OP):
    """``y = 10 x``; the slice named by ``AFLOW_HANG`` (``slice-X``) blocks the first time,
    once every earlier checkpoint is written (so the test kills it at a known point)."""

    @classmethod
    def get_input_sign(cls) -> ops.OPIOSign:
        return ops.OPIOSign({"x": int})

    @classmethod
    def get_output_sign(cls) -> ops.OPIOSign:
        return ops.OPIOSign({"y": int})

    async def execute(self, op_in: ops.OPIO) -> ops.OPIO:
        name = f"slice-{op_in['x']}"
        if _count(name) == 1 and os.environ.get("AFLOW_HANG") == name:
            journal = EXECUTION.get()._journal
            while journal is not None and journal.holding:  # noqa: ASYNC110 - no event to wait on
                await anyio.sleep(0.01)
            await hang(name)
        return ops.OPIO({"y": op_in["x"] * 10})


@aflow.workflow
def ops_slices(start: int) -> ops.Workflow:
    """One step sliced over four items, one at a time (one group of four)."""
    sliced = ops.Slices(input_parameter=["x"], output_parameter=["y"], group_size=4, pool_size=1)
    work = ops.Step(
        "work", SliceWork, parameters={"x": [start + i for i in range(4)]}, slices=sliced
    )
    return ops.Workflow("slices").add(work)


class ReadLocal(Consume):
    """Reads the local file it is given; blocks the first time when ``AFLOW_HANG=read-local``."""

    counter = "read-local"


@aflow.workflow
def ops_local(start: int) -> ops.Workflow:
    """One step reading the local file named by ``AFLOW_LOCAL_FILE``."""
    src = pathlib.Path(os.environ["AFLOW_LOCAL_FILE"])
    return ops.Workflow("local").add(ops.Step("read", ReadLocal, artifacts={"src": src}))


class Square(ops.OP):
    """``y = x * x``; fails for the ``x`` named by ``fail``."""

    @classmethod
    def get_input_sign(cls) -> ops.OPIOSign:
        return ops.OPIOSign({"x": int, "fail": ops.Parameter(int, default=-1)})

    @classmethod
    def get_output_sign(cls) -> ops.OPIOSign:
        return ops.OPIOSign({"y": int})

    async def execute(self, op_in: ops.OPIO) -> ops.OPIO:
        if op_in["x"] == op_in["fail"]:
            raise ValueError(f"no {op_in['x']}")
        return ops.OPIO({"y": op_in["x"] * op_in["x"]})


@aflow.workflow
def ops_mixed(fail: int, limit: int = 100) -> ops.Workflow:
    """prep (y = 9), then a step run only when y > limit (and its reader), and slices
    with one tolerated failure."""
    prep = ops.Step("prep", Square, parameters={"x": 3})
    maybe = ops.Step(
        "maybe", Square, parameters={"x": 1}, when=f"{prep.outputs.parameters['y']} > {limit}"
    )
    after = ops.Step("after-maybe", Square, parameters={"x": maybe.outputs.parameters["y"]})
    sliced = ops.Slices(input_parameter=["x"], output_parameter=["y"], group_size=4, pool_size=1)
    sq = ops.Step(
        "sq",
        Square,
        parameters={"x": [0, 1, 2, 3], "fail": fail},
        slices=sliced,
        continue_on_num_success=3,
    )
    return ops.Workflow("mixed").add(prep).add([maybe, sq]).add(after)


class Gate(ops.OP):
    """Item 0 never ends (a fail-fast cancels it), item 2 fails, the others answer."""

    @classmethod
    def get_input_sign(cls) -> ops.OPIOSign:
        return ops.OPIOSign({"x": int})

    @classmethod
    def get_output_sign(cls) -> ops.OPIOSign:
        return ops.OPIOSign({"y": int})

    async def execute(self, op_in: ops.OPIO) -> ops.OPIO:
        if op_in["x"] == 0:
            await anyio.sleep_forever()
        if op_in["x"] == 2:
            raise ValueError("no 2")
        return ops.OPIO({"y": op_in["x"]})


@aflow.workflow
def ops_gaps(n: int) -> ops.Workflow:
    """Slices that fail fast while an earlier one still runs; a step after them."""
    sliced = ops.Slices(input_parameter=["x"], output_parameter=["y"], pool_size=4)
    gate = ops.Step("gate", Gate, parameters={"x": list(range(n))}, slices=sliced)
    later = ops.Slices(input_parameter=["x"], output_parameter=["y"])
    after = ops.Step("after", Square, parameters={"x": [1, 2]}, slices=later)  # never starts
    return ops.Workflow("gaps").add(gate).add(after)


# --- for tests/test_scheduler.py (same process) -------------------------------------------

#: The test opens the gate ``gated`` waits at.
GATES: dict[str, anyio.Event] = {}


@aflow.task
async def gated(x: int) -> int:
    await GATES["gated"].wait()
    return x + 1


@aflow.task
async def plus_one(x: int) -> int:
    return x + 1


@aflow.workflow
def gated_then_plus_one(start: int) -> Any:
    return gated.s(start) | plus_one.s()


@aflow.workflow
def spread(*starts: int) -> Any:
    """Collects its parameters in *starts: a durable run cannot rebuild it by name."""
    return aflow.group(step_a.s(s) for s in starts)


_BUILDS = [0]


@aflow.workflow
def another_graph_each_time(start: int) -> Any:
    """Builds a longer chain at each call: what it built cannot be built again."""
    _BUILDS[0] += 1
    return aflow.chain(*(step_a.si(start) for _ in range(_BUILDS[0])))


class CountUp(ops.OP):
    """``iter + 1``, counted as ``count-<iter>`` (``AFLOW_HANG`` blocks one, once)."""

    @classmethod
    def get_input_sign(cls) -> ops.OPIOSign:
        return ops.OPIOSign({"iter": int})

    @classmethod
    def get_output_sign(cls) -> ops.OPIOSign:
        return ops.OPIOSign({"iter": int})

    async def execute(self, op_in: ops.OPIO) -> ops.OPIO:
        await bump(f"count-{op_in['iter']}")
        return ops.OPIO({"iter": op_in["iter"] + 1})


@aflow.workflow
def ops_recursion(start: int) -> ops.Workflow:
    """dflow's loop by recursion: a Steps template that adds a step using itself, from
    ``start - 1`` up to ``start + 3``; its output is the last value (a conditional output
    reading the next level's, or its own step's at the last level)."""
    steps = ops.Steps(
        "iter",
        inputs=ops.Inputs(
            parameters={"iter": ops.InputParameter(value=0), "limit": ops.InputParameter()}
        ),
        outputs=ops.Outputs(parameters={"last": ops.OutputParameter()}),
    )
    plus1 = ops.Step(
        "plus1",
        CountUp,
        parameters={"iter": steps.inputs.parameters["iter"]},
        key=f"iter-{steps.inputs.parameters['iter']}",
    )
    more = f"{plus1.outputs.parameters['iter']} < {steps.inputs.parameters['limit']}"
    deeper = ops.Step(
        "next",
        steps,
        parameters={
            "iter": plus1.outputs.parameters["iter"],
            "limit": steps.inputs.parameters["limit"],
        },
        when=more,
    )
    steps.add(plus1).add(deeper)
    steps.outputs.parameters["last"].value_from_expression = ops.if_expression(
        _if=more,
        _then=deeper.outputs.parameters["last"],
        _else=plus1.outputs.parameters["iter"],
    )
    return ops.Workflow(
        "recursion", steps=steps, parameters={"iter": start - 1, "limit": start + 3}
    )


class MakeBig(ops.OP):
    """A big list, kept out of the records (``BigParameter``)."""

    @classmethod
    def get_input_sign(cls) -> ops.OPIOSign:
        return ops.OPIOSign({"n": int})

    @classmethod
    def get_output_sign(cls) -> ops.OPIOSign:
        return ops.OPIOSign({"values": ops.BigParameter(list[int])})

    async def execute(self, op_in: ops.OPIO) -> ops.OPIO:
        return ops.OPIO({"values": list(range(op_in["n"]))})


class SumBig(ops.OP):
    """Sums the big list it reads, then changes it (its own copy)."""

    @classmethod
    def get_input_sign(cls) -> ops.OPIOSign:
        return ops.OPIOSign({"values": ops.BigParameter(list[int])})

    @classmethod
    def get_output_sign(cls) -> ops.OPIOSign:
        return ops.OPIOSign({"total": int})

    async def execute(self, op_in: ops.OPIO) -> ops.OPIO:
        total = sum(op_in["values"])
        op_in["values"].clear()
        return ops.OPIO({"total": total})


@aflow.workflow
def ops_big(start: int) -> ops.Workflow:
    """A big parameter made by one step and read by two."""
    make = ops.Step("make", MakeBig, parameters={"n": 1000 * start})
    read = [
        ops.Step(f"sum-{i}", SumBig, parameters={"values": make.outputs.parameters["values"]})
        for i in range(2)
    ]
    return ops.Workflow("big").add(make).add(read)


class Inc(ops.OP):
    @classmethod
    def get_input_sign(cls) -> ops.OPIOSign:
        return ops.OPIOSign({"x": int})

    @classmethod
    def get_output_sign(cls) -> ops.OPIOSign:
        return ops.OPIOSign({"y": int})

    async def execute(self, op_in: ops.OPIO) -> ops.OPIO:
        return ops.OPIO({"y": op_in["x"] + 1})


@aflow.workflow
def ops_big_readers(start: int) -> ops.Workflow:
    """A big list read by a condition, a loop, and (through a template's output) a step."""
    make = ops.Step("make", MakeBig, parameters={"n": 3 * start})
    gate = ops.Step(
        "gate",
        SumBig,
        parameters={"values": make.outputs.parameters["values"]},
        when=f"{make.outputs.parameters['values']} == [0, 1, 2]",
    )
    loop = ops.Step(
        "loop", Inc, parameters={"x": "{{item}}"}, with_param=make.outputs.parameters["values"]
    )
    inner = ops.Steps("inner", outputs=ops.Outputs(parameters={"values": ops.OutputParameter()}))
    made = ops.Step("made", MakeBig, parameters={"n": 2})
    inner.add(made)
    inner.outputs.parameters["values"].value_from_parameter = made.outputs.parameters["values"]
    sub = ops.Step("sub", inner)
    after = ops.Step("after", SumBig, parameters={"values": sub.outputs.parameters["values"]})
    return ops.Workflow("big-readers").add(make).add([gate, loop, sub]).add(after)
