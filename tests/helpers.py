"""Shared test helpers: a peak-in-flight probe, an order recorder, a fake store that
records each write, and a way to run a unit's test on every backend it supports."""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from aflow.stores import NodeRecord


@dataclass
class Probe:
    """Counts how many instrumented tasks are in flight, and the peak."""

    current: int = 0
    peak: int = 0
    order: list[str] = field(default_factory=list)

    def enter(self, name: str = "") -> None:
        self.current += 1
        self.peak = max(self.peak, self.current)
        self.order.append(f"start {name}")

    def leave(self, name: str = "") -> None:
        self.current -= 1
        self.order.append(f"end {name}")


class Gate:
    """An event-driven barrier: tasks wait at it until the test opens it."""

    def __init__(self) -> None:
        self.opened = anyio.Event()
        self.arrived = 0

    async def wait(self) -> None:
        self.arrived += 1
        await self.opened.wait()

    def open(self) -> None:
        self.opened.set()


try:  # trio is not a dev extra: its cases are skipped (and say so) where it is missing
    import trio.lowlevel  # noqa: F401
except ImportError:
    HAS_TRIO = False
else:
    HAS_TRIO = True
#: The backends of a unit that runs on asyncio and on trio (a crew of plain tasks, or the
#: tasks of a task group): asyncio, uvloop and trio.
BACKENDS = [
    "asyncio",
    "uvloop",
    pytest.param("trio", marks=pytest.mark.skipif(not HAS_TRIO, reason="trio is not installed")),
]


def run_on(backend: str, main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``main`` on a fresh event loop of ``backend``; a hang fails after 10 s."""

    async def guarded() -> Any:
        with anyio.fail_after(10):
            return await main()

    if backend == "trio":
        return anyio.run(guarded, backend="trio")
    options = {"use_uvloop": backend == "uvloop"}
    return anyio.run(guarded, backend="asyncio", backend_options=options)


@asynccontextmanager
async def gated(*gates: anyio.Event) -> AsyncIterator[anyio.abc.TaskGroup]:
    """A task group whose ``gates`` are opened if the block fails: what it started and
    waits at one behind a shield (a store write, a revert) then ends, and the test
    fails instead of hanging."""
    async with anyio.create_task_group() as tg:
        try:
            yield tg
        except BaseException:
            for gate in gates:
                gate.set()
            raise


def on_each_backend(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """An async test, run once on each of :data:`BACKENDS` (a sync test taking
    ``backend`` first, so pytest-asyncio leaves it alone)."""

    def run(backend: str, *args: Any, **kwargs: Any) -> None:
        run_on(backend, functools.partial(test, *args, **kwargs))

    signature = inspect.signature(test)
    backend = inspect.Parameter("backend", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    run.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[backend, *signature.parameters.values()], return_annotation=None
    )
    run.__name__ = run.__qualname__ = test.__name__
    run.__doc__ = test.__doc__
    run.__module__ = test.__module__
    marks = getattr(test, "pytestmark", [])
    run.pytestmark = [*marks, pytest.mark.parametrize("backend", BACKENDS).mark]  # type: ignore[attr-defined]
    return run


Batch = list[tuple[str, str]]


class FakeStore:
    """What the journal and a run write, in order, into ``log`` (the tasks log there too).

    ``pause_at((key, state))`` holds the write of the batch holding that record until
    the test sets ``gate``; ``fail_at`` makes that write raise instead, and
    ``refuse_status`` the write of that run status."""

    url = "fake://"

    def __init__(self) -> None:
        self.log: list[tuple[str, Any]] = []
        self.writes: list[Batch] = []
        self.superseded: list[Batch] = []
        self.statuses: list[str] = []
        self._pause: tuple[str, str] | None = None
        self.reached, self.gate = anyio.Event(), anyio.Event()
        self.fail_at: tuple[str, str] | None = None
        self.refuse_status: str | None = None

    def pause_at(self, record: tuple[str, str]) -> None:
        self._pause = record

    async def start_run(self, run_id: str, status: str, error: str | None) -> str:
        self.statuses.append(status)
        return status

    async def set_status(self, run_id: str, status: str, **fields: Any) -> None:
        if status == self.refuse_status:
            raise OSError("read-only")
        self.statuses.append(status)
        self.log.append(("status", status))

    async def write_nodes(
        self, run_id: str, nodes: Sequence[NodeRecord], superseded: Sequence[NodeRecord] = ()
    ) -> None:
        batch = [(n.key, n.state) for n in nodes]
        if self._pause in batch:
            self._pause = None
            self.reached.set()
            await self.gate.wait()
        else:
            await anyio.lowlevel.checkpoint()
        if self.fail_at in batch:
            raise OSError("disk full")
        self.writes.append(batch)
        self.superseded.append([(n.key, n.state) for n in superseded])
        self.log.append(("write", batch))
