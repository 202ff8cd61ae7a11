"""A dflow script keeps its shape: ``wf.submit()``, ``wf.wait()`` and the queries called
with no event loop running, on one event loop this process's scripts share.

The loop runs in a daemon thread with an entered :class:`aflow.Runtime` (no store, unless
``AFLOW_STORE`` names one). Everything that touches a run happens on that loop's thread;
a caller's thread blocks on it. When the script ends, the interpreter waits for the runs it
started there to end (a dflow script that submits and exits still sees its workflow
through, as Argo would run it), then closes the runtime.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
from collections.abc import Awaitable, Callable, Generator
from concurrent.futures import Future
from typing import Any, Generic, TypeVar, final

import anyio

from .._runtime._runtime import Runtime

__all__ = ["Ready", "ReadyText", "in_script", "on_script_loop", "script_runtime"]

T = TypeVar("T")

_lock = threading.Lock()
_state: _Loop | None = None


def in_script() -> bool:
    """True when no event loop runs in this thread (a plain script's call)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return True
    return False


@final
class _Loop:
    __slots__ = ("loop", "runtime", "stop", "thread")

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.runtime: Runtime | None = None
        self.stop: asyncio.Event | None = None
        started = threading.Event()
        failed: list[BaseException] = []

        async def main() -> None:
            self.stop = asyncio.Event()
            try:
                async with Runtime(store=os.environ.get("AFLOW_STORE") or None) as rt:
                    self.runtime = rt
                    started.set()
                    await self.stop.wait()
                    await _drain(rt)
            except BaseException as exc:
                failed.append(exc)
                started.set()
                raise

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:  # (a failure to start is told to the caller waiting for it, and here)
                self.loop.run_until_complete(main())
            finally:
                self.loop.close()

        self.thread = threading.Thread(target=run, name="aflow-script-loop", daemon=True)
        self.thread.start()
        started.wait()
        if failed:
            raise RuntimeError(f"aflow could not start its script runtime: {failed[0]}")

    def close(self) -> None:
        stop = self.stop
        if stop is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(stop.set)
            self.thread.join()


async def _drain(rt: Runtime) -> None:
    """Wait for every run still going in ``rt`` to end (the script has ended)."""
    while True:
        going = [run for run in rt.runs() if not run.status.finished]
        if not going:
            return
        for run in going:
            await run.wait()
        await anyio.lowlevel.checkpoint()


def _get() -> _Loop:
    global _state
    with _lock:
        if _state is None or not _state.thread.is_alive():
            _state = _Loop()
            atexit.register(_state.close)
        return _state


def script_runtime() -> Runtime:
    """The runtime a script's workflows run in (started on first use)."""
    runtime = _get().runtime
    assert runtime is not None
    return runtime


def on_script_loop(call: Callable[[], Awaitable[T]]) -> Future[T]:
    """Run ``call()`` on the script loop; the future holds its result."""
    state = _get()

    async def run() -> T:
        return await call()

    return asyncio.run_coroutine_threadsafe(run(), state.loop)


def on_script_thread() -> bool:
    """True in the script loop's own thread."""
    state = _state
    return state is not None and threading.current_thread() is state.thread


@final
class Ready(Generic[T]):
    """A value a call has already produced, awaitable as the async form of the call is
    (``wf.submit()`` returns one in a plain script: it has submitted)."""

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, T]:
        return _value(self.value).__await__()

    def __repr__(self) -> str:
        return f"<done: {self.value!r}>"


class ReadyText(str):
    """A status a call has already given in a plain script: text to compare
    (``wf.wait() == "Succeeded"``), and awaitable as the async form of the call is."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, str]:
        return _value(str(self)).__await__()


async def _value(value: T) -> T:
    return value
