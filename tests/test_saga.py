"""Compensation (sagas) and the error contract, ported from TaskFlow's revert behaviour.

Every test runs on asyncio and on uvloop (see conftest.py).
"""

from __future__ import annotations

import asyncio
import pickle
import threading
from typing import Any

import anyio
import pytest

import aflow
import aflow.patterns
from aflow.errors import AflowInternalError
from aflow.testing import FakeClock, inject_failure

from .helpers import Gate, Probe


class Declined(Exception):
    pass


class Journal:
    """Records what ran and what was undone, in order."""

    def __init__(self) -> None:
        self.entries: list[str] = []

    def tasks(self) -> tuple[Any, ...]:
        """A fresh set of tasks with reverts, writing to this journal."""
        journal = self.entries

        @aflow.task
        async def step(tag: str, *rest: Any) -> str:
            journal.append(f"do {tag}")
            return tag

        @step.revert
        async def undo_step(tag: str, *rest: Any, result: Any) -> None:
            state = "failed" if isinstance(result, aflow.Failure) else "ok"
            journal.append(f"undo {tag} ({state})")

        @aflow.task
        async def boom(tag: str, *rest: Any) -> None:
            journal.append(f"do {tag}")
            raise Declined(tag)

        @boom.revert
        async def undo_boom(tag: str, *rest: Any, result: Any) -> None:
            assert isinstance(result, aflow.Failure)
            journal.append(f"undo {tag} (failed)")

        return step, boom


def slow_compensation() -> tuple[aflow.Canvas[None], Gate, list[str]]:
    """A two-step saga whose second step fails and whose revert waits at a gate."""
    undo_gate = Gate()
    finished: list[str] = []

    @aflow.task
    async def t() -> int:
        return 1

    @t.revert
    async def slow_undo() -> None:
        await undo_gate.wait()
        finished.append("undone")

    @aflow.task
    async def fail(x: int) -> None:
        raise Declined

    return t.s() | fail.s(), undo_gate, finished


class TestRevertSignatures:
    def test_revert_receives_only_what_it_accepts(self) -> None:
        @aflow.task
        async def charge(order: str, amount: int) -> str:
            return "r"

        @charge.revert
        async def plain(order: str, amount: int) -> None:
            pass

        assert charge.reverter is not None
        assert not charge.reverter.takes_result
        assert not charge.reverter.takes_failures

        @charge.revert
        async def full(order: str, amount: int, *, result: Any, flow_failures: Any) -> None:
            pass

        assert charge.reverter.takes_result
        assert charge.reverter.takes_failures

    def test_revert_that_cannot_take_the_arguments_is_rejected_at_definition(self) -> None:
        @aflow.task
        async def charge(order: str, amount: int) -> str:
            return "r"

        with pytest.raises(aflow.errors.SignatureError) as info:

            @charge.revert
            async def refund(order: str) -> None:  # amount is missing
                pass

        assert info.value.task == "charge"
        assert "refund" in str(info.value)

    def test_revert_with_extra_required_parameter_is_rejected(self) -> None:
        @aflow.task
        async def charge(order: str) -> str:
            return "r"

        with pytest.raises(aflow.errors.SignatureError, match="reason"):

            @charge.revert
            async def refund(order: str, reason: str) -> None:
                pass

    def test_task_parameter_named_result_conflicts(self) -> None:
        @aflow.task
        async def t(result: int) -> int:
            return result

        with pytest.raises(aflow.errors.SignatureError, match="'result'"):

            @t.revert
            async def undo(result: int) -> None:
                pass


