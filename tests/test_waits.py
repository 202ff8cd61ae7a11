"""Durable waits (issue 22): a run waits for an event sent to it, or for a time, and
compensates when a wait times out; a task publishes values a caller reads."""

from __future__ import annotations

import pathlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

import aflow
from aflow.errors import RunEnded, RunNotFound, SignatureError, WaitTimeout
from aflow.testing import FakeClock, send_when_waiting

from . import wait_workflows as wf
from .conftest import new_store_url
from .durable_workflows import read_counts as read

DAY = 86400.0


@aflow.task
async def first(x: int) -> int:
    return x + 1


@aflow.task
async def then(payload: Any) -> Any:
    return {"got": payload}


# --- without a store: the waits live in the process ----------------------------------------


async def test_the_payload_of_an_event_sent_while_the_run_waits_flows_on() -> None:
    async with aflow.Runtime() as rt:
        run = await rt.submit(first.s(1) | aflow.wait_for("paid") | then.s())
        assert await send_when_waiting(rt, run.id, "paid", {"amount": 5})
        assert await run.result() == {"got": {"amount": 5}}
        assert run.step("wait_for:paid").result == {"amount": 5}


async def test_an_event_sent_before_the_run_gets_to_its_wait_is_kept() -> None:
    gate = anyio.Event()

    @aflow.task
    async def slow(x: int) -> int:
        await gate.wait()
        return x

    async with aflow.Runtime() as rt:
        run = await rt.submit(slow.s(1) | aflow.wait_for("paid") | then.s())
        assert await rt.send(run.id, "paid", "early")
        assert run.step("wait_for:paid").state is aflow.NodeState.PENDING
        gate.set()
        assert await run.result() == {"got": "early"}


async def test_sending_twice_is_idempotent_per_message_id() -> None:
    async with aflow.Runtime() as rt:
        run = await rt.submit(aflow.wait_for("item") | aflow.wait_for("item") | then.s())
        assert await rt.send(run.id, "item", 1, message_id="m1")
        assert not await rt.send(run.id, "item", 99, message_id="m1")  # delivered twice
        assert await rt.send(run.id, "item", 2, message_id="m2")
        assert await run.result() == {"got": 2}
        assert [run.step(k).result for k in ("wait_for:item", "wait_for:item#2")] == [1, 2]


async def test_without_a_message_id_a_run_takes_one_event_of_each_name() -> None:
    async with aflow.Runtime() as rt:
        run = await rt.submit(aflow.wait_for("paid") | then.s())
        assert await rt.send(run.id, "paid", "first")
        assert not await rt.send(run.id, "paid", "second")
        assert await run.result() == {"got": "first"}


async def test_a_wait_that_times_out_unwinds_and_compensates() -> None:
    undone: list[str] = []

    @aflow.task
    async def charge(order: str) -> str:
        return order

    @charge.revert
    async def refund(order: str) -> None:
        undone.append(order)

    saga = charge.s("o-1") | aflow.wait_for("paid", timeout=timedelta(days=14)) | then.s()
    async with FakeClock() as clock, aflow.Runtime(clock=clock) as rt:
        run = await rt.submit(saga)
        with pytest.raises(WaitTimeout) as caught:
            await run.result()
        assert clock.now() >= 14 * DAY  # fourteen virtual days, no real ones
    assert undone == ["o-1"]
    error = caught.value
    assert isinstance(error, TimeoutError)
    assert (error.event, error.timeout, error.task) == ("paid", 14 * DAY, "wait_for:paid")
    assert run.status is aflow.RunStatus.REVERTED


async def test_an_event_just_inside_the_deadline_is_taken() -> None:
    async with FakeClock(autojump=False) as clock, aflow.Runtime(clock=clock) as rt:
        run = await rt.submit(aflow.wait_for("paid", timeout=60) | then.s())
        while not run.report(steps=False).waits:
            await anyio.lowlevel.checkpoint()
        clock.advance(59.9)
        await rt.send(run.id, "paid", "in time")
        assert await run.result() == {"got": "in time"}


