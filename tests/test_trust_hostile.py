"""Issue 14 attacked as a hostile user would, after its first fixes: what a review
found still broken, each a regression test now.

Every test says what a user expects, and what happened instead before its fix.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import sqlite3
from typing import Any

import anyio
import pytest

import aflow
from aflow.stores import NodeRecord

from . import durable_workflows as dw
from . import hostile_workflows as hw
from . import trust_workflows as tw
from .test_resume import dead_run

read = dw.read_counts


@pytest.fixture
def db_file(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "runs.db"


@pytest.fixture
def sqlite_url(db_file: pathlib.Path) -> str:
    return f"sqlite:///{db_file}"


def _sql(db_file: pathlib.Path, statement: str, *args: Any) -> None:
    """Change a store row behind aflow's back (a crafted row, or a dead process's)."""
    db = sqlite3.connect(db_file)
    try:
        db.execute(statement, args)
        db.commit()
    finally:
        db.close()


# --- aflow.current_step(): the idempotency key (item 17) ------------------------------------


async def test_each_item_of_a_map_has_an_idempotency_key_of_its_own() -> None:
    """``charge.map(orders)`` calls a payment service once per order, each with
    ``current_step().idempotency_key``. A user expects one key per item (the README
    says to key side effects by it): three orders, three charges. Instead every item
    of the map gets the same key (``<run>/charge``), so the service deduplicates the
    second and third charge into the first: two orders are never charged."""
    keys: list[str] = []

    @aflow.task
    async def charge(order: int) -> int:
        keys.append(aflow.current_step().idempotency_key)
        return order

    assert await charge.map([1, 2, 3]) == [1, 2, 3]
    assert len(set(keys)) == 3, keys


async def test_an_undone_attempt_of_a_retried_flow_keeps_its_key_to_itself_across_a_resume(
    sqlite_url: str, counts: pathlib.Path
) -> None:
    """A retried TaskFlow flow gives each attempt keys of its own (``pay#1/...``,
    ``pay#2/...``): "an attempt that was undone is new work". A user expects that to
    hold when the run is resumed in another process. Instead the attempt counter lives
    in memory (``Execution.nested``): after a resume the flow starts counting at #1
    again, and its new charge reuses the key of attempt #1, which was declined and
    refunded. A payment service returns that old (refunded) charge: the order is
    marked paid and nothing is collected."""
    hw.CHARGE_KEYS.clear()
    with anyio.fail_after(30):
        async with aflow.Runtime(store=sqlite_url, shutdown_timeout=0) as rt:
            run = await rt.submit(hw.pay_with_retries, start=1)
            while len(hw.CHARGE_KEYS) < 2:  # attempt 1 failed and was undone; 2 hangs
                await anyio.wait_all_tasks_blocked()
        with pytest.raises(aflow.errors.RunReleased):
            await run.result()
        async with aflow.Runtime(store=sqlite_url) as rt:
            resumed = await rt.resume(run.id)
            await resumed.result()
    assert read(counts)["charge"] == 3
    assert read(counts)["refund"] == 1  # attempt 1 only: a release undoes nothing
    first, _second, third = hw.CHARGE_KEYS
    assert first.endswith("pay#1/Charge")
    assert third != first, "the new attempt reuses the key of the attempt that was undone"


# --- a body that forgets an await (item 3) --------------------------------------------------

UNDONE: list[str] = []


async def _really_undo(x: int) -> None:
    UNDONE.append(f"refund {x}")


@aflow.task
async def reserve(x: int) -> int:
    return x


@reserve.revert
async def unreserve(x: int, *, result: Any) -> None:
    return _really_undo(x)  # type: ignore[return-value]  # the missing await


@aflow.task
async def declined(x: int) -> int:
    raise RuntimeError("declined")


async def test_a_revert_that_returns_a_coroutine_is_no_compensation() -> None:
    """A task returning a coroutine (a missing ``await``) is refused with a typed
    error (item 3). A user expects the same of a revert: the compensation did not
    happen, so the run must not end as if it had (``CompensationFailed``, the step
    ``revert_failed``). Instead the revert counts as done: the run raises the plain
    failure, the reservation is never released, and all that is left is a
    "coroutine was never awaited" RuntimeWarning."""
    UNDONE.clear()
    async with aflow.Runtime() as rt:
        run = await rt.submit(reserve.s(1) | declined.s())
        with pytest.raises(aflow.errors.CompensationFailed):
            await run.result()
    assert run.step("reserve").state is aflow.NodeState.REVERT_FAILED


async def test_a_task_returning_an_awaitable_is_refused_too() -> None:
    """``aflow.errors.ResultError`` says it refuses "a coroutine (or another awaitable)
    it forgot to await". A user who writes ``return asyncio.gather(a(), b())`` (a
    missing await) expects that error. Instead the pending future is the task's value,
    and the gathered work runs on unobserved after the run has 'succeeded'."""

    async def _helper() -> int:
        return 1

    @aflow.task
    async def fetch_both(x: int) -> Any:
        return asyncio.gather(_helper(), _helper())

    try:
        value = await fetch_both.s(1)
    except aflow.errors.ResultError:
        return
    await value  # (let what it started finish)
    pytest.fail(f"the task's value is {value!r}")


async def test_a_tolerant_map_tolerates_an_item_raising_generator_exit_like_any_failure() -> None:
    """Item 2: a task raising a BaseException that is no error (``GeneratorExit``, a
    user's own) "must end, unwind and be recorded like any other failure". In a map
    that tolerates failed items (``min_success=1``) a user expects such an item to be
    one more tolerated failure (``None`` in its place), as a ``RuntimeError`` is.
    Instead the whole map fails with ``TaskFailed``: ``_map_async`` / ``_map_sync``
    re-raise anything that is not an ``Exception``."""

    @aflow.task
    async def item(x: int) -> int:
        if x == 2:
            raise GeneratorExit
        return x

    assert await item.map([1, 2, 3]).set(min_success=1) == [1, None, 3]


# --- idempotency keys name one piece of work (item 12) --------------------------------------


async def test_a_key_reused_for_a_canvas_with_other_arguments_is_refused() -> None:
    """Item 12: a key reused for other work is refused (``IdempotencyConflict``), and
    without a store too for ``@aflow.workflow`` parameters. A user submitting
    ``charge.s(100)`` and then ``charge.s(200)`` under one key expects the same.
    Instead a canvas is identified by its graph's fingerprint, which leaves argument
    values out: the second submit silently returns the first run, and its 100."""

    @aflow.task
    async def charge(amount: int) -> int:
        return amount

    async with aflow.Runtime() as rt:
        first = await rt.submit(charge.s(100), idempotency_key="order-1")
        assert await first.result() == 100
        with pytest.raises(aflow.errors.IdempotencyConflict):
            await rt.submit(charge.s(200), idempotency_key="order-1")


# --- parked runs (item 16) ------------------------------------------------------------------


async def _parked(url: str, db_file: pathlib.Path, workflow: Any, lease: float) -> str:
    """A run whose owner died, recovered twice already: a runtime with
    ``max_recoveries=2`` and this lease parks it; the run id."""
    async with aflow.Runtime(store=url) as rt:
        run_id = await dead_run(rt.store, workflow, [], status="running")
    _sql(db_file, "UPDATE aflow_runs SET recoveries = 2 WHERE run_id = ?", run_id)
    async with aflow.Runtime(store=url, lease=lease, max_recoveries=2) as rt:
        assert await rt.recover() == []
        assert rt.store is not None
        assert (await rt.store.get_run(run_id)).status == "parked"
    return run_id


async def test_a_parked_run_can_be_resumed_by_hand_at_once(
    sqlite_url: str, db_file: pathlib.Path, counts: pathlib.Path
) -> None:
    """Recovery parks a poison run "for a person to resume or cancel". A user expects
    ``aflow resume`` to take it up as soon as they fixed the cause. Instead the runtime
    that parked it still owns it: ``_park`` writes ``parked`` and only then releases the
    run, and ``release`` acts on unfinished statuses only, so the owner and its lease
    stay on the parked row. The hand resume is refused ("a live process runs it; its
    lease holds") until that lease runs out (an hour with ``lease=3600``), and when it
    finally goes through it counts as one more recovery."""
    run_id = await _parked(sqlite_url, db_file, tw.contexts, lease=3600)
    async with aflow.Runtime(store=sqlite_url) as rt:
        assert rt.store is not None
        record = await rt.store.get_run(run_id)
        assert (record.owner, record.heartbeat) == (None, None)
        run = await rt.resume(run_id)
        assert (await run.result())["key"] == "step_ctx"


async def test_a_run_resumed_by_hand_gets_a_fresh_count_of_recoveries(
    sqlite_url: str, db_file: pathlib.Path, counts: pathlib.Path
) -> None:
    """A person resumes a parked run by hand once the cause is fixed (cancelling one
    resets its count). A user expects the count to start afresh then, so one later
    crash of a process (a deploy, an OOM kill) is recovered as for any run. Instead
    the count goes on from where recovery parked it: the first recovery after the hand
    resume parks the run again at once."""
    run_id = await _parked(sqlite_url, db_file, tw.a_then_plain_wait, lease=10)
    _sql(db_file, "UPDATE aflow_runs SET owner = NULL, heartbeat = NULL WHERE run_id = ?", run_id)
    async with aflow.Runtime(store=sqlite_url, shutdown_timeout=0) as rt:
        run = await rt.resume(run_id)  # by hand
        async for event in run.events():
            if event.name == "task_started" and event.node == "plain_wait":
                break
    # then its process dies holding it (once)
    _sql(
        db_file,
        "UPDATE aflow_runs SET owner = 'gone-host:2:dead', heartbeat = 0 WHERE run_id = ?",
        run_id,
    )
    async with aflow.Runtime(store=sqlite_url, max_recoveries=2) as rt:
        taken = await rt.recover()
        assert [run.id for run in taken] == [run_id], "parked again after one crash"
        await taken[0].cancel()


# --- a store row is data: crafted rows give typed errors (items 7, 8) -----------------------


@pytest.mark.parametrize(
    "options",
    [{"timeout": 5, "deadline": "soon"}, {"timeout": "x"}, ["not", "a", "mapping"]],
    ids=["deadline text", "timeout text", "a list"],
)
async def test_resuming_a_run_with_crafted_options_is_a_typed_error(
    sqlite_url: str, db_file: pathlib.Path, counts: pathlib.Path, options: Any
) -> None:
    """The options column is data a store row holds (it now carries ``deadline``). A
    user (and ``aflow resume``, whose error handling catches aflow's errors) expects a
    crafted or damaged value to be refused with a typed error naming the run. Instead
    ``Runtime.resume`` raises a raw ``ValueError`` / ``TypeError`` /
    ``AttributeError`` from ``_load_options`` / ``_stored_deadline`` / the scheduler."""
    async with aflow.Runtime(store=sqlite_url) as rt:
        run_id = await dead_run(rt.store, tw.contexts, [], status="running")
        _sql(
            db_file,
            "UPDATE aflow_runs SET options = ? WHERE run_id = ?",
            json.dumps(options),
            run_id,
        )
        with anyio.fail_after(10), pytest.raises(aflow.errors.StoreError, match=run_id):
            await (await rt.resume(run_id)).result()


async def test_resuming_a_run_with_a_corrupt_checkpoint_is_a_typed_error(
    sqlite_url: str, counts: pathlib.Path
) -> None:
    """A node row's result that is not what aflow wrote (a crafted row, a damaged
    file) is data to refuse. A user expects a typed error naming the run and the step
    (``SerializationError`` or ``StoreError``). Instead ``Runtime.resume`` raises the
    JSON decoder's raw ``JSONDecodeError`` from ``Execution.restore``, and ``aflow
    resume`` dies with its traceback (exit code 1, not 2)."""
    async with aflow.Runtime(store=sqlite_url) as rt:
        run_id = await dead_run(
            rt.store, tw.contexts, [NodeRecord("step_a", "succeeded", 1, "{{")], status="running"
        )
        with pytest.raises((aflow.errors.StoreError, aflow.errors.SerializationError)) as info:
            await rt.resume(run_id)
    assert "step_a" in str(info.value)


# --- aflow show, aflow run (the CLI prints stored text) -------------------------------------


async def test_aflow_show_prints_an_error_with_brackets(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``aflow show`` must print what a run's row holds, as text. A task that failed
    with ``ValueError("cannot read [/etc/aflow.conf]")`` (any error text with a
    slash in square brackets) makes ``aflow show`` crash with ``rich.errors.MarkupError``:
    the stored error (and a node's error in its table) is printed as rich markup. A
    crafted row can style or hide what the command shows the same way."""
    from aflow import cli

    async with aflow.Runtime(store=sqlite_url) as rt:
        run = await rt.submit(hw.fails_with_brackets, start=1)
        with pytest.raises(ValueError):
            await run.result()
    code = await anyio.to_thread.run_sync(cli.main, ["--store", sqlite_url, "show", run.id])
    assert code == 1
    assert "cannot read [/etc/aflow.conf]" in capsys.readouterr().out


async def test_aflow_runs_lists_the_store_despite_one_odd_row(
    sqlite_url: str, db_file: pathlib.Path, counts: pathlib.Path
) -> None:
    """``aflow runs`` reads rows as data. A user expects one row with an odd value (a
    ``created_at`` out of range, written by a buggy tool or a crafted row) to be shown
    as it is, and every other run listed. Instead the whole listing dies with a raw
    ``OverflowError`` (``datetime.fromtimestamp`` in ``cli._runs``; ``aflow show
    --history`` the same with a node's times), so no run of the store can be listed."""
    from aflow import cli

    async with aflow.Runtime(store=sqlite_url) as rt:
        fine = await rt.submit(tw.contexts, start=1)
        await fine.result()
        odd = await dead_run(rt.store, tw.contexts, [], status="failed")
    _sql(db_file, "UPDATE aflow_runs SET created_at = 1e300 WHERE run_id = ?", odd)
    code = await anyio.to_thread.run_sync(cli.main, ["--store", sqlite_url, "runs"])
    assert code == 0
