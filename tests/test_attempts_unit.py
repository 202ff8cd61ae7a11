"""The attempt runner on its own (aflow._runtime._attempts.run_attempts): retries, backoff,
timeouts and deadlines on a fake clock, what it tells its hooks, what it never retries.

And the fan-out inside a node (aflow._runtime._fan_out.fan_out): pool size, groups, slots,
failing fast or tolerating failed items, items already done. No test sleeps on wall time.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aflow import Backoff
from aflow._options import NodeOptions
from aflow._runtime._attempts import AttemptHooks, run_attempts
from aflow._runtime._fan_out import FanOutHooks, fan_out
from aflow.testing import FakeClock

pytestmark = pytest.mark.anyio


class Timeout(Exception):
    def __init__(self, attempt: int, seconds: float) -> None:
        super().__init__(attempt, seconds)
        self.attempt = attempt
        self.seconds = seconds


class Log(AttemptHooks):
    """Every hook call, with the virtual time it came at."""

    def __init__(self, clock: FakeClock, *, stop: bool = False) -> None:
        self.clock = clock
        self.stop = stop
        self.calls: list[tuple[Any, ...]] = []

    def started(self, attempt: int) -> None:
        self.calls.append(("started", attempt, self.clock.now()))

    def retrying(self, attempt: int, error: Exception, wait: float) -> None:
        self.calls.append(("retrying", attempt, type(error).__name__, wait))

    def waiting(self, waiting: bool) -> None:
        self.calls.append(("waiting", waiting))

    def stop_retrying(self, error: Exception) -> bool:
        return self.stop

    def ended(self, attempt: int, failed: bool) -> None:
        self.calls.append(("ended", attempt, failed))


def failing(times: int, error: type[Exception] = ConnectionError) -> Any:
    """An async body that fails ``times`` times, then returns its attempt number."""

    async def call(attempt: int) -> int:
        if attempt <= times:
            raise error(f"attempt {attempt}")
        return attempt

    return call


async def test_retries_wait_their_backoff_on_the_clock_and_say_so() -> None:
    async with FakeClock() as clock:
        log = Log(clock)
        options = NodeOptions(retries=3, backoff=Backoff(base=10, factor=2))
        value, attempts = await run_attempts(failing(2), options, clock, Timeout, hooks=log)
    assert (value, attempts) == (3, 3)
    assert log.calls == [
        ("started", 1, 0.0),
        ("retrying", 1, "ConnectionError", 10.0),
        ("waiting", True),
        ("waiting", False),
        ("started", 2, 10.0),
        ("retrying", 2, "ConnectionError", 20.0),
        ("waiting", True),
        ("waiting", False),
        ("started", 3, 30.0),
        ("ended", 3, False),
    ]


async def test_the_last_error_is_raised_once_retries_are_spent() -> None:
    async with FakeClock() as clock:
        log = Log(clock)
        with pytest.raises(ConnectionError, match="attempt 3"):
            await run_attempts(failing(5), NodeOptions(retries=2), clock, Timeout, hooks=log)
    assert log.calls[-1] == ("ended", 3, True)
    assert [c[1] for c in log.calls if c[0] == "started"] == [1, 2, 3]


async def test_retry_on_and_stop_retrying_end_the_attempts_at_once() -> None:
    async with FakeClock() as clock:
        only_timeouts = NodeOptions(retries=5, retry_on=TimeoutError)
        log = Log(clock)
        with pytest.raises(ConnectionError):
            await run_attempts(failing(1), only_timeouts, clock, Timeout, hooks=log)
        assert log.calls == [("started", 1, 0.0), ("ended", 1, True)]
        stopping = Log(clock, stop=True)  # the run is stopping: nothing starts again
        with pytest.raises(ConnectionError):
            await run_attempts(failing(1), NodeOptions(retries=5), clock, Timeout, hooks=stopping)
        assert stopping.calls == [("started", 1, 0.0), ("ended", 1, True)]


async def test_a_timeout_cuts_an_attempt_off_and_is_retried_like_any_failure() -> None:
    async def slow_then_fast(attempt: int) -> str:
        if attempt == 1:
            await anyio.sleep_forever()
        return "done"

    async with FakeClock() as clock:
        options = NodeOptions(retries=1, timeout=5)
        value, attempts = await run_attempts(slow_then_fast, options, clock, Timeout)
        assert (value, attempts, clock.now()) == ("done", 2, 5.0)
        with pytest.raises(Timeout) as caught:
            await run_attempts(_forever, NodeOptions(timeout=7), clock, Timeout)
    assert (caught.value.attempt, caught.value.seconds) == (1, 7)


async def _forever(attempt: int) -> None:
    await anyio.sleep_forever()


async def test_the_deadline_bounds_every_attempt_and_the_waits_between() -> None:
    async with FakeClock() as clock:
        options = NodeOptions(retries=10, timeout=4, deadline=10)
        with pytest.raises(Timeout) as caught:
            await run_attempts(_forever, options, clock, Timeout)
        # attempts of 4 s, 4 s, then what is left of the 10 s: 2 s
        assert (caught.value.attempt, caught.value.seconds, clock.now()) == (3, 2.0, 10.0)
        # a backoff that would end past the deadline is not waited for: the error stands
        started = clock.now()
        waits = NodeOptions(retries=3, backoff=Backoff(base=60), deadline=30)
        with pytest.raises(ConnectionError, match="attempt 1"):
            await run_attempts(failing(3), waits, clock, Timeout)
        assert clock.now() == started


async def test_cancellation_is_never_retried() -> None:
    calls: list[int] = []

    async def cancelled(attempt: int) -> None:
        calls.append(attempt)
        raise anyio.get_cancelled_exc_class()()

    async with FakeClock() as clock:
        with pytest.raises(anyio.get_cancelled_exc_class()):
            await run_attempts(cancelled, NodeOptions(retries=5), clock, Timeout)
    assert calls == [1]


async def test_a_thread_past_its_timeout_is_waited_for_and_its_late_result_is_a_timeout() -> None:
    release = threading.Event()
    saw_cancel: list[bool] = []

    def blocking() -> str:
        release.wait(5)
        try:
            anyio.from_thread.check_cancelled()
        except BaseException:  # the backend's cancellation (no loop here to name it)
            saw_cancel.append(True)
        return "late"

    async def call(attempt: int) -> str:
        return await anyio.to_thread.run_sync(blocking, abandon_on_cancel=False)

    async with FakeClock(autojump=False) as clock, anyio.create_task_group() as tg:

        async def run() -> None:
            with pytest.raises(Timeout):
                await run_attempts(call, NodeOptions(timeout=3), clock, Timeout, is_async=False)

        tg.start_soon(run)
        await anyio.wait_all_tasks_blocked()
        clock.advance(3)  # the deadline passes while the thread still blocks
        release.set()
    assert saw_cancel == [True]


@settings(max_examples=60, deadline=None)
@given(
    failures=st.integers(0, 6),
    retries=st.integers(0, 6),
    base=st.sampled_from([0, 1, 2.5]),
    factor=st.sampled_from([1, 2]),
)
def test_attempts_and_virtual_time_follow_the_policy(
    failures: int, retries: int, base: float, factor: float
) -> None:
    backoff = Backoff(base=base, factor=factor, max=100)
    options = NodeOptions(retries=retries, backoff=backoff)
    made = min(failures, retries) + 1
    waited = sum(backoff.delay(n) for n in range(1, made))

    async def main() -> None:
        async with FakeClock() as clock:
            log = Log(clock)
            try:
                value, attempts = await run_attempts(
                    failing(failures), options, clock, Timeout, hooks=log
                )
            except ConnectionError:
                assert failures > retries
                assert log.calls[-1] == ("ended", made, True)
            else:
                assert failures <= retries
                assert (value, attempts) == (made, made)
                assert log.calls[-1] == ("ended", made, False)
            assert [c[1] for c in log.calls if c[0] == "started"] == list(range(1, made + 1))
            assert clock.now() == pytest.approx(waited)

    anyio.run(main)


# --- the fan-out --------------------------------------------------------------------------------


class Slots:
    """A run's slots as the fan-out sees them: counts who holds one."""

    def __init__(self) -> None:
        self.held = 0
        self.peak = 0
        self.taken = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        self.held += 1
        self.taken += 1
        self.peak = max(self.peak, self.held)
        try:
            yield
        finally:
            self.held -= 1