async def test_sleep_and_sleep_until_pass_their_input_on() -> None:
    async with FakeClock() as clock, aflow.Runtime(clock=clock) as rt:
        assert await rt.run(first.s(1) | aflow.sleep(timedelta(hours=2)) | then.s()) == {"got": 2}
        assert clock.now() >= 7200
        when = datetime.now(UTC) + timedelta(days=3)
        assert await rt.run(first.s(1) | aflow.sleep_until(when) | then.s()) == {"got": 2}
        assert clock.wall() >= when.timestamp()


async def test_receive_in_a_body_and_a_retry_receives_the_same_event() -> None:
    attempts: list[Any] = []

    @aflow.task(retries=1)
    async def confirm(x: int) -> Any:
        got = await aflow.receive("approved", timeout=3600)
        attempts.append(got)
        if len(attempts) == 1:
            raise ConnectionError("flaky after receiving")
        return got

    async with aflow.Runtime() as rt:
        run = await rt.submit(first.s(1) | confirm.s())
        assert await send_when_waiting(rt, run.id, "approved", "yes")
        assert await run.result() == "yes"
    assert attempts == ["yes", "yes"]  # one event, one per attempt: not consumed twice


async def test_receive_times_out_with_a_typed_error() -> None:
    @aflow.task
    async def confirm() -> Any:
        return await aflow.receive("approved", timeout=timedelta(minutes=5))

    async with FakeClock() as clock, aflow.Runtime(clock=clock) as rt:
        with pytest.raises(WaitTimeout, match="approved"):
            await rt.run(confirm.s())


async def test_a_published_value_is_read_while_the_run_goes_on(counts: pathlib.Path) -> None:
    async with aflow.Runtime() as rt:
        run = await rt.submit(wf.link_then_wait, order="o-7")
        url = await rt.get_event(run.id, "checkout_url", timeout=5)
        assert url == "https://pay.example/o-7"
        assert await rt.get_event(run.id, "checkout_url", timeout=0) == url
        assert run.status is aflow.RunStatus.RUNNING  # the run waits for its payment meanwhile
        await rt.send(run.id, "paid", "ok")
        assert await run.result() == "shipped after ok"


async def test_get_event_times_out_or_fails_at_once_on_an_ended_run() -> None:
    async with FakeClock() as clock, aflow.Runtime(clock=clock) as rt:
        run = await rt.submit(aflow.wait_for("paid") | then.s())
        with pytest.raises(WaitTimeout):
            await rt.get_event(run.id, "never", timeout=30)
        with pytest.raises(WaitTimeout):
            await rt.get_event(run.id, "never", timeout=0)
        await rt.send(run.id, "paid", 1)
        await run.result()
        with pytest.raises(RunEnded, match="never set 'never'"):
            await rt.get_event(run.id, "never", timeout=30)


async def test_send_names_a_run_by_its_idempotency_key() -> None:
    async with aflow.Runtime() as rt:
        run = await rt.submit(aflow.wait_for("paid") | then.s(), idempotency_key="order-9")
        assert await rt.send(None, "paid", "by key", idempotency_key="order-9")
        assert await run.result() == {"got": "by key"}
        with pytest.raises(RunNotFound):
            await rt.send(None, "paid", idempotency_key="no-such-order")
        with pytest.raises(TypeError, match="run_id, or its idempotency_key"):
            await rt.send(None, "paid")


async def test_sending_to_an_unknown_or_ended_run_is_a_typed_error() -> None:
    async with aflow.Runtime() as rt:
        with pytest.raises(RunNotFound):
            await rt.send("no-such-run", "paid")
        run = await rt.submit(first.s(1))
        await run.result()
        with pytest.raises(RunEnded) as caught:
            await rt.send(run.id, "paid")
        assert caught.value.status == "succeeded"
        waited = await rt.submit(aflow.wait_for("paid") | then.s())
        assert await rt.send(waited.id, "paid", 1, message_id="m-1")
        await waited.result()
        assert not await rt.send(waited.id, "paid", 1, message_id="m-1")  # a redelivery
        with pytest.raises(RunEnded):
            await rt.send(waited.id, "paid", 1, message_id="m-2")