class TestUnwinding:
    """TaskFlow's revert behaviour, ported."""

    async def test_linear_failure_reverts_in_reverse_order(self) -> None:
        journal = Journal()
        step, boom = journal.tasks()
        wf = step.si("a") | step.si("b") | boom.si("c") | step.si("never")
        async with aflow.Runtime() as rt:
            run = await rt.submit(wf)
            with pytest.raises(Declined) as info:
                await run.result()
        assert journal.entries == [
            "do a",
            "do b",
            "do c",
            "undo c (failed)",
            "undo b (ok)",
            "undo a (ok)",
        ]
        assert run.status is aflow.RunStatus.REVERTED
        assert run.reverted() == ["boom", "step#2", "step"]
        assert run.step("step#3").state is aflow.NodeState.PENDING
        assert "reverted boom, step#2, step (in that order)" in "\n".join(info.value.__notes__)

    async def test_parallel_failure_cancels_siblings_and_reverts_them(self) -> None:
        journal = Journal()
        step, _ = journal.tasks()
        gate = Gate()
        cancelled: list[str] = []

        @aflow.task
        async def slow(tag: str) -> str:
            try:
                await gate.wait()
            except anyio.get_cancelled_exc_class():
                cancelled.append(tag)
                raise
            return tag

        @slow.revert
        async def undo_slow(tag: str, *, result: Any) -> None:
            assert isinstance(result, aflow.Failure)
            assert result.cancelled
            journal.entries.append(f"undo {tag} (cancelled)")

        @aflow.task
        async def fail_when_all_blocked() -> None:
            await anyio.wait_all_tasks_blocked()
            raise Declined("late")

        wf = step.si("a") | aflow.group(slow.si("s"), fail_when_all_blocked.si())
        with pytest.raises(Declined):
            await wf
        assert cancelled == ["s"]
        assert journal.entries == ["do a", "undo s (cancelled)", "undo a (ok)"]

    async def test_consumers_are_reverted_before_producers(self) -> None:
        order: list[str] = []

        def make(name: str) -> aflow.FunctionTask[..., Any]:
            @aflow.task(name=name)
            async def t(*args: Any) -> str:
                return name

            @t.revert
            async def undo(*args: Any) -> None:
                await anyio.lowlevel.checkpoint()
                order.append(name)

            return t

        a, b, c, d = make("a"), make("b"), make("c"), make("d")

        @aflow.task
        async def fail(*args: Any) -> None:
            raise Declined

        # a -> (b, c) -> d -> fail
        wf = a.s() | aflow.group(b.s(), c.s()) | d.s() | fail.s()
        with pytest.raises(Declined):
            await wf
        assert order[0] == "d"
        assert set(order[1:3]) == {"b", "c"}
        assert order[3] == "a"

    async def test_several_failures_raise_a_group(self) -> None:
        barrier = threading.Barrier(2)

        @aflow.task
        def fail_together(tag: str) -> None:
            barrier.wait(5)  # both fail before either failure can cancel the other
            raise Declined(tag)

        with pytest.raises(aflow.errors.GroupFailed) as info:
            await aflow.group(fail_together.s("x"), fail_together.s("y"))
        assert sorted(str(e) for e in info.value.exceptions) == ["x", "y"]
        assert info.value.run_id
        declined = info.value.subgroup(Declined)  # what except* Declined would see
        assert declined is not None
        assert len(declined.exceptions) == 2
        assert isinstance(declined, aflow.errors.GroupFailed)  # derive() keeps the type and run id
        assert declined.run_id == info.value.run_id

    async def test_revert_failure_stops_its_branch_only(self) -> None:
        journal: list[str] = []

        @aflow.task
        async def root() -> str:
            return "root"

        @root.revert
        async def undo_root() -> None:
            journal.append("undo root")

        @aflow.task
        async def left(x: str) -> str:
            return "left"

        @left.revert
        async def undo_left(x: str) -> None:
            journal.append("undo left")

        @aflow.task
        async def stubborn(x: str) -> str:
            return "stubborn"

        @stubborn.revert(retries=1)
        async def undo_stubborn(x: str) -> None:
            journal.append("undo stubborn (attempt)")
            raise RuntimeError("cannot undo")

        @aflow.task
        async def fail(*xs: Any) -> None:
            raise Declined("root cause")

        wf = root.s() | aflow.group(left.s(), stubborn.s()) | fail.s()
        async with aflow.Runtime() as rt:
            run = await rt.submit(wf)
            with pytest.raises(aflow.errors.CompensationFailed) as info:
                await run.result()
        error = info.value
        assert isinstance(error.original, Declined)
        assert [type(e) for e in error.exceptions] == [Declined, RuntimeError]
        assert journal.count("undo stubborn (attempt)") == 2  # the revert's own retry
        assert "undo left" in journal  # the other branch was unwound
        assert "undo root" not in journal  # upstream of the failed revert: kept
        assert run.status is aflow.RunStatus.FAILED
        assert run.step("stubborn").state is aflow.NodeState.REVERT_FAILED
        assert isinstance(run.step("stubborn").revert_error, RuntimeError)
        assert run.step("root").state is aflow.NodeState.SUCCEEDED
        matched: list[BaseExceptionGroup[Declined]] = []
        try:
            raise error
        except* Declined as group:  # except* still finds the root failure
            matched.append(group)
        except* RuntimeError:
            pass
        assert [len(g.exceptions) for g in matched] == [1]

    async def test_each_revert_runs_exactly_once(self) -> None:
        counts: dict[str, int] = {}

        @aflow.task
        async def t(tag: str) -> str:
            return tag

        @t.revert
        async def undo(tag: str) -> None:
            counts[tag] = counts.get(tag, 0) + 1

        @aflow.task
        async def fail(*xs: Any) -> None:
            raise Declined

        wf = aflow.group(t.si("a") | t.si("b"), t.si("c")) | aflow.group(t.si("d"), fail.s())
        with pytest.raises(Declined):
            await wf
        assert counts == {"a": 1, "b": 1, "c": 1, "d": 1} or counts == {"a": 1, "b": 1, "c": 1}

    async def test_rerunning_a_reverted_workflow_runs_it_afresh(self) -> None:
        journal = Journal()
        step, _ = journal.tasks()
        attempts = 0

        @aflow.task
        async def flaky(x: str) -> str:
            nonlocal attempts
            attempts += 1
            if attempts == 1:
                raise Declined("first time")
            return "ok"

        wf = step.si("a") | flaky.s()
        with pytest.raises(Declined):
            await wf
        assert await wf == "ok"
        assert journal.entries == ["do a", "undo a (ok)", "do a"]

    async def test_sync_revert_runs_in_a_thread(self) -> None:
        threads: list[int] = []

        @aflow.task
        async def t() -> int:
            return 1

        @t.revert
        def undo() -> None:
            threads.append(threading.get_ident())

        @aflow.task
        async def fail(x: int) -> None:
            raise Declined

        with pytest.raises(Declined):
            await (t.s() | fail.s())
        assert threads
        assert threads[0] != threading.get_ident()

    async def test_independent_reverts_run_concurrently_under_limits(self) -> None:
        probe = Probe()
        gate = Gate()

        @aflow.task(limit="db")
        async def write(i: int) -> int:
            return i

        @write.revert
        async def unwrite(i: int) -> None:
            probe.enter()
            await gate.wait()
            probe.leave()

        @aflow.task
        async def fail(xs: list[int]) -> None:
            raise Declined

        async with aflow.Runtime(limits={"db": 2}) as rt:
            run = await rt.submit(aflow.group(write.s(i) for i in range(6)) | fail.s())
            await anyio.wait_all_tasks_blocked()
            assert probe.current == 2  # concurrent, and bounded by the same limit
            gate.open()
            with pytest.raises(Declined):
                await run.result()
        assert probe.peak == 2
        assert len(run.reverted()) == 6

    async def test_flow_failures_lists_every_failure(self) -> None:
        seen: dict[str, Any] = {}

        @aflow.task
        async def t() -> int:
            return 1

        @t.revert
        async def undo(*, flow_failures: dict[str, aflow.Failure]) -> None:
            seen.update(flow_failures)

        @aflow.task
        async def fail(x: int) -> None:
            raise Declined("why")

        with pytest.raises(Declined):
            await (t.s() | fail.s())
        assert list(seen) == ["fail"]
        failure = seen["fail"]
        assert failure.check(KeyError, Declined) is Declined
        assert failure.message == "why"
        assert "Declined" in failure.traceback_text

    async def test_a_failures_traceback_is_the_one_it_had_when_captured(self) -> None:
        seen: list[aflow.Failure] = []

        @aflow.task
        async def t() -> int:
            return 1

        @t.revert
        async def undo(*, flow_failures: dict[str, aflow.Failure]) -> None:
            seen.extend(flow_failures.values())

        @aflow.task
        async def fail(x: int) -> None:
            raise Declined("why")

        async def caller_of_the_run() -> None:
            await (t.s() | fail.s())

        with pytest.raises(Declined) as raised:
            await caller_of_the_run()
        (failure,) = seen
        text = failure.traceback_text  # formatted after the error went on up
        assert 'raise Declined("why")' in text
        assert "Declined: why\n" in text
        # the frames the error passed through after it was captured are not in it
        assert "caller_of_the_run" not in text
        assert "caller_of_the_run" in str(raised.getrepr())
        assert failure.traceback_text is text  # formatted once


