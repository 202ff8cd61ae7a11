"""Run options: checked once, naming the option at fault, and honoured by every entry point.

Every entry point (``aflow.run``, ``aflow.run_sync``, ``aflow.run(store=...)``,
``Runtime(...)`` defaults, ``Runtime.submit``, a durable submit, ``engines.load``)
builds one ``RunOptions`` from its keyword arguments; the matrix below runs each
option through each entry point that takes it, so an option dropped on its way
to the run fails here.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import FrozenInstanceError, dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import aflow
from aflow import engines
from aflow._runtime._options import RunOptions
from aflow.patterns import linear_flow as lf
from aflow.patterns import unordered_flow as uf

from .helpers import Probe

# --- what the workflows below record ----------------------------------------------------------


@dataclass
class Record:
    probe: Probe = field(default_factory=Probe)
    undone: list[str] = field(default_factory=list)
    attempts: int = 0


RECORD = Record()


@pytest.fixture(autouse=True)
def fresh_record() -> Record:
    global RECORD
    RECORD = Record()
    return RECORD


async def _busy() -> None:
    RECORD.probe.enter()
    for _ in range(5):
        await anyio.lowlevel.checkpoint()
    RECORD.probe.leave()


@aflow.task
async def probe(i: int) -> int:
    await _busy()
    return i


@aflow.task(limit="db")
async def probe_db(i: int) -> int:
    await _busy()
    return i


@aflow.task
async def done() -> str:
    return "done"


@done.revert
async def undo_done() -> None:
    RECORD.undone.append("done")


@aflow.task
async def kept() -> str:
    return "kept"


@kept.revert
async def undo_kept_forever() -> None:
    await anyio.sleep_forever()


class Boom(Exception):
    pass


@aflow.task
async def boom() -> None:
    raise Boom("boom")


@aflow.task
async def hang() -> None:
    await anyio.sleep_forever()


@aflow.task(retries=1, backoff=aflow.Backoff(base=0.01))
async def flaky() -> str:
    RECORD.attempts += 1
    if RECORD.attempts == 1:
        raise ConnectionError("first attempt fails")
    return "ok"


@aflow.workflow
def fan_out() -> Any:
    return aflow.group(probe.s(i) for i in range(6))


@aflow.workflow
def fan_out_db() -> Any:
    return aflow.group(probe_db.s(i) for i in range(6))


@aflow.workflow
def done_then_boom() -> Any:
    return done.si() | boom.si()


@aflow.workflow
def kept_then_boom() -> Any:
    return kept.si() | boom.si()


@aflow.workflow
def hangs() -> Any:
    return hang.si()


@aflow.workflow
def retried() -> Any:
    return flaky.si()


@aflow.workflow
def one_step() -> Any:
    return done.si()


class RecordingClock:
    """The loop's time, but every wait returns at once and is recorded."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def now(self) -> float:
        return anyio.current_time()

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await anyio.lowlevel.checkpoint()

    def cancel_scope(self, timeout: float | None, *, shield: bool = False) -> anyio.CancelScope:
        deadline = math.inf if timeout is None else anyio.current_time() + timeout
        return anyio.CancelScope(deadline=deadline, shield=shield)


# --- the entry points --------------------------------------------------------------------------

Entry = Callable[[Any, dict[str, Any]], Awaitable[Any]]


async def via_run(wf: Any, options: dict[str, Any]) -> Any:
    return await aflow.run(wf(), **options)


async def via_run_sync(wf: Any, options: dict[str, Any]) -> Any:
    return await anyio.to_thread.run_sync(lambda: aflow.run_sync(wf(), **options))


async def via_durable_run(wf: Any, options: dict[str, Any]) -> Any:
    return await aflow.run(wf, params={}, store="memory://", **options)


async def via_runtime_defaults(wf: Any, options: dict[str, Any]) -> Any:
    async with aflow.Runtime(**options) as rt:
        return await rt.run(wf())


async def via_submit(wf: Any, options: dict[str, Any]) -> Any:
    async with aflow.Runtime() as rt:
        run = await rt.submit(wf(), **options)
        return await run.result()


async def via_durable_submit(wf: Any, options: dict[str, Any]) -> Any:
    async with aflow.Runtime(store="memory://") as rt:
        run = await rt.submit(wf, **options)
        return await run.result()


ENTRIES: dict[str, Entry] = {
    "run": via_run,
    "run_sync": via_run_sync,
    "run(store=)": via_durable_run,
    "Runtime(...)": via_runtime_defaults,
    "submit": via_submit,
    "durable submit": via_durable_submit,
}
#: The options each entry point takes (a Runtime's limits are shared by its runs, so
#: submit takes none; a Runtime hears events through each submit).
_PER_RUN = {"on_event", "on_error", "timeout", "comp", "clock"}
_RUNTIME = {"max_concurrency", "limits", "on_error", "timeout", "comp", "clock"}
TAKES: dict[str, set[str]] = {
    "run": _PER_RUN | _RUNTIME,
    "run_sync": _PER_RUN | _RUNTIME,
    "run(store=)": _PER_RUN | _RUNTIME,
    "Runtime(...)": _RUNTIME,
    "submit": _PER_RUN,
    "durable submit": _PER_RUN,
}


