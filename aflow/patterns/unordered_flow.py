"""Unordered flows: items run concurrently, in no set order (TaskFlow's ``unordered_flow``)."""

from __future__ import annotations

from typing import ClassVar, final

from ._flow import Flow as _BaseFlow

__all__ = ["Flow"]


@final
class Flow(_BaseFlow):
    """Runs its items independently (concurrently under a parallel engine).

    Items cannot read what a sibling provides (that would be a race): such a
    flow is rejected when compiled. Two siblings providing one name are
    rejected as ambiguous.
    """

    pattern: ClassVar[str] = "unordered"
