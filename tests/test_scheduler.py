"""The scheduler: concurrency, limits, failure, cancellation, context, threads, events.

Concurrency is synchronised with events and ``wait_all_tasks_blocked``, never sleeps.
Every test runs on asyncio and on uvloop (see conftest.py).
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import threading
from typing import Any

import anyio
import pytest
import structlog

import aflow
from aflow.testing import FakeClock, capture_events

from .helpers import Gate, Probe


class Boom(Exception):
    pass


@aflow.task
async def add(x: int, y: int) -> int:
    return x + y


@aflow.task
async def ident(x: Any) -> Any:
    return x


class TestConcurrency:
    async def test_independent_branches_run_concurrently(self) -> None:
        gate = Gate()

        @aflow.task
        async def wait_at_gate(i: int) -> int:
            await gate.wait()
            return i

        async with aflow.Runtime() as rt:
            run = await rt.submit(aflow.group(wait_at_gate.s(i) for i in range(5)))
            await anyio.wait_all_tasks_blocked()
            assert gate.arrived == 5  # all five started before any could finish
            gate.open()
            assert await run.result() == [0, 1, 2, 3, 4]

    @pytest.mark.parametrize("limit", [1, 3, 7])
    async def test_max_concurrency_bounds_the_peak(self, limit: int) -> None:
        probe = Probe()
        gate = Gate()

        @aflow.task
        async def work(i: int) -> int:
            probe.enter()
            await gate.wait()
            probe.leave()
            return i

        async with aflow.Runtime() as rt:
            run = await rt.submit(
                aflow.group(work.s(i) for i in range(20)).set(name="fan"),
            )
            await anyio.wait_all_tasks_blocked()
            assert probe.current == 20  # no limit on this runtime: everything in flight
            gate.open()
            await run.result()

        probe, gate = Probe(), Gate()
        task_group_result: list[Any] = []

        async def go() -> None:
            task_group_result.append(
                await aflow.run(aflow.group(work.s(i) for i in range(20)), max_concurrency=limit)
            )

        async with anyio.create_task_group() as tg:
            tg.start_soon(go)
            await anyio.wait_all_tasks_blocked()
            assert probe.current == limit  # exactly the limit: bounded, and used
            gate.open()
        assert probe.peak == limit
        assert task_group_result == [list(range(20))]

    async def test_named_limit_bounds_only_its_tasks(self) -> None:
        db_probe, free_probe = Probe(), Probe()
        gate = Gate()

        @aflow.task(limit="db")
        async def query(i: int) -> int:
            db_probe.enter()
            await gate.wait()
            db_probe.leave()
            return i

        @aflow.task
        async def compute(i: int) -> int:
            free_probe.enter()
            await gate.wait()
            free_probe.leave()
            return i

        wf = aflow.group([*(query.s(i) for i in range(6)), *(compute.s(i) for i in range(6))])
        async with aflow.Runtime(limits={"db": 2}) as rt:
            run = await rt.submit(wf)
            await anyio.wait_all_tasks_blocked()
            assert db_probe.current == 2
            assert free_probe.current == 6
            gate.open()
            assert await run.result() == [*range(6), *range(6)]
        assert db_probe.peak == 2

    async def test_limit_slot_taken_only_once_inputs_are_ready(self) -> None:
        upstream_gate = Gate()
        finished: list[str] = []

        @aflow.task
        async def slow_upstream() -> int:
            await upstream_gate.wait()
            return 1

        @aflow.task(limit="db")
        async def write(x: int, tag: str) -> int:
            finished.append(tag)
            return x

        wf = aflow.group(slow_upstream.s() | write.s("after-upstream"), write.si(2, "independent"))
        async with aflow.Runtime(limits={"db": 1}) as rt:
            run = await rt.submit(wf)
            await anyio.wait_all_tasks_blocked()
            # The waiting chain member must not hold the only db slot.
            assert finished == ["independent"]
            upstream_gate.open()
            assert await run.result() == [1, 2]

    async def test_limits_are_shared_by_the_runs_of_a_runtime(self) -> None:
        probe = Probe()
        gate = Gate()

        @aflow.task(limit="db")
        async def query(i: int) -> int:
            probe.enter()
            await gate.wait()
            probe.leave()
            return i

        async with aflow.Runtime(limits={"db": 3}) as rt:
            runs = [await rt.submit(aflow.group(query.s(i) for i in range(4))) for _ in range(3)]
            await anyio.wait_all_tasks_blocked()
            assert probe.current == 3
            gate.open()
            assert [await r.result() for r in runs] == [[0, 1, 2, 3]] * 3
        assert probe.peak == 3

    async def test_a_stopping_run_never_strands_another_runs_waiter(self) -> None:
        """A slot handed to a run that then stops goes on to the next run waiting for it.

        A holds the only db slot; B waits for it and C waits behind B. One gate
        releases A's task and B's failing task in the same tick: A hands its
        slot to B, then B fails before it can use the slot.
        """
        gate = Gate()

        @aflow.task(limit="db")
        async def hold() -> str:
            await gate.wait()
            return "held"

        @aflow.task(limit="db")
        async def query(tag: str) -> str:
            return tag

        @aflow.task
        async def doomed() -> None:
            await gate.wait()
            raise Boom

        async with aflow.Runtime(limits={"db": 1}) as rt:
            holder = await rt.submit(hold.s())
            await anyio.wait_all_tasks_blocked()
            b = await rt.submit(aflow.group(doomed.s(), query.s("b")))
            await anyio.wait_all_tasks_blocked()
            c = await rt.submit(query.s("c"))
            await anyio.wait_all_tasks_blocked()
            gate.open()
            assert await holder.result() == "held"
            assert await b.wait() is aflow.RunStatus.FAILED
            assert b.step("query").state is aflow.NodeState.PENDING
            with anyio.fail_after(5):  # a stranded waiter would hang here
                assert await c.result() == "c"

    async def test_a_freed_slot_goes_to_the_waiting_run_first(self) -> None:
        """First come, first served: a run cannot take back the slot it frees while others wait."""
        gate = Gate()
        log: list[str] = []

        @aflow.task
        async def step(x: int, tag: str) -> int:
            log.append(tag)
            await gate.wait()
            return x

        async with aflow.Runtime(max_concurrency=1) as rt:
            long = await rt.submit(
                aflow.chain(step.s(0, "A0"), *(step.s(f"A{i}") for i in range(1, 6)))
            )
            await anyio.wait_all_tasks_blocked()
            short = await rt.submit(step.s(0, "B"))
            await anyio.wait_all_tasks_blocked()
            gate.open()
            await long.result()
            await short.result()
        assert log[:3] == ["A0", "B", "A1"]

    async def test_limits_of_a_group_add_to_the_tasks_own(self) -> None:
        db_probe, api_probe = Probe(), Probe()
        gate = Gate()

        @aflow.task(limit="db")
        async def query(i: int) -> int:
            db_probe.enter()
            api_probe.enter()
            await gate.wait()
            db_probe.leave()
            api_probe.leave()
            return i

        wf = aflow.group(query.s(i) for i in range(6)).set(limit="api")
        async with aflow.Runtime(limits={"db": 1, "api": 10}) as rt:
            run = await rt.submit(wf)
            await anyio.wait_all_tasks_blocked()
            assert db_probe.current == 1
            gate.open()
            await run.result()
        assert db_probe.peak == 1

    async def test_unknown_limit_is_a_definition_error_before_running(self) -> None:
        ran: list[int] = []

        @aflow.task(limit="dbb")
        async def query() -> None:
            ran.append(1)

        with pytest.raises(aflow.errors.DefinitionError, match="'dbb'"):
            await aflow.run(query.s(), limits={"db": 1})
        assert ran == []

    async def test_instant_tasks_still_yield_to_the_event_loop(self) -> None:
        ticks = 0
        stop = False

        async def ticker() -> None:
            nonlocal ticks
            while not stop:
                ticks += 1
                await asyncio.sleep(0)

        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            await anyio.lowlevel.checkpoint()
            before = ticks
            await aflow.chain(add.s(0, 1), *(add.s(1) for _ in range(2000)))
            during = ticks - before
            stop = True
        assert during >= 10  # a 2000-step chain of instant tasks did not hog the loop

    async def test_deep_chain_and_wide_group(self) -> None:
        assert await aflow.chain(add.s(0, 1), *(add.s(1) for _ in range(9999))) == 10_000
        assert sum(await aflow.group(add.s(i, 0) for i in range(10_000))) == 49_995_000


class TestFailure:
    async def test_original_exception_reaches_the_awaiter(self) -> None:
        @aflow.task
        async def broken() -> None:
            raise Boom("card declined")

        with pytest.raises(Boom, match="card declined") as info:
            await (add.s(1, 1) | broken.si())
        notes = "\n".join(info.value.__notes__)
        assert "broken" in notes
        assert "run" in notes

    async def test_first_failure_cancels_running_and_skips_unstarted(self) -> None:
        gate = Gate()
        cancelled: list[str] = []
        started: list[str] = []

        @aflow.task
        async def blocked(tag: str) -> str:
            started.append(tag)
            try:
                await gate.wait()
            except anyio.get_cancelled_exc_class():
                cancelled.append(tag)
                raise
            return tag

        @aflow.task
        async def broken() -> None:
            await anyio.wait_all_tasks_blocked()
            raise Boom

        wf = aflow.group(blocked.s("a"), blocked.s("b") | blocked.si("never"), broken.s())
        async with aflow.Runtime() as rt:
            run = await rt.submit(wf)
            with pytest.raises(Boom):
                await run.result()
        assert sorted(cancelled) == ["a", "b"]
        assert "never" not in started
        assert run.status is aflow.RunStatus.FAILED
        assert run.step("blocked").state is aflow.NodeState.CANCELLED
        assert run.step("blocked#3").state is aflow.NodeState.PENDING
        assert run.step("broken").state is aflow.NodeState.FAILED
        assert isinstance(run.step("broken").error, Boom)

    async def test_no_task_outlives_a_failed_run(self) -> None:
        @aflow.task
        async def forever() -> None:
            await anyio.sleep_forever()

        @aflow.task
        async def broken() -> None:
            await anyio.wait_all_tasks_blocked()
            raise Boom

        before = len(asyncio.all_tasks())
        with pytest.raises(Boom):
            await aflow.group([forever.s() for _ in range(10)] + [broken.s()])
        assert len(asyncio.all_tasks()) == before

    async def test_retries_then_success(self) -> None:
        attempts = 0

        @aflow.task(retries=2)
        async def flaky() -> str:
            nonlocal attempts
            attempts += 1
            if attempts < 3:
                raise Boom
            return "ok"

        async with aflow.Runtime() as rt:
            run = await rt.submit(flaky.s())
            assert await run.result() == "ok"
        assert run.step("flaky").attempts == 3

    async def test_retries_exhausted_raises_last_error(self) -> None:
        @aflow.task(retries=1)
        async def always() -> None:
            raise Boom("again")

        with pytest.raises(Boom, match="again") as info:
            await always.s()
        assert "attempt 2" in info.value.__notes__[-1]

    async def test_timeout_per_attempt(self) -> None:
        @aflow.task(timeout=0.05)
        async def hangs() -> None:
            await anyio.sleep_forever()

        with pytest.raises(TimeoutError):
            await hangs.s()

    async def test_timeout_of_a_thread_task_discards_the_late_result(self) -> None:
        release = threading.Event()

        @aflow.task(timeout=0.05)
        def blocking() -> str:
            release.wait(5)
            return "late"

        async def open_later(clock: FakeClock) -> None:
            await clock.sleep(0.2)  # past the timeout: the thread cannot be interrupted
            release.set()

        # virtual time: the timeout fires at 0.05 s, then the thread is let go at 0.2 s
        async with FakeClock() as clock, anyio.create_task_group() as tg:
            tg.start_soon(open_later, clock)
            with pytest.raises(aflow.errors.TaskTimeout, match=r"timed out after 0\.05 s") as info:
                await aflow.run(blocking.s(), clock=clock)
        assert info.value.task == "blocking"
        assert isinstance(info.value, TimeoutError)

    async def test_timeout_option_on_signature(self) -> None:
        @aflow.task
        async def hangs() -> None:
            await anyio.sleep_forever()

        with pytest.raises(TimeoutError):
            await hangs.s().set(timeout=0.05)

    async def test_errback_failure_is_not_dropped(self) -> None:
        @aflow.task
        async def broken() -> None:
            raise Boom("first")

        @aflow.task
        async def bad_errback(exc: BaseException) -> None:
            raise RuntimeError("errback broke")

        with pytest.raises(Boom) as info:
            await broken.s().link_error(bad_errback.s())
        assert any("errback broke" in n for n in info.value.__notes__)


class TestCancellation:
    async def test_cancelling_the_caller_cancels_the_run_and_propagates(self) -> None:
        gate = Gate()
        observed: list[str] = []
        events: list[aflow.Event] = []

        @aflow.task
        async def blocked() -> None:
            try:
                await gate.wait()
            except anyio.get_cancelled_exc_class():
                observed.append("cancelled")
                raise

        reached_after = False

        async def caller() -> None:
            nonlocal reached_after
            await aflow.run(aflow.group(blocked.s(), blocked.s()), on_event=events.append)
            reached_after = True  # pragma: no cover - must not be reached

        async with anyio.create_task_group() as tg:
            tg.start_soon(caller)
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
        assert observed == ["cancelled", "cancelled"]
        assert not reached_after
        assert events[-1].name == "run_cancelled"

    async def test_asyncio_task_cancel_propagates_cancelled_error(self) -> None:
        @aflow.task
        async def forever() -> None:
            await anyio.sleep_forever()

        task = asyncio.ensure_future(aflow.run(forever.s()))
        await anyio.wait_all_tasks_blocked()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


class TestContextAndThreads:
    async def test_runs_sharing_a_limit_keep_their_own_context(self) -> None:
        """A worker restarted by another run's freed slot runs in its own run's context."""
        request: contextvars.ContextVar[str] = contextvars.ContextVar("request", default="-")
        gate = Gate()

        @aflow.task(limit="db")
        async def query() -> str:
            await gate.wait()
            return request.get()

        async with aflow.Runtime(limits={"db": 1}) as rt:
            request.set("req-A")
            a = await rt.submit(query.s())
            await anyio.wait_all_tasks_blocked()
            request.set("req-B")
            b = await rt.submit(query.s())
            await anyio.wait_all_tasks_blocked()
            gate.open()
            assert await a.result() == "req-A"
            assert await b.result() == "req-B"

    async def test_contextvars_propagate_into_async_and_sync_tasks(self) -> None:
        var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

        @aflow.task
        async def read_async() -> str:
            return var.get()

        @aflow.task
        def read_sync() -> str:
            return var.get()

        var.set("request-42")
        assert await aflow.group(read_async.s(), read_sync.s()) == ["request-42"] * 2

    async def test_a_task_setting_a_contextvar_does_not_leak_into_the_next(self) -> None:
        var: contextvars.ContextVar[str] = contextvars.ContextVar("leak", default="clean")

        @aflow.task
        async def dirty(x: int) -> int:
            var.set("dirty")
            return x

        @aflow.task
        async def read(x: int) -> str:
            return var.get()

        assert await (dirty.s(1) | read.s()) == "clean"
        assert var.get() == "clean"

    async def test_sync_tasks_run_in_a_worker_thread(self) -> None:
        loop_thread = threading.get_ident()

        @aflow.task
        def where() -> int:
            return threading.get_ident()

        assert await where.s() != loop_thread
        assert await where() != loop_thread

    async def test_sync_task_exception_propagates(self) -> None:
        @aflow.task
        def broken() -> None:
            raise Boom("in thread")

        with pytest.raises(Boom, match="in thread"):
            await broken.s()


class TestEvents:
    async def test_listener_receives_every_transition(self) -> None:
        events: list[aflow.Event] = []
        await aflow.run(add.s(1, 1) | add.s(2), on_event=events.append, run_id="r-1")
        names = [(e.name, e.node) for e in events]
        assert names == [
            ("run_started", None),
            ("task_started", "add"),
            ("task_succeeded", "add"),
            ("task_started", "add#2"),
            ("task_succeeded", "add#2"),
            ("run_succeeded", None),
        ]
        assert {e.run_id for e in events} == {"r-1"}
        assert all(e.duration_s is not None for e in events if e.name == "task_succeeded")

    async def test_failure_and_retry_events(self) -> None:
        events: list[aflow.Event] = []

        @aflow.task(retries=1)
        async def broken() -> None:
            raise Boom

        with pytest.raises(Boom):
            await aflow.run(broken.s(), on_event=events.append)
        names = [e.name for e in events]
        assert names == [
            "run_started",
            "task_started",
            "task_retried",
            "task_started",
            "task_failed",
            "run_failed",
        ]
        failed = events[-2]
        assert failed.attempt == 2
        assert isinstance(failed.error, Boom)

    async def test_structlog_records_with_fixed_keys(self) -> None:
        with capture_events() as logs:
            await aflow.run(add.s(1, 1), run_id="r-2")
        by_event = {entry["event"]: entry for entry in logs}
        assert set(by_event) == {"run_started", "task_started", "task_succeeded", "run_succeeded"}
        done = by_event["task_succeeded"]
        assert done["run_id"] == "r-2"
        assert done["node"] == "add"
        assert done["attempt"] == 1
        assert done["log_level"] == "debug"
        assert isinstance(done["duration_s"], float)

    async def test_no_node_event_work_when_nobody_listens(self, monkeypatch: Any) -> None:
        built: list[Any] = []
        original = aflow.Event.__init__

        def spy(self: Any, *args: Any, **kwargs: Any) -> None:
            built.append(args[0] if args else kwargs.get("name"))
            original(self, *args, **kwargs)

        monkeypatch.setattr(aflow.Event, "__init__", spy)
        structlog.reset_defaults()
        await aflow.group(add.s(i, i) for i in range(50))
        assert not [name for name in built if name and name.startswith("task_")]


class TestInlineStart:
    """Workers start plain async nodes inline (issue #7): what that must not change."""

    async def test_a_first_node_that_waits_for_a_later_sibling_does_not_deadlock(self) -> None:
        ready = anyio.Event()

        @aflow.task
        async def waiter() -> str:
            await ready.wait()
            return "waited"

        @aflow.task
        async def setter() -> str:
            ready.set()
            return "set"

        with anyio.fail_after(5):
            assert await aflow.group(waiter.s(), setter.s()) == ["waited", "set"]
            ready = anyio.Event()
            assert await aflow.chord([waiter.s(), setter.s()], ident.s()) == ["waited", "set"]

    async def test_a_node_raising_before_its_first_await_unwinds_what_ran(self) -> None:
        undone: list[int] = []

        @aflow.task
        async def book(x: int) -> int:
            return x + 1

        @book.revert
        async def unbook(x: int, *, result: Any) -> None:
            undone.append(result)

        @aflow.task
        async def broken(x: int) -> int:
            raise Boom(f"at once, after {x}")

        with pytest.raises(Boom, match="at once, after 2"):
            await aflow.chain(book.s(0), book.s(), broken.s())
        assert undone == [2, 1]

    async def test_cancel_reaches_a_node_suspended_after_an_inline_start(self) -> None:
        gate = Gate()
        seen: list[str] = []

        @aflow.task
        async def hang() -> None:
            try:
                await gate.wait()
            except BaseException as exc:
                seen.append(type(exc).__name__)
                raise

        task = asyncio.ensure_future(aflow.run(aflow.chain(add.s(1, 1), hang.si())))
        await anyio.wait_all_tasks_blocked()
        assert gate.arrived == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert seen == ["CancelledError"]

    async def test_timeouts_hold_for_nodes_started_inline(self) -> None:
        @aflow.task(timeout=0.05)
        async def hang() -> None:
            await anyio.sleep_forever()

        @aflow.task(timeout=0.05)
        async def instant(x: int) -> int:
            return x

        with anyio.fail_after(5):
            assert await aflow.group(instant.s(i) for i in range(300)) == list(range(300))
            with pytest.raises(aflow.errors.TaskTimeout):
                await aflow.group(instant.s(1), hang.s())

    async def test_steps_of_instant_chains_have_ordered_times(self) -> None:
        async with aflow.Runtime() as rt:
            run = await rt.submit(aflow.chain(add.s(0, 1), *(add.s(1) for _ in range(300))))
            assert await run.result() == 301
        steps = run.steps()
        for step in steps:
            assert step.started_at is not None
            assert step.finished_at is not None
            assert step.started_at <= step.finished_at
        for before, after in itertools.pairwise(steps):
            assert before.finished_at <= after.started_at  # type: ignore[operator]
        assert run.statistics().peak_running == 1

    async def test_siblings_started_inline_keep_their_own_context(self) -> None:
        var: contextvars.ContextVar[str] = contextvars.ContextVar("sibling", default="clean")
        gate = Gate()

        @aflow.task
        async def dirty_then_wait() -> str:
            var.set("dirty")
            await gate.wait()
            return var.get()

        @aflow.task
        async def read() -> str:
            gate.open()
            return var.get()

        assert await aflow.group(dirty_then_wait.s(), read.s(), read.s()) == [
            "dirty",
            "clean",
            "clean",
        ]

    async def test_a_durable_node_that_suspends_is_on_record_as_running(self) -> None:
        from .durable_workflows import GATES, gated_then_plus_one

        GATES["gated"] = gate = anyio.Event()
        async with aflow.Runtime(store="memory://") as rt:
            run = await rt.submit(gated_then_plus_one, start=1)
            await anyio.wait_all_tasks_blocked()
            assert rt.store is not None
            records = await rt.store.load_nodes(run.id)
            assert {k: r.state for k, r in records.items()} == {"gated": "running"}
            gate.set()
            assert await run.result() == 3
            records = await rt.store.load_nodes(run.id)
            assert {k: r.state for k, r in records.items()} == {
                "gated": "succeeded",
                "plus_one": "succeeded",
            }

    # From the review of issue #7: a node's first step runs inline, so everything it
    # binds to the current task (cancel scopes, timeouts, task groups) must still hold.

    async def test_task_bound_scopes_opened_before_the_first_await(self) -> None:
        @aflow.task
        async def guarded(i: int) -> str:
            with anyio.move_on_after(5):
                await anyio.lowlevel.checkpoint()
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.lowlevel.checkpoint)
            try:
                async with asyncio.timeout(0.01):
                    await anyio.sleep_forever()
            except TimeoutError:
                return f"timed out {i}"
            return "never"

        with anyio.fail_after(5):
            assert await guarded.s(0) == "timed out 0"
            assert await aflow.group(guarded.s(i) for i in range(3)) == [
                f"timed out {i}" for i in range(3)
            ]
            with anyio.move_on_after(5) as caller:  # the caller's own scope still exits
                assert await aflow.run(guarded.s(1), timeout=5) == "timed out 1"
            assert not caller.cancelled_caught

    async def test_a_timeout_node_opening_a_scope_before_its_first_await(self) -> None:
        @aflow.task(timeout=5)
        async def guarded(i: int) -> int:
            with anyio.move_on_after(5):
                await anyio.lowlevel.checkpoint()
            return i

        with anyio.fail_after(5):
            assert await aflow.group(guarded.s(i) for i in range(3)) == [0, 1, 2]

    async def test_a_task_raising_cancelled_error_by_itself_does_not_hang_the_run(self) -> None:
        @aflow.task
        async def nap(i: int) -> int:
            await anyio.lowlevel.checkpoint()
            return i

        @aflow.task
        async def gone(i: int) -> int:
            await anyio.lowlevel.checkpoint()
            raise asyncio.CancelledError

        with anyio.fail_after(5), pytest.raises((RuntimeError, asyncio.CancelledError)) as info:
            await aflow.run(aflow.group(nap.s(0), nap.s(1), gone.s(2)))
        if isinstance(info.value, RuntimeError):
            assert "'gone'" in str(info.value)

    async def test_cancelling_the_caller_stops_every_waiting_node_at_once(self) -> None:
        gate = Gate()
        ended: list[str] = []

        @aflow.task
        async def wait(i: int) -> int:
            try:
                await gate.wait()
            except BaseException as exc:
                ended.append(type(exc).__name__)
                raise
            return i

        task = asyncio.ensure_future(aflow.run(aflow.group(wait.s(i) for i in range(5))))
        await anyio.wait_all_tasks_blocked()
        assert gate.arrived == 5
        task.cancel()
        with anyio.fail_after(5), pytest.raises(asyncio.CancelledError):
            await task
        assert ended == ["CancelledError"] * 5
        await anyio.wait_all_tasks_blocked()
        assert {t for t in asyncio.all_tasks() if not t.done()} == {asyncio.current_task()}

    async def test_a_shield_inside_a_node_holds_when_a_sibling_fails(self) -> None:
        inside = anyio.Event()
        done: list[str] = []

        @aflow.task
        async def careful() -> None:
            with anyio.CancelScope(shield=True):
                inside.set()
                await anyio.sleep(0.05)  # its cleanup: a cancel must wait for it
                done.append("cleanup")

        @aflow.task
        async def broken() -> None:
            await inside.wait()
            raise Boom("late")

        with anyio.fail_after(5), pytest.raises(Boom):
            await aflow.group(broken.s(), careful.s())  # careful runs in a spare worker
        assert done == ["cleanup"]
