"""Resuming what a dead process left in the store, and the failures around it.

Most tests here write into the store what a process leaves when it dies at a
given point (its records, its status, a lapsed lease), then resume: precise and
fast. The SIGKILL tests in test_durable.py check that real crashes leave such
records.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time
import uuid
from collections.abc import Sequence
from typing import Any, Self

import anyio
import anyio.lowlevel
import pytest

import aflow
from aflow._serialize import serializer_for
from aflow._workflow import WorkflowBuilder, fingerprint
from aflow.errors import RecordedError, StoreError
from aflow.stores import NodeRecord, RunRecord, Store
from aflow.testing import FakeClock

from . import durable_workflows as wf

read = wf.read_counts


async def dead_run(
    store: Store | None,
    workflow: WorkflowBuilder[..., Any],
    nodes: Sequence[NodeRecord],
    *,
    status: str,
    error: str | None = None,
    options: dict[str, Any] | None = None,
    serializer: str = "json",
    key: str | None = None,
    lease_left: float = -1.0,
    params: dict[str, Any] | None = None,
) -> str:
    """Write what a process that died mid-run leaves behind; return the run id."""
    assert store is not None
    params = params if params is not None else {"start": 1}
    graph = workflow.build(params)
    now = time.time()
    run_id = uuid.uuid4().hex
    record = RunRecord(
        run_id=run_id,
        workflow=workflow.path,
        params=serializer_for(serializer).dumps(params, task="inputs"),
        fingerprint=fingerprint(graph),
        status=status,
        idempotency_key=key,
        created_at=now,
        updated_at=now,
        error=error,
        serializer=serializer,
        owner="gone-host:1:dead",
        heartbeat=now + lease_left,
        options=json.dumps(options) if options else None,
    )
    await store.create_run(record)
    for node in nodes:  # one transition at a time, as the process wrote them
        await store.write_nodes(run_id, [node])
    return run_id


def ok(key: str, value: str) -> NodeRecord:
    return NodeRecord(key, "succeeded", 1, value, None, 1.0, 2.0)


def failed(key: str, error: str = "RuntimeError: card declined") -> NodeRecord:
    return NodeRecord(key, "failed", 1, None, error, 1.0, 2.0)


@pytest.fixture
def sqlite_url(tmp_path: pathlib.Path) -> str:
    return f"sqlite:///{tmp_path / 'runs.db'}"


async def status_of(rt: aflow.Runtime, run_id: str) -> str:
    assert rt.store is not None
    return (await rt.store.get_run(run_id)).status


# --- what a resume restores --------------------------------------------------------------


async def test_a_resumed_map_reverts_each_of_its_items(
    sqlite_url: str, counts: pathlib.Path
) -> None:
    async with aflow.Runtime(store=sqlite_url) as rt:
        run_id = await dead_run(
            rt.store,
            wf.booked,
            [ok("book", "[10,20,30]"), failed("step_c_fails")],
            status="reverting",
            error="RuntimeError: card declined",
            params={"n": 3},
        )
        run = await rt.resume(run_id)
        with pytest.raises(RecordedError, match="card declined"):
            await run.result()
        assert await status_of(rt, run_id) == "reverted"
    assert read(counts) == {"unbook-3:30": 1, "unbook-2:20": 1, "unbook-1:10": 1}


async def test_a_map_running_when_its_process_died_reverts_every_item_on_cancel(
    sqlite_url: str, counts: pathlib.Path
) -> None:
    async with aflow.Runtime(store=sqlite_url) as rt:
        run_id = await dead_run(
            rt.store,
            wf.booked,
            [NodeRecord("book", "running", 1, started_at=1.0)],
            status="cancelling",
            error="RunCancelled: cancelled from the command line",
            params={"n": 2},
        )
        run = await rt.resume(run_id)
        assert await run.wait() is aflow.RunStatus.CANCELLED
    # which items had run is not on record: each one's revert is called, with the failure
    assert read(counts) == {"unbook-2:failure": 1, "unbook-1:failure": 1}


@pytest.mark.parametrize(
    ("trigger", "b_state", "expected", "status"),
    [
        (
            "RunTimeout: run x: the run exceeded its deadline of 1.5 s",
            "running",
            aflow.errors.RunTimeout,
            "reverted",
        ),
        (
            "RunCancelled: run x: the run was cancelled",
            "running",
            aflow.errors.RunCancelled,
            "cancelled",
        ),
        ("RuntimeError: card declined", "reverted", RecordedError, "reverted"),
    ],
)
async def test_a_resumed_compensation_ends_as_what_started_it(
    sqlite_url: str,
    counts: pathlib.Path,
    trigger: str,
    b_state: str,
    expected: type[BaseException],
    status: str,
) -> None:
    async with aflow.Runtime(store=sqlite_url) as rt:
        b = NodeRecord("step_b", b_state, 1, "4" if b_state == "reverted" else None, None, 1.0)
        run_id = await dead_run(
            rt.store,
            wf.abc,
            [ok("step_a", "2"), b],
            status="reverting",
            error=trigger,
            options={"timeout": 1.5},
        )
        run = await rt.resume(run_id)
        with pytest.raises(expected) as info:
            await run.result()
        assert await status_of(rt, run_id) == status
    if isinstance(info.value, aflow.errors.RunTimeout):
        assert info.value.timeout == 1.5  # the run's own options came back with it
    if isinstance(info.value, RecordedError):
        assert str(info.value) == trigger  # what failed, though that node was reverted since
    reverted_b = {"revert-B": 1} if b_state == "running" else {}  # cancelled mid-way: undone
    assert read(counts) == {"revert-A": 1, **reverted_b}


async def test_a_resumed_run_keeps_on_error_continue_and_its_recorded_failures(
    sqlite_url: str, counts: pathlib.Path
) -> None:
    async with aflow.Runtime(store=sqlite_url) as rt:  # the runtime's default is "revert"
        run_id = await dead_run(
            rt.store,
            wf.a_and_failing_c,
            [failed("step_c_fails")],
            status="running",
            options={"on_error": "continue"},
        )
        run = await rt.resume(run_id)
        with pytest.raises(RecordedError, match="card declined"):
            await run.result()
        assert await status_of(rt, run_id) == "failed"
        assert run.step("step_a").state is aflow.NodeState.SUCCEEDED
    assert read(counts) == {"A": 1}  # the failure is final: C is not run again, A is kept


async def test_a_recorded_failure_makes_a_running_run_unwind_on_resume(
    sqlite_url: str, counts: pathlib.Path
) -> None:
    # the process died after C's failure was written but before the run said "reverting"
    async with aflow.Runtime(store=sqlite_url) as rt:
        run_id = await dead_run(
            rt.store,
            wf.abc_fails,
            [ok("step_a", "2"), ok("step_b", "4"), failed("step_c_fails")],
            status="running",
        )
        run = await rt.resume(run_id)
        with pytest.raises(RecordedError, match="card declined"):
            await run.result()
        assert await status_of(rt, run_id) == "reverted"
    assert read(counts) == {"revert-B": 1, "revert-A": 1}


async def test_a_failed_revert_still_keeps_what_precedes_it_after_resume(
    sqlite_url: str, counts: pathlib.Path
) -> None:
    async with aflow.Runtime(store=sqlite_url) as rt:
        run_id = await dead_run(
            rt.store,
            wf.abc_fails,
            [
                ok("step_a", "2"),
                ok("step_b", "4"),
                failed("step_c_fails"),
                NodeRecord("step_b", "revert_failed", 1, None, "OSError: refund API down"),
            ],
            status="reverting",
            error="RuntimeError: card declined",
        )
        run = await rt.resume(run_id)
        with pytest.raises(aflow.errors.CompensationFailed):
            await run.result()
        assert await status_of(rt, run_id) == "failed"
    assert read(counts) == {}  # A is upstream of the failed revert: it stays


async def test_a_pickle_run_is_read_only_by_a_runtime_that_opted_into_pickle(
    sqlite_url: str, counts: pathlib.Path
) -> None:
    import base64
    import pickle

    two = base64.b64encode(pickle.dumps(2)).decode()
    async with aflow.Runtime(store=sqlite_url) as rt:  # JSON: loading a pickle runs code
        run_id = await dead_run(
            rt.store, wf.abc, [ok("step_a", two)], status="running", serializer="pickle"
        )
        with pytest.raises(aflow.errors.ResumeMismatch, match="serializer='pickle'"):
            await rt.resume(run_id)
        assert await status_of(rt, run_id) == "running"  # left alone
    async with aflow.Runtime(store=sqlite_url, serializer="pickle") as rt:
        assert await (await rt.resume(run_id)).result() == 104
    assert read(counts) == {"B": 1, "C": 1}


class Tagged:
    """A custom serializer: JSON text with a prefix."""

    name = "tagged"

    def dumps(self, value: Any, *, task: str) -> str:
        return "T" + json.dumps(value)

    def loads(self, text: str) -> Any:
        return json.loads(text[1:])


async def test_a_run_written_with_a_custom_serializer_resumes_with_it(
    sqlite_url: str, counts: pathlib.Path
) -> None:
    async with aflow.Runtime(store=sqlite_url, serializer=Tagged()) as rt:
        assert rt.store is not None
        first = await rt.submit(wf.abc, start=1)
        assert await first.result() == 104
        assert (await rt.store.load_nodes(first.id))["step_a"].result == "T2"
        forked = await rt.fork(first.id, reuse=["step_a"])
        assert await forked.result() == 104
    assert read(counts) == {"A": 1, "B": 2, "C": 2}


async def test_recovery_leaves_a_run_it_cannot_rebuild_and_takes_the_others(
    sqlite_url: str, counts: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with aflow.Runtime(store=sqlite_url) as rt:
        good = await dead_run(rt.store, wf.abc, [ok("step_a", "2")], status="running")
        assert rt.store is not None
        record = await rt.store.get_run(good)
        broken = RunRecord(
            **{f: getattr(record, f) for f in record.__dataclass_fields__},
        )
        object.__setattr__(broken, "run_id", "broken")
        object.__setattr__(broken, "workflow", "tests.durable_workflows:gone_since")
        await rt.store.create_run(broken)
    with caplog.at_level(logging.WARNING, logger="aflow"):
        async with aflow.Runtime(store=sqlite_url, recover=True) as rt:
            assert await rt.get(good).result() == 104
            assert await status_of(rt, "broken") == "running"  # left as it was
    assert "aflow_recover_skipped" in caplog.text
    assert "gone_since" in caplog.text
    assert read(counts) == {"B": 1, "C": 1}


# --- idempotency keys of runs another process drives -------------------------------------


async def test_following_another_process_s_run_stops_when_the_runtime_closes(
    sqlite_url: str, counts: pathlib.Path
) -> None:
    async with aflow.Runtime(store=sqlite_url) as writer:
        await dead_run(writer.store, wf.abc, [], status="running", key="k", lease_left=600)
    with anyio.fail_after(10):
        async with aflow.Runtime(store=sqlite_url) as rt:
            handle = await rt.submit(wf.abc, start=1, idempotency_key="k")
            assert not handle.ready()
    with pytest.raises(aflow.errors.RunCancelled, match="closed while following"):
        await handle.result()
    assert read(counts) == {}


async def test_a_followed_run_whose_process_dies_is_taken_up_here(
    sqlite_url: str, counts: pathlib.Path
) -> None:
    async with (
        FakeClock() as clock,  # virtual: the lease runs out, and is seen to, in no time
        aflow.Runtime(store=sqlite_url, clock=clock) as rt,
    ):
        await dead_run(
            rt.store, wf.abc, [ok("step_a", "2")], status="running", key="k", lease_left=0.3
        )
        handle = await rt.submit(wf.abc, start=1, idempotency_key="k")  # its owner is alive
        assert not handle.ready()
        assert await handle.result() == 104  # the lease ran out: this runtime resumed it
        assert handle.step("step_b").state is aflow.NodeState.SUCCEEDED
    assert read(counts) == {"B": 1, "C": 1}


# --- a store that fails under a run ----------------------------------------------------------


class FlakyStore:
    """A SQLite store whose writes (or heartbeats) fail when told to."""

    def __init__(self, url: str) -> None:
        self.inner = aflow.stores.open_store(url)
        self.url = self.inner.url
        self.fail_writes = False
        self.fail_heartbeats = False
        self.fail_reads = False
        self.failed_read = anyio.Event()
        self.cancel_before_start = False
        self.disown = False  # heartbeats answer as if another process owned every run
        self.statuses: list[str] = []
        self.heartbeats = 0
        self.beat = anyio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def __aenter__(self) -> Self:
        await self.inner.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.inner.close()

    async def write_nodes(
        self, run_id: str, nodes: Sequence[NodeRecord], superseded: Sequence[NodeRecord] = ()
    ) -> None:
        if self.fail_writes:
            raise StoreError("disk I/O error")
        await self.inner.write_nodes(run_id, nodes, superseded)

    async def get_run(self, run_id: str) -> RunRecord:
        if self.fail_reads:
            self.failed_read.set()
            raise StoreError("database is locked")
        return await self.inner.get_run(run_id)

    async def start_run(self, run_id: str, status: str, error: str | None) -> str:
        self.statuses.append(status)
        if self.cancel_before_start:  # `aflow cancel` lands just before the run starts
            await self.inner.request_cancel(run_id, "RunCancelled: from the command line")
        return await self.inner.start_run(run_id, status, error)

    async def set_status(self, run_id: str, status: str, **kwargs: Any) -> None:
        self.statuses.append(status)
        await self.inner.set_status(run_id, status, **kwargs)

    async def heartbeat(
        self, owner: str, lease: float, run_ids: Sequence[str], *, now: float | None = None
    ) -> dict[str, str]:
        self.heartbeats += 1
        if self.heartbeats >= 3:
            self.beat.set()
        if self.fail_heartbeats:
            raise OSError("connection refused")
        renewed = await self.inner.heartbeat(owner, lease, run_ids, now=now)
        return {} if self.disown else renewed


async def test_a_store_that_fails_mid_run_stops_it_unreverted_and_resumable(
    sqlite_url: str, counts: pathlib.Path
) -> None:
    store = FlakyStore(sqlite_url)
    lease = 0.2
    async with store:

        def on_event(event: aflow.Event) -> None:
            if event.name == "task_started" and event.node == "step_b":
                store.fail_writes = True  # B's checkpoint will not be written

        async with aflow.Runtime(store=store, lease=lease) as rt:  # type: ignore[arg-type]
            run = await rt.submit(wf.abc, start=1, on_event=on_event)
            with pytest.raises(StoreError, match="could not be written") as info:
                await run.result()
            assert "Nothing was reverted" in str(info.value)
            assert (await store.get_run(run.id)).status == "running"  # unfinished, on record
            clock = FakeClock(autojump=False)
            clock.advance(lease * 1.5)  # past the lease, which this runtime no longer renews
            async with aflow.Runtime(
                store=sqlite_url, recover=True, lease=lease, clock=clock
            ) as other:
                assert await other.get(run.id).result() == 104
    assert read(counts) == {"A": 1, "B": 2, "C": 1}  # nothing reverted; B again (at-least-once)


async def test_a_heartbeat_that_fails_for_a_while_does_not_stop_anything(
    sqlite_url: str, counts: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = FlakyStore(sqlite_url)
    store.fail_heartbeats = True
    async with store:
        with caplog.at_level(logging.WARNING, logger="aflow"):
            async with aflow.Runtime(store=store, lease=0.2) as rt:  # type: ignore[arg-type]
                # (heartbeats tick only while a durable run is driven here: one is)
                wf.GATES["gated"] = gate = anyio.Event()
                run = await rt.submit(wf.gated_then_plus_one, start=1)
                await store.beat.wait()  # three failed heartbeats, in less than the lease
                store.fail_heartbeats = False
                gate.set()
                assert await run.result() == 3
    assert "aflow_heartbeat_failed" in caplog.text


@pytest.mark.parametrize("how", ["heartbeats fail past the lease", "another process owns it"])
async def test_a_run_whose_lease_is_lost_stops_here_unreverted(
    sqlite_url: str, counts: pathlib.Path, how: str
) -> None:
    store = FlakyStore(sqlite_url)

    def on_event(event: aflow.Event) -> None:
        if event.name == "task_started" and event.node == "wait_here":
            if how.startswith("heartbeats"):
                store.fail_heartbeats = True
            else:
                store.disown = True

    async with store, aflow.Runtime(store=store, lease=0.1) as rt:  # type: ignore[arg-type]
        run = await rt.submit(wf.a_then_wait, start=1, on_event=on_event)
        with pytest.raises(StoreError, match="lost its lease"):
            await run.result()
        assert (await store.inner.get_run(run.id)).status == "running"  # for its owner
    assert read(counts) == {"A": 1, "W": 1}  # W was stopped, and nothing was reverted here


# --- what gets recorded ------------------------------------------------------------------


async def test_a_nul_in_an_error_message_is_stored(store_url: str, counts: pathlib.Path) -> None:
    async with aflow.Runtime(store=store_url) as rt:
        run = await rt.submit(wf.a_then_nul, start=1)
        with pytest.raises(ValueError, match="bad"):
            await run.result()
        assert rt.store is not None
        nodes = await rt.store.load_nodes(run.id)
        assert nodes["nul_error"].error == "ValueError: bad\\0byte"
        assert (await rt.store.get_run(run.id)).status == "reverted"


async def test_a_fork_that_fails_does_not_revert_the_nodes_it_reused(
    sqlite_url: str, counts: pathlib.Path
) -> None:
    async with aflow.Runtime(store=sqlite_url) as rt:
        first = await rt.submit(wf.abc_fails, start=1)
        with pytest.raises(RuntimeError):
            await first.result()
        fork = await rt.fork(first.id, reuse={"step_a": 10})
        with pytest.raises(RuntimeError):
            await fork.result()
        assert rt.store is not None
        assert (await rt.store.load_nodes(fork.id))["step_a"].state == "reused"
    # A ran (and was reverted) in the first run only; the fork reverted its own B
    assert read(counts) == {"A": 1, "B": 2, "C": 2, "revert-B": 2, "revert-A": 1}


async def test_an_error_callback_s_value_is_not_serialised(
    sqlite_url: str, counts: pathlib.Path
) -> None:
    async with aflow.Runtime(store=sqlite_url) as rt:
        run = await rt.submit(wf.abc_fails_with_errback, start=1)
        with pytest.raises(RuntimeError, match="card declined"):  # not a SerializationError
            await run.result()
        assert rt.store is not None
        errback = (await rt.store.load_nodes(run.id))["note_failure"]
    assert (errback.state, errback.result) == ("succeeded", None)
    assert read(counts)["errback"] == 1


async def test_reverts_cut_short_by_the_compensation_timeout_are_recorded(
    sqlite_url: str, counts: pathlib.Path
) -> None:
    async with aflow.Runtime(store=sqlite_url, compensation_timeout=0.2) as rt:
        run = await rt.submit(wf.stuck_then_fails, start=1)
        with pytest.raises(aflow.errors.CompensationFailed):
            await run.result()
        assert rt.store is not None
        stuck = (await rt.store.load_nodes(run.id))["stuck"]
    assert stuck.state == "revert_failed"
    assert "TimeoutError" in (stuck.error or "")


async def test_the_history_keeps_every_attempt(sqlite_url: str, counts: pathlib.Path) -> None:
    async with aflow.Runtime(store=sqlite_url) as rt:
        run = await rt.submit(wf.flaky_once, start=5)
        assert await run.result() == 5
        assert rt.store is not None
        history = await rt.store.load_history(run.id)
    states = [(n.state, n.attempt, n.error) for n in history]
    assert ("retrying", 1, "OSError: connection reset") in states
    assert states[-1] == ("succeeded", 2, None)


@pytest.mark.parametrize(
    "workflow",
    [
        wf.sees_its_start_first,  # first in its run: it waits for its own start's commit
        wf.a_then_sees_its_start,  # after A: its start goes out with A's success
    ],
)
async def test_a_step_with_a_revert_starts_only_once_its_start_is_on_record(
    tmp_path: pathlib.Path,
    counts: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    workflow: WorkflowBuilder[..., Any],
) -> None:
    path = tmp_path / "runs.db"
    monkeypatch.setenv("AFLOW_DB", str(path))
    async with aflow.Runtime(store=f"sqlite:///{path}") as rt:
        assert await (await rt.submit(workflow, start=1)).result() == 2
    assert read(counts) == {"A": 1, "on record: running": 1}


# --- found in review: each failed before its fix ------------------------------------------


async def test_a_step_running_beside_a_recorded_failure_is_reverted_on_resume(
    sqlite_url: str, counts: pathlib.Path
) -> None:
    # the process died while A still ran beside C's failure, before it said "reverting"
    async with aflow.Runtime(store=sqlite_url) as rt:
        run_id = await dead_run(
            rt.store,
            wf.a_and_failing_c,
            [NodeRecord("step_a", "running", 1, started_at=1.0), failed("step_c_fails")],
            status="running",
        )
        run = await rt.resume(run_id)
        with pytest.raises(RecordedError):
            await run.result()
        assert await status_of(rt, run_id) == "reverted"
    assert read(counts) == {"revert-A": 1}  # cancelled mid-way: undone, not left


async def test_a_revert_fed_by_a_group_gets_the_group_s_value_on_resume(
    sqlite_url: str, counts: pathlib.Path
) -> None:
    async with aflow.Runtime(store=sqlite_url) as rt:
        run_id = await dead_run(
            rt.store,
            wf.grouped_pair_fails,
            [ok("step_a", "2"), ok("step_a#2", "3"), ok("pair", "5"), failed("step_c_fails")],
            status="reverting",
            error="RuntimeError: card declined",
        )
        with pytest.raises(RecordedError):
            await (await rt.resume(run_id)).result()
    assert read(counts) == {"unpair:[2, 3]": 1, "revert-A": 2}


async def test_an_error_callback_runs_on_resume_after_its_failed_step_was_reverted(
    sqlite_url: str, counts: pathlib.Path
) -> None:
    async with aflow.Runtime(store=sqlite_url) as rt:
        first = await rt.submit(wf.a_charge_fails_with_errback, start=1)
        with pytest.raises(RuntimeError):
            await first.result()
        assert rt.store is not None
        reverted = (await rt.store.load_nodes(first.id))["charge_fails"]
        assert (reverted.state, reverted.error) == ("reverted", "RuntimeError: card declined")
        run_id = await dead_run(  # the same, killed after the failed step's revert
            rt.store,
            wf.a_charge_fails_with_errback,
            [ok("step_a", "2"), reverted],
            status="reverting",
            error="RuntimeError: card declined",
        )
        with pytest.raises(RecordedError, match="card declined"):
            await (await rt.resume(run_id)).result()
    assert read(counts) == {"A": 1, "charge": 1, "refund": 1, "revert-A": 2, "errback": 2}


async def test_a_resumed_compensation_says_reverting_before_anything_else(
    sqlite_url: str, counts: pathlib.Path
) -> None:
    store = FlakyStore(sqlite_url)
    async with store, aflow.Runtime(store=store) as rt:  # type: ignore[arg-type]
        run_id = await dead_run(
            rt.store,
            wf.abc_fails,
            [ok("step_a", "2"), failed("step_c_fails")],
            status="reverting",
            error="RuntimeError: card declined",
        )
        with pytest.raises(RecordedError):
            await (await rt.resume(run_id)).result()
    assert store.statuses == ["reverting", "reverting", "reverted"]  # never "running"


async def test_a_cancel_requested_just_before_the_run_starts_is_obeyed(
    sqlite_url: str, counts: pathlib.Path
) -> None:
    store = FlakyStore(sqlite_url)
    store.cancel_before_start = True
    async with store, aflow.Runtime(store=store) as rt:  # type: ignore[arg-type]
        run = await rt.submit(wf.abc, start=1)
        assert await run.wait() is aflow.RunStatus.CANCELLED
        assert (await store.inner.get_run(run.id)).status == "cancelled"
    assert read(counts).get("C") is None


async def test_a_cancel_during_a_compensation_keeps_what_started_it(
    sqlite_url: str, counts: pathlib.Path
) -> None:
    async with aflow.Runtime(store=sqlite_url) as rt:
        assert rt.store is not None
        run_id = await dead_run(
            rt.store,
            wf.a_charge_fails_with_errback,
            [ok("step_a", "2"), NodeRecord("charge_fails", "reverted", 1, None, "RuntimeError: x")],
            status="reverting",
            error="RuntimeError: x",
        )
        assert await rt.store.request_cancel(run_id, "RunCancelled: by hand") == "cancelling"
        assert (await rt.store.get_run(run_id)).error == "RuntimeError: x"
        with pytest.raises(RecordedError, match="RuntimeError: x"):
            await (await rt.resume(run_id)).result()
        assert await status_of(rt, run_id) == "reverted"


async def test_two_submits_following_one_run_take_it_up_once(
    sqlite_url: str, counts: pathlib.Path
) -> None:
    async with (
        FakeClock() as clock,  # virtual: the lease runs out, and is seen to, in no time
        aflow.Runtime(store=sqlite_url, clock=clock) as rt,
    ):
        await dead_run(
            rt.store, wf.abc, [ok("step_a", "2")], status="running", key="k", lease_left=0.3
        )
        first = await rt.submit(wf.abc, start=1, idempotency_key="k")
        second = await rt.submit(wf.abc, start=1, idempotency_key="k")
        assert first is second
        assert await first.result() == 104
    assert read(counts) == {"B": 1, "C": 1}


async def test_a_store_hiccup_while_following_does_not_take_the_runtime_down(
    sqlite_url: str, counts: pathlib.Path
) -> None:
    store = FlakyStore(sqlite_url)
    async with store, aflow.Runtime(store=store) as rt:  # type: ignore[arg-type]
        run_id = await dead_run(rt.store, wf.abc, [], status="running", key="k", lease_left=600)
        handle = await rt.submit(wf.abc, start=1, idempotency_key="k")
        store.fail_reads = True
        await store.failed_read.wait()
        store.fail_reads = False
        await store.inner.set_status(run_id, "succeeded", result="104")  # its owner ends
        assert await handle.result() == 104


async def test_a_stored_null_option_is_kept_over_the_runtime_s_default(
    sqlite_url: str, counts: pathlib.Path
) -> None:
    async with aflow.Runtime(store=sqlite_url, timeout=0.02) as rt:  # nap takes 0.1 s
        run_id = await dead_run(
            rt.store, wf.napping, [], status="running", options={"timeout": None}
        )
        assert await (await rt.resume(run_id)).result() == 1


async def test_a_key_whose_run_the_store_stopped_resumes_it_once_the_store_is_back(
    sqlite_url: str, counts: pathlib.Path
) -> None:
    store = FlakyStore(sqlite_url)

    def on_event(event: aflow.Event) -> None:
        if event.name == "task_started" and event.node == "step_b":
            store.fail_writes = True

    async with store, aflow.Runtime(store=store) as rt:  # type: ignore[arg-type]
        run = await rt.submit(wf.abc, start=1, on_event=on_event, idempotency_key="k")
        with pytest.raises(StoreError):
            await run.result()
        store.fail_writes = False
        again = await rt.submit(wf.abc, start=1, idempotency_key="k")
        assert again.id == run.id
        assert await again.result() == 104
    assert read(counts) == {"A": 1, "B": 2, "C": 1}


async def test_two_processes_opening_one_old_store_at_once_both_migrate_it(
    tmp_path: pathlib.Path,
) -> None:
    import contextlib
    import sqlite3

    from aflow.stores._sql import migrations

    ((_, version_1), *_) = migrations("sqlite", 0)
    for attempt in range(5):  # a race: several rounds, each on a fresh v1 file
        path = tmp_path / f"runs-{attempt}.db"
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            for statement in version_1:
                db.execute(statement)
            db.execute("INSERT INTO aflow_meta VALUES ('schema_version', '1')")
        stores = [aflow.stores.SQLiteStore(str(path)) for _ in range(4)]
        try:
            async with anyio.create_task_group() as tg:
                for store in stores:
                    tg.start_soon(store.open)
            for store in stores:
                assert await store.list_runs() == []
        finally:  # those that opened, even when another failed
            for store in stores:
                await store.close()


# --- found in the second review: each failed before its fix -------------------------------


async def test_a_durable_compensation_reverts_everything_that_ran(
    store_url: str, counts: pathlib.Path
) -> None:
    # the unwinding used to end while a batch of reverts was being written, which left
    # their parents unreverted (most runs, on SQLite and PostgreSQL)
    async with aflow.Runtime(store=store_url) as rt:
        for _ in range(5):
            run = await rt.submit(wf.ab_charge_fails_with_errback, start=1)
            with pytest.raises(RuntimeError):
                await run.result()
            assert run.reverted() == ["charge_fails", "step_b", "step_a"]
    assert read(counts) == {
        "A": 5, "B": 5, "charge": 5, "refund": 5, "revert-B": 5, "revert-A": 5, "errback": 5,
    }  # fmt: skip


async def test_a_run_below_a_threshold_unwinds_on_resume_instead_of_hanging(
    sqlite_url: str, counts: pathlib.Path
) -> None:
    async with aflow.Runtime(store=sqlite_url) as rt:
        run_id = await dead_run(  # died while the error callbacks would run: nothing says why
            rt.store,
            wf.below_threshold,
            [failed("step_c_fails"), failed("step_c_fails#2"), ok("one", "1")],
            status="running",
        )
        with anyio.fail_after(10), pytest.raises(aflow.errors.GroupFailed, match="threshold"):
            await (await rt.resume(run_id)).result()
        assert await status_of(rt, run_id) == "reverted"
    assert read(counts) == {"undo-one-1": 1}


async def test_a_retried_flow_that_ran_before_a_resume_is_not_silently_called_undone(
    sqlite_url: str, counts: pathlib.Path
) -> None:
    async with aflow.Runtime(store=sqlite_url) as rt:
        run_id = await dead_run(
            rt.store,
            wf.retried_pay,
            [ok("pay", '{"charged":5}'), failed("Ship", "RuntimeError: no truck")],
            status="reverting",
            error="RuntimeError: no truck",
            params={"amount": 5},
        )
        run = await rt.resume(run_id)
        with pytest.raises(aflow.errors.CompensationFailed):
            await run.result()
        assert run.reverted() == []
        assert rt.store is not None
        pay = (await rt.store.load_nodes(run_id))["pay"]
    assert pay.state == "revert_failed"
    assert "cannot be undone here" in (pay.error or "")


async def test_an_error_callback_runs_on_resume_after_the_failed_step_s_revert_failed(
    sqlite_url: str, counts: pathlib.Path
) -> None:
    async with aflow.Runtime(store=sqlite_url) as rt:
        run_id = await dead_run(  # as written: its failure, then its revert's failure
            rt.store,
            wf.refund_fails_with_errback,
            [
                ok("step_a", "2"),
                failed("charge_refund_fails"),
                NodeRecord("charge_refund_fails", "revert_failed", 1, None, "OSError: down"),
            ],
            status="reverting",
            error="RuntimeError: card declined",
        )
        run = await rt.resume(run_id)
        with pytest.raises(aflow.errors.CompensationFailed):
            await run.result()
        assert "charge_refund_fails" in run.failures()
    assert read(counts) == {"errback": 1}  # and A, upstream of the failed revert, is kept


async def test_a_retried_flow_that_ends_its_branch_is_checkpointed(
    sqlite_url: str, counts: pathlib.Path
) -> None:
    async with aflow.Runtime(store=sqlite_url) as rt:
        run = await rt.submit(wf.retried_flow_ends_early, start=1)
        assert await run.result() == {"probe": 1}
        assert rt.store is not None
        stored = await rt.store.load_nodes(run.id)
        assert stored["pay"].state == "ended"
        again = await dead_run(
            rt.store, wf.retried_flow_ends_early, [stored["pay"]], status="running"
        )
        assert await (await rt.resume(again)).result() == {"probe": 1}
    assert read(counts) == {"probe": 1}  # not run again: what followed stays skipped


async def test_a_step_announced_but_never_started_is_not_left_running(
    sqlite_url: str, counts: pathlib.Path
) -> None:
    async with aflow.Runtime(store=sqlite_url) as rt:
        run = await rt.submit(wf.two_branches_and_a_failure)
        with pytest.raises(RuntimeError, match="z failed"):
            await run.result()
        assert rt.store is not None
        stored = await rt.store.load_nodes(run.id)
    assert not [key for key, node in stored.items() if node.state == "running"]
    ran = {key for key, node in stored.items() if node.state == "reverted"}
    assert {key for key in stored if stored[key].state == "not_started"}.isdisjoint(ran)


async def test_a_store_failure_at_a_run_s_start_or_end_leaves_it_resumable(
    sqlite_url: str, counts: pathlib.Path
) -> None:
    class FailsAt(FlakyStore):
        at = ""

        async def start_run(self, run_id: str, status: str, error: str | None) -> str:
            if self.at == "start":
                raise StoreError("disk full")
            return await super().start_run(run_id, status, error)

        async def set_status(self, run_id: str, status: str, **kwargs: Any) -> None:
            if self.at == "end" and status == "succeeded":
                raise StoreError("disk full")
            await super().set_status(run_id, status, **kwargs)

    for at in ("start", "end"):
        store = FailsAt(sqlite_url)
        store.at = at
        async with store, aflow.Runtime(store=store) as rt:  # type: ignore[arg-type]
            run = await rt.submit(wf.abc, start=1, idempotency_key=f"k-{at}")
            if at == "start":
                with pytest.raises(StoreError, match="disk full"):
                    await run.result()
            else:  # the outcome stands; the store is told on the next submit
                assert await run.result() == 104
            assert (await store.inner.get_run(run.id)).status in ("pending", "running")
            store.at = ""
            again = await rt.submit(wf.abc, start=1, idempotency_key=f"k-{at}")
            assert await again.result() == 104
            assert (await store.inner.get_run(run.id)).status == "succeeded"
    assert read(counts) == {"A": 2, "B": 2, "C": 2}  # once per run: nothing ran twice


async def test_aflow_run_with_a_store_raises_the_error_itself(
    sqlite_url: str, counts: pathlib.Path
) -> None:
    with pytest.raises(RuntimeError, match="card declined"):
        await aflow.run(wf.abc_fails, params={"start": 1}, store=sqlite_url)
    with pytest.raises(aflow.errors.DefinitionError):
        await aflow.run(wf.step_a.s(1), store=sqlite_url)


async def test_cancelling_a_followed_run_asks_its_owner_through_the_store(
    sqlite_url: str, counts: pathlib.Path
) -> None:
    async with aflow.Runtime(store=sqlite_url) as rt:
        run_id = await dead_run(rt.store, wf.abc, [], status="running", key="k", lease_left=600)
        handle = await rt.submit(wf.abc, start=1, idempotency_key="k")
        async with anyio.create_task_group() as tg:
            tg.start_soon(handle.cancel)  # waits for an end that nobody here drives...
            with anyio.fail_after(10):  # ...so the request it writes is what we check
                while await status_of(rt, run_id) != "cancelling":
                    await anyio.lowlevel.checkpoint()
            tg.cancel_scope.cancel()
        assert await status_of(rt, run_id) == "cancelling"
