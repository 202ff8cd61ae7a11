"""Runtime, Run handles and the entry points (run, run_sync)."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

import aflow

from .helpers import Gate


class Boom(Exception):
    pass


@aflow.task
async def add(x: int, y: int) -> int:
    return x + y


class TestRun:
    async def test_submit_returns_at_once_and_run_outlives_the_submitter(self) -> None:
        gate = Gate()

        @aflow.task
        async def slow() -> str:
            await gate.wait()
            return "done"

        async with aflow.Runtime() as rt:

            async def handler() -> aflow.Run[str]:  # a web request that returns early
                return await rt.submit(slow.s())

            run = await handler()
            await anyio.wait_all_tasks_blocked()
            assert run.status is aflow.RunStatus.RUNNING
            assert run in rt.runs()
            assert rt.get(run.id) is run
            with pytest.raises(aflow.errors.RunNotFinished):
                run.result_nowait()
            gate.open()
            assert await run.result() == "done"
        assert run.status is aflow.RunStatus.SUCCEEDED
        assert run.result_nowait() == "done"
        assert rt.runs() == []
        assert rt.get(run.id) is run  # finished runs stay reachable for a while
        with pytest.raises(KeyError, match="no run 'nope'"):
            rt.get("nope")
        with pytest.raises(aflow.errors.RunNotFound, match="no run 'nope' in this runtime"):
            rt.get("nope")

    async def test_step_statistics_and_repr(self) -> None:
        gate = Gate()

        @aflow.task
        async def slow(x: int) -> int:
            await gate.wait()
            return x

        async with aflow.Runtime(max_concurrency=4, limits={"db": 2}) as rt:
            run = await rt.submit(add.s(1, 1) | aflow.group(slow.s(), slow.s(), add.s(1)))
            await anyio.wait_all_tasks_blocked()
            assert repr(run) == (
                f"<Run {run.id[:8]} RUNNING [2 done, 2 running, 0 waiting"
                " | max_concurrency 2/4, db 0/2]>"
            )
            stats = run.statistics()
            assert (stats.total, stats.succeeded, stats.running) == (4, 2, 2)
            gate.open()
            assert await run.result() == [2, 2, 3]
        step = run.step("add")
        assert step.state is aflow.NodeState.SUCCEEDED
        assert step.result == 2
        assert step.attempts == 1
        assert step.started_at is not None
        assert step.finished_at is not None
        assert step.started_at <= step.finished_at
        assert step.duration_s is not None
        assert run.results() == {"add": 2, "slow": 2, "slow#2": 2, "add#2": 3}
        assert [s.key for s in run.steps()] == ["add", "slow", "slow#2", "add#2"]
        assert run.statistics().peak_running == 3  # both slow ones and add#2
        with pytest.raises(KeyError, match="no node 'nope'"):
            run.step("nope")

    async def test_failed_run_stores_the_error_without_crashing_the_runtime(self) -> None:
        @aflow.task
        async def broken() -> None:
            raise Boom

        async with aflow.Runtime() as rt:
            bad = await rt.submit(broken.s())
            good = await rt.submit(add.s(1, 2))
            assert await bad.wait() is aflow.RunStatus.FAILED
            assert await good.result() == 3
            with pytest.raises(Boom):
                await bad.result()

    async def test_cancel_a_run(self) -> None:
        @aflow.task
        async def forever() -> None:
            await anyio.sleep_forever()

        async with aflow.Runtime() as rt:
            run = await rt.submit(forever.s())
            await anyio.wait_all_tasks_blocked()
            await run.cancel()
            assert run.status is aflow.RunStatus.CANCELLED
            assert run.step("forever").state is aflow.NodeState.CANCELLED
            with pytest.raises(aflow.errors.RunCancelled):
                await run.result()

    async def test_revoke_is_cancel(self) -> None:
        @aflow.task
        async def forever() -> None:
            await anyio.sleep_forever()

        async with aflow.Runtime() as rt:
            run = await rt.submit(aflow.group(forever.s(), forever.s()))
            await anyio.wait_all_tasks_blocked()
            assert run.waiting()
            await run.revoke()
            assert run.ready()
            assert not run.successful()

    async def test_shutdown_timeout_cancels_what_is_left(self) -> None:
        @aflow.task
        async def forever() -> None:
            await anyio.sleep_forever()

        async with aflow.Runtime(shutdown_timeout=0.01) as rt:
            run = await rt.submit(forever.s())
        assert run.status is aflow.RunStatus.CANCELLED

    async def test_runtime_exits_waiting_for_runs_by_default(self) -> None:
        gate = Gate()

        @aflow.task
        async def slow() -> int:
            await gate.wait()
            return 7

        async def open_later() -> None:
            await anyio.wait_all_tasks_blocked()
            gate.open()

        async with anyio.create_task_group() as tg:
            tg.start_soon(open_later)
            async with aflow.Runtime() as rt:
                run = await rt.submit(slow.s())
        assert run.result_nowait() == 7

    async def test_submit_validates_before_returning(self) -> None:
        async with aflow.Runtime() as rt:
            with pytest.raises(aflow.errors.SignatureError):
                await rt.submit(add.s(1, 2, 3))
            assert rt.runs() == []

    async def test_submit_outside_the_context_is_an_error(self) -> None:
        with pytest.raises(RuntimeError, match="async with"):
            await aflow.Runtime().submit(add.s(1, 1))

    async def test_events_async_iterator(self) -> None:
        gate = Gate()

        @aflow.task
        async def slow() -> int:
            await gate.wait()
            return 1

        seen: list[str] = []
        async with aflow.Runtime() as rt:
            run = await rt.submit(slow.s() | add.s(1))

            async def consume() -> None:
                async for event in run.events():
                    seen.append(event.name)

            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                await anyio.wait_all_tasks_blocked()
                gate.open()
        # Subscribed while the run was under way: it sees the rest, up to the end.
        assert seen[-4:] == ["task_succeeded", "task_started", "task_succeeded", "run_succeeded"]

    async def test_cancelling_rt_run_cancels_and_waits_for_the_run(self) -> None:
        @aflow.task
        async def forever() -> None:
            await anyio.sleep_forever()

        async with aflow.Runtime() as rt:
            async with anyio.create_task_group() as tg:
                tg.start_soon(rt.run, forever.s())
                await anyio.wait_all_tasks_blocked()
                (active,) = rt.runs()
                tg.cancel_scope.cancel()
            assert active.status is aflow.RunStatus.CANCELLED
            assert rt.runs() == []

    async def test_result_raised_twice_keeps_one_traceback(self) -> None:
        @aflow.task
        async def broken() -> None:
            raise Boom

        async with aflow.Runtime() as rt:
            run = await rt.submit(broken.s())
            depths = []
            for _ in range(3):
                with pytest.raises(Boom) as info:
                    await run.result()
                depths.append(len(info.traceback))
        assert depths[0] == depths[1] == depths[2]

    async def test_rt_run_returns_the_value(self) -> None:
        async with aflow.Runtime() as rt:
            assert await rt.run(add.s(20, 22)) == 42


def test_run_sync_from_a_script() -> None:
    assert aflow.run_sync(add.s(2, 3) | add.s(5)) == 10
    assert aflow.run_sync(add.s(1, 1), use_uvloop=False) == 2


async def test_an_error_in_the_runtime_block_leaves_as_itself() -> None:
    started = anyio.Event()
    runs: list[aflow.Run[None]] = []

    @aflow.task
    async def wait_forever() -> None:
        started.set()
        await anyio.sleep_forever()

    async def block(error: Exception, with_a_run: bool) -> None:
        async with aflow.Runtime() as rt:
            if with_a_run:
                runs.append(await rt.submit(wait_forever.s()))
                await started.wait()
            raise error

    with pytest.raises(aflow.errors.DefinitionError, match="bad"):
        await block(aflow.errors.DefinitionError("bad"), with_a_run=False)
    with pytest.raises(aflow.errors.CycleError):  # also with a run going on (it is cancelled)
        await block(aflow.errors.CycleError(["a", "b"]), with_a_run=True)
    assert runs[0].status is aflow.RunStatus.CANCELLED


class TestRtRun:
    """``rt.run``: a run of the runtime that the calling task drives itself."""

    async def test_it_is_listed_while_it_runs_and_kept_when_it_ends(self) -> None:
        seen: list[list[aflow.Run[Any]]] = []

        async with aflow.Runtime() as rt:

            @aflow.task
            async def look() -> int:
                seen.append(rt.runs())
                return 1

            assert await rt.run(look.s() | add.s(1)) == 2
            ((run,),) = seen
            assert rt.runs() == []
            assert rt.get(run.id) is run
            assert run.status is aflow.RunStatus.SUCCEEDED
            assert await run.result() == 2

    async def test_a_failure_reaches_the_caller_and_the_run_keeps_it(self) -> None:
        undone: list[int] = []

        @aflow.task
        async def one() -> int:
            return 1

        @one.revert
        async def undo_one(*, result: int) -> None:
            undone.append(result)

        @aflow.task
        async def fail(x: int) -> None:
            raise Boom("no")

        async with aflow.Runtime() as rt:
            with pytest.raises(Boom) as raised:
                await rt.run(one.s() | fail.s())
            (run_id,) = _ids(raised.value)
            run = rt.get(run_id)
            assert run.status is aflow.RunStatus.REVERTED  # failed, and its work undone
            assert undone == [1]
            with pytest.raises(Boom):
                await run.result()

    async def test_cancelling_the_caller_unwinds_the_run_and_reraises(self) -> None:
        gate = Gate()
        undone: list[str] = []

        @aflow.task
        async def one() -> str:
            return "one"

        @one.revert
        async def undo_one(*, result: str) -> None:
            await anyio.lowlevel.checkpoint()  # shielded: a cancelled caller still waits for it
            undone.append(result)

        @aflow.task
        async def hang(x: str) -> None:
            await gate.wait()

        async with aflow.Runtime() as rt:
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:

                    async def cancel_when_hanging() -> None:
                        while gate.arrived == 0:
                            await anyio.lowlevel.checkpoint()
                        scope.cancel()

                    tg.start_soon(cancel_when_hanging)
                    await rt.run(one.s() | hang.s())
            assert scope.cancelled_caught
            assert undone == ["one"]
            assert rt.runs() == []

    async def test_a_runtime_shut_down_by_an_error_cancels_it_and_waits_for_its_unwind(
        self,
    ) -> None:
        gate = Gate()
        undone: list[str] = []
        caller_got: list[BaseException] = []

        @aflow.task
        async def one() -> str:
            return "one"

        @one.revert
        async def undo_one(*, result: str) -> None:
            await anyio.lowlevel.checkpoint()
            undone.append(result)

        @aflow.task
        async def hang(x: str) -> None:
            await gate.wait()

        async def serve(handlers: anyio.abc.TaskGroup) -> None:
            async with aflow.Runtime() as rt:

                async def handler() -> None:  # a request in the server's own task
                    try:
                        await rt.run(one.s() | hang.s())
                    except aflow.errors.RunCancelled as exc:
                        caller_got.append(exc)

                handlers.start_soon(handler)
                while gate.arrived == 0:
                    await anyio.lowlevel.checkpoint()
                raise Boom("the service is going down")

        async with anyio.create_task_group() as handlers:
            with pytest.raises(Boom):
                await serve(handlers)
            # the runtime's exit returned only once the run had unwound
            assert undone == ["one"]
        (cancelled,) = caller_got
        assert "cancel" in str(cancelled)

    async def test_a_clean_exit_waits_for_it(self) -> None:
        gate = Gate()
        finished: list[str] = []

        @aflow.task
        async def slow() -> str:
            await gate.wait()
            return "done"

        async with anyio.create_task_group() as handlers:
            async with aflow.Runtime() as rt:

                async def handler() -> None:
                    finished.append(await rt.run(slow.s()))

                handlers.start_soon(handler)
                while gate.arrived == 0:
                    await anyio.lowlevel.checkpoint()
                handlers.start_soon(_open_later, gate)
            assert finished == ["done"]

    async def test_it_needs_an_entered_runtime(self) -> None:
        with pytest.raises(RuntimeError, match=r"run\(\) needs an entered Runtime"):
            await aflow.Runtime().run(add.s(1, 2))


class TestSubmittedRunsTasks:
    """A submitted run has a task of its own; the runtime's exit treats it as a task
    group treats its tasks (plain asyncio tasks on asyncio, which cost less)."""

    async def test_a_system_exit_in_a_run_ends_the_runtime_block_with_it(self) -> None:
        @aflow.task
        async def exits() -> None:
            await anyio.lowlevel.checkpoint()
            raise SystemExit(3)

        runs: list[aflow.Run[None]] = []

        async def block() -> None:
            async with aflow.Runtime() as rt:
                runs.append(await rt.submit(exits.s()))
                await anyio.sleep_forever()  # the run's SystemExit cancels this

        with pytest.raises(SystemExit) as raised:
            await block()
        assert raised.value.code == 3
        (run,) = runs
        assert run.status is aflow.RunStatus.CANCELLED
        with pytest.raises(aflow.errors.RunCancelled):
            await run.result()

    async def test_an_error_leaving_the_block_cancels_the_runs_and_waits_for_their_unwind(
        self,
    ) -> None:
        gate = Gate()
        undone: list[str] = []

        @aflow.task
        async def one() -> str:
            return "one"

        @one.revert
        async def undo_one(*, result: str) -> None:
            await anyio.lowlevel.checkpoint()
            undone.append(result)

        @aflow.task
        async def hang(x: str) -> None:
            await gate.wait()

        runs: list[aflow.Run[None]] = []

        async def block() -> None:
            async with aflow.Runtime() as rt:
                runs.append(await rt.submit(one.s() | hang.s()))
                while gate.arrived == 0:
                    await anyio.lowlevel.checkpoint()
                raise Boom("the service is going down")

        with pytest.raises(Boom):
            await block()
        assert undone == ["one"]  # unwound before the runtime's exit returned
        (run,) = runs
        assert run.status is aflow.RunStatus.CANCELLED


async def _open_later(gate: Gate) -> None:
    await anyio.lowlevel.checkpoint()
    gate.open()


def _ids(error: BaseException) -> list[str]:
    """The run ids an error's notes name."""
    import re

    return re.findall(r"in run ([0-9a-f]{32})", "\n".join(getattr(error, "__notes__", [])))


