"""Where task bodies run: on the event loop (the default), or elsewhere.

``@aflow.task(executor="process")`` (or ``Runtime(executor="process")``,
``aflow.run(..., executor="process")``) runs a body, sync or async, in a pool of worker
processes; ``executor=aflow.executors.Dask(address)`` on the workers of a Dask cluster
(``pip install 'aflow[dask]'``). aflow keeps the graph, limits, retries, compensation
and durable state in the calling process. See the README's "Running steps elsewhere".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._base import Call as Call
from ._base import Executor as Executor
from ._base import executor_of as executor_of

if TYPE_CHECKING:
    from ._dask import Dask as Dask
    from ._process import Process as Process
    from ._process import shutdown as shutdown

__all__ = ["Call", "Dask", "Executor", "Process", "executor_of", "shutdown"]


def __getattr__(name: str) -> Any:
    # (the executors' modules load with their first use: import aflow stays light)
    if name in ("Process", "shutdown"):
        from . import _process

        return getattr(_process, name)
    if name == "Dask":
        from ._dask import Dask

        return Dask
    raise AttributeError(f"module 'aflow.executors' has no attribute {name!r}")
