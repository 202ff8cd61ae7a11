"""Retries, backoff, timeouts, deadlines and the run-level policies, on virtual time."""

from __future__ import annotations

import asyncio
import pickle
import random
from typing import Any

import anyio
import pytest

import aflow
from aflow.testing import FakeClock

from .helpers import Gate


class Flaky(Exception):
    pass


class Fatal(Exception):
    pass


def failing_until(attempt_ok: int, error: type[Exception] = Flaky) -> Any:
    """A task that fails until attempt ``attempt_ok``; it records each attempt's time."""
    seen: list[int] = []

    @aflow.task(retries=5)
    async def flaky() -> int:
        attempt = aflow.current_step().attempt
        seen.append(attempt)
        if attempt < attempt_ok:
            raise error(f"attempt {attempt}")
        return attempt

    return flaky, seen


class TestBackoff:
    def test_delays_grow_and_cap(self) -> None:
        backoff = aflow.Backoff(base=1, factor=2, max=5)
        assert [backoff.delay(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]

    def test_full_jitter_draws_below_the_delay(self) -> None:
        backoff = aflow.Backoff(base=10, factor=1, jitter=True)
        rng = random.Random(7)
        delays = [backoff.delay(1, rng) for _ in range(200)]
        assert all(0 <= d <= 10 for d in delays)
        assert len(set(delays)) > 100  # really random, not a constant
        assert min(delays) < 2  # spread over the whole band
        assert max(delays) > 8

    def test_bad_values_are_rejected_with_the_argument_named(self) -> None:
        with pytest.raises(ValueError, match="factor"):
            aflow.Backoff(base=1, factor=0.5)
        with pytest.raises(ValueError, match="jitter"):
            aflow.Backoff(base=1, jitter=2)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="base"):
            aflow.Backoff(base=-1)


class TestRetries:
    async def test_retry_after_30_seconds_takes_no_real_time(self) -> None:
        times: list[float] = []
        async with FakeClock() as clock:

            @aflow.task(retries=3, backoff=aflow.Backoff(base=30, factor=2, max=600))
            async def slow_flaky() -> int:
                times.append(clock.now())
                if len(times) < 3:
                    raise Flaky
                return len(times)

            with anyio.fail_after(5):  # real seconds: proves nothing really waited
                assert await aflow.run(slow_flaky.s(), clock=clock) == 3
        assert times == [0, 30, 90]

    @pytest.mark.both_loops
    async def test_fake_time_does_not_jump_while_a_queued_callback_is_due(self) -> None:
        """A body waiting on a future that callbacks already queued will resolve is not
        blocked: the fake clock must not jump to its timeout meanwhile."""

        @aflow.task(timeout=5)
        async def answered_soon() -> str:
            loop = asyncio.get_running_loop()
            answer: asyncio.Future[str] = loop.create_future()
            # resolved two loop turns from now, by callbacks already queued
            loop.call_soon(loop.call_soon, answer.set_result, "in time")
            return await answer

        async with FakeClock() as clock:
            for _ in range(20):
                assert await aflow.run(answered_soon.s(), clock=clock) == "in time"
            assert clock.now() == 0

    async def test_current_attempt_in_async_and_sync_tasks(self) -> None:
        flaky, seen = failing_until(3)
        assert await flaky.s() == 3
        assert seen == [1, 2, 3]

        sync_seen: list[int] = []

        @aflow.task(retries=2)
        def sync_flaky() -> int:
            sync_seen.append(aflow.current_step().attempt)
            if len(sync_seen) < 2:
                raise Flaky
            return aflow.current_step().attempt

        assert await sync_flaky.s() == 2
        assert sync_seen == [1, 2]
        with pytest.raises(RuntimeError, match="inside a task"):
            aflow.current_step().attempt

    async def test_retry_on_types_and_predicate(self) -> None:
        calls: list[str] = []

        @aflow.task(retries=3, retry_on=Flaky)
        async def typed(kind: str) -> str:
            calls.append(kind)
            raise Fatal(kind) if kind == "fatal" else Flaky(kind)

        with pytest.raises(Fatal):
            await typed.s("fatal")
        assert calls == ["fatal"]  # not admitted: no retry
        calls.clear()
        with pytest.raises(Flaky):
            await typed.s("flaky")
        assert calls == ["flaky"] * 4  # 1 + 3 retries

        attempts: list[int] = []

        @aflow.task(retries=5, retry_on=lambda exc: "transient" in str(exc))
        async def predicate() -> None:
            attempts.append(aflow.current_step().attempt)
            raise Flaky("transient" if len(attempts) < 3 else "permanent")

        with pytest.raises(Flaky, match="permanent"):
            await predicate.s()
        assert attempts == [1, 2, 3]

    async def test_retries_set_on_the_signature_override_the_task(self) -> None:
        flaky, seen = failing_until(3)
        with pytest.raises(Flaky):
            await flaky.s().set(retries=1)
        assert seen == [1, 2]

    async def test_cancellation_is_never_retried(self) -> None:
        attempts: list[int] = []
        gate = Gate()

        @aflow.task(retries=5)
        async def waits() -> None:
            attempts.append(aflow.current_step().attempt)
            await gate.wait()

        async with aflow.Runtime() as rt:
            run = await rt.submit(waits.s())
            await anyio.wait_all_tasks_blocked()
            await run.cancel()
        assert attempts == [1]
        assert run.status is aflow.RunStatus.CANCELLED

    async def test_cancel_mid_backoff_stops_at_once(self) -> None:
        attempts: list[int] = []

        @aflow.task(retries=5, backoff=aflow.Backoff(base=3600))
        async def flaky() -> None:
            attempts.append(aflow.current_step().attempt)
            raise Flaky

        async with FakeClock(autojump=False) as clock, aflow.Runtime(clock=clock) as rt:
            run = await rt.submit(flaky.s())
            await anyio.wait_all_tasks_blocked()
            assert run.step("flaky").state is aflow.NodeState.RETRYING
            await run.cancel()
        assert attempts == [1]
        assert clock.now() == 0  # nobody waited for the hour
        assert run.status is aflow.RunStatus.CANCELLED

    async def test_retry_events_carry_the_attempt(self) -> None:
        flaky, _ = failing_until(2)
        events: list[aflow.Event] = []
        await aflow.run(flaky.s(), on_event=events.append)
        retried = [e for e in events if e.name == "task_retried"]
        assert [e.attempt for e in retried] == [1]


