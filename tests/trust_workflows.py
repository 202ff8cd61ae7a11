"""Workflows for the issue-14 tests (tests/test_trust.py); importable by the subprocesses.

Side effects are counted as in tests/durable_workflows.py (``AFLOW_COUNTS``).
"""

from __future__ import annotations

import os
import signal
from typing import Any

import anyio
import anyio.lowlevel

import aflow

from .durable_workflows import bump, hang, step_a, step_b, step_c


@aflow.task
async def plain_wait(x: int) -> int:
    """Waits until cancelled; has no revert."""
    await bump("P")
    await hang("P")
    return x


@aflow.workflow
def a_then_plain_wait(start: int) -> Any:
    return step_a.s(start) | plain_wait.s()


@aflow.task
async def fails_soon(x: int) -> int:
    await anyio.lowlevel.checkpoint()
    raise RuntimeError("out of stock")


@aflow.workflow
def wait_beside_a_failure(start: int) -> Any:
    return aflow.group(plain_wait.s(start), fails_soon.s(start))


@aflow.workflow
def plain_wait_with_deadline(start: int) -> Any:
    return plain_wait.s(start)


@aflow.task
async def step_ctx(x: int) -> dict[str, Any]:
    step = aflow.current_step()
    await bump(f"ctx:{step.key}:{step.attempt}")
    return {
        "run_id": step.run_id,
        "key": step.key,
        "task": step.task,
        "attempt": step.attempt,
        "idempotency_key": step.idempotency_key,
    }


@aflow.workflow
def contexts(start: int) -> Any:
    return step_a.s(start) | step_ctx.s()


@aflow.task
async def kills_its_process(x: int) -> int:
    """A poison step: each process that runs it dies at once (while ``AFLOW_POISON`` is
    set: a person who resumes the run by hand has fixed the cause)."""
    await bump("poison")
    if os.environ.get("AFLOW_POISON"):
        print("poisoned", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    return x


@aflow.workflow
def poison(start: int) -> Any:
    return step_a.s(start) | kills_its_process.s()


@aflow.workflow
def abc_again(start: int) -> Any:
    """The same graph as durable_workflows.abc, registered under another name."""
    return step_a.s(start) | step_b.s() | step_c.s()


@aflow.task
async def closes_under_it(x: int) -> int:
    raise GeneratorExit("closed under it")


@aflow.workflow
def a_then_generator_exit(start: int) -> Any:
    return step_a.s(start) | closes_under_it.s()


@aflow.task(limit="q")
async def limited(x: int) -> int:
    await bump("limited")
    return x


@aflow.workflow
def limited_one(start: int) -> Any:
    return limited.s(start)


@aflow.task
async def interrupts(x: int) -> int:
    """Raises KeyboardInterrupt the first time (as Ctrl-C inside a step would)."""
    if await bump("interrupts") == 1:
        raise KeyboardInterrupt
    return x


@aflow.workflow
def a_then_interrupted(start: int) -> Any:
    return step_a.s(start) | interrupts.s()


async def key_of_this_step() -> str:
    """A helper a task body awaits: the body itself never names aflow.current_step."""
    return aflow.current_step().idempotency_key


def key_in_a_thread() -> str:
    return aflow.current_step().idempotency_key
