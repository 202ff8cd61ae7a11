"""TaskFlow-style flows: tasks that require and provide values by name.

Three patterns, nestable in any mix and mixable with canvas pieces::

    from aflow.patterns import linear_flow as lf, unordered_flow as uf, graph_flow as gf

    flow = lf.Flow("main").add(
        uf.Flow("prep").add(TaskA(provides="res_a"), TaskB(provides="res_b")),
        Final(provides="total"),
    )
    engine = aflow.engines.load(flow, store={"a": 1, "b": 2}, engine="parallel")
    await engine.run()
    engine.storage.fetch("total")

A task reads each name it requires from, in order: its ``inject``, the
nearest upstream task that provides the name, then the engine's ``store``.
(TaskFlow lets the store shadow a value a task produced; aflow does not.)
"""

from __future__ import annotations

from .._deprecated import moved as _moved
from . import graph_flow as graph_flow
from . import linear_flow as linear_flow
from . import unordered_flow as unordered_flow
from ._flow import Depth as Depth
from ._flow import Flow as Flow

__all__ = [
    "Depth",
    "Flow",
    "graph_flow",
    "linear_flow",
    "unordered_flow",
]

#: Exceptions this namespace used to export too (deprecated): their one home is aflow.errors.
__getattr__ = _moved(
    "aflow.patterns",
    ["AmbiguousProviderError", "MissingInputError", "ProvidesError"],
    to="aflow.errors",
)