class Record(FanOutHooks):
    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.values: dict[int, Any] = {}

    def started(self, item: int) -> None:
        self.events.append(("started", item))

    def succeeded(self, item: int, value: Any, attempts: int) -> None:
        self.values[item] = (value, attempts)

    def failed(self, item: int, error: Exception) -> None:
        self.events.append(("failed", item))


async def test_pool_size_bounds_the_items_running_at_once_and_groups_run_in_order() -> None:
    running = 0
    peak = 0
    order: list[int] = []

    async def body(item: int, attempt: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        order.append(item)
        await anyio.lowlevel.checkpoint()
        running -= 1
        return item * 10

    slots = Slots()
    hooks = Record()
    async with FakeClock() as clock:
        errors = await fan_out(
            10, body, NodeOptions(), clock, slots.slot, pool_size=2, group_size=3, hooks=hooks
        )
    assert errors == {}
    assert peak == 2
    assert hooks.values == {i: (i * 10, 1) for i in range(10)}
    assert slots.taken == 10
    assert slots.held == 0  # every slot given back
    for group in ([0, 1, 2], [3, 4, 5], [6, 7, 8]):  # a group's items one after the other
        positions = [order.index(i) for i in group]
        assert positions == sorted(positions)


async def test_without_a_threshold_the_first_failure_stops_the_rest() -> None:
    gate = anyio.Event()
    others_waiting = anyio.Event()
    waiting: list[int] = []
    cancelled: list[int] = []

    async def body(item: int, attempt: int) -> int:
        if item == 0:
            await others_waiting.wait()
            raise ValueError("first")
        waiting.append(item)
        if len(waiting) == 3:
            others_waiting.set()
        try:
            await gate.wait()
        except anyio.get_cancelled_exc_class():
            cancelled.append(item)
            raise
        return item

    slots = Slots()
    hooks = Record()
    with anyio.fail_after(10):  # items left running would wait for the gate forever
        async with FakeClock() as clock:
            errors = await fan_out(4, body, NodeOptions(), clock, slots.slot, hooks=hooks)
    assert list(errors) == [0]
    assert sorted(cancelled) == [1, 2, 3]
    assert hooks.values == {}
    assert slots.held == 0


async def test_with_a_threshold_every_item_runs_and_retries_use_the_clock() -> None:
    async def body(item: int, attempt: int) -> int:
        if item % 2 and attempt < 3:  # odd items succeed on their third attempt
            raise ConnectionError(item)
        if item == 4:
            raise ValueError("never")
        return item

    options = NodeOptions(retries=2, backoff=Backoff(base=5, factor=1), min_success=3)
    hooks = Record()
    async with FakeClock() as clock:
        errors = await fan_out(6, body, options, clock, Slots().slot, pool_size=1, hooks=hooks)
        assert clock.now() == pytest.approx(3 * 2 * 5 + 2 * 5)  # odd items + item 4 back off
    assert list(errors) == [4]
    assert hooks.values == {0: (0, 1), 1: (1, 3), 2: (2, 1), 3: (3, 3), 5: (5, 3)}
    assert options.threshold_met(5, 6)


async def test_items_already_done_are_not_run_again_and_take_no_slot() -> None:
    ran: list[int] = []

    async def body(item: int, attempt: int) -> None:
        ran.append(item)

    slots = Slots()
    async with FakeClock() as clock:
        await fan_out(5, body, NodeOptions(), clock, slots.slot, done={1, 3})
    assert sorted(ran) == [0, 2, 4]
    assert slots.taken == 3


async def test_a_timed_out_item_fails_with_the_error_its_hooks_make() -> None:
    class Named(Record):
        def timed_out(self, item: int, attempt: int, seconds: float) -> Exception:
            return Timeout(attempt, seconds)

    options = NodeOptions(timeout=2, success_ratio=0.5)
    async with FakeClock() as clock:
        errors = await fan_out(
            2,
            lambda i, a: _forever(a) if i else anyio.lowlevel.checkpoint(),
            options,
            clock,
            Slots().slot,
            hooks=Named(),
        )
    assert list(errors) == [1]
    assert isinstance(errors[1], Timeout)
