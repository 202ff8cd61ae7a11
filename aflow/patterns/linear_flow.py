"""Linear flows: items run one after another (TaskFlow's ``linear_flow``)."""

from __future__ import annotations

from typing import ClassVar, final

from ._flow import Flow as _BaseFlow

__all__ = ["Flow"]


@final
class Flow(_BaseFlow):
    """Runs its items in the order they were added, each after the previous one ends.

    A task reads a name from the nearest earlier item that provides it::

        flow = lf.Flow("order").add(Validate(), Reserve(), Charge())
    """

    pattern: ClassVar[str] = "linear"
