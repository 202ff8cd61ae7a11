"""Exception handlers that answer a failed run with the app's own handler for its root
failure: :func:`add_exception_handlers`, :func:`root_failure`, :func:`revert_failures`.

A run whose unwinding also failed raises :class:`aflow.errors.CompensationFailed`, and
several independent failures raise :class:`aflow.errors.GroupFailed`: exception groups,
so Starlette (which looks a handler up by walking ``type(exc).__mro__``) never reaches
``@app.exception_handler(AddressRejected)`` and the client gets a 500.
:func:`add_exception_handlers` registers a handler for the two groups that finds the root
failure and calls the app's handler for it, as Starlette would have for the root alone.
"""

from __future__ import annotations

import ast
import functools
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast, final

from ..errors import CompensationFailed, GroupFailed

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import HTTPConnection
    from starlette.responses import Response

__all__ = ["RevertFailure", "add_exception_handlers", "revert_failures", "root_failure"]

#: The note the runtime adds to a revert's own exception (aflow/_runtime/_compensation.py).
_REVERT_NOTE = re.compile(r"aflow: the revert of (?P<key>'.*'|\".*\") failed in run (?P<run>\S+)")
#: Where a root failure handed to an app's handler keeps the group's revert failures.
_ATTRIBUTE = "_aflow_revert_failures"

Handler = Callable[..., Any]


@final
@dataclass(frozen=True, slots=True)
class RevertFailure:
    """A revert that failed while a run unwound: :attr:`step` is the node key whose
    revert raised :attr:`error` (``None`` when the error is not one revert's: the
    ``TimeoutError`` of a ``compensation_timeout`` that stopped several), in run
    :attr:`run_id`. What precedes that node in its branch was not reverted."""

    run_id: str
    step: str | None
    error: BaseException


def root_failure(exc: BaseException) -> BaseException:
    """The failure that started it all: for a :class:`~aflow.errors.CompensationFailed`
    its root failure (``.original``), for a :class:`~aflow.errors.GroupFailed` its first
    member (the first task that failed), each unwrapped in turn; any other exception is
    its own root.

    ::

        except aflow.errors.CompensationFailed as exc:
            log.error("order %s failed: %r", order_id, aflow.fastapi.root_failure(exc))
    """
    roots, _ = _split(exc)
    return roots[0] if roots else exc


def revert_failures(exc: BaseException) -> tuple[RevertFailure, ...]:
    """The reverts that failed: those of a :class:`~aflow.errors.CompensationFailed`, or,
    for the root failure :func:`add_exception_handlers` handed to an app's handler, those
    of the group it came from. Empty when every revert ran (or nothing was reverted)::

        @app.exception_handler(AddressRejected)
        async def rejected(request: Request, exc: AddressRejected) -> JSONResponse:
            kept = [f.step for f in aflow.fastapi.revert_failures(exc)]
            return JSONResponse({"error": str(exc), "not_undone": kept}, status_code=422)
    """
    if isinstance(exc, (CompensationFailed, GroupFailed)):
        return _split(exc)[1]
    found: tuple[RevertFailure, ...] = getattr(exc, _ATTRIBUTE, ())
    return found


def add_exception_handlers(app: Starlette) -> None:
    """Answer :class:`~aflow.errors.CompensationFailed` and
    :class:`~aflow.errors.GroupFailed` (and its :class:`~aflow.errors.BelowThreshold`)
    with the app's own handler for their root failure. Works on FastAPI and Starlette
    apps; a handler the app registered for either group already is kept.

    For a group, the handler looks up each root failure (see :func:`root_failure`) as
    Starlette's ``ExceptionMiddleware`` would: a status-code handler first for an
    ``HTTPException``, then the exception handlers along ``type(root).__mro__``
    (``Exception`` and ``500`` handlers are the ``ServerErrorMiddleware``'s, not looked
    up). If every root failure finds the same handler, that handler is called with the
    first root failure (the first task that failed), and :func:`revert_failures` of it
    gives the reverts that failed. Otherwise (no handler, or several roots answered by
    different handlers: one of them may be a bug) the group goes on as if this was not
    there: to a handler the app has for one of the group's other bases (``AflowError``),
    or up to ``ServerErrorMiddleware``, a logged 500.
    """
    for group in (CompensationFailed, GroupFailed):
        if group not in app.exception_handlers:
            app.add_exception_handler(group, _answer)


