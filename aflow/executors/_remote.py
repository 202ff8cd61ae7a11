"""What crosses to a worker and back, shared by every executor that runs bodies in
another process (``"process"``, Dask).

The caller pickles a call here, before it is sent, so a value that cannot go is a
:class:`~aflow.errors.SerializationError` naming the task and the argument at once.
The worker unpacks it with :func:`run_blob`: it checks that it runs the caller's Python
and aflow, sets what the body may ask of itself (:func:`aflow.current_step`,
:func:`aflow.check_cancelled`), calls the body, and gives back its value or its error,
pickled (an error with its traceback as text in a note).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import os
import pickle
import sys
import threading
import traceback
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from .._exceptions import RemoteError, SerializationError, WorkerMismatch
from ._base import REMOTE_CANCELLED, REMOTE_STEP, Call

__all__ = ["answer_of", "pickled", "run_blob", "run_coroutine", "versions"]


def versions() -> tuple[str, str]:
    """What a worker must share with its caller: Python's major.minor (pickles, bytecode)
    and aflow's version (what a call and its answer carry)."""
    from .._version import __version__

    return (f"{sys.version_info[0]}.{sys.version_info[1]}", __version__)


#: this process's, as a call carries them
CALLER = versions()


def pickled(
    task: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any], step: Call
) -> bytes:
    """What a worker is sent, or a SerializationError naming what cannot go (looked for
    only when the whole does not pickle)."""
    call = (CALLER, target, args, kwargs, step)
    try:
        return pickle.dumps(call)
    except Exception:
        pass
    try:
        pickle.dumps(target)
    except Exception as exc:
        raise SerializationError(
            task,
            type(target),
            detail=f"a body run in another process is named, not sent: define "
            f"{getattr(target, '__qualname__', target)!r} at a module's top level ({exc})",
        ) from None
    for where, value in (
        *((f"argument {i}", a) for i, a in enumerate(args)),
        *((f"argument {name!r}", v) for name, v in kwargs.items()),
    ):
        try:
            pickle.dumps(value)
        except Exception as exc:
            raise SerializationError(
                task,
                type(value),
                where,
                f"what a body in another process is given must pickle ({exc})",
            ) from None
    return pickle.dumps(call)


def answer_of(blob: bytes) -> Any:
    """In the caller: the body's value, or its error raised."""
    ok, value = pickle.loads(blob)
    if ok:
        return value
    raise value


def run_blob(blob: bytes, cancelled: Callable[[], bool] | None, where: str) -> bytes:
    """In a worker: call the body ``blob`` names, and give back its value or its error,
    pickled. ``cancelled`` tells whether the caller has given up on this attempt (what
    :func:`aflow.check_cancelled` asks); ``where`` names the worker in errors."""
    callers, target, args, kwargs, step = pickle.loads(blob)
    mine = versions()
    if callers != mine:
        error = WorkerMismatch(step.task, where, _describe(callers), _describe(mine))
        return pickle.dumps((False, error))
    fn = getattr(target, "fn", target)  # (a task: its function; a revert: itself)
    step_token = REMOTE_STEP.set(step)
    cancel_token = REMOTE_CANCELLED.set(cancelled)
    try:
        with _traced(step, where) if step.trace else contextlib.nullcontext():
            if inspect.iscoroutinefunction(fn):
                value = run_coroutine(fn(*args, **kwargs))
            else:
                value = fn(*args, **kwargs)
    except BaseException as exc:  # (sent back whatever it is: the caller decides)
        return _error(exc, where)
    finally:
        REMOTE_CANCELLED.reset(cancel_token)
        REMOTE_STEP.reset(step_token)
    try:
        return pickle.dumps((True, value))
    except Exception as exc:
        refused = SerializationError(
            step.task, type(value), detail=f"a result from another process must pickle ({exc})"
        )
        return pickle.dumps((False, refused))


def run_coroutine(coro: Coroutine[Any, Any, Any]) -> Any:
    """In a worker: run ``coro`` to its end in this thread's event loop (in a copy of the
    context, so what the body asks of itself is there)."""
    return _runner().run(coro, context=contextvars.copy_context())


@contextlib.contextmanager
def _traced(step: Call, where: str) -> Iterator[None]:
    """The caller's trace, continued here: an ``execute {key}`` span, a child of the
    attempt's, when this process has a tracer provider configured (else the attempt's
    span current, as its context came), so the body's own spans join the trace."""
    try:
        from opentelemetry import context, propagate, trace
    except ImportError:  # (no OpenTelemetry here: the trace stops at the caller)
        yield
        return
    token = context.attach(propagate.extract(dict(step.trace or {})))
    try:
        if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            yield  # (nothing configured: nothing to record, the context alone goes on)
            return
        tracer = trace.get_tracer("aflow", versions()[1])
        attributes: dict[str, Any] = {
            "aflow.run.id": step.run_id,
            "aflow.node.key": step.key,
            "aflow.task": step.task,
            "aflow.attempt": step.attempt,
            "aflow.worker": where,
        }
        with tracer.start_as_current_span(f"execute {step.key}", attributes=attributes):
            yield
    finally:
        context.detach(token)


def _describe(pair: tuple[str, str]) -> str:
    return f"Python {pair[0]}, aflow {pair[1]}"


_RUNNERS = threading.local()


def _runner() -> asyncio.Runner:
    """The event loop async bodies run in, one per worker thread, kept from call to
    call (a client a body makes at module level stays usable in the next call)."""
    runner: asyncio.Runner | None = getattr(_RUNNERS, "runner", None)
    if runner is None:
        runner = _RUNNERS.runner = asyncio.Runner()
    return runner


def _error(exc: BaseException, where: str) -> bytes:
    text = "".join(traceback.format_exception(exc))
    try:
        exc.add_note(f"aflow: raised in {where}; its traceback there:\n{text.rstrip()}")
        blob = pickle.dumps((False, exc))
        pickle.loads(blob)  # (a type the caller could not rebuild fails here, not there)
        return blob
    except Exception:
        kind = type(exc)
        name = kind.__qualname__
        if kind.__module__ != "builtins":
            name = f"{kind.__module__}.{name}"
        return pickle.dumps((False, RemoteError(name, str(exc), text)))


def process_name() -> str:
    return f"worker process {os.getpid()}"
