"""Tasks for tests/test_executors_hostile.py: module-level names a worker process (or a
Dask worker) can import. What a body did goes to the file its ``log`` argument names,
one line per event, ``what pid=N`` (Dask workers do not share the test's environment)."""

from __future__ import annotations

import os
import pathlib
import sys
import time
from typing import Any

import aflow


def note(log: str, line: str) -> None:
    with pathlib.Path(log).open("a") as f:
        f.write(f"{line} pid={os.getpid()}\n")


def lines(log: str | pathlib.Path) -> list[str]:
    path = pathlib.Path(log)
    if not path.exists():
        return []
    return [line.rpartition(" pid=")[0] for line in path.read_text().splitlines()]


class Declined(Exception):
    """A plain failure, raised back as itself."""


# --- a charge whose revert must not run before it has ended -------------------------


@aflow.task(timeout=0.4, retries=2)
def slow_charge(log: str, seconds: float = 1.5) -> str:
    """Works ``seconds`` without checking in, logging its start and end by attempt."""
    attempt = aflow.current_step().attempt
    note(log, f"start {attempt}")
    time.sleep(seconds)  # a body's own blocking work, where it runs (noqa: hook)
    note(log, f"end {attempt}")
    return "charged"


@slow_charge.revert
def slow_refund(log: str, seconds: float = 1.5, *, result: Any) -> None:
    note(log, "refund")


@aflow.task(timeout=0.4, retries=1)
def slow_charge_once(log: str, seconds: float = 1.5) -> str:
    """As slow_charge, one retry only: its second attempt times out while it waits for
    the first attempt's body."""
    attempt = aflow.current_step().attempt
    note(log, f"start {attempt}")
    time.sleep(seconds)  # a body's own blocking work, where it runs (noqa: hook)
    note(log, f"end {attempt}")
    return "charged"


@slow_charge_once.revert
def slow_refund_once(log: str, seconds: float = 1.5, *, result: Any) -> None:
    note(log, "refund")


# --- plain bodies ---------------------------------------------------------------------


@aflow.task
def busy(log: str, seconds: float) -> str:
    note(log, "busy start")
    time.sleep(seconds)  # a body's own blocking work, where it runs (noqa: hook)
    note(log, "busy end")
    return "busy"


@aflow.task
def blocks_until(log: str, name: str, go: str) -> str:
    """Says "block NAME", then runs (not checking in) until the file ``go`` exists."""
    note(log, f"block {name}")
    while not pathlib.Path(go).exists():
        time.sleep(0.01)  # a body's own blocking work, where it runs (noqa: hook)
    note(log, f"unblocked {name}")
    return name


@aflow.task
def side_effect(log: str, name: str) -> str:
    note(log, f"side {name}")
    return name


@aflow.task(timeout=1.0, retries=1)
def quick_with_timeout(log: str) -> str:
    note(log, f"quick attempt={aflow.current_step().attempt}")
    return "quick"


@aflow.task
def echo(value: Any) -> Any:
    return value


@aflow.task
def size_of(value: bytes) -> int:
    return len(value)


@aflow.task
def big_result(n: int) -> bytes:
    return b"x" * n


@aflow.task
def where() -> int:
    return os.getpid()


@aflow.task
def exits_hard(log: str) -> None:
    note(log, "exiting")
    os._exit(3)


@aflow.task
def naps(log: str, seconds: float, name: str) -> str:
    note(log, f"nap start {name}")
    time.sleep(seconds)  # a body's own blocking work, where it runs (noqa: hook)
    note(log, f"nap end {name}")
    return name


@aflow.task
def gen(n: int) -> Any:
    yield from range(n)


@aflow.task
def system_exit() -> None:
    sys.exit(7)


# --- what cannot come back ------------------------------------------------------------


class Ghost:
    """A class the worker makes up as it runs (as a package only the workers have)."""


