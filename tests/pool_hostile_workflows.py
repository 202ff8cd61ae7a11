"""Tasks for tests/test_process_pool_hostile.py: module-level names a worker process can
import. What a body did goes to the file its ``log`` argument names, one line per event,
``what pid=N`` (see tests/anywhere_workflows.py's ``note`` and ``lines``)."""

from __future__ import annotations

import multiprocessing
import os
import pathlib
import signal
import time
from typing import Any

import aflow
from tests.anywhere_workflows import note


@aflow.task
def pid() -> int:
    return os.getpid()


@aflow.task
def echo(value: Any) -> Any:
    return value


@aflow.task
def big(n: int) -> bytes:
    return b"y" * n


@aflow.task
def size_of(value: bytes) -> int:
    return len(value)


@aflow.task
def until(log: str, name: str, go: str, seconds: float = 30.0) -> int:
    """Says "start NAME", then works (not checking in) until the file ``go`` exists (or
    ``seconds`` passed); says "end NAME"."""
    note(log, f"start {name}")
    deadline = time.monotonic() + seconds
    while not pathlib.Path(go).exists() and time.monotonic() < deadline:
        time.sleep(0.01)  # a body's own blocking work, where it runs (noqa: hook)
    note(log, f"end {name}")
    return os.getpid()


@aflow.task
def checks_in(log: str, name: str, seconds: float = 30.0) -> int:
    """Says "start NAME", then checks in every 10 ms: "stopped NAME" once told."""
    note(log, f"start {name}")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            aflow.check_cancelled()
        except BaseException:
            note(log, f"stopped {name}")
            raise
        time.sleep(0.01)  # a body's own blocking work, where it runs (noqa: hook)
    note(log, f"ran out {name}")
    return os.getpid()


@aflow.task
def exits_zero(log: str) -> None:
    note(log, "exiting 0")
    os._exit(0)


def _sleep(seconds: float) -> None:
    time.sleep(seconds)  # (noqa: hook)


@aflow.task
def forks_then_dies(log: str, seconds: float) -> None:
    """Starts a helper process by fork (as ``multiprocessing``'s default context on Linux
    does, and a ``multiprocessing.Pool`` in a body), says its pid, then its worker dies
    (a SIGKILL: the OOM killer, say) while the helper lives on."""
    helper = multiprocessing.get_context("fork").Process(target=_sleep, args=(seconds,))
    helper.start()
    note(log, f"helper {helper.pid}")
    os.kill(os.getpid(), signal.SIGKILL)


def _square(x: int) -> int:
    return x * x


@aflow.task
def pool_inside(kind: str, n: int) -> list[int]:
    """A body with a multiprocessing pool of its own (its worker is not a daemon)."""
    with multiprocessing.get_context(kind).Pool(2) as inner:
        return inner.map(_square, range(n))


@aflow.task
def child_inside(kind: str, seconds: float) -> int:
    """A body that starts a (non-daemon) child process, waits for it, and says its code."""
    context: Any = multiprocessing.get_context(kind)
    child = context.Process(target=_sleep, args=(seconds,))
    child.start()
    child.join()
    return child.exitcode if child.exitcode is not None else -1


@aflow.task(retries=3)
def flaky_pid(log: str) -> int:
    note(log, f"attempt {aflow.current_step().attempt}")
    return os.getpid()


@aflow.task
def nested(x: int) -> int:
    """A body that runs a workflow of its own on ``executor="process"`` (the worker's own
    default pool: worker processes of the worker)."""
    import asyncio

    return int(asyncio.run(aflow.run(echo.s(x), executor="process")))


@aflow.task
def touch(path: str) -> int:
    pathlib.Path(path).write_text("")
    return os.getpid()


@aflow.task
def spins(log: str, seconds: float) -> int:
    """Pure-Python work (no sleep, no check-in) for ``seconds``."""
    note(log, "spinning")
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n += 1
    return n


@aflow.task
async def async_exits(code: int) -> None:
    import sys

    sys.exit(code)


@aflow.task
async def async_pid() -> int:
    import asyncio

    await asyncio.sleep(0)
    return os.getpid()


_KEPT: list[Any] = []


@aflow.task
def keeps_a_process_pool(x: int) -> int:
    """A body that keeps a concurrent.futures process pool at module level (a cache, as
    libraries do), used from one call to the next."""
    from concurrent.futures import ProcessPoolExecutor

    if not _KEPT:
        _KEPT.append(ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")))
    return int(_KEPT[0].submit(abs, x).result())
