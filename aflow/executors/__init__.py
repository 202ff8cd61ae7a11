"""Where task bodies run: on the event loop (the default), or elsewhere.

``@aflow.task(executor="process")`` (or ``Runtime(executor="process")``,
``aflow.run(..., executor="process")``) runs a body, sync or async, in a pool of worker
processes; aflow keeps the graph, limits, retries, compensation and durable state in
the calling process. See the README's "Running steps elsewhere".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._base import Call as Call
from ._base import Executor as Executor
from ._base import executor_of as executor_of

if TYPE_CHECKING:
    from ._process import Process as Process
    from ._process import shutdown as shutdown

__all__ = ["Call", "Executor", "Process", "executor_of", "shutdown"]


def __getattr__(name: str) -> Any:
    # (the process pool's modules load with its first use: import aflow stays light)
    if name in ("Process", "shutdown"):
        from . import _process

        return getattr(_process, name)
    raise AttributeError(f"module 'aflow.executors' has no attribute {name!r}")
