"""Rebuilding a stored run: which workflows a runtime may rebuild, and how it reads a row.

A durable run is rebuilt from the ``@aflow.workflow`` its row names and the
parameters it stored, read with the serializer it was written with; the graph
must still have the fingerprint it had when the run began. A row is data: the
workflow must be registered in this process (or its module allowed), and no
module is imported because a row names it (issue 14).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any, final

from .._exceptions import DefinitionError, ResumeMismatch, RunError
from .._graph import Graph
from .._serialize import Serializer, serializer_for
from .._workflow import WorkflowBuilder, fingerprint, registered_workflow
from ..stores._base import RunRecord, StoredRunStatus
from ._states import RunStatus

__all__ = ["FINISHED", "Rebuilder"]

#: The statuses of a run that has ended, as its store keeps them, and as a run's own.
FINISHED: dict[StoredRunStatus, RunStatus] = {
    StoredRunStatus.SUCCEEDED: RunStatus.SUCCEEDED,
    StoredRunStatus.FAILED: RunStatus.FAILED,
    StoredRunStatus.REVERTED: RunStatus.REVERTED,
    StoredRunStatus.CANCELLED: RunStatus.CANCELLED,
}


@final
class Rebuilder:
    """What a runtime may rebuild from its store (``Runtime(workflows=...)``), and how."""

    __slots__ = ("modules", "serializer", "workflows")

    def __init__(
        self, serializer: Serializer, workflows: Iterable[WorkflowBuilder[..., Any] | str] | None
    ) -> None:
        #: the runtime's serializer (a row written with another one is read only if json)
        self.serializer = serializer
        #: what may be rebuilt: None for any workflow this process registered; else these
        #: workflows, and those of ``modules`` (imported on entry)
        self.workflows: frozenset[str] | None = None
        self.modules: tuple[str, ...] = ()
        if workflows is not None:
            chosen = list(workflows)
            for item in chosen:
                if not isinstance(item, (WorkflowBuilder, str)):
                    raise TypeError(
                        f"workflows= takes @aflow.workflow functions and module names, got {item!r}"
                    )
            self.workflows = frozenset(w.path for w in chosen if isinstance(w, WorkflowBuilder))
            self.modules = tuple(m for m in chosen if isinstance(m, str))

    def import_modules(self) -> None:
        """Import the modules the application allowed (on entering the runtime)."""
        for module in self.modules:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise DefinitionError(f"cannot import workflow module {module!r}: {exc}") from exc

    def workflow_of(self, record: RunRecord) -> WorkflowBuilder[..., Any]:
        """The workflow a stored run names, if this runtime may rebuild it: registered by
        this process (and, with ``workflows=``, one of those). Never imports what a row
        names (issue 14)."""
        try:
            workflow = registered_workflow(record.workflow, self.modules)
        except DefinitionError as exc:
            raise ResumeMismatch(record.run_id, str(exc)) from exc
        allowed = self.workflows
        if (
            allowed is not None
            and workflow.path not in allowed
            and workflow.fn.__module__ not in self.modules
        ):
            raise ResumeMismatch(
                record.run_id, f"workflow {workflow.path} is not among this runtime's workflows="
            )
        return workflow

    def graph_of(self, record: RunRecord) -> Graph:
        """The graph a stored run runs, rebuilt (:class:`ResumeMismatch` if it changed)."""
        workflow = self.workflow_of(record)
        params = self.serializer_of(record).loads(record.params)
        graph = workflow.build(params)
        if fingerprint(graph) != record.fingerprint:
            raise ResumeMismatch(
                record.run_id,
                f"workflow {record.workflow} now builds a different graph than when the run began",
            )
        return graph

    def serializer_of(self, record: RunRecord) -> Serializer:
        """The serializer a run was written with. A pickle run is read only by a runtime
        that opted into pickle: loading a pickle runs code."""
        mine = self.serializer
        if record.serializer == mine.name:
            return mine
        if record.serializer == "json":
            return serializer_for("json")
        raise ResumeMismatch(
            record.run_id,
            f"it was written with serializer {record.serializer!r} and this runtime uses "
            f"{mine.name!r}; only a Runtime(serializer={record.serializer!r}) reads it",
        )

    def reader_of(self, record: RunRecord) -> Callable[[str], Any]:
        """How to read a run's stored values for a report: its serializer's ``loads``, or,
        for one this runtime does not read (a pickle), a reader that always fails (the
        report then shows no value)."""
        try:
            return self.serializer_of(record).loads
        except ResumeMismatch:
            return _unreadable

    def outcome_of(self, record: RunRecord) -> tuple[Any, BaseException | None]:
        """The value of a run its store says has ended, and its error if it did not succeed."""
        value = None
        if record.result is not None:
            value = self.serializer_of(record).loads(record.result)
        error = None
        if record.status != StoredRunStatus.SUCCEEDED:
            error = RunError(record.run_id, f"the run ended {record.status}: {record.error}")
        return value, error


def _unreadable(text: str) -> Any:
    raise ValueError("written with a serializer this runtime does not read")