class TestCancellationUnwinds:
    async def test_cancelling_the_caller_unwinds_then_propagates(self) -> None:
        journal = Journal()
        step, _ = journal.tasks()
        events: list[str] = []

        @aflow.task
        async def forever(x: str) -> None:
            await anyio.sleep_forever()

        async def caller() -> None:
            await aflow.run(step.si("a") | forever.s(), on_event=lambda e: events.append(e.name))

        async with anyio.create_task_group() as tg:
            tg.start_soon(caller)
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
        assert journal.entries == ["do a", "undo a (ok)"]
        assert events[-1] == "run_cancelled"

    async def test_cancellation_mid_compensation_still_finishes_it(self) -> None:
        workflow, undo_gate, finished = slow_compensation()

        outcome: list[BaseException] = []
        caller_scope = anyio.CancelScope()

        async def caller() -> None:
            with caller_scope:
                try:
                    await workflow
                except BaseException as exc:
                    outcome.append(exc)
                    raise

        async with anyio.create_task_group() as tg:
            tg.start_soon(caller)
            await anyio.wait_all_tasks_blocked()  # the revert is waiting at its gate
            caller_scope.cancel()  # shielded: the revert keeps going
            await anyio.wait_all_tasks_blocked()
            assert finished == []
            assert outcome == []  # the caller is still inside the unwinding
            undo_gate.open()
        assert finished == ["undone"]
        assert len(outcome) == 1
        assert isinstance(outcome[0], anyio.get_cancelled_exc_class())  # never a result

    async def test_run_cancel_unwinds_and_reports_cancelled(self) -> None:
        journal = Journal()
        step, _ = journal.tasks()

        @aflow.task
        async def forever(x: str) -> None:
            await anyio.sleep_forever()

        async with aflow.Runtime() as rt:
            run = await rt.submit(step.si("a") | forever.s())
            await anyio.wait_all_tasks_blocked()
            await run.cancel()
        assert run.status is aflow.RunStatus.CANCELLED
        assert journal.entries == ["do a", "undo a (ok)"]
        with pytest.raises(aflow.errors.RunCancelled):
            await run.result()

    async def test_compensation_timeout(self) -> None:
        @aflow.task
        async def t() -> int:
            return 1

        @t.revert
        async def never_finishes() -> None:
            await anyio.sleep_forever()

        @aflow.task
        async def fail(x: int) -> None:
            raise Declined

        async with FakeClock() as clock, aflow.Runtime(compensation_timeout=30, clock=clock) as rt:
            run = await rt.submit(t.s() | fail.s())
            with pytest.raises(aflow.errors.CompensationFailed) as info:
                await run.result()
        assert isinstance(info.value.exceptions[1], TimeoutError)
        assert run.step("t").state is aflow.NodeState.REVERT_FAILED
        assert clock.now() == 30

    async def test_cancel_waits_for_a_thread_task_then_reverts_it(self) -> None:
        release = threading.Event()
        entered = threading.Event()
        undone: list[str] = []

        @aflow.task
        def blocking() -> str:
            entered.set()
            release.wait(5)
            return "done"

        @blocking.revert
        def undo_blocking(result: str) -> None:
            undone.append(result)

        @aflow.task
        async def after(x: str) -> str:
            return x

        async with aflow.Runtime() as rt:
            run = await rt.submit(blocking.s() | after.s())
            await anyio.to_thread.run_sync(entered.wait, 5)  # the task's thread has started
            async with anyio.create_task_group() as tg:
                tg.start_soon(run.cancel)
                await anyio.wait_all_tasks_blocked()
                assert run.status is aflow.RunStatus.RUNNING  # a thread cannot be interrupted
                release.set()
            with pytest.raises(aflow.errors.RunCancelled):
                await run.result()
        # the thread's work happened, so it counts as done and is compensated
        assert run.step("blocking").state is aflow.NodeState.REVERTED
        assert undone == ["done"]
        assert run.step("after").state is aflow.NodeState.PENDING  # never started
        assert run.status is aflow.RunStatus.CANCELLED

    async def test_thread_task_cancelled_cooperatively_says_so(self) -> None:
        entered = threading.Event()
        checkpoint = threading.Event()

        @aflow.task
        def polling() -> str:
            entered.set()
            checkpoint.wait(5)  # long sync work, up to the point where it checks in
            anyio.from_thread.check_cancelled()
            return "finished"

        async with aflow.Runtime() as rt:
            run = await rt.submit(polling.s())
            await anyio.to_thread.run_sync(entered.wait, 5)
            async with anyio.create_task_group() as tg:
                tg.start_soon(run.cancel)
                await anyio.wait_all_tasks_blocked()  # the run's scope is cancelled now
                checkpoint.set()
        step = run.step("polling")
        assert step.state is aflow.NodeState.CANCELLED
        assert run.failures()["polling"].cancelled
        assert run.status is aflow.RunStatus.CANCELLED

    async def test_thread_task_sees_its_timeout_cooperatively(self) -> None:
        entered = threading.Event()
        checkpoint = threading.Event()
        finished_anyway: list[bool] = []

        @aflow.task(timeout=30)
        def polling() -> str:
            entered.set()
            checkpoint.wait(5)
            anyio.from_thread.check_cancelled()  # raises: the deadline has passed
            finished_anyway.append(True)
            return "finished"

        async def run_it(clock: FakeClock) -> None:
            with pytest.raises(aflow.errors.TaskTimeout):
                await aflow.run(polling.s(), clock=clock)

        async with FakeClock(autojump=False) as clock, anyio.create_task_group() as tg:
            tg.start_soon(run_it, clock)
            await anyio.to_thread.run_sync(entered.wait, 5)
            clock.advance(30)  # the attempt's deadline, in virtual time
            checkpoint.set()
        assert clock.now() == 30
        assert finished_anyway == []  # it stopped at its deadline instead of running on

    async def test_cancel_after_the_output_exists_keeps_the_result(self) -> None:
        @aflow.task
        async def only() -> str:
            return "value"

        async with aflow.Runtime() as rt:
            run = await rt.submit(only.s())
            assert await run.result() == "value"
            await run.cancel()  # too late: like Task.cancel() on a finished task
            assert run.status is aflow.RunStatus.SUCCEEDED
            assert await run.result() == "value"

    async def test_native_asyncio_cancel_cannot_break_the_shield(self) -> None:
        workflow, undo_gate, finished = slow_compensation()

        task = asyncio.create_task(aflow.run(workflow))
        await anyio.wait_all_tasks_blocked()  # the revert waits at its gate
        task.cancel()  # what asyncio.wait_for or a server's handler timeout does
        await anyio.wait_all_tasks_blocked()
        assert not task.done()
        undo_gate.open()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert finished == ["undone"]


