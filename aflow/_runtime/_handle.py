"""The :class:`Run` handle: a run's identity, state, outcome and events, for whoever started it."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, final

import anyio
import anyio.lowlevel

from .._events import Event
from .._exceptions import RunCancelled, RunNotFinished, RunReleased
from .._failure import Failure
from .._graph import Graph, NodeKind
from ._scheduler import Execution
from ._states import NodeState, RunStatistics, RunStatus, StepInfo

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from ._report import RunReport

__all__ = ["Run", "outcome"]

R = TypeVar("R")


async def outcome(handle: Run[Any]) -> Any:
    """The run's value; cancelling the awaiter cancels the run, waits for it to stop
    (it unwinds), then re-raises."""
    try:
        return await handle.result()
    except anyio.get_cancelled_exc_class():
        handle._execution.cancel()
        with anyio.CancelScope(shield=True):
            await handle.wait()
        raise


@final
class _Finished:
    """The run's end, as an event whose anyio ``Event`` is made only if someone waits
    before it (one costs ~1.5 µs: most runs of ``rt.run`` are never waited for)."""

    __slots__ = ("_event", "_set")

    def __init__(self) -> None:
        self._set = False
        self._event: anyio.Event | None = None

    def set(self) -> None:
        self._set = True
        if self._event is not None:
            self._event.set()

    def is_set(self) -> bool:
        return self._set

    async def wait(self) -> None:
        if self._set:
            await anyio.lowlevel.checkpoint()  # (as anyio's Event does)
            return
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()


@final
class Run(Generic[R]):
    """A handle on a run submitted to a :class:`Runtime`.

    Get one from ``await runtime.submit(workflow)``; it is never constructed
    directly. The group-result methods (``successful()``, ``failed()``,
    ``ready()``...) follow Celery's ``GroupResult`` and count task nodes.
    """

    __slots__ = (
        "__weakref__",
        "_cancel_asked",
        "_detached",
        "_error",
        "_execution",
        "_finished",
        "_key",
        "_leaving",
        "_origin",
        "_private",
        "_remote_cancel",
        "_stored",
        "_streams",
        "_traceback",
        "_value",
    )

    def __init__(self, execution: Execution) -> None:
        self._execution = execution
        self._finished = _Finished()
        self._value: Any = None
        self._error: BaseException | None = None
        self._traceback: TracebackType | None = None
        self._streams: list[MemoryObjectSendStream[Event]] = []
        #: (idempotency key, what it stands for) of a run without a store
        self._key: tuple[str, tuple[str, Any]] | None = None
        #: what it was submitted as, for its report: (workflow path, idempotency key,
        #: parameters), when given
        self._origin: tuple[str | None, str | None, dict[str, Any] | None] | None = None
        #: for a run another process drives: ask its store to cancel it
        self._remote_cancel: Callable[[], Awaitable[Any]] | None = None
        #: the report of a run that ended in another process, read from its store
        self._stored: RunReport | None = None
        #: nobody outside the runtime holds this handle (a run of ``rt.run`` that was
        #: never listed nor looked up): once dropped from the history, its errors go
        self._private = False
        #: its durable run was unloaded while it waits (see _waits): not over
        self._detached = False
        #: cancel() was called (a run being unloaded as it came is cancelled once parked)
        self._cancel_asked = False
        #: set once the run has left its runtime's runs (ended, or unloaded while it
        #: waits); made only when a shutdown waits for that
        self._leaving: anyio.Event | None = None

    @classmethod
    def _finished_in_store(
        cls, execution: Execution, value: Any, error: BaseException | None
    ) -> Run[Any]:
        """A handle on a run that ended earlier (found by its idempotency key)."""
        handle: Run[Any] = cls(execution)
        handle._value = value
        handle._error = error
        handle._finished.set()
        return handle

    async def _drive(self, interrupted: str = "the runtime shut down before it finished") -> None:
        try:
            self._value = await self._execution.execute()
        except Exception as exc:  # stored for result(); the runtime must not crash
            waits = self._execution._waits
            if waits is not None and waits.unloading and isinstance(exc, RunReleased):
                # unloaded while it waits: not over; whoever takes it up ends this handle
                self._detached = True
                return
            self._error = exc
            self._traceback = exc.__traceback__
        except BaseException:  # the runtime is shutting down: record, then re-raise
            execution = self._execution
            if execution.status is RunStatus.SUCCEEDED:  # it completed as the cancel came
                self._value = execution.result_of(execution.graph.output)
            elif execution.released:
                self._error = RunReleased(self.id)
            else:
                self._error = RunCancelled(self.id, interrupted)
            self._end()
            raise
        self._end()

    def _end(self) -> None:
        self._finished.set()
        for stream in self._streams:
            stream.close()

    def _take_up(self, execution: Execution) -> None:
        """An unloaded run was taken up again in this process: this handle follows it."""
        self._execution = execution
        self._detached = False
        self._remote_cancel = None
        for stream in self._streams:
            execution.add_listener(stream.send_nowait)

    def _ended_elsewhere(self, status: RunStatus, value: Any, error: BaseException | None) -> None:
        """An unloaded run ended in another process (or cannot be followed any more)."""
        self._execution.status = status
        self._value = value
        self._error = error
        self._detached = False
        self._end()

    def _let_go_of_errors(self) -> None:
        """Drop what this finished handle and its run hold of their errors: the raised
        error's traceback holds frames that hold the run, a cycle only the garbage
        collector would free (a full collection, paid by the whole process)."""
        self._error = None
        self._traceback = None
        self._execution._let_go_of_errors()

    # --- identity and state ----------------------------------------------------------------

    @property
    def id(self) -> str:
        """The run id (a uuid4 hex string unless one was given)."""
        return self._execution.run_id

    @property
    def status(self) -> RunStatus:
        """The run's current status."""
        return self._execution.status

    @property
    def graph(self) -> Graph:
        """The compiled graph this run executes."""
        return self._execution.graph

    def __repr__(self) -> str:
        stats = self._execution.statistics()
        done = stats.succeeded + stats.failed + stats.cancelled + stats.skipped
        text = (
            f"<Run {self.id[:8]} {self.status.name} [{done} done, {stats.running} running, "
            f"{stats.pending} waiting"
        )
        limits = self._execution.limit_summary()
        return text + (f" | {limits}]>" if limits else "]>")

    # --- outcome -------------------------------------------------------------------------

    async def result(self) -> R:
        """Wait for the run to end; return its value or raise what it raised.

        A run cancelled by :meth:`cancel` or by a runtime shutdown raises
        :class:`~aflow.errors.RunCancelled`.
        """
        await self._finished.wait()
        if self._error is not None:
            raise self._error.with_traceback(self._traceback)
        value: R = self._value
        return value

    def result_nowait(self) -> R:
        """The value of a finished run (raises :class:`~aflow.RunNotFinished` before the end)."""
        if not self._finished.is_set():
            raise RunNotFinished(self.id)
        if self._error is not None:
            raise self._error.with_traceback(self._traceback)
        value: R = self._value
        return value

    async def wait(self) -> RunStatus:
        """Wait for the run to end without raising; return its status."""
        await self._finished.wait()
        return self.status

    async def cancel(self) -> None:
        """Cancel the run and wait until it has stopped.

        A run another process drives (found by its idempotency key) is asked to
        cancel through the store, as ``aflow cancel`` does; its process unwinds it.
        """
        self._cancel_asked = True
        if self._remote_cancel is not None and not self._finished.is_set():
            await self._remote_cancel()
        self._execution.cancel()
        await self._finished.wait()

    def step(self, key: str) -> StepInfo:
        """A snapshot of one node: state, result or error, attempts, times."""
        return self._execution.step(key)

    def steps(self) -> list[StepInfo]:
        """A snapshot of every task node, in graph order."""
        graph = self._execution.graph
        return [self._execution.step(graph.nodes[i].key) for i in self._execution.task_indices()]

    def results(self) -> dict[str, Any]:
        """Every succeeded task node's output, by node key."""
        return self._execution.results()

    def failures(self) -> dict[str, Failure]:
        """Every node that failed or was cancelled mid-way, by key (the run's full record)."""
        return self._execution.failures()

    def reverted(self) -> list[str]:
        """The keys of the nodes whose reverts succeeded, in the order they finished."""
        return self._execution.reverted()

    def statistics(self) -> RunStatistics:
        """Counts of task nodes by state, the peak in flight, and the duration."""
        return self._execution.statistics()

    def report(self, *, steps: bool = True) -> RunReport:
        """The run as data (:class:`aflow.RunReport`: JSON-ready, the same model a store's
        run gives); ``steps=False`` leaves out the steps."""
        stored = self._stored
        if stored is not None:  # (it ended elsewhere: what its store says)
            return stored if steps else stored.model_copy(update={"steps": None})
        from ._report import report_of_run

        return report_of_run(self, steps=steps)

    async def events(self, *, replay: bool = False) -> AsyncIterator[Event]:
        """Iterate over the run's events from now until it ends.

        With ``replay=True`` it first gives the events that its steps' states stand for
        so far, in the order the run emitted them (``Event.replayed`` is True on those:
        each step's attempts and end, the reverts, the error callbacks; the errors of a
        retried step's earlier attempts are not kept), so that a consumer that comes
        late, or after the end, sees the whole run."""
        send: MemoryObjectSendStream[Event] | None = None
        receive: MemoryObjectReceiveStream[Event] | None = None
        if not self._finished.is_set():
            send, receive = anyio.create_memory_object_stream[Event](math.inf)
            self._streams.append(send)
            self._execution.add_listener(send.send_nowait)
        try:
            if replay:  # (taken with the subscription, in one step: nothing in between)
                from ._report import events_of_run

                for past in events_of_run(self.report()):
                    yield Event(
                        past.name,
                        past.run_id,
                        past.node,
                        past.task,
                        past.attempt,
                        past.duration_s,
                        self._error_of(past.node, past.name),
                        past.timestamp or 0.0,
                        replayed=True,
                    )
            if receive is None:
                return
            async for event in receive:
                yield event
        finally:
            if send is not None and receive is not None:  # a consumer that left is forgotten
                if not self._finished.is_set():
                    self._execution.remove_listener(send.send_nowait)
                try:
                    self._streams.remove(send)
                except ValueError:
                    pass
                send.close()
                receive.close()

    def _error_of(self, key: str | None, name: str) -> BaseException | None:
        """The exception a replayed event stands for (the run's own for its end)."""
        if key is None:
            return self._error if name in ("run_failed", "run_reverted", "run_cancelled") else None
        info = self._execution.step(key)
        if name == "revert_failed":
            return info.revert_error
        if name in ("task_failed", "task_cancelled", "task_retried"):
            return info.error
        return None

    # --- Celery's GroupResult API ----------------------------------------------------------

    def _task_states(self) -> list[NodeState]:
        ex = self._execution
        return [ex.state_of(i) for i in ex.task_indices() if ex.graph.nodes[i].error_scope is None]

    def successful(self) -> bool:
        """True when every task node succeeded."""
        return all(s is NodeState.SUCCEEDED for s in self._task_states())

    def failed(self) -> bool:
        """True when any task node failed (reverted since or not)."""
        return any(not f.cancelled for f in self._execution.failures().values())

    def waiting(self) -> bool:
        """True while any task node has not finished."""
        return any(s in (NodeState.PENDING, NodeState.RUNNING) for s in self._task_states())

    def ready(self) -> bool:
        """True once the run has finished."""
        return self._finished.is_set()

    def completed_count(self) -> int:
        """How many task nodes succeeded."""
        return sum(s is NodeState.SUCCEEDED for s in self._task_states())

    async def join(self, *, propagate: bool = True) -> Any:
        """Wait for the end; return the result.

        With ``propagate=False`` nothing is raised: for a workflow whose value
        is a group, failed or cancelled members hold their exception in the
        list; otherwise the exception itself is returned.
        """
        if propagate:
            return await self.result()
        await self._finished.wait()
        if self._error is None:
            return self._value
        ex = self._execution
        output = ex.graph.nodes[ex.graph.output]
        if output.kind is NodeKind.JOIN:
            return [
                ex.result_of(p) if ex.state_of(p) is NodeState.SUCCEEDED else ex.error_of(p)
                for p in output.parents
            ]
        return self._error

    async def revoke(self) -> None:
        """Cancel the run (Celery's name for :meth:`cancel`)."""
        await self.cancel()
