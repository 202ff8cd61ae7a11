"""aflow: an asyncio-native workflow runtime.

Tasks are coroutine functions; the canvas (``chain``, ``group``, ``chord``...)
composes them into a graph that one scheduler runs on your own event loop::

    import aflow

    @aflow.task
    async def add(x: int, y: int) -> int:
        return x + y

    await (add.s(2, 2) | add.s(4))          # 8
"""

from __future__ import annotations

import typing as _typing

from ._atom import Task as Task
from ._canvas import Canvas as Canvas
from ._canvas import Chain as Chain
from ._canvas import Chord as Chord
from ._canvas import Group as Group
from ._canvas import Signature as Signature
from ._canvas import chain as chain
from ._canvas import chord as chord
from ._canvas import group as group
from ._canvas import signature as signature
from ._deprecated import moved_from as _moved_from
from ._events import Event as Event
from ._failure import Failure as Failure
from ._graph import Graph as Graph
from ._graph import NodeKind as NodeKind
from ._graph import compile as compile
from ._options import Backoff as Backoff
from ._task import FunctionTask as FunctionTask
from ._task import task as task
from ._workflow import workflow as workflow

if _typing.TYPE_CHECKING:  # imported when first used (see __getattr__): import aflow stays light
    from . import engines as engines
    from . import patterns as patterns
    from . import retry as retry
    from . import stores as stores
    from ._runtime._current import check_cancelled as check_cancelled
    from ._runtime._current import current_step as current_step
    from ._runtime._handle import Run as Run
    from ._runtime._report import ErrorReport as ErrorReport
    from ._runtime._report import EventReport as EventReport
    from ._runtime._report import RunReport as RunReport
    from ._runtime._report import StepReport as StepReport
    from ._runtime._report import WaitReport as WaitReport
    from ._runtime._run import run as run
    from ._runtime._run import run_sync as run_sync
    from ._runtime._runtime import Runtime as Runtime
    from ._runtime._states import NodeState as NodeState
    from ._runtime._states import RunStatistics as RunStatistics
    from ._runtime._states import RunStatus as RunStatus
    from ._runtime._states import StepInfo as StepInfo
    from ._runtime._waits import receive as receive
    from ._runtime._waits import set_event as set_event
    from ._runtime._waits import sleep as sleep
    from ._runtime._waits import sleep_until as sleep_until
    from ._runtime._waits import wait_for as wait_for

from ._version import __version__ as __version__

__all__ = [
    "Backoff",
    "Canvas",
    "Chain",
    "Chord",
    "ErrorReport",
    "Event",
    "EventReport",
    "Failure",
    "FunctionTask",
    "Graph",
    "Group",
    "NodeKind",
    "NodeState",
    "Run",
    "RunReport",
    "RunStatistics",
    "RunStatus",
    "Runtime",
    "Signature",
    "StepInfo",
    "StepReport",
    "Task",
    "WaitReport",
    "chain",
    "check_cancelled",
    "chord",
    "compile",
    "current_step",
    "group",
    "receive",
    "run",
    "run_sync",
    "set_event",
    "signature",
    "sleep",
    "sleep_until",
    "task",
    "wait_for",
    "workflow",
]

#: The runtime's names, and the namespaces, loaded when first asked for: the runtime
#: imports asyncio, anyio's asyncio backend and the SQLite store, which a script that
#: only builds workflows (or the CLI's help) need not pay for.
_LAZY = {
    "check_cancelled": "._runtime._current",
    "current_step": "._runtime._current",
    "Run": "._runtime._handle",
    "ErrorReport": "._runtime._report",
    "EventReport": "._runtime._report",
    "RunReport": "._runtime._report",
    "StepReport": "._runtime._report",
    "WaitReport": "._runtime._report",
    "run": "._runtime._run",
    "run_sync": "._runtime._run",
    "Runtime": "._runtime._runtime",
    "NodeState": "._runtime._states",
    "RunStatistics": "._runtime._states",
    "RunStatus": "._runtime._states",
    "StepInfo": "._runtime._states",
    "receive": "._runtime._waits",
    "set_event": "._runtime._waits",
    "sleep": "._runtime._waits",
    "sleep_until": "._runtime._waits",
    "wait_for": "._runtime._waits",
}
_NAMESPACES = frozenset({"engines", "patterns", "retry", "stores"})


def _public(obj: object) -> object:
    """Users see aflow.Run, not aflow._runtime._handle.Run."""
    if getattr(obj, "__module__", "").startswith("aflow."):
        try:
            obj.__module__ = "aflow"
        except (AttributeError, TypeError):  # pragma: no cover - immutable builtins
            pass
    return obj


for _name in __all__:
    if _name not in _LAZY:
        _public(globals()[_name])
del _name


#: Exceptions that were top-level names too (deprecated): their one home is aflow.errors.
_MOVED_ERRORS = frozenset(
    {
        "AflowError",
        "CompensationFailed",
        "CycleError",
        "DefinitionError",
        "DuplicateTaskError",
        "GroupFailed",
        "RunCancelled",
        "RunError",
        "RunNotFinished",
        "RunTimeout",
        "SerializationError",
        "SignatureError",
        "TaskTimeout",
    }
)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_NAMESPACES})


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is not None:
        import importlib

        value = _public(getattr(importlib.import_module(module, __name__), name))
        globals()[name] = value
        return value
    if name in _NAMESPACES:
        import importlib

        namespace = importlib.import_module(f".{name}", __name__)
        globals()[name] = namespace
        return namespace
    if name in _MOVED_ERRORS:
        return _moved_from("aflow", name, to="aflow.errors")
    if name == "current_attempt":  # deprecated: aflow.current_step().attempt says more
        import warnings

        from ._runtime._current import current_attempt

        warnings.warn(
            "aflow.current_attempt() is deprecated: use aflow.current_step().attempt",
            DeprecationWarning,
            stacklevel=2,
        )
        return current_attempt
    raise AttributeError(f"module 'aflow' has no attribute {name!r}")


# Namespaces: every exception (TaskFlow-style flows, their engines and retry controllers,
# and the stores load when first used: see __getattr__).
from . import errors as errors  # noqa: E402