class TestErrorContract:
    async def test_notes_name_task_run_and_reverts(self) -> None:
        journal = Journal()
        step, boom = journal.tasks()
        async with aflow.Runtime() as rt:
            run = await rt.submit(step.si("a") | boom.si("b"), run_id="run-77")
            with pytest.raises(Declined) as info:
                await run.result()
        notes = "\n".join(info.value.__notes__)
        assert "task 'boom' failed on attempt 1 in run run-77" in notes
        assert "reverted boom, step" in notes
        assert set(run.failures()) == {"boom"}
        assert run.failures()["boom"].exception is info.value

    def test_every_exception_class_survives_pickle(self) -> None:
        errors: list[BaseException] = [
            aflow.errors.CycleError(["a", "b"]),
            aflow.errors.DuplicateTaskError("a"),
            aflow.errors.SignatureError("t", "bad", "x"),
            aflow.errors.RunError("r", "m"),
            aflow.errors.RunNotFinished("r"),
            aflow.errors.RunCancelled("r"),
            aflow.errors.TaskTimeout("r", "t", 2, 1.5),
            aflow.errors.RunTimeout("r", 3.0),
            aflow.errors.GroupFailed("r", "two", [ValueError("a"), KeyError("b")]),
            aflow.errors.CompensationFailed("r", "undo", [Declined("x"), RuntimeError("y")]),
            AflowInternalError("bug"),
            aflow.errors.MissingInputError("t", ["x", "y"], "d"),
            aflow.errors.AmbiguousProviderError("x", ["a", "b"], "graph flow 'g'"),
            aflow.errors.ProvidesError("t", ["a", "b"], "returned int"),
        ]
        for error in errors:
            copy = pickle.loads(pickle.dumps(error))
            assert type(copy) is type(error)
            assert str(copy) == str(error)
            assert isinstance(copy, aflow.errors.AflowError)
        group = pickle.loads(pickle.dumps(errors[8]))
        assert group.run_id == "r"
        assert [type(e) for e in group.exceptions] == [ValueError, KeyError]

    async def test_failure_injection_raise_hang_cancel(self) -> None:
        journal = Journal()
        step, _ = journal.tasks()
        wf = step.si("a") | step.si("b")
        with (
            inject_failure("step#2", raises=Declined("injected")) as plan,
            pytest.raises(Declined, match="injected"),
        ):
            await wf
        assert plan.hits == 1
        # b failed: its revert is told so through result=Failure
        assert journal.entries == ["do a", "undo b (failed)", "undo a (ok)"]

        @aflow.task(timeout=5)
        async def quick() -> str:
            return "q"

        async with FakeClock() as clock:
            with inject_failure("quick", hang=True), pytest.raises(aflow.errors.TaskTimeout):
                await aflow.run(quick.s(), clock=clock)

        journal.entries.clear()
        async with aflow.Runtime() as rt:
            with inject_failure("step#2", cancel=True):
                run = await rt.submit(wf)
                assert await run.wait() is aflow.RunStatus.CANCELLED
        # b was cancelled mid-way (before its body ran): its revert still gets a say
        assert journal.entries == ["do a", "undo b (failed)", "undo a (ok)"]
        assert run.failures()["step#2"].cancelled

    async def test_injection_on_a_later_attempt(self) -> None:
        @aflow.task(retries=2)
        async def t() -> int:
            return aflow.current_step().attempt

        with inject_failure("t", raises=Declined("once"), attempt=1) as plan:
            assert await t.s() == 2
        assert plan.hits == 1


