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
import pickle
import re
import sys
import threading
import traceback
from collections.abc import Callable, Coroutine, Iterator, Mapping
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
    only when the whole does not pickle).

    A header (this process's versions, the task's name) wraps the call itself, pickled
    apart: a worker reads the header first, so one of another Python or aflow says so
    (``WorkerMismatch``) rather than failing to read what it cannot.
    """
    try:
        call = pickle.dumps((target, args, kwargs, step))
    except Exception:
        raise _unsendable(task, target, args, kwargs) from None
    return pickle.dumps((CALLER, task, call))


def _unsendable(
    task: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> SerializationError:
    try:
        pickle.dumps(target)
    except Exception as exc:
        return SerializationError(
            task,
            type(target),
            detail=f"a body run in another process is named, not sent: define "
            f"{getattr(target, '__qualname__', target)!r} at a module's top level ({exc})",
        )
    for where, value in (
        *((f"argument {i}", a) for i, a in enumerate(args)),
        *((f"argument {name!r}", v) for name, v in kwargs.items()),
    ):
        try:
            pickle.dumps(value)
        except Exception as exc:
            return SerializationError(
                task,
                type(value),
                where,
                f"what a body in another process is given must pickle ({exc})",
            )
    return SerializationError(task, "call", detail="what it is given does not pickle")


def answer_of(
    blob: bytes, task: str, args: tuple[Any, ...] = (), kwargs: Mapping[str, Any] | None = None
) -> Any:
    """In the caller: the body's value, or its error raised. A call the worker could not
    read is a SerializationError naming which of ``args`` and ``kwargs`` it was, when
    that can be told; a value this process cannot rebuild, one naming the task; an
    error it cannot rebuild, a RemoteError with its type, message and traceback."""
    ok, payload, fallback = pickle.loads(blob)  # (bytes and text: always readable)
    if ok is None:  # (the worker could not unpickle the call: see run_blob)
        name, where, kind, text, missing = payload
        raise _unreadable(name, where, kind, text, missing, args, kwargs or {})
    try:
        value = pickle.loads(payload)
    except Exception as exc:
        if not ok:
            raise RemoteError(*fallback) from None
        raise SerializationError(
            task,
            "result",
            detail=f"this process cannot rebuild the result ({type(exc).__name__}: {exc}): "
            "return values of types the caller can import",
        ) from None
    if ok:
        return value
    raise value


_MISSING_NAME = re.compile(r"Can't get attribute '([^']+)'")


def _unreadable(
    task: str,
    where: str,
    kind: str,
    text: str,
    missing: str | None,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
) -> SerializationError:
    """What a worker could not rebuild, named when one argument's pickle holds the name
    (a module, a class) the worker lacks."""
    detail = (
        f"{where} cannot rebuild what it was sent ({kind}: {text}): define the task and "
        "the classes of its arguments in a module the workers can import (not in __main__)"
    )
    if missing:
        needle = missing.encode()
        for at, value in (
            *((f"argument {i}", a) for i, a in enumerate(args)),
            *((f"argument {name!r}", v) for name, v in kwargs.items()),
        ):
            try:
                if needle in pickle.dumps(value):
                    return SerializationError(task, type(value), at, detail)
            except Exception:
                continue
    return SerializationError(task, "call", detail=detail)


def run_blob(blob: bytes, cancelled: Callable[[], bool] | None, where: str) -> bytes:
    """In a worker: call the body ``blob`` names, and give back its value or its error,
    pickled. ``cancelled`` tells whether the caller has given up on this attempt (what
    :func:`aflow.check_cancelled` asks); ``where`` names the worker in errors."""
    callers, task, call = pickle.loads(blob)
    mine = versions()
    if callers != mine:
        error = WorkerMismatch(task, where, _describe(callers), _describe(mine))
        return _failed(error)
    try:
        target, args, kwargs, step = pickle.loads(call)
    except Exception as exc:  # (a class only the caller has: its __main__'s, say)
        missing = getattr(exc, "name", None) if isinstance(exc, ImportError) else None
        found = _MISSING_NAME.search(str(exc))
        if found is not None:
            missing = found.group(1)
        return pickle.dumps((None, (task, where, type(exc).__name__, str(exc), missing), None))
    if cancelled is not None and cancelled():  # (given up on before it could start)
        return _failed(asyncio.CancelledError("given up on before it started"))
    fn = getattr(target, "fn", target)  # (a task: its function; a revert: itself)
    step_token = REMOTE_STEP.set(step)
    cancel_token = REMOTE_CANCELLED.set(cancelled)
    try:
        with _traced(step, where) if step.trace else contextlib.nullcontext():
            value = fn(*args, **kwargs)
            if inspect.iscoroutine(value):  # (an async def, or an object's async __call__)
                value = run_coroutine(value)
    except BaseException as exc:  # (sent back whatever it is: the caller decides)
        return _error(exc, where)
    finally:
        REMOTE_CANCELLED.reset(cancel_token)
        REMOTE_STEP.reset(step_token)
    try:
        return pickle.dumps((True, pickle.dumps(value), None))
    except Exception as exc:
        refused = SerializationError(
            step.task, type(value), detail=f"a result from another process must pickle ({exc})"
        )
        return _failed(refused)


def run_coroutine(coro: Coroutine[Any, Any, Any]) -> Any:
    """In a worker: run ``coro`` to its end in this thread's event loop (in a copy of the
    context, so what the body asks of itself is there); the tasks it left running are
    cancelled and waited for, as ``asyncio.run`` would, but the loop is kept."""
    runner = _runner()
    try:
        return runner.run(coro, context=contextvars.copy_context())
    finally:
        left = asyncio.all_tasks(runner.get_loop())
        if left:
            for task in left:
                task.cancel()
            runner.run(_ended(left))


async def _ended(tasks: set[asyncio.Task[Any]]) -> None:
    await asyncio.gather(*tasks, return_exceptions=True)


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
    call (a client a body keeps at module level stays usable in the next call that
    thread runs)."""
    runner: asyncio.Runner | None = getattr(_RUNNERS, "runner", None)
    if runner is None:
        runner = _RUNNERS.runner = asyncio.Runner()
    return runner


def _error(exc: BaseException, where: str) -> bytes:
    text = "".join(traceback.format_exception(exc))
    try:
        exc.add_note(f"aflow: raised in {where}; its traceback there:\n{text.rstrip()}")
        return _failed(exc, text)
    except Exception:  # (it does not pickle: its text alone goes back)
        return _failed(RemoteError(_type_name(exc), str(exc), text))


def _failed(exc: BaseException, text: str = "") -> bytes:
    """An error's answer: itself, and its text for a caller that cannot rebuild it."""
    fallback = (_type_name(exc), str(exc), text)
    return pickle.dumps((False, pickle.dumps(exc), fallback))


def _type_name(exc: BaseException) -> str:
    kind = type(exc)
    name = kind.__qualname__
    return name if kind.__module__ == "builtins" else f"{kind.__module__}.{name}"
