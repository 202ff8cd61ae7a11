"""Durable waits under hypothesis: chains of steps and waits, each wait's event sent
early (before the run gets there), late (once it waits) or never (it times out), or
the run cancelled while it waits there, with and without a store that unloads the
waiting run. Whatever the plan, every step runs at most once, the run succeeds exactly
when every event came, and a timeout or a cancel reverts the completed steps once
each, newest first."""

from __future__ import annotations

from typing import Any, Literal

import anyio
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import aflow
from aflow.errors import WaitTimeout
from aflow.testing import FakeClock, send_when_waiting

TIMEOUT = 3600.0
LOG: list[str] = []

Plan = Literal["early", "late", "never", "cancel"]


@aflow.task
async def step(x: Any, i: int) -> str:
    LOG.append(f"run {i}")
    return f"s{i}<{x}>"


@step.revert
async def unstep(x: Any, i: int) -> None:
    LOG.append(f"revert {i}")


@aflow.workflow
def build(shape: list[bool]) -> Any:
    """A chain: True is a step, False a wait (for ``e<i>``)."""
    chain: Any = step.s(None, 0)
    for i, is_step in enumerate(shape, start=1):
        node = step.s(i=i) if is_step else aflow.wait_for(f"e{i}", timeout=TIMEOUT)
        chain = chain | node
    return chain


async def waits_for(rt: aflow.Runtime, run_id: str, event: str) -> None:
    with anyio.fail_after(10):
        while event not in {w.event for w in (await rt.report(run_id)).waits}:  # noqa: ASYNC110
            await anyio.sleep(0.001)


@pytest.mark.slow
@pytest.mark.parametrize("store", [None, "memory://"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chain=st.lists(
        st.one_of(
            st.just(("step", "")),
            st.tuples(st.just("wait"), st.sampled_from(["early", "late", "never", "cancel"])),
        ),
        min_size=1,
        max_size=6,
    )
)
# an event sent as the run is being unloaded (it waited; the send woke the wait before
# the unload cancelled it): it once finished the wait after the run was recorded as
# waiting for it, so the run slept until its deadline
@example(chain=[("wait", "late")])
@example(chain=[("step", ""), ("wait", "late"), ("wait", "never"), ("step", "")])
@example(chain=[("step", ""), ("wait", "early"), ("wait", "cancel"), ("step", "")])
def test_any_plan_of_events_runs_each_step_once_and_compensates_a_timeout(
    store: str | None, chain: list[tuple[str, Plan | str]]
) -> None:
    anyio.run(_bounded, store, chain)


async def _bounded(store: str | None, chain: list[tuple[str, str]]) -> None:
    with anyio.fail_after(20):  # (real seconds: a run stuck waiting fails, not hangs)
        await _check(store, chain)


async def _check(store: str | None, chain: list[tuple[str, str]]) -> None:
    LOG.clear()
    shape = [kind == "step" for kind, _ in chain]
    plans = {i: plan for i, (kind, plan) in enumerate(chain, start=1) if kind == "wait"}
    async with FakeClock(autojump=False) as clock, aflow.Runtime(store=store, clock=clock) as rt:
        run = await rt.submit(build(shape))
        for i, plan in plans.items():
            if plan == "early":
                assert await rt.send(run.id, f"e{i}", f"p{i}")
        timed_out = cancelled = None
        for i, plan in plans.items():
            if plan == "late":
                assert await send_when_waiting(rt, run.id, f"e{i}", f"p{i}")
            elif plan == "never":
                await waits_for(rt, run.id, f"e{i}")
                clock.advance(TIMEOUT + 1)
                timed_out = i
                break
            elif plan == "cancel":
                await waits_for(rt, run.id, f"e{i}")
                await run.cancel()
                cancelled = timed_out = i
                break
        if timed_out is None:
            value = await run.result()
        elif cancelled is not None:
            with pytest.raises(aflow.errors.RunCancelled):
                await run.result()
            assert (await rt.report(run.id)).status == "cancelled"
        else:
            with pytest.raises(WaitTimeout, match=f"'e{timed_out}'"):
                await run.result()
    end = len(shape) + 1 if timed_out is None else timed_out
    ran = [i for i in range(end) if i == 0 or shape[i - 1]]
    expected = [f"run {i}" for i in ran]
    if timed_out is None:
        assert expected == LOG
        # the last node's value: a step's, or the payload of a wait
        last = len(shape)
        if shape[-1]:
            assert value.startswith(f"s{last}<")
        else:
            assert value == f"p{last}"
    else:
        assert [*expected, *(f"revert {i}" for i in reversed(ran))] == LOG