class TestTimeouts:
    async def test_timeout_is_a_timeout_error_not_retried_by_default_types(self) -> None:
        attempts: list[int] = []

        @aflow.task(timeout=10, retries=3, retry_on=Flaky)
        async def hangs() -> None:
            attempts.append(aflow.current_step().attempt)
            await anyio.sleep_forever()

        async with FakeClock() as clock:
            with pytest.raises(TimeoutError) as info:
                await aflow.run(hangs.s(), clock=clock)
        assert isinstance(info.value, aflow.errors.TaskTimeout)
        assert info.value.task == "hangs"
        assert attempts == [1]  # retry_on did not admit TimeoutError
        assert clock.now() == 10

    async def test_timeout_retried_when_admitted(self) -> None:
        attempts: list[int] = []

        @aflow.task(timeout=10, retries=2, retry_on=TimeoutError)
        async def hangs_twice() -> int:
            attempt = aflow.current_step().attempt
            attempts.append(attempt)
            if attempt < 3:
                await anyio.sleep_forever()
            return attempt

        async with FakeClock() as clock:
            assert await aflow.run(hangs_twice.s(), clock=clock) == 3
        assert clock.now() == 20

    async def test_deadline_spans_attempts_and_waits(self) -> None:
        attempts: list[float] = []

        async with FakeClock() as clock:

            @aflow.task(retries=100, backoff=aflow.Backoff(base=10, factor=1), deadline=35)
            async def keeps_failing() -> None:
                attempts.append(clock.now())
                raise Flaky

            with pytest.raises(Flaky):
                await aflow.run(keeps_failing.s(), clock=clock)
        # attempts at 0, 10, 20, 30; the next (at 40) would pass the deadline
        assert attempts == [0, 10, 20, 30]

    async def test_deadline_cuts_a_hanging_attempt(self) -> None:
        async with FakeClock() as clock:

            @aflow.task(timeout=100, deadline=25)
            async def hangs() -> None:
                await anyio.sleep_forever()

            with pytest.raises(aflow.errors.TaskTimeout):
                await aflow.run(hangs.s(), clock=clock)
        assert clock.now() == 25

    async def test_run_timeout_stops_and_unwinds(self) -> None:
        undone: list[str] = []

        @aflow.task
        async def first() -> str:
            return "first"

        @first.revert
        async def undo_first() -> None:
            undone.append("first")

        @aflow.task
        async def slow(x: str) -> None:
            await anyio.sleep_forever()

        async with FakeClock() as clock, aflow.Runtime(clock=clock) as rt:
            run = await rt.submit(first.s() | slow.s(), timeout=60)
            with pytest.raises(aflow.errors.RunTimeout) as info:
                await run.result()
        assert isinstance(info.value, TimeoutError)
        assert info.value.timeout == 60
        assert clock.now() == 60
        assert undone == ["first"]
        assert run.status is aflow.RunStatus.REVERTED
        assert run.step("slow").state is aflow.NodeState.CANCELLED


