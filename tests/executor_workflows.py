"""Tasks whose bodies run in worker processes (tests/test_executors.py): module-level
names, so a worker can import them. Side effects are appended to the file named by
``AFLOW_LOG`` (each process writes its own lines), so the test sees what ran where."""

from __future__ import annotations

import os
import pathlib
import signal
from typing import Any

import aflow


def log(line: str) -> None:
    path = os.environ.get("AFLOW_LOG")
    if path:
        with pathlib.Path(path).open("a") as f:
            f.write(f"{line} pid={os.getpid()}\n")


class Declined(Exception):
    """A failure of a body in a worker, raised back as itself."""


@aflow.task(executor="process")
def reserve(order: str) -> str:
    log(f"reserve {order}")
    return f"rsv-{order}"


@reserve.revert
def release(order: str, *, result: Any) -> None:
    log(f"release {result}")


@aflow.task(executor="process")
async def charge(rsv: str) -> str:
    step = aflow.current_step()
    log(f"charge {rsv} attempt={step.attempt} run={step.run_id} key={step.key}")
    return f"paid-{rsv}"


@charge.revert
async def refund(rsv: str, *, result: Any) -> None:
    log(f"refund {result}")


@aflow.task(executor="process")
def ship(receipt: str, fail: bool = False) -> str:
    log(f"ship {receipt}")
    if fail:
        raise Declined(f"carrier refused {receipt}")
    return f"shipped-{receipt}"


@aflow.workflow
def saga(order: str, fail: bool = False) -> Any:
    return reserve.s(order) | charge.s() | ship.s(fail=fail)


@aflow.task(executor="process", retries=2)
def dies_once(marker: str) -> int:
    """Kills its own worker the first time (a lost worker), then succeeds."""
    flag = pathlib.Path(marker)
    if not flag.exists():
        flag.write_text("died")
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid()


@aflow.task(executor="process")
def echo(value: Any) -> Any:
    return value


@aflow.task(executor="process")
def pid() -> int:
    return os.getpid()


@aflow.task(executor="process")
def square(x: int) -> int:
    return x * x


@aflow.task
def plain(x: int) -> int:
    """No executor of its own: the run's."""
    return os.getpid() + 0 * x


class Opaque:
    def __reduce__(self) -> Any:
        raise TypeError("an Opaque cannot be pickled")


@aflow.task(executor="process")
def gives_opaque() -> Any:
    return Opaque()


@aflow.task(executor="process")
def raises_opaque() -> None:
    class Local(Exception):  # (no worker-importable type: comes back as a RemoteError)
        pass

    raise Local("from a local class")


@aflow.task(executor="process")
def sleeps(seconds: float) -> str:
    import time

    time.sleep(seconds)  # a body's own blocking work, where it runs (noqa: hook)
    log("slept")
    return "late"


@aflow.task(executor="process")
def dies_without_retries(marker: str) -> int:
    """As dies_once, with no retries: the lost worker fails the run."""
    flag = pathlib.Path(marker)
    if not flag.exists():
        flag.write_text("died")
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid()


@aflow.task
def hold(x: int) -> int:
    """No executor of its own, with a revert: both run where the run says."""
    return x


@hold.revert
def unhold(x: int, *, result: Any) -> None:
    log(f"unhold {result}")


@aflow.task
def boom(x: int) -> int:
    raise Declined(f"boom {x}")


# --- durable: the caller killed mid-run (tests/test_executors.py, with test_durable's
# crasher): the steps count their calls (AFLOW_COUNTS) and one hangs once (AFLOW_HANG)


@aflow.task(executor="process")
async def step_a(x: int) -> int:
    from tests.durable_workflows import bump

    await bump("A")
    return x + 1


@aflow.task(executor="process")
async def step_b(x: int) -> int:
    from tests.durable_workflows import bump

    log("b")
    await bump("B")
    return x * 2


@aflow.task(executor="process")
async def step_c(x: int) -> int:
    from tests.durable_workflows import bump

    await bump("C")
    return x + 100


@aflow.workflow
def abc(start: int) -> Any:
    return step_a.s(start) | step_b.s() | step_c.s()
