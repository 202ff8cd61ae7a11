"""One saga whose tasks name no executor, so a run's ``executor=`` puts it on the loop, on
worker processes or on Dask workers unchanged (tests/test_executors_anywhere.py).

Dask workers do not share the test's environment, so what a body reports goes to the
file its ``log`` argument names: one line per call, ``what pid=N``.
"""

from __future__ import annotations

import os
import pathlib
import signal
import time
from typing import Any

import anyio
import anyio.lowlevel

import aflow
from tests.durable_workflows import count_in


def note(log: str, line: str) -> None:
    with pathlib.Path(log).open("a") as f:
        f.write(f"{line} pid={os.getpid()}\n")


class Declined(Exception):
    """A failure of a body, raised back as itself."""


@aflow.task
def reserve(order: str, log: str) -> str:
    note(log, f"reserve {order}")
    return f"rsv-{order}"


@reserve.revert
def release(order: str, log: str, *, result: Any) -> None:
    note(log, f"release {result}")


@aflow.task
async def charge(rsv: str, log: str) -> str:
    step = aflow.current_step()
    note(log, f"charge {rsv} attempt={step.attempt} run={step.run_id} key={step.key}")
    await anyio.lowlevel.checkpoint()
    return f"paid-{rsv}"


@charge.revert
async def refund(rsv: str, log: str, *, result: Any) -> None:
    note(log, f"refund {result}")


@aflow.task(retries=2)
def ship(receipt: str, log: str, fail: str = "") -> str:
    """``fail``: "always" declines; "once" declines its first attempt only; "hold" checks
    in with check_cancelled() until the caller gives up on it."""
    attempt = aflow.current_step().attempt
    note(log, f"ship {receipt} attempt={attempt}")
    if fail == "always" or (fail == "once" and attempt == 1):
        raise Declined(f"carrier refused {receipt}")
    if fail == "hold":
        hold_until_cancelled(log)
    return f"shipped-{receipt}"


def hold_until_cancelled(log: str, seconds: float = 30.0) -> None:
    """Say "holding", then check in until the attempt is given up on ("stopped"); a body
    that is never told runs out its time ("ran out")."""
    note(log, "holding")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            aflow.check_cancelled()
        except BaseException as exc:
            note(log, f"stopped {type(exc).__name__}")
            raise
        time.sleep(0.01)  # a body's own blocking work, where it runs (noqa: hook)
    note(log, "ran out")


@aflow.workflow
def saga(order: str, log: str, fail: str = "") -> Any:
    return reserve.s(order, log) | charge.s(log=log) | ship.s(log=log, fail=fail)


@aflow.task(timeout=0.5)
def overstays(log: str) -> str:
    """Held past its timeout: told by check_cancelled()."""
    hold_until_cancelled(log)
    return "late"


@aflow.task(retries=1)
def dies_once(marker: str) -> int:
    """Kills the process it runs in the first time (a lost worker), then succeeds."""
    flag = pathlib.Path(marker)
    if not flag.exists():
        flag.write_text("died")
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid()


@aflow.task
def dies(marker: str) -> int:
    """As dies_once, with no retries: the lost worker fails the run."""
    return int(dies_once.fn(marker))


@aflow.task
def where() -> int:
    return os.getpid()


@aflow.task
def echo(value: Any) -> Any:
    return value


@aflow.task
def gives_lock() -> Any:
    import threading

    return threading.Lock()


# --- durable: a caller killed mid-run, then resumed (the steps count their calls in
# ``counts``, a JSON file; step B holds, once, until its caller gives up on it)


def bump(counts: str, name: str) -> int:
    return count_in(pathlib.Path(counts), name)


@aflow.task
def step_a(x: int, counts: str, log: str) -> int:
    bump(counts, "A")
    return x + 1


@aflow.task
def step_b(x: int, counts: str, log: str) -> int:
    if bump(counts, "B") == 1:
        hold_until_cancelled(log, 60.0)
    return x * 2


@aflow.task
def step_c(x: int, counts: str, log: str) -> int:
    bump(counts, "C")
    return x + 100


@aflow.workflow
def abc(start: int, counts: str, log: str) -> Any:
    return (
        step_a.s(start, counts, log)
        | step_b.s(counts=counts, log=log)
        | step_c.s(counts=counts, log=log)
    )


def lines(log: pathlib.Path) -> list[tuple[str, int]]:
    """(what, pid) of each line the bodies wrote, in order."""
    found = []
    for line in log.read_text().splitlines() if log.exists() else []:
        what, _, pid = line.rpartition(" pid=")
        found.append((what, int(pid)))
    return found
