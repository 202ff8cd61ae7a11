"""A fan-out inside one node: many items of work, each retried by the attempt runner,
at most ``pool_size`` at a time, each holding a slot of the run's limits while it
runs, failing fast unless a success threshold tolerates failed items.

An ops sliced step runs its slices with it. Its node holds no slot itself (it is
a SUBGRAPH node): its items queue for slots like any node, so nodes and items
together stay within the run's ``max_concurrency``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio

from .._options import NodeOptions
from ._attempts import AttemptHooks, run_attempts
from ._clock import Clock

__all__ = ["FanOutHooks", "fan_out"]


class FanOutHooks:
    """What a fan-out tells the work it runs about each item. Override what you need."""

    __slots__ = ()

    def attempts(self, item: int) -> AttemptHooks:
        """The hooks of item ``item``'s attempts (see :class:`AttemptHooks`)."""
        return _NO_HOOKS

    def timed_out(self, item: int, attempt: int, seconds: float) -> Exception:
        """The error of an attempt of ``item`` cut off by its timeout."""
        return TimeoutError(f"item {item}, attempt {attempt}: timed out after {seconds} s")

    def started(self, item: int) -> None:
        """Item ``item`` took its slot and starts its first attempt."""

    def succeeded(self, item: int, value: Any, attempts: int) -> None:
        """Item ``item`` gave ``value`` after ``attempts`` attempts."""

    def failed(self, item: int, error: Exception) -> None:
        """Item ``item`` failed with ``error``, and nothing retries it."""


_NO_HOOKS = AttemptHooks()


async def fan_out(
    count: int,
    body: Callable[[int, int], Awaitable[Any]],
    options: NodeOptions,
    clock: Clock,
    slot: Callable[[], AbstractAsyncContextManager[None]] | None,
    *,
    pool_size: int | None = None,
    group_size: int = 1,
    per_group: int = 1,
    done: Collection[int] = (),
    hooks: FanOutHooks | None = None,
) -> dict[int, Exception]:
    """Run ``body(item, attempt)`` for every item in ``range(count)`` not in ``done``;
    return the errors of the items that failed, by item.

    ``options`` give each item's retries, backoff, timeout, deadline and
    ``retry_on`` (the node's own rules, on ``clock``), and the success threshold
    (``min_success`` / ``success_ratio``): without one, the first failed item
    stops the others (they are cancelled, or never start); with one, every item
    runs and the caller checks ``options.threshold_met``. Items run in groups of
    ``group_size``, at most ``pool_size`` groups at once (all when ``None``), the
    items of a group ``per_group`` at a time, started in order (1: one after
    another), each item holding ``slot()`` while it runs (``None``: no limits).
    """
    hooks = hooks or FanOutHooks()
    errors: dict[int, Exception] = {}
    tolerant = options.tolerant
    groups = max(1, -(-count // group_size))
    pool = anyio.CapacityLimiter(pool_size or groups)

    single_shot = options.single_shot  # one attempt, no timeout: no attempt runner

    async def attempt(item: int) -> None:
        hooks.started(item)
        try:
            if single_shot:
                value, attempts = await body(item, 1), 1
            else:
                value, attempts = await run_attempts(
                    lambda attempt: body(item, attempt),
                    options,
                    clock,
                    lambda attempt, seconds: hooks.timed_out(item, attempt, seconds),
                    hooks=hooks.attempts(item),
                )
        except Exception as exc:
            errors[item] = exc
            hooks.failed(item, exc)
            if not tolerant:
                scope.cancel()  # fail fast, as any run does
            return
        hooks.succeeded(item, value, attempts)

    async def group(start: int) -> None:
        async with pool:
            if per_group > 1:
                await pooled(start)
                return
            for item in range(start, min(count, start + group_size)):
                if errors and not tolerant:
                    return
                if item in done:
                    continue
                if slot is None:
                    await attempt(item)
                else:
                    async with slot():
                        await attempt(item)

    async def pooled(start: int) -> None:
        """A group's items, ``per_group`` at a time."""
        gate = anyio.Semaphore(per_group)

        async def one(item: int) -> None:
            try:
                if slot is None:
                    await attempt(item)
                else:
                    async with slot():
                        await attempt(item)
            finally:
                gate.release()

        async with anyio.create_task_group() as members:
            for item in range(start, min(count, start + group_size)):
                if item in done:
                    continue
                await gate.acquire()
                if errors and not tolerant:
                    gate.release()
                    return
                members.start_soon(one, item)

    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            for start in range(0, count, group_size):
                tg.start_soon(group, start)
    return errors
