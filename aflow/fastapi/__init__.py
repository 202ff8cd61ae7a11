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

from ._lifespan import DEFAULT_SHUTDOWN_TIMEOUT as DEFAULT_SHUTDOWN_TIMEOUT
from ._lifespan import RuntimeDep as RuntimeDep
from ._lifespan import lifespan as lifespan
from ._lifespan import runtime as runtime
from ._router import EventStream as EventStream
from ._router import runs_router as runs_router

__all__ = [
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "EventStream",
    "RuntimeDep",
    "lifespan",
    "runs_router",
    "runtime",
]
