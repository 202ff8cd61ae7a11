"""The checkpoint units (aflow/_runtime/_journal.py and _checkpoints.py) on their own.

The journal against a fake store: a node's transitions in a batch are one record (a
retry's failure superseded), a write releases only what its batch held, an announce
waits for the commit of its batch (a failed write lets none go). The write-ahead rules
in runs on that store: a node with a revert is on record before it starts, a success is
committed before its children start, a fan-out's successes share a batch, a revert
starts once its consumers' reverts are on record, a failing write stops the run as its
store error. On asyncio, uvloop and trio; the store pauses on a record until the test
lets it go (anyio Events, no sleeps).
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

import aflow
from aflow._runtime._journal import Journal, describe
from aflow._runtime._options import RunOptions, new_execution
from aflow._runtime._run_state import StopReason
from aflow._runtime._scheduler import Execution
from aflow._serialize import JsonSerializer
from aflow.errors import RecordedError, SerializationError, StoreError
from aflow.stores import NodeRecord

from .helpers import FakeStore, gated, on_each_backend


def journal_on(store: FakeStore) -> Journal:
    return Journal(store, "run-1", JsonSerializer())  # type: ignore[arg-type]


def together(store: FakeStore, *records: tuple[str, str]) -> bool:
    """One write held all of ``records``."""
    return any(all(r in batch for r in records) for batch in store.writes)


def written_before(log: list[tuple[str, Any]], record: tuple[str, str], event: Any) -> bool:
    """A write holding ``record`` is in ``log`` before ``event``."""
    return any(e[0] == "write" and record in e[1] for e in log[: log.index(event)])


# --- the journal ----------------------------------------------------------------------


@on_each_backend
async def test_a_node_s_transitions_in_one_batch_are_one_write() -> None:
    store = FakeStore()
    journal = journal_on(store)
    journal.started("a", 1)
    journal.record(NodeRecord("a", "retrying", 1, None, "ConnectionError: down"))
    journal.started("b", 1)
    journal.record(NodeRecord("a", "succeeded", 2, "1"), ("ok", 0))
    assert await journal.write() == [("ok", 0)]
    assert store.writes == [[("a", "succeeded"), ("b", "running")]]
    assert store.superseded == [[("a", "retrying")]]  # a failure only the history keeps
    assert (journal.batches, journal.written, journal.holding) == (1, 2, False)


@on_each_backend
async def test_a_write_releases_only_what_its_own_batch_held() -> None:
    store = FakeStore()
    journal = journal_on(store)
    journal.record(NodeRecord("a", "succeeded", 1, "1"), ("ok", 0))
    store.pause_at(("a", "succeeded"))
    released: list[list[tuple[str, int]]] = []

    async def write() -> None:
        released.append(await journal.write())

    async with gated(store.gate) as tg:
        tg.start_soon(write)
        await store.reached.wait()  # the batch is in flight
        assert journal.holding
        journal.record(NodeRecord("b", "succeeded", 1, "2"), ("ok", 1))  # the next batch
        store.gate.set()
    assert released == [[("ok", 0)]]
    assert journal.holding
    assert await journal.write() == [("ok", 1)]
    assert store.writes == [[("a", "succeeded")], [("b", "succeeded")]]


@on_each_backend
async def test_an_announce_waits_for_the_commit_of_the_batch_holding_it() -> None:
    store = FakeStore()
    journal = journal_on(store)
    log: list[str] = []

    async def announce(key: str) -> None:
        await journal.announce(key)
        log.append(f"{key} on record")

    async with gated(store.gate) as tg:
        tg.start_soon(announce, "a")
        await anyio.wait_all_tasks_blocked()
        store.pause_at(("a", "running"))
        tg.start_soon(journal.write)
        await store.reached.wait()
        tg.start_soon(announce, "b")  # made while a's batch is in flight: not in it
        await anyio.wait_all_tasks_blocked()
        assert log == []  # a's batch is not committed yet
        store.gate.set()
        await anyio.wait_all_tasks_blocked()
        assert log == ["a on record"]  # b waits for the next commit
        await journal.write()
    assert log == ["a on record", "b on record"]
    assert store.writes == [[("a", "running")], [("b", "running")]]


@on_each_backend
async def test_a_failed_write_lets_no_announce_go() -> None:
    store = FakeStore()
    store.fail_at = ("a", "running")
    journal = journal_on(store)
    passed: list[str] = []

    async def announce() -> None:
        await journal.announce("a")
        passed.append("a")

    async with gated(store.gate) as tg:
        tg.start_soon(announce)
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(OSError, match="disk full"):
            await journal.write()
        await anyio.wait_all_tasks_blocked()
        assert passed == []  # not on record: the node must not start
        assert not journal.holding
        tg.cancel_scope.cancel()
    assert store.writes == []


@on_each_backend
async def test_the_flusher_s_wait_ends_only_once_closed_with_nothing_left() -> None:
    journal = journal_on(FakeStore())
    answers: list[bool] = []

    async def wait() -> None:
        answers.append(await journal.next_batch())

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        await anyio.wait_all_tasks_blocked()
        assert answers == []  # nothing to write yet
        journal.started("a", 1)
    journal.close()
    assert await journal.next_batch()  # closing: what is left is still written
    await journal.write()
    assert not await journal.next_batch()
    assert answers == [True]


def test_stored_error_text_and_result_encoding() -> None:
    assert describe(ValueError("a\x00b")) == "ValueError: a\\0b"
    assert describe(RecordedError("KeyError: 'x'")) == "KeyError: 'x'"  # kept as recorded

    class Broken:
        def dumps(self, value: Any, *, task: str) -> str:
            raise RuntimeError("cannot")

    journal = Journal(FakeStore(), "r", Broken())  # type: ignore[arg-type]
    with pytest.raises(SerializationError) as caught:
        journal.encode("t", object())
    assert isinstance(caught.value.__cause__, RuntimeError)


# --- the write-ahead rules in a run -------------------------------------------------------


def saga() -> tuple[dict[str, aflow.FunctionTask[..., Any]], FakeStore]:
    """``a`` and ``b`` have reverts, ``c`` has none, ``fail`` fails; each logs its body
    into the log of the store it returns."""
    store = FakeStore()
    log = store.log

    def make(name: str, revert: bool, fails: bool = False) -> aflow.FunctionTask[..., Any]:
        @aflow.task(name=name)
        async def body(*args: Any) -> str:
            log.append(("body", name))
            await anyio.lowlevel.checkpoint()
            if fails:
                raise ValueError(name)
            return name

        if revert:

            @body.revert
            async def undo(*args: Any) -> None:
                log.append(("revert", name))
                await anyio.lowlevel.checkpoint()

        return body

    tasks = {"a": make("a", True), "b": make("b", True), "c": make("c", False)}
    return {**tasks, "fail": make("fail", False, fails=True)}, store


def durable(canvas: Any, store: FakeStore, **options: Any) -> Execution:
    return new_execution(aflow.compile(canvas), RunOptions(**options), journal=journal_on(store))


async def fails(execution: Execution, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        await execution.execute()


@on_each_backend
async def test_a_node_with_a_revert_is_on_record_before_it_starts() -> None:
    t, store = saga()
    log = store.log
    assert await durable(t["a"].s() | t["c"].s() | t["b"].s(), store).execute() == "b"
    # a root: announced on its own; b: its start goes out with its parent's success
    assert written_before(log, ("a", "running"), ("body", "a"))
    assert together(store, ("c", "succeeded"), ("b", "running"))  # one commit for both
    assert written_before(log, ("b", "running"), ("body", "b"))
    # c has no revert: nothing is written ahead of it
    assert not written_before(log, ("c", "running"), ("body", "c"))
    assert store.statuses == ["running", "succeeded"]


@on_each_backend
async def test_children_start_only_once_the_parent_s_success_is_committed() -> None:
    t, store = saga()
    log = store.log
    store.pause_at(("c", "succeeded"))
    async with gated(store.gate) as tg:
        tg.start_soon(durable(t["c"].s() | t["a"].s(), store).execute)
        await store.reached.wait()
        await anyio.wait_all_tasks_blocked()
        assert ("body", "a") not in log  # c's success is being written
        store.gate.set()
    assert written_before(log, ("c", "succeeded"), ("body", "a"))


@on_each_backend
async def test_a_fan_out_s_successes_share_one_batch() -> None:
    n = 8
    go, all_in = anyio.Event(), anyio.Event()
    entered = 0

    @aflow.task
    async def leaf(i: int) -> int:
        nonlocal entered
        entered += 1
        if entered == n:
            all_in.set()
        await go.wait()
        return i

    store = FakeStore()
    store.pause_at(("leaf", "running"))  # the batch of the first starts
    execution = durable(aflow.group(leaf.s(i) for i in range(n)), store)
    async with gated(store.gate) as tg:
        tg.start_soon(execution.execute)
        await all_in.wait()
        go.set()
        await anyio.wait_all_tasks_blocked()  # every leaf succeeded; its record waits
        assert execution._done_count == n  # (the join waits for them to be committed)
        store.gate.set()
    successes = [b for b in store.writes if any(state == "succeeded" for _, state in b)]
    assert len(successes) == 1
    assert len(successes[0]) == n
    assert execution.status is aflow.RunStatus.SUCCEEDED


@on_each_backend
async def test_a_revert_starts_only_once_its_consumers_reverts_are_on_record() -> None:
    t, store = saga()
    log = store.log
    store.pause_at(("b", "reverted"))
    execution = durable(t["a"].s() | t["b"].s() | t["fail"].s(), store)
    async with gated(store.gate) as tg:
        tg.start_soon(fails, execution, "fail")
        await store.reached.wait()
        await anyio.wait_all_tasks_blocked()
        assert ("revert", "a") not in log  # b's revert is not on record yet
        store.gate.set()
    assert written_before(log, ("b", "reverted"), ("revert", "a"))
    assert log.index(("status", "reverting")) < log.index(("revert", "b"))
    assert store.statuses[-1] == "reverted"


@on_each_backend
async def test_an_announced_child_that_never_started_is_recorded_so() -> None:
    t, store = saga()
    log = store.log
    store.pause_at(("c", "succeeded"))  # b's start goes out with it
    failing = anyio.Event()

    @aflow.task
    async def fail_meanwhile() -> None:
        await failing.wait()
        raise ValueError("meanwhile")

    execution = durable(aflow.group(t["c"].s() | t["b"].s(), fail_meanwhile.si()), store)
    async with gated(store.gate) as tg:
        tg.start_soon(fails, execution, "meanwhile")
        await store.reached.wait()
        failing.set()  # the run stops while c's batch (holding b's start) is in flight
        await anyio.wait_all_tasks_blocked()
        store.gate.set()
    assert together(store, ("c", "succeeded"), ("b", "running"))
    assert ("body", "b") not in log
    assert ("b", "not_started") in [r for batch in store.writes for r in batch]
    assert ("revert", "b") not in log


@on_each_backend
@pytest.mark.parametrize("where", ["a start", "a success"])
async def test_a_failing_write_stops_the_run_as_its_store_error(where: str) -> None:
    t, store = saga()
    log = store.log
    cancelled = anyio.Event()

    @aflow.task
    async def sibling() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    store.fail_at = ("a", "running") if where == "a start" else ("a", "succeeded")
    execution = durable(aflow.group(t["a"].s() | t["b"].s(), sibling.si()), store)
    with pytest.raises(StoreError, match="could not be written") as caught:
        await execution.execute()
    assert isinstance(caught.value.__cause__, OSError)
    assert execution._store_error is caught.value.__cause__
    assert StopReason.STORE in execution._stops
    assert cancelled.is_set()  # a running node is cut short
    assert not any(e[0] == "revert" for e in log)  # nothing is undone: a resume goes on
    assert ("body", "b") not in log
    if where == "a start":
        assert ("body", "a") not in log  # its start never reached the store
    assert "reverting" not in store.statuses
    assert execution.status is aflow.RunStatus.FAILED


@on_each_backend
async def test_a_cancelled_caller_leaves_every_transition_on_record() -> None:
    t, store = saga()
    blocked = anyio.Event()

    @aflow.task
    async def hang(x: str) -> None:
        blocked.set()
        await anyio.sleep_forever()

    execution = durable(t["a"].s() | hang.s(), store)
    async with gated(store.gate) as tg:
        tg.start_soon(execution.execute)
        await blocked.wait()
        tg.cancel_scope.cancel()
    final: dict[str, str] = {}
    for batch in store.writes:
        final.update(batch)
    assert final == {"a": "reverted", "hang": "cancelled"}
    assert not execution._journal.holding  # type: ignore[union-attr]
    assert store.statuses[-1] == "cancelled"


@on_each_backend
async def test_a_run_end_the_store_refuses_keeps_the_outcome() -> None:
    t, store = saga()
    store.refuse_status = "succeeded"
    execution = durable(t["c"].s(), store)
    assert await execution.execute() == "c"
    assert isinstance(execution._store_error, OSError)  # the run stays unfinished in it
    assert execution.status is aflow.RunStatus.SUCCEEDED