async def honours_max_concurrency(entry: Entry) -> None:
    assert await entry(fan_out, {"max_concurrency": 2}) == list(range(6))
    assert RECORD.probe.peak == 2


async def honours_limits(entry: Entry) -> None:
    assert await entry(fan_out_db, {"limits": {"db": 2}}) == list(range(6))
    assert RECORD.probe.peak == 2


async def honours_on_event(entry: Entry) -> None:
    seen: list[str] = []
    assert await entry(one_step, {"on_event": lambda e: seen.append(e.name)}) == "done"
    assert "task_succeeded" in seen


async def honours_on_error(entry: Entry) -> None:
    with pytest.raises(Boom):
        await entry(done_then_boom, {"on_error": "continue"})
    assert RECORD.undone == []  # "revert" would have undone it


async def honours_timeout(entry: Entry) -> None:
    with pytest.raises(aflow.errors.RunTimeout):
        await entry(hangs, {"timeout": 0.01})


async def honours_compensation_timeout(entry: Entry) -> None:
    with pytest.raises(aflow.errors.CompensationFailed) as info:
        await entry(kept_then_boom, {"compensation_timeout": 0.01})
    assert isinstance(info.value.exceptions[1], TimeoutError)


async def honours_clock(entry: Entry) -> None:
    clock = RecordingClock()
    assert await entry(retried, {"clock": clock}) == "ok"
    assert clock.sleeps == [0.01]  # the backoff waited on the run's clock


OPTIONS: dict[str, Callable[[Entry], Awaitable[None]]] = {
    "max_concurrency": honours_max_concurrency,
    "limits": honours_limits,
    "on_event": honours_on_event,
    "on_error": honours_on_error,
    "timeout": honours_timeout,
    "comp": honours_compensation_timeout,
    "clock": honours_clock,
}


@pytest.mark.parametrize(
    ("entry", "option"),
    [
        pytest.param(entry, option, id=f"{entry}-{option}")
        for entry in ENTRIES
        for option in OPTIONS
        if option in TAKES[entry]
    ],
)
async def test_every_entry_point_honours_every_option(entry: str, option: str) -> None:
    await OPTIONS[option](ENTRIES[entry])


class TestEngines:
    """``engines.load`` takes its own names for two options (TaskFlow's)."""

    class Probed(aflow.Task):
        async def execute(self) -> None:
            await _busy()

    class Hangs(aflow.Task):
        async def execute(self) -> None:
            await anyio.sleep_forever()

    def flow(self) -> Any:
        return uf.Flow("f").add(*(self.Probed(name=f"p{i}") for i in range(6)))

    @pytest.mark.parametrize(
        ("engine", "workers", "peak"), [("parallel", 2, 2), ("parallel", None, 6), ("serial", 4, 1)]
    )
    async def test_max_workers_and_engine_bound_the_run(
        self, engine: Any, workers: int | None, peak: int
    ) -> None:
        await engines.load(self.flow(), engine=engine, max_workers=workers).run()
        assert RECORD.probe.peak == peak

    async def test_timeout_on_event_and_clock_reach_the_run(self) -> None:
        seen: list[str] = []
        clock = RecordingClock()
        eng = engines.load(
            lf.Flow("f").add(self.Hangs(name="h")),
            timeout=0.01,
            clock=clock,
            on_event=lambda e: seen.append(e.name),
        )
        with pytest.raises(aflow.errors.RunTimeout):
            await eng.run()
        assert "task_started" in seen


# --- checked once, naming the option -----------------------------------------------------------

BAD: list[Any] = [
    pytest.param({"on_error": "ignore"}, ValueError, "on_error must be 'revert' or 'continue'"),
    pytest.param({"timeout": 0}, ValueError, r"timeout must be a number of seconds > 0, got 0"),
    pytest.param({"timeout": "5"}, TypeError, r"timeout must be a number of seconds"),
    pytest.param({"compensation_timeout": -1}, ValueError, "compensation_timeout must be"),
    pytest.param({"max_concurrency": 0}, ValueError, "max_concurrency must be an int >= 1"),
    pytest.param({"max_concurrency": True}, ValueError, "max_concurrency must be an int"),
    pytest.param({"limits": {"db": 0}}, ValueError, "limit 'db' must be an int >= 1, got 0"),
    pytest.param({"limits": [("db", 1)]}, TypeError, "limits must map limit names to ints"),
    pytest.param({"on_event": "print"}, TypeError, "on_event must be a callable"),
    pytest.param({"clock": object()}, TypeError, "clock must be an aflow clock"),
]