async def test_the_report_shows_what_a_run_waits_for_and_until_when() -> None:
    async with FakeClock(autojump=False) as clock, aflow.Runtime(clock=clock) as rt:
        run = await rt.submit(first.s(1) | aflow.wait_for("paid", timeout=600) | then.s())
        while run.report(steps=False).status != "waiting":
            await anyio.lowlevel.checkpoint()
        (wait,) = run.report(steps=False).waits
        assert (wait.key, wait.event) == ("wait_for:paid", "paid")
        assert wait.deadline == pytest.approx(clock.wall() + 600)
        await rt.send(run.id, "paid", 1)
        await run.result()
        assert run.report(steps=False).waits == []


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: aflow.wait_for(""), "non-empty str"),
        (lambda: aflow.wait_for("x", timeout=-1), ">= 0"),
        (lambda: aflow.wait_for("x", timeout="soon"), "seconds or a timedelta"),
        (lambda: aflow.sleep(float("inf")), "finite"),
        (lambda: aflow.sleep(None), "got None"),  # (it slept forever)
        (lambda: aflow.sleep_until(datetime(2030, 1, 1)), "timezone-aware"),
        (lambda: aflow.sleep_until("tomorrow"), "must be a datetime"),
    ],
)
def test_bad_waits_are_refused_when_built(call: Any, message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        call()


async def test_receive_outside_a_run_is_refused() -> None:
    with pytest.raises(RuntimeError, match="receive"):
        await aflow.receive("x")


# --- with a store: a waiting run is unloaded, and taken up when its event comes -------------


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def any_store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    """A fresh store of each kind."""
    return new_store_url(request, tmp_path, request.param)


async def stored_status(rt: aflow.Runtime, run_id: str) -> str:
    assert rt.store is not None
    return str((await rt.store.get_run(run_id)).status)


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``check`` until it holds: another runtime's work shows only in the store,
    which has no event to wait on."""
    with anyio.move_on_after(10) as scope:
        while not await check():  # noqa: ASYNC110 - the store has no event to wait on
            await anyio.sleep(0.005)
    if scope.cancelled_caught:
        raise TimeoutError(f"waited 10 s for {what}")


async def until_status(rt: aflow.Runtime, run_id: str, status: str) -> None:
    """Until the store records the run with ``status``."""

    async def check() -> bool:
        return await stored_status(rt, run_id) == status

    await until(check, f"run {run_id} {status}")


async def until_waiting(rt: aflow.Runtime, run_id: str) -> None:
    """Until the store records the run ``waiting`` (unloaded)."""
    await until_status(rt, run_id, "waiting")


async def test_a_waiting_run_is_unloaded_then_taken_up_when_its_event_comes(
    any_store: str, counts: pathlib.Path
) -> None:
    async with aflow.Runtime(store=any_store) as rt:
        run = await rt.submit(wf.pay_then_ship, order="o-1")
        await until_waiting(rt, run.id)
        assert rt.store is not None
        record = await rt.store.get_run(run.id)
        assert record.owner is None  # no process holds it
        assert run.id not in {r.id for r in rt.runs()}  # nor any task here
        report = await rt.report(run.id)
        assert report.status == "waiting"
        assert not report.finished
        (wait,) = report.waits
        assert (wait.key, wait.event) == ("wait_for:paid", "paid")
        assert wait.deadline == pytest.approx(wait.since + 14 * DAY)  # type: ignore[operator]
        assert await rt.send(run.id, "paid", {"amount": 5}, message_id="evt_1")
        assert not await rt.send(run.id, "paid", {"amount": 5}, message_id="evt_1")
        assert await run.result() == "shipped after {'amount': 5}"
        assert (await rt.report(run.id)).waits == []
        # the provider redelivers after the run has ended: still a no-op, not an error
        assert not await rt.send(run.id, "paid", {"amount": 5}, message_id="evt_1")
        with pytest.raises(RunEnded):  # a new message is not kept
            await rt.send(run.id, "paid", {"amount": 5}, message_id="evt_2")
    assert read(counts) == {"charge": 1, "ship": 1}


async def test_a_durable_wait_that_times_out_compensates(
    any_store: str, counts: pathlib.Path
) -> None:
    async with FakeClock() as clock, aflow.Runtime(store=any_store, clock=clock) as rt:
        run = await rt.submit(wf.pay_then_ship, order="o-2")
        with pytest.raises(WaitTimeout, match="paid"):
            await run.result()
        assert clock.now() >= 14 * DAY
        assert await stored_status(rt, run.id) == "reverted"
        with pytest.raises(RunEnded):
            await rt.send(run.id, "paid", "too late")
    assert read(counts) == {"charge": 1, "refund": 1}


async def test_an_event_sent_before_the_wait_is_kept_in_the_store(
    store_url: str, counts: pathlib.Path
) -> None:
    async with aflow.Runtime(store=store_url) as rt:
        run = await rt.submit(wf.pay_then_ship, order="o-3")
        assert await rt.send(run.id, "paid", "early")  # (before charge has even run)
        assert await run.result() == "shipped after early"
    assert read(counts) == {"charge": 1, "ship": 1}


async def test_a_waiting_run_outlives_its_runtime_and_another_takes_it_up(
    store_url: str, counts: pathlib.Path
) -> None:
    async with aflow.Runtime(store=store_url) as rt:
        run = await rt.submit(wf.pay_then_ship, order="o-4")
        await until_waiting(rt, run.id)
    with pytest.raises(aflow.errors.RunReleased):
        await run.result()  # this runtime closed; the run waits in the store
    async with aflow.Runtime(store=store_url) as rt:
        assert await stored_status(rt, run.id) == "waiting"
        assert await rt.send(run.id, "paid", "later")
        await until_status(rt, run.id, "succeeded")
        assert await (await rt.retrieve(run.id)).result() == "shipped after later"
    assert read(counts) == {"charge": 1, "ship": 1}  # charge was not run again


async def test_a_timer_survives_a_restart_and_fires_once(
    store_url: str, counts: pathlib.Path
) -> None:
    async with aflow.Runtime(store=store_url) as rt:
        run = await rt.submit(wf.nap_then_stamp, seconds=0.5)
        await until_waiting(rt, run.id)
    # two runtimes come up and both see the timer due: one takes it
    async with (
        aflow.Runtime(store=store_url, poll=0.05) as one,
        aflow.Runtime(store=store_url, poll=0.05) as two,
    ):
        await until_status(one, run.id, "succeeded")
        assert await (await two.retrieve(run.id)).result() == "stamped charged nap"
    assert read(counts) == {"charge": 1, "stamp": 1}


async def test_cancelling_a_waiting_run_unwinds_it(any_store: str, counts: pathlib.Path) -> None:
    async with aflow.Runtime(store=any_store) as rt:
        run = await rt.submit(wf.pay_then_ship, order="o-5")
        await until_waiting(rt, run.id)
        with anyio.fail_after(10):
            await run.cancel()
        assert run.status is aflow.RunStatus.CANCELLED  # (after its reverts ran)
        assert await stored_status(rt, run.id) == "cancelled"
    assert read(counts) == {"charge": 1, "refund": 1}


async def test_a_waiting_run_cancelled_from_outside_is_unwound(
    store_url: str, counts: pathlib.Path
) -> None:
    async with aflow.Runtime(store=store_url, poll=0.05) as rt:
        run = await rt.submit(wf.pay_then_ship, order="o-6")
        await until_waiting(rt, run.id)
        assert rt.store is not None
        await rt.store.request_cancel(run.id, "RunCancelled: from the command line")
        with anyio.fail_after(10), pytest.raises(aflow.errors.RunCancelled):
            await run.result()
    assert read(counts) == {"charge": 1, "refund": 1}


async def test_two_waits_at_once_each_take_their_event(
    any_store: str, counts: pathlib.Path
) -> None:
    async with aflow.Runtime(store=any_store) as rt:
        run = await rt.submit(wf.either, order="o-8")
        await until_waiting(rt, run.id)
        assert {w.event for w in (await rt.report(run.id)).waits} == {"a", "b"}
        await rt.send(run.id, "b", "B")

        async def waits_for_a_only() -> bool:  # taken up, then unloaded again
            return [w.event for w in (await rt.report(run.id)).waits] == ["a"]

        await until(waits_for_a_only, "the run to wait for 'a' only")
        await rt.send(run.id, "a", "A")
        assert await run.result() == "shipped after ['A', 'B']"


async def test_a_value_published_in_one_runtime_is_read_in_another(
    store_url: str, counts: pathlib.Path
) -> None:
    async with aflow.Runtime(store=store_url) as rt, aflow.Runtime(store=store_url) as other:
        run = await rt.submit(wf.link_then_wait, order="o-9")
        assert await other.get_event(run.id, "checkout_url", timeout=10) == (
            "https://pay.example/o-9"
        )
        # timeout=0 reads what is there now (it looks once before any deadline)
        assert await other.get_event(run.id, "checkout_url", timeout=0) == (
            "https://pay.example/o-9"
        )
        with pytest.raises(WaitTimeout):
            await other.get_event(run.id, "not-yet", timeout=0)
        assert await other.send(run.id, "paid", "ok")
        assert await run.result() == "shipped after ok"
        with pytest.raises(RunEnded):
            await other.get_event(run.id, "never", timeout=10)


async def test_a_body_waiting_in_receive_finds_an_event_another_process_sent(
    store_url: str, counts: pathlib.Path
) -> None:
    async with aflow.Runtime(store=store_url) as rt, aflow.Runtime(store=store_url) as other:
        run = await rt.submit(wf.receive_then_ship, order="o-10")

        async def waits() -> bool:
            return bool((await other.report(run.id)).waits)

        await until(waits, "the body to wait")
        assert await stored_status(rt, run.id) == "running"  # a body is not unloaded
        assert await other.send(run.id, "approved", "yes")
        with anyio.fail_after(10):
            assert await run.result() == "shipped after yes"


async def test_a_payload_the_store_cannot_hold_is_refused_and_nothing_is_kept(
    store_url: str, counts: pathlib.Path
) -> None:
    async with aflow.Runtime(store=store_url) as rt:
        run = await rt.submit(wf.pay_then_ship, order="o-11")
        with pytest.raises(aflow.errors.SerializationError, match="event 'paid'"):
            await rt.send(run.id, "paid", object(), message_id="evt_1")
        with pytest.raises(ValueError, match="non-empty str"):
            await rt.send(run.id, "", "x")
        with pytest.raises(TypeError, match="message_id must be a str"):
            await rt.send(run.id, "paid", "x", message_id=7)  # type: ignore[arg-type]
        assert await rt.send(run.id, "paid", "fine", message_id="evt_1")  # (not kept before)
        assert await run.result() == "shipped after fine"


async def test_a_cancel_that_comes_as_the_run_is_unloaded_cancels_it(
    any_store: str, counts: pathlib.Path
) -> None:
    """Cancelled between deciding to unload and recording it waiting (the release has
    begun, so the cancel cannot stop it): the run is cancelled in the store once parked,
    taken up and unwound, and ``cancel()`` returns."""
    async with aflow.Runtime(store=any_store) as rt:
        run = await rt.submit(wf.pay_then_ship, order="o-12")
        async for event in run.events():
            if event.name == "run_waiting":  # emitted as the run stops to be unloaded
                with anyio.fail_after(10):
                    await run.cancel()
                break
        with pytest.raises(aflow.errors.RunCancelled):
            await run.result()
        assert await stored_status(rt, run.id) == "cancelled"
    assert read(counts) == {"charge": 1, "refund": 1}


async def test_a_run_that_gets_to_its_wait_as_the_runtime_closes_does_not_hold_it_open(
    any_store: str, counts: pathlib.Path
) -> None:
    """Leaving the block waits for the runs; one that is unloaded meanwhile (it got to
    its wait) has left: the exit returns, and the run waits in its store."""
    wf.GATE.update(entered=anyio.Event(), open=anyio.Event())
    with anyio.fail_after(10):
        async with aflow.Runtime(store=any_store) as rt:
            run = await rt.submit(wf.gate_then_pay, order="o-13")
            await wf.GATE["entered"].wait()
            wf.GATE["open"].set()  # it goes on to its wait as the block ends
            store = rt.store
    with pytest.raises(aflow.errors.RunReleased):
        await run.result()
    assert store is not None
    if any_store != "memory://":  # (a memory store ends with its runtime)
        async with aflow.Runtime(store=any_store) as again:
            assert await stored_status(again, run.id) == "waiting"
            assert await again.send(run.id, "paid", "later")
            await until_status(again, run.id, "succeeded")
    assert read(counts)["charge"] == 1


async def test_an_event_sent_after_the_deadline_is_too_late_even_if_no_process_saw_it_pass(
    store_url: str, counts: pathlib.Path
) -> None:
    """Whether the order ships must not depend on which processes were up at the
    deadline: an event sent after it is kept, but no wait takes it, and the run
    compensates as it would have live."""
    async with FakeClock(autojump=False) as clock:
        async with aflow.Runtime(store=store_url, clock=clock) as rt:
            run = await rt.submit(wf.pay_then_ship, order="o-14", days=1)
            await until_waiting(rt, run.id)
        clock.advance(2 * DAY)  # no runtime is up as the deadline passes
        async with aflow.Runtime(store=store_url, clock=clock) as rt:
            assert await rt.send(run.id, "paid", "too late")  # (kept: the run has not ended)
            await until_status(rt, run.id, "reverted")
            with pytest.raises(WaitTimeout):
                await (await rt.retrieve(run.id)).result()
    assert read(counts) == {"charge": 1, "refund": 1}


async def test_get_event_refuses_a_timeout_that_is_no_duration() -> None:
    async with aflow.Runtime() as rt:
        run = await rt.submit(aflow.wait_for("paid") | then.s())
        for bad in (-1, float("nan"), "soon"):
            with pytest.raises(ValueError, match="timeout must be a number of seconds"):
                await rt.get_event(run.id, "x", timeout=bad)  # type: ignore[arg-type]
        await rt.send(run.id, "paid", 1)
        await run.result()


async def test_a_wait_node_with_an_attempt_timeout_of_its_own_times_out_with_a_store_too(
    any_store: str, counts: pathlib.Path
) -> None:
    """``.set(timeout=)`` on a wait node is an attempt timeout: an unloaded run would
    start the attempt over, so such a wait keeps its run loaded, and it fires as it
    does without a store."""
    async with FakeClock() as clock, aflow.Runtime(store=any_store, clock=clock) as rt:
        run = await rt.submit(wf.pay_with_attempt_timeout, order="o-15")
        with pytest.raises(aflow.errors.TaskTimeout, match="wait_for:paid"):
            await run.result()
        assert await stored_status(rt, run.id) == "reverted"
    assert read(counts) == {"charge": 1, "refund": 1}


async def test_a_nested_run_waits_for_and_publishes_on_its_run(
    any_store: str, counts: pathlib.Path
) -> None:
    """A TaskFlow flow with a retry runs as a nested run: its receive takes the events
    sent to the run, and its set_event publishes on the run (both went to the nested
    run's own state, where no send or get_event looks)."""
    async with aflow.Runtime(store=any_store) as rt:
        run = await rt.submit(wf.approval_in_a_retried_flow)
        assert await rt.get_event(run.id, "asked", timeout=10) is True
        assert await rt.send(run.id, "approved", "yes")
        with anyio.fail_after(10):
            assert await run.result() == {"answer": "yes"}
