"""Runs and steps as data (issue 17): one JSON-ready model, live and stored, and replays."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import anyio
import pytest

import aflow
from tests import durable_workflows as wf


@aflow.task
async def validate(order: dict[str, Any]) -> dict[str, Any]:
    return order


@aflow.task
async def charge(order: dict[str, Any]) -> str:
    return f"ch-{order['id']}"


@aflow.task
async def ship(receipt: str) -> None:
    raise LookupError("no such address")


@charge.revert
async def refund(order: dict[str, Any], *, result: Any) -> None:
    return None


@aflow.task
async def charge_no_refund(order: dict[str, Any]) -> str:
    return "x"


@charge_no_refund.revert
async def refund_fails(order: dict[str, Any], *, result: Any) -> None:
    raise OSError("refund service down")


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque>"


@aflow.task
async def opaque() -> Opaque:
    return Opaque()


async def test_a_live_run_as_data_round_trips_through_json() -> None:
    async with aflow.Runtime() as rt:
        run = await rt.submit(validate.s({"id": 7}) | charge.s())
        await run.result()
        report = run.report()
        assert report == await rt.report(run.id)
    assert (report.status, report.finished, report.source) == ("succeeded", True, "live")
    assert report.result == "ch-7"
    assert [(s.key, s.state, s.attempts) for s in report.steps or ()] == [
        ("validate", "succeeded", 1),
        ("charge", "succeeded", 1),
    ]
    assert report.steps is not None
    assert report.steps[0].result == {"id": 7}
    assert report.counts == {"succeeded": 2}
    assert report.duration_s is not None
    assert report.duration_s >= 0
    again = aflow.RunReport.model_validate_json(report.model_dump_json())
    assert again == report


async def test_a_failed_run_reports_errors_as_type_message_and_traceback() -> None:
    async with aflow.Runtime() as rt:
        run = await rt.submit(validate.s({"id": 1}) | charge.s() | ship.s())
        assert await run.wait() is aflow.RunStatus.REVERTED
        report = run.report()
    assert report.status == "reverted"
    assert report.finished
    assert report.error is not None
    assert (report.error.type, report.error.message) == ("LookupError", "no such address")
    assert report.error.traceback is not None
    assert "in ship" in report.error.traceback
    states = {s.key: s.state for s in report.steps or ()}
    assert states == {"validate": "succeeded", "charge": "reverted", "ship": "failed"}
    failed = next(s for s in report.steps or () if s.key == "ship")
    assert failed.error is not None
    assert failed.error.type == "LookupError"
    json.loads(report.model_dump_json())  # all of it is JSON


async def test_a_failed_revert_is_reported_with_its_error_and_the_group() -> None:
    async with aflow.Runtime() as rt:
        run = await rt.submit(charge_no_refund.s({"id": 1}) | ship.s())
        await run.wait()
        report = run.report()
    assert report.status == "failed"
    assert report.error is not None
    assert report.error.type == "aflow.errors.CompensationFailed"
    assert [e.type for e in report.error.exceptions] == ["LookupError", "OSError"]
    step = (report.steps or [])[0]
    assert step.state == "revert_failed"
    assert step.revert_error is not None
    assert step.revert_error.message == "refund service down"


async def test_values_json_cannot_hold_are_given_as_their_repr() -> None:
    async with aflow.Runtime() as rt:
        run = await rt.submit(opaque.s())
        await run.result()
    report = run.report()
    assert report.result == "<Opaque>"
    json.loads(report.model_dump_json())


async def test_a_running_run_says_where_it_is() -> None:
    gate = anyio.Event()
    started = anyio.Event()

    @aflow.task
    async def waits() -> int:
        started.set()
        await gate.wait()
        return 1

    async with aflow.Runtime() as rt:
        run = await rt.submit(waits.s() | waits.si())
        await started.wait()
        report = run.report()
        assert (report.status, report.finished) == ("running", False)
        assert report.counts == {"running": 1, "pending": 1}
        assert report.result is None
        gate.set()
        await run.result()


async def test_a_stored_run_reads_back_with_the_same_words(
    tmp_path: pathlib.Path, counts: pathlib.Path
) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    async with aflow.Runtime(store=url) as rt:
        good = await rt.submit(wf.abc(1))
        bad = await rt.submit(wf.abc_fails(1))
        await good.wait()
        await bad.wait()
        live_good, live_bad = good.report(), bad.report()
    async with aflow.Runtime(store=url) as rt:
        stored_good = await rt.report(good.id)
        stored_bad = await rt.report(bad.id)
        brief = await rt.report(bad.id, steps=False)
        with pytest.raises(aflow.errors.RunNotFound):
            await rt.report("nope")
    assert stored_good.source == "store"
    assert (stored_good.status, stored_good.finished) == (live_good.status, True)
    assert stored_good.result == live_good.result == 104
    assert stored_good.params == {"start": 1}
    assert stored_good.workflow == "tests.durable_workflows:abc"
    assert [(s.key, s.state, s.result) for s in stored_good.steps or ()] == [
        (s.key, s.state, s.result) for s in live_good.steps or ()
    ]
    assert stored_bad.status == live_bad.status == "reverted"
    assert [(s.key, s.state) for s in stored_bad.steps or ()] == [
        (s.key, s.state) for s in live_bad.steps or ()
    ]
    assert stored_bad.error is not None
    assert "card declined" in stored_bad.error.message
    failed = next(s for s in stored_bad.steps or () if s.state == "failed")
    assert failed.error is not None
    assert (failed.error.type, failed.error.message) == ("RuntimeError", "card declined")
    assert brief.steps is None
    assert brief.status == "reverted"


async def test_retrieve_gives_a_stored_result_and_get_says_not_found(
    tmp_path: pathlib.Path, counts: pathlib.Path
) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    async with aflow.Runtime(store=url) as rt:
        good = await rt.submit(wf.abc(1))
        bad = await rt.submit(wf.abc_fails(1))
        await good.wait()
        await bad.wait()
    async with aflow.Runtime(store=url) as rt:
        with pytest.raises(aflow.errors.RunNotFound):
            rt.get(good.id)  # not this runtime's
        found = await rt.retrieve(good.id)
        assert await found.result() == 104
        assert found.status is aflow.RunStatus.SUCCEEDED
        failed = await rt.retrieve(bad.id)
        with pytest.raises(aflow.errors.RunError, match="reverted"):
            await failed.result()
        with pytest.raises(aflow.errors.RunNotFound):
            await rt.retrieve("nope")
    async with aflow.Runtime() as rt:
        with pytest.raises(KeyError):
            await rt.retrieve("nope")


async def test_replay_gives_a_finished_run_whole_and_a_late_consumer_the_past() -> None:
    gate = anyio.Event()
    started = anyio.Event()

    @aflow.task
    async def first() -> int:
        return 1

    @aflow.task
    async def second(x: int) -> int:
        started.set()
        await gate.wait()
        return x + 1

    async with aflow.Runtime() as rt:
        run = await rt.submit(first.s() | second.s())
        await started.wait()
        seen: list[tuple[str, str | None, bool]] = []

        async def consume() -> None:
            async for event in run.events(replay=True):
                seen.append((event.name, event.node, event.replayed))
                if event.name == "task_started" and event.node == "second":
                    gate.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
        assert seen == [
            ("run_started", None, True),
            ("task_started", "first", True),
            ("task_succeeded", "first", True),
            ("task_started", "second", True),
            ("task_succeeded", "second", False),
            ("run_succeeded", None, False),
        ]
        after = [(e.name, e.node) async for e in run.events(replay=True)]
        assert after == [(name, node) for name, node, _ in seen]
        assert [e async for e in run.events()] == []  # (no replay: nothing after the end)