def _takes(entry: str, options: dict[str, Any]) -> bool:
    (name,) = options
    return ("comp" if name == "compensation_timeout" else name) in TAKES[entry]


@pytest.mark.parametrize(
    ("entry", "options", "error", "message"),
    [
        pytest.param(entry, *bad.values, id=f"{entry}-{bad.id or next(iter(bad.values[0]))}")
        for entry in ENTRIES
        for bad in BAD
        if _takes(entry, bad.values[0])
    ],
)
async def test_a_bad_option_is_refused_before_anything_runs(
    entry: str, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        await ENTRIES[entry](one_step, options)
    assert RECORD.undone == []
    assert RECORD.probe.peak == 0


def test_a_runtime_checks_its_defaults_when_built() -> None:
    with pytest.raises(ValueError, match="timeout must be a number of seconds > 0"):
        aflow.Runtime(timeout=-1)
    with pytest.raises(ValueError, match="limit 'db' must be an int >= 1"):
        aflow.Runtime(limits={"db": 0})


def test_engines_load_names_its_own_options() -> None:
    flow = lf.Flow("f")
    with pytest.raises(ValueError, match="max_workers must be an int >= 1"):
        engines.load(flow, engine="parallel", max_workers=0)
    with pytest.raises(TypeError, match=r"executor must be a concurrent\.futures\.Executor"):
        engines.load(flow, executor=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout must be"):
        engines.load(flow, timeout=0)


# --- defaults, overrides, and the value itself -------------------------------------------------


class TestRuntimeDefaults:
    async def test_a_call_overrides_the_runtime_defaults(self) -> None:
        mine, theirs = RecordingClock(), RecordingClock()
        async with aflow.Runtime(on_error="continue", clock=theirs, timeout=60) as rt:
            with pytest.raises(Boom):
                await (await rt.submit(done_then_boom(), on_error="revert")).result()
            assert RECORD.undone == ["done"]
            assert await (await rt.submit(retried(), clock=mine)).result() == "ok"
            assert (mine.sleeps, theirs.sleeps) == ([0.01], [])
            with pytest.raises(aflow.errors.RunTimeout):
                await (await rt.submit(hangs(), timeout=0.01)).result()

    async def test_what_a_call_leaves_unset_comes_from_the_runtime(self) -> None:
        clock = RecordingClock()
        async with aflow.Runtime(on_error="continue", clock=clock) as rt:
            with pytest.raises(Boom):
                await (await rt.submit(done_then_boom(), timeout=60)).result()
            assert RECORD.undone == []
            RECORD.attempts = 0
            assert await (await rt.submit(retried())).result() == "ok"
            assert clock.sleeps == [0.01]

    async def test_a_durable_run_keeps_the_options_it_was_submitted_with(self) -> None:
        import json

        async with aflow.Runtime(store="memory://", compensation_timeout=7) as rt:
            run = await rt.submit(one_step, timeout=60)
            await run.result()
            assert rt.store is not None
            stored = json.loads((await rt.store.get_run(run.id)).options or "{}")
        assert stored["on_error"] == "revert"
        assert (stored["timeout"], stored["compensation_timeout"]) == (60, 7)
        assert stored["deadline"] is not None


class TestRunOptions:
    def test_it_is_frozen_and_holds_a_copy_of_the_limits(self) -> None:
        limits = {"db": 2}
        options = RunOptions(limits=limits)
        limits["db"] = 99
        assert options.limits == {"db": 2}
        with pytest.raises(FrozenInstanceError):
            options.timeout = 5  # type: ignore[misc]
        with pytest.raises(TypeError):
            options.limits["db"] = 3  # type: ignore[index]

    def test_merged_keeps_what_an_override_leaves_unset(self) -> None:
        defaults = RunOptions(timeout=10, on_error="continue", limits={"db": 1})
        assert defaults.merged(timeout=None, clock=None) is defaults
        merged = defaults.merged(timeout=5, on_error=None)
        assert (merged.timeout, merged.on_error, merged.limits) == (5, "continue", {"db": 1})
        assert defaults.replaced(timeout=None).timeout is None
        with pytest.raises(ValueError, match="timeout"):
            defaults.merged(timeout=-1)
        with pytest.raises(TypeError):
            defaults.merged(colour="red")

    def test_equal_options_are_equal(self) -> None:
        assert RunOptions(timeout=1, limits={"a": 1}) == RunOptions(timeout=1, limits={"a": 1})
        assert hash(RunOptions(timeout=1)) == hash(RunOptions(timeout=1))
