"""Trustworthy runs (issue 14): what a hostile user found, each as a regression test.

Late cancels have their own property tests (tests/test_cancel_timing.py); the store's
own hardening is in tests/test_store_errors.py and tests/test_store_processes.py.
"""

from __future__ import annotations

import pathlib

import anyio
import pytest

import aflow

from . import durable_workflows as dw
from . import trust_workflows as tw

read = dw.read_counts


@pytest.fixture
def sqlite_url(tmp_path: pathlib.Path) -> str:
    return f"sqlite:///{tmp_path / 'runs.db'}"


# --- every node of a finished run has a final state on record (item 15) -------------------


class TestCutShortNodesAreOnRecord:
    async def test_a_cancelled_run_records_its_interrupted_step_cancelled(
        self, sqlite_url: str, counts: pathlib.Path
    ) -> None:
        waiting = anyio.Event()

        def listen(event: aflow.Event) -> None:
            if event.name == "task_started" and event.node == "plain_wait":
                waiting.set()

        async with aflow.Runtime(store=sqlite_url) as rt:
            run = await rt.submit(tw.a_then_plain_wait, start=1, on_event=listen)
            await waiting.wait()
            await run.cancel()
            assert run.status is aflow.RunStatus.CANCELLED
            assert rt.store is not None
            nodes = await rt.store.load_nodes(run.id)
            assert (await rt.store.get_run(run.id)).status == "cancelled"
        assert nodes["plain_wait"].state == "cancelled"
        assert nodes["plain_wait"].error == "cancelled mid-way: the run was cancelled"
        assert nodes["step_a"].state == "reverted"
        assert run.step("plain_wait").state is aflow.NodeState.CANCELLED

    async def test_a_sibling_failure_records_the_step_it_cut_short(
        self, sqlite_url: str, counts: pathlib.Path
    ) -> None:
        async with aflow.Runtime(store=sqlite_url) as rt:
            run = await rt.submit(tw.wait_beside_a_failure, start=1)
            with pytest.raises(RuntimeError, match="out of stock"):
                await run.result()
            assert rt.store is not None
            nodes = await rt.store.load_nodes(run.id)
        assert nodes["plain_wait"].state == "cancelled"
        assert nodes["plain_wait"].error == "cancelled mid-way: task 'fails_soon' failed"
        assert nodes["fails_soon"].state == "failed"

    async def test_a_run_out_of_time_records_the_step_it_cut_short(
        self, sqlite_url: str, counts: pathlib.Path
    ) -> None:
        async with aflow.Runtime(store=sqlite_url) as rt:
            run = await rt.submit(tw.plain_wait_with_deadline, start=1, timeout=0.05)
            with pytest.raises(aflow.RunTimeout):
                await run.result()
            assert rt.store is not None
            nodes = await rt.store.load_nodes(run.id)
        assert nodes["plain_wait"].state == "cancelled"
        assert nodes["plain_wait"].error == "cancelled mid-way: the run ran out of time"

    async def test_a_cancelled_awaiter_leaves_no_step_running(
        self, sqlite_url: str, counts: pathlib.Path
    ) -> None:
        with anyio.CancelScope() as scope:

            def listen(event: aflow.Event) -> None:
                if event.name == "task_started" and event.node == "plain_wait":
                    scope.cancel()

            await aflow.run(
                tw.a_then_plain_wait, params={"start": 1}, store=sqlite_url, on_event=listen
            )
        assert scope.cancelled_caught
        store = aflow.stores.open_store(sqlite_url)
        await store.open()
        try:
            (record,) = await store.list_runs()
            nodes = await store.load_nodes(record.run_id)
        finally:
            await store.close()
        assert record.status == "cancelled"
        assert {key: node.state for key, node in nodes.items()} == {
            "step_a": "reverted",
            "plain_wait": "cancelled",
        }
        assert nodes["plain_wait"].error == "cancelled mid-way: the run was cancelled"
