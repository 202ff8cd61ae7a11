"""aflow in a FastAPI (or Starlette) service: ``pip install aflow[fastapi]``.

::

    import aflow.fastapi
    from aflow.fastapi import RuntimeDep

    app = FastAPI(lifespan=aflow.fastapi.lifespan(store="sqlite:///runs.db"))
    app.include_router(aflow.fastapi.runs_router(), prefix="/runs")

    @app.post("/orders")
    async def place(order: Order, rt: RuntimeDep) -> Receipt:
        return await rt.run(order_saga(order=order))   # request-scoped

See the README's "Web services" section.
"""

from __future__ import annotations

from ._disconnect import CancelOnDisconnect as CancelOnDisconnect
from ._errors import RevertFailure as RevertFailure
from ._errors import add_exception_handlers as add_exception_handlers
from ._errors import revert_failures as revert_failures
from ._errors import root_failure as root_failure
from ._lifespan import DEFAULT_SHUTDOWN_TIMEOUT as DEFAULT_SHUTDOWN_TIMEOUT
from ._lifespan import RuntimeDep as RuntimeDep
from ._lifespan import lifespan as lifespan
from ._lifespan import runtime as runtime
from ._router import EventStream as EventStream
from ._router import runs_router as runs_router

__all__ = [
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "CancelOnDisconnect",
    "EventStream",
    "RevertFailure",
    "RuntimeDep",
    "add_exception_handlers",
    "lifespan",
    "revert_failures",
    "root_failure",
    "runs_router",
    "runtime",
]