async def _answer(conn: HTTPConnection, exc: Exception) -> Response:
    """Starlette's handler for the two groups (see :func:`add_exception_handlers`)."""
    handlers, status_handlers = conn.scope.get("starlette.exception_handlers", ({}, {}))
    roots, reverts = _split(exc)
    found = [_handler_for(root, handlers, status_handlers) for root in roots]
    handler: Handler | None = found[0] if found else None
    if handler is not None and all(other == handler for other in found):
        for root in roots:  # (past a frozen exception's own __setattr__)
            object.__setattr__(root, _ATTRIBUTE, reverts)
        target: BaseException = roots[0]
    else:
        handler = _lookup(handlers, exc, skip=_answer)
        if handler is None:
            raise exc  # as if no handler was registered: ServerErrorMiddleware's 500
        target = exc
    if _is_async(handler):
        response = await handler(conn, target)
    else:
        from starlette.concurrency import run_in_threadpool

        response = await run_in_threadpool(handler, conn, target)
    return cast("Response", response)


def _handler_for(
    root: BaseException, handlers: Mapping[Any, Handler], status_handlers: Mapping[int, Handler]
) -> Handler | None:
    from starlette.exceptions import HTTPException

    if isinstance(root, HTTPException):
        by_status = status_handlers.get(root.status_code)
        if by_status is not None:
            return by_status
    return _lookup(handlers, root)


def _lookup(
    handlers: Mapping[Any, Handler], exc: BaseException, skip: Handler | None = None
) -> Handler | None:
    """Starlette's ``_lookup_exception_handler``, passing over ``skip``."""
    for cls in type(exc).__mro__:
        handler = handlers.get(cls)
        if handler is not None and handler is not skip:
            return handler
    return None


def _is_async(handler: Handler) -> bool:
    """Starlette's ``is_async_callable``."""
    while isinstance(handler, functools.partial):
        handler = handler.func
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        type(handler).__call__
    )


def _split(exc: BaseException) -> tuple[list[BaseException], tuple[RevertFailure, ...]]:
    """The root failures inside ``exc`` (in order) and the reverts that failed."""
    roots: list[BaseException] = []
    reverts: list[RevertFailure] = []

    def walk(error: BaseException) -> None:
        if isinstance(error, CompensationFailed):
            by_key: dict[str, BaseException] = getattr(error, "reverts", {})
            if by_key:  # the runtime says which node each revert failure is
                reverted = {id(e) for e in by_key.values()}
                for member in error.exceptions:
                    if id(member) not in reverted:
                        walk(member)  # the root failure (or a GroupFailed of several)
                for key, failure in by_key.items():
                    reverts.append(RevertFailure(error.run_id, key, failure))
                return
            first, *rest = error.exceptions  # (a group made elsewhere: read the notes)
            if _reverted_step(first, error.run_id) is None:
                walk(first)
                failed = rest
            else:  # undoing a finished run: every member is a revert's failure
                failed = list(error.exceptions)
            for failure in failed:
                step = _reverted_step(failure, error.run_id)
                reverts.append(RevertFailure(error.run_id, step, failure))
        elif isinstance(error, GroupFailed):
            for member in error.exceptions:
                walk(member)
        else:
            roots.append(error)

    walk(exc)
    return roots, tuple(reverts)


def _reverted_step(error: BaseException, run_id: str) -> str | None:
    """The node key whose revert raised ``error`` in run ``run_id``, read from the note
    the runtime adds to it (``None`` without one)."""
    for note in reversed(getattr(error, "__notes__", ())):
        found = _REVERT_NOTE.fullmatch(note) if isinstance(note, str) else None
        if found is not None and found["run"] == run_id:
            key = ast.literal_eval(found["key"])
            return key if isinstance(key, str) else None
    return None