@aflow.task
async def _double(x: int) -> int:
    await anyio.lowlevel.checkpoint()
    return 2 * x


@aflow.workflow
def _doubled_twice(start: int) -> aflow.Canvas[int]:
    return _double.s(start) | _double.s()


class TestRtRunTakesSubmitsOptions:
    """`rt.run` is the request-scoped call: it takes what `submit` takes (issue 17)."""

    async def test_a_workflow_with_its_parameters(self) -> None:
        async with aflow.Runtime() as rt:
            assert await rt.run(_doubled_twice, start=3) == 12
            assert await rt.run(_doubled_twice, params={"start": 1}) == 4
            with pytest.raises(aflow.errors.SignatureError, match="start"):
                await rt.run(_doubled_twice, begin=1)

    async def test_run_id_events_and_timeout(self) -> None:
        events: list[aflow.Event] = []

        @aflow.task
        async def hangs() -> None:
            await anyio.sleep_forever()

        async with aflow.Runtime() as rt:
            assert await rt.run(_double.s(1), run_id="r-1", on_event=events.append) == 2
            assert rt.get("r-1").status is aflow.RunStatus.SUCCEEDED
            assert {e.run_id for e in events} == {"r-1"}
            assert events[0].name == "run_started"
            assert events[-1].name == "run_succeeded"
            with pytest.raises(aflow.errors.RunExists):
                await rt.run(_double.s(1), run_id="r-1")
            with pytest.raises(aflow.errors.RunTimeout):
                await rt.run(hangs.si(), timeout=0.01)

    async def test_an_idempotency_key_runs_the_work_once(self) -> None:
        calls: list[int] = []

        @aflow.task
        async def charge(amount: int) -> str:
            calls.append(amount)
            await anyio.lowlevel.checkpoint()
            return f"receipt-{amount}"

        async with aflow.Runtime() as rt:
            first = await rt.run(charge.s(5), idempotency_key="order-1")
            again = await rt.run(charge.s(5), idempotency_key="order-1")
        assert first == again == "receipt-5"
        assert calls == [5]

    async def test_durable_with_parameters_and_a_key(self, tmp_path: Any) -> None:
        url = f"sqlite:///{tmp_path / 'runs.db'}"
        async with aflow.Runtime(store=url) as rt:
            assert await rt.run(_doubled_twice, start=2, idempotency_key="k") == 8
            assert await rt.run(_doubled_twice, start=2, idempotency_key="k") == 8
            assert rt.store is not None
            (stored,) = await rt.store.list_runs()
        assert stored.status == "succeeded"

    async def test_cancelling_the_caller_of_a_durable_run_unwinds_it(self, tmp_path: Any) -> None:
        _UNDONE.clear()
        _STARTED[:] = [anyio.Event()]
        url = f"sqlite:///{tmp_path / 'runs.db'}"
        async with aflow.Runtime(store=url) as rt:
            async with anyio.create_task_group() as tg:  # a request the client left
                tg.start_soon(lambda: rt.run(_reserve_then_wait, order="o-1"))
                await _STARTED[0].wait()
                tg.cancel_scope.cancel()
            assert rt.store is not None
            (stored,) = await rt.store.list_runs()
        assert _UNDONE == ["rsv-o-1"]
        assert stored.status == "cancelled"


_UNDONE: list[str] = []
_STARTED: list[anyio.Event] = []


@aflow.task
async def _reserve(order: str) -> str:
    return f"rsv-{order}"


@_reserve.revert
async def _release(order: str, *, result: str) -> None:
    _UNDONE.append(result)


@aflow.task
async def _wait_forever(reservation: str) -> None:
    _STARTED[0].set()
    await anyio.sleep_forever()


@aflow.workflow
def _reserve_then_wait(order: str) -> aflow.Canvas[None]:
    return _reserve.s(order) | _wait_forever.s()