class TestUnwindingEdgeCases:
    """Regressions found in review: limits, early cancels, deadlines, maps, records."""

    async def test_reverts_waiting_on_another_runs_slot_still_all_run(self) -> None:
        log: list[str] = []
        go_fail = anyio.Event()
        release_other = anyio.Event()

        @aflow.task(limit="x")
        async def step(tag: str) -> str:
            log.append(f"do {tag}")
            return tag

        @step.revert
        async def undo(tag: str) -> None:
            log.append(f"undo {tag}")

        @aflow.task
        async def fail() -> None:
            await go_fail.wait()
            raise Declined

        @aflow.task(limit="x")
        async def hold() -> None:
            await release_other.wait()

        async with aflow.Runtime(limits={"x": 1}) as rt:
            a = await rt.submit(step.si("a") | step.si("b") | step.si("c") | fail.si())
            await anyio.wait_all_tasks_blocked()
            other = await rt.submit(hold.si() | hold.si())  # takes x while a fails
            await anyio.wait_all_tasks_blocked()
            go_fail.set()
            await anyio.wait_all_tasks_blocked()  # a's reverts wait for x
            release_other.set()
            assert await a.wait() is aflow.RunStatus.REVERTED
            await other.wait()
        assert log[-3:] == ["undo c", "undo b", "undo a"]
        assert a.reverted() == ["step#3", "step#2", "step"]

    async def test_a_stale_limit_waiter_neither_hangs_the_unwind_nor_leaks_the_slot(
        self,
    ) -> None:
        release_other = anyio.Event()

        @aflow.task
        async def first() -> str:
            return "s"

        @first.revert
        async def undo_first() -> None:
            await anyio.lowlevel.checkpoint()

        @aflow.task(limit="x")
        async def needs_x() -> None:
            return None

        @aflow.task
        async def fail() -> None:
            raise Declined

        @aflow.task(limit="x")
        async def hold() -> None:
            await release_other.wait()

        async with aflow.Runtime(limits={"x": 1}) as rt:
            holder = await rt.submit(hold.si())
            await anyio.wait_all_tasks_blocked()
            run = await rt.submit(first.si() | aflow.group(needs_x.si(), fail.si()))
            await anyio.wait_all_tasks_blocked()  # needs_x parked on x, fail failed
            release_other.set()
            with anyio.fail_after(5):
                assert await run.wait() is aflow.RunStatus.REVERTED
            await holder.wait()
            again = await rt.submit(needs_x.si())  # the slot came back
            with anyio.fail_after(5):
                await again.result()

    async def test_cancel_before_the_run_starts_runs_nothing(self) -> None:
        journal = Journal()
        step, _ = journal.tasks()
        async with aflow.Runtime() as rt:
            run = await rt.submit(step.si("a") | step.si("b"))
            await run.cancel()
            with pytest.raises(aflow.errors.RunCancelled):
                await run.result()
        assert journal.entries == []
        assert run.status is aflow.RunStatus.CANCELLED

    async def test_compensation_timeout_records_reverts_in_backoff(self) -> None:
        @aflow.task
        async def charge(order: int) -> int:
            return order

        @charge.revert(retries=3, backoff=aflow.Backoff(base=10, max=100))
        async def refund(order: int) -> None:
            raise ConnectionError("down")

        @aflow.task
        async def ship(receipt: int) -> None:
            raise Declined

        async with FakeClock() as clock, aflow.Runtime(clock=clock, compensation_timeout=5) as rt:
            run = await rt.submit(charge.s(1) | ship.s())
            with pytest.raises(aflow.errors.CompensationFailed) as info:
                await run.result()
        assert isinstance(info.value.original, Declined)
        step = run.step("charge")
        assert step.state is aflow.NodeState.REVERT_FAILED
        assert isinstance(step.revert_error, TimeoutError)
        assert run.statistics().running == 0
        assert run.status is aflow.RunStatus.FAILED

    async def test_cancel_during_error_callbacks_closes_the_run(self) -> None:
        @aflow.task
        async def boom() -> None:
            raise Declined

        @aflow.task
        async def slow_errback(error: BaseException) -> None:
            await anyio.sleep_forever()

        events: list[str] = []

        class Shutdown(Exception):
            pass

        runs: list[aflow.Run[Any]] = []

        async def serve() -> None:
            async with aflow.Runtime() as rt:
                runs.append(
                    await rt.submit(
                        boom.si().on_error(slow_errback.s()),
                        on_event=lambda e: events.append(e.name),
                    )
                )
                await anyio.wait_all_tasks_blocked()  # the errback is running
                raise Shutdown  # leaving the runtime cancels what still runs

        with pytest.raises(Shutdown):  # the block's own error leaves as itself
            await serve()
        run = runs[0]
        assert run.status is aflow.RunStatus.CANCELLED  # ended, not left RUNNING
        assert run.ready()
        assert "run_cancelled" in events

    async def test_unreachable_thresholds_are_refused_before_running(self) -> None:
        @aflow.task
        async def fetch(x: int) -> int:
            return x

        with pytest.raises(aflow.errors.SignatureError, match="can never be met"):
            aflow.compile(aflow.group(fetch.si(1), fetch.si(2)).set(min_success=3))
        with pytest.raises(aflow.errors.SignatureError, match="can never be met"):
            aflow.compile(fetch.map([]).set(min_success=1))

        @aflow.task
        async def nothing() -> list[int]:
            return []

        with pytest.raises(aflow.errors.GroupFailed):  # known only at run time
            await (nothing.s() | fetch.map().set(min_success=1))

    async def test_map_reverts_each_call_it_made_last_first(self) -> None:
        undone: list[tuple[int, Any]] = []

        @aflow.task
        async def inc(x: int) -> int:
            if x == 3:
                raise Declined
            return x + 1

        @inc.revert
        async def uninc(x: int, result: Any) -> None:
            undone.append((x, "failed" if isinstance(result, aflow.Failure) else result))

        @aflow.task
        async def add(x: int, y: int) -> int:
            return x + y

        @add.revert
        async def unadd(x: int, y: int, result: int) -> None:
            undone.append((x, result))

        @aflow.task
        async def fail(*xs: Any) -> None:
            raise Declined

        with pytest.raises(Declined):
            await inc.map([1, 2, 3, 4])
        assert undone == [(3, "failed"), (2, 3), (1, 2)]  # 4 never ran
        undone.clear()
        with pytest.raises(Declined):
            await (add.starmap([(1, 2), (3, 4)]) | fail.s())
        assert undone == [(3, 7), (1, 3)]

    async def test_records_after_unwinding(self) -> None:
        calls = 0

        @aflow.task(retries=3)
        async def flaky() -> None:
            nonlocal calls
            calls += 1
            if calls < 3:
                raise ConnectionError

        @flaky.revert
        async def undo_flaky() -> None:
            return None

        @aflow.task
        async def boom() -> None:
            raise Declined

        async with aflow.Runtime() as rt:
            run = await rt.submit(flaky.si() | boom.si())
            await run.wait()
        assert run.step("flaky").attempts == 3  # the revert's own attempt is not counted here
        assert run.failed()  # boom failed (and has no revert)
        assert list(run.failures()) == ["boom"]

    async def test_fake_clock_ignores_deadlines_of_scopes_that_ended(self) -> None:
        @aflow.task(timeout=1000)
        async def quick() -> int:
            return 1

        async with FakeClock() as clock:
            await aflow.run(quick.si(), clock=clock)
            await clock.sleep(1)
        assert clock.now() == 1  # not 1000


async def test_compensation_failed_says_which_reverts_failed_by_node_key() -> None:
    """CompensationFailed.reverts: node key -> what its revert raised (issue 17), kept
    through pickling and except* splitting."""
    import pickle

    @aflow.task
    async def hold(x: int) -> int:
        return x

    @hold.revert
    async def unhold(x: int, *, result: object) -> None:
        if x == 2:
            raise OSError(f"cannot release {x}")

    @aflow.task
    async def boom(values: list[int]) -> None:
        raise LookupError("boom")

    with pytest.raises(aflow.errors.CompensationFailed) as caught:
        await aflow.chord([hold.s(1), hold.s(2)], boom.s())
    group = caught.value
    (key,) = group.reverts
    assert key == "hold#2"
    assert isinstance(group.reverts[key], OSError)
    assert group.reverts[key] is group.exceptions[1]
    again = pickle.loads(pickle.dumps(group))
    assert list(again.reverts) == [key]
    assert isinstance(again.reverts[key], OSError)
    split, rest = group.split(OSError)  # (what except* does)
    assert isinstance(split, aflow.errors.CompensationFailed)
    assert list(split.reverts) == [key]
    assert isinstance(rest, aflow.errors.CompensationFailed)
    assert rest.reverts == {}