@aflow.task
def gives_ghost() -> Any:
    """Returns an instance of a class the caller cannot import."""
    kind = type("Phantom", (), {"__module__": __name__, "__qualname__": "Phantom"})
    globals()["Phantom"] = kind
    return kind()


@aflow.task
def raises_ghost() -> None:
    """Raises an error of a class the caller cannot import."""
    kind = type(
        "PhantomError", (Exception,), {"__module__": __name__, "__qualname__": "PhantomError"}
    )
    globals()["PhantomError"] = kind
    raise kind("from a class only the worker has")


@aflow.task
def takes_anything(value: Any) -> str:
    return type(value).__name__


# --- durable --------------------------------------------------------------------------


@aflow.task
def count_into(x: int, counts: str, name: str) -> int:
    path = pathlib.Path(counts)
    with path.open("a") as f:
        f.write(f"{name}\n")
    return x + 1


@aflow.workflow
def two_steps(counts: str, start: int) -> Any:
    return count_into.s(start, counts, "a") | count_into.s(counts=counts, name="b")


@aflow.task
async def async_body(x: int) -> int:
    import asyncio

    await asyncio.sleep(0)
    return x * 3


@aflow.task
async def async_hold(log: str) -> str:
    """An async body that checks in until told (in a worker: its own loop)."""
    import asyncio

    note(log, "async holding")
    for _ in range(3000):
        try:
            aflow.check_cancelled()
        except BaseException as exc:
            note(log, f"async stopped {type(exc).__name__}")
            raise
        await asyncio.sleep(0.01)
    note(log, "async ran out")
    return "late"


@aflow.workflow
def durable_nap(log: str, seconds: float) -> Any:
    return naps.s(log, seconds, "durable") | echo.s()


@aflow.task
def hold(log: str, name: str) -> str:
    """Checks in every 10 ms for up to 20 s: stops once its attempt is given up on."""
    note(log, f"hold {name}")
    for _ in range(2000):
        try:
            aflow.check_cancelled()
        except BaseException as exc:
            note(log, f"stopped {name} {type(exc).__name__}")
            raise
        time.sleep(0.01)  # a body's own blocking work, where it runs (noqa: hook)
    note(log, f"ran out {name}")
    return name


@aflow.task(timeout=0.3, retries=1)
def retried_hold(log: str) -> str:
    """Attempt 1 checks in until told; attempt 2 returns at once."""
    attempt = aflow.current_step().attempt
    note(log, f"start {attempt}")
    if attempt == 1:
        for _ in range(2000):
            try:
                aflow.check_cancelled()
            except BaseException:
                note(log, "stopped 1")
                raise
            time.sleep(0.01)  # a body's own blocking work, where it runs (noqa: hook)
    return f"attempt {attempt}"


class LockedError(Exception):
    """An error that holds a lock: it cannot pickle."""


@aflow.task
def raises_locked() -> None:
    import threading

    exc = LockedError("holding a lock")
    exc.lock = threading.Lock()  # type: ignore[attr-defined]
    raise exc


@aflow.task
async def stray_cancel(x: int) -> int:
    """An async body whose inner task is cancelled, and lets its CancelledError out (no
    one cancelled the body itself)."""
    import asyncio

    inner = asyncio.ensure_future(asyncio.sleep(10))
    await asyncio.sleep(0)
    inner.cancel()
    await inner
    return x


@aflow.task
def sync_stray_cancel(x: int) -> int:
    """A sync body raising CancelledError (a concurrent.futures wait on a cancelled future
    raises concurrent.futures.CancelledError, an Exception; asyncio's is not)."""
    import asyncio

    raise asyncio.CancelledError("raised by the body itself")


@aflow.task
def interrupts() -> None:
    raise KeyboardInterrupt


class Pricer:
    """A callable object with an async ``__call__``: aflow makes an async task of it."""

    async def __call__(self, x: int) -> int:
        import asyncio

        await asyncio.sleep(0)
        return x * 10


#: the task's name is the module-level name of the object, so a worker can import it
pricer = Pricer()
price = aflow.task(name="pricer")(pricer)