class TestOnErrorContinue:
    async def test_dependents_skipped_independent_branches_finish(self) -> None:
        ran: list[str] = []
        undone: list[str] = []

        @aflow.task
        async def ok(tag: str, *parents: Any) -> str:
            ran.append(tag)
            return tag

        @ok.revert
        async def undo_ok(tag: str, *parents: Any) -> None:
            undone.append(tag)

        @aflow.task
        async def bad(*parents: Any) -> None:
            raise Fatal("bad")

        wf = aflow.group(bad.s() | ok.si("after-bad"), ok.si("side") | ok.si("side-2"))
        async with aflow.Runtime() as rt:
            run = await rt.submit(wf, on_error="continue")
            with pytest.raises(Fatal):
                await run.result()  # raised only after everything settled
        assert sorted(ran) == ["side", "side-2"]
        assert undone == []  # continue means keep what succeeded
        assert run.status is aflow.RunStatus.FAILED
        states = {s.key: s.state for s in run.steps()}
        assert states["ok"] is aflow.NodeState.SKIPPED  # after-bad
        assert states["bad"] is aflow.NodeState.FAILED
        assert states["ok#2"] is states["ok#3"] is aflow.NodeState.SUCCEEDED

    async def test_two_failing_branches_give_a_group(self) -> None:
        @aflow.task
        async def bad(tag: str) -> None:
            raise Fatal(tag)

        with pytest.raises(aflow.errors.GroupFailed) as info:
            await aflow.run(aflow.group(bad.s("a"), bad.s("b")), on_error="continue")
        assert sorted(str(e) for e in info.value.exceptions) == ["a", "b"]

    async def test_unknown_policy_is_rejected(self) -> None:
        @aflow.task
        async def t() -> None:
            return None

        with pytest.raises(ValueError, match="on_error"):
            await aflow.run(t.s(), on_error="ignore")


class TestContinueOnFailed:
    async def test_run_goes_on_with_the_output_missing(self) -> None:
        @aflow.task
        async def optional_enrichment() -> dict[str, str]:
            raise Fatal("service down")

        @aflow.task
        async def use(enrichment: Any) -> str:
            return f"got {enrichment!r}"

        async with aflow.Runtime() as rt:
            run = await rt.submit(optional_enrichment.s().set(continue_on_failed=True) | use.s())
            assert await run.result() == "got None"
        assert run.status is aflow.RunStatus.SUCCEEDED
        assert run.step("optional_enrichment").state is aflow.NodeState.FAILED
        assert isinstance(run.failures()["optional_enrichment"].exception, Fatal)


class TestThresholds:
    @staticmethod
    def members() -> Any:
        @aflow.task
        async def member(i: int) -> int:
            if i % 3 == 0:
                raise Fatal(f"member {i}")
            return i

        return member

    async def test_group_meets_min_success_with_none_placeholders(self) -> None:
        member = self.members()
        wf = aflow.group(member.s(i) for i in range(1, 7)).set(min_success=4)
        assert await wf == [1, 2, None, 4, 5, None]

    async def test_group_below_threshold_raises_group_failed(self) -> None:
        member = self.members()
        wf = aflow.group(member.s(i) for i in range(1, 7)).set(success_ratio=0.9)
        with pytest.raises(aflow.errors.GroupFailed) as info:
            await wf
        assert sorted(str(e) for e in info.value.exceptions) == ["member 3", "member 6"]
        assert "4 of 6" in str(info.value) or "4/6" in str(info.value)

    async def test_map_threshold(self) -> None:
        member = self.members()
        assert await member.map([1, 2, 3]).set(min_success=2) == [1, 2, None]
        with pytest.raises(aflow.errors.GroupFailed):
            await member.map([3, 6, 1]).set(min_success=2)

    async def test_one_error_family_for_every_threshold(self) -> None:
        """A group's, a map's and a sliced step's thresholds raise one type, with the
        same attributes, that pickles and splits as an exception group."""
        from aflow.ops import Slices, Step, Workflow, op

        member = self.members()
        caught: list[aflow.errors.BelowThreshold] = []
        for wf in (
            aflow.group(member.s(i) for i in range(1, 7)).set(min_success=5),
            member.map([3, 6, 1]).set(min_success=2),
        ):
            with pytest.raises(aflow.errors.BelowThreshold) as info:
                await wf
            caught.append(info.value)
        assert [(e.succeeded, e.total) for e in caught] == [(4, 6), (1, 3)]

        @op(outputs={"y": int})
        async def picky(x: int):
            if x % 3 == 0:
                raise Fatal(f"slice {x}")
            return {"y": x}

        sliced = Slices(input_parameter=["x"], output_parameter=["y"])
        step = Step(
            "p", picky, parameters={"x": [0, 1, 3]}, slices=sliced, continue_on_num_success=2
        )
        ops_wf = Workflow("t").add(step)
        async with aflow.Runtime():
            await ops_wf.submit()
            assert await ops_wf.wait() == "Failed"
        error = ops_wf.query_step()[0].error
        assert isinstance(error, aflow.errors.SlicesBelowThreshold)
        caught.append(error)
        assert (error.step, error.key, error.succeeded, error.total) == ("p", "p", 1, 3)
        assert sorted(str(e) for e in error.exceptions) == ["slice 0", "slice 3"]
        for e in caught:
            assert isinstance(e, aflow.errors.GroupFailed)
            again = pickle.loads(pickle.dumps(e))
            assert type(again) is type(e)
            assert (again.key, again.succeeded, again.total) == (e.key, e.succeeded, e.total)
            matched, rest = e.split(Fatal)
            assert type(matched) is type(e)
            assert rest is None
            assert "below its threshold" in str(e)

    async def test_threshold_group_feeds_the_next_step(self) -> None:
        member = self.members()

        @aflow.task
        async def total(values: list[int | None]) -> int:
            return sum(v for v in values if v is not None)

        wf = aflow.group(member.s(i) for i in range(1, 5)).set(min_success=3) | total.s()
        assert await wf == 1 + 2 + 4

    async def test_threshold_options_are_checked(self) -> None:
        member = self.members()
        with pytest.raises(aflow.errors.SignatureError, match="success_ratio"):
            aflow.group(member.s(1)).set(success_ratio=1.5)
        with pytest.raises(aflow.errors.SignatureError, match="min_success"):
            aflow.group(member.s(1)).set(min_success=-1)


def failing_chord() -> tuple[aflow.Canvas[int], list[tuple[dict[str, str], dict[str, Any]]]]:
    """A chord over parts 1-4 where parts 2 and 4 fail; its errback records what it got."""
    calls: list[tuple[dict[str, str], dict[str, Any]]] = []

    @aflow.task
    async def part(i: int) -> int:
        if i in (2, 4):
            raise Fatal(f"part {i}")
        return i * 10

    @aflow.task
    async def summarise(values: list[int]) -> int:
        return sum(values)

    @aflow.task
    async def on_failure(
        error: BaseException, *, failures: dict[str, aflow.Failure], results: dict[str, Any]
    ) -> None:
        calls.append(({k: f.message for k, f in failures.items()}, results))

    chord = aflow.chord((part.s(i) for i in range(1, 5)), summarise.s())
    return chord.on_error(on_failure.s()), calls


class TestChordErrback:
    async def test_errback_runs_once_with_failures_and_results(self) -> None:
        wf, calls = failing_chord()
        with pytest.raises(Fatal):  # one at a time: part 2 fails before part 4 starts
            await aflow.run(wf, max_concurrency=1)
        assert len(calls) == 1
        failures, results = calls[0]
        assert failures == {"part#2": "part 2"}  # the run stopped at the first failure
        assert results == {"part": 10}  # keys: part, part#2, ...

    async def test_errback_sees_all_failures_under_continue(self) -> None:
        wf, calls = failing_chord()
        with pytest.raises(aflow.errors.GroupFailed):
            await aflow.run(wf, on_error="continue")
        assert [(sorted(f), sorted(r)) for f, r in calls] == [
            (["part#2", "part#4"], ["part", "part#3"])
        ]

    async def test_errback_after_the_unwinding(self) -> None:
        order: list[str] = []

        @aflow.task
        async def step() -> int:
            return 1

        @step.revert
        async def undo() -> None:
            order.append("revert")

        @aflow.task
        async def fail(x: int) -> None:
            raise Fatal

        @aflow.task
        async def errback(error: BaseException) -> None:
            order.append(f"errback {type(error).__name__}")

        with pytest.raises(Fatal):
            await (step.s() | fail.s()).link_error(errback.s())
        assert order == ["revert", "errback Fatal"]
