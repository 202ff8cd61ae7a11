"""The exception tree: every exception aflow defines, and nowhere else.

Its one public home is :mod:`aflow.errors`. Everything aflow raises derives from
:class:`AflowError`. Below, a name's parent is its first base, and a builtin in
parentheses is its second base, so ``except ValueError`` or ``except TypeError``
still catches an error found while building a workflow (before any task runs).
After the name: the attributes it carries, then what it means::

    AflowError(Exception)
    ├── DefinitionError(ValueError)       raised before anything runs
    │   ├── CycleError                    .cycle: the nodes on the cycle, in order
    │   ├── DuplicateTaskError            .name: a node key used twice
    │   ├── MissingInputError             .task, .missing, .detail: inputs nothing provides
    │   ├── AmbiguousProviderError        .name, .providers, .where: two providers of one name
    │   └── SignatureError(TypeError)     .task, .argument, .reason, .subject
    ├── ProvidesError(TypeError)          .task, .provides, .reason: a result unlike ``provides``
    ├── OpIOError(TypeError)              .op, .direction, .key, .expected, .actual: an op's value
    ├── SerializationError(TypeError)     .task, .type, .path, .detail, .subject: not storable
    ├── ResultError(TypeError)            .task, .reason: a result refused (an un-awaited coroutine)
    ├── StoreError                        a store that cannot be used as asked
    │   ├── RunNotFound(KeyError)         .run_id, .where
    │   ├── ResumeMismatch                .run_id, .reason: the workflow changed since the run began
    │   ├── LeaseLost                     .run_id, .reason: another process owns the run now
    │   └── UntrustedManifest(ValueError) .run_id, .step, .reason: an artifact manifest refused
    ├── RecordedError                     .text: a failure read back from a store, as text
    ├── WorkerLost                        .task, .why: the worker running an attempt died
    ├── WorkerMismatch                    .task, .worker: a worker's Python or aflow differ
    ├── RemoteError                       .type_name, .message, .traceback_text: as text
    ├── WhenError                         .step, .error: a step's ``when`` condition raised
    ├── TransientError                    an op's failure worth retrying (``aflow.ops``, as dflow's)
    ├── FatalError                        an op's failure no retry mends: never retried
    ├── IgnoredOption(UserWarning)        a warning: a dflow option with no meaning in-process
    ├── NotFound(KeyError)                an engine's storage holds no value under that name
    │   └── EngineNotFound(ValueError)    .name, .known: engines.load was given an unknown engine
    ├── RunError                          .run_id, .message: a run (not a task in it) went wrong
    │   ├── RunNotFinished                the run has not finished yet
    │   ├── RunCancelled                  run.cancel() or a runtime shutdown stopped it
    │   │   └── RunReleased               a durable run let go of at shutdown, kept resumable
    │   ├── RunExists(ValueError)         .where: a run with that id exists already
    │   ├── IdempotencyConflict(ValueError)  .key, .existing, .requested: the key names another
    │   ├── TaskFailed                    .task, .attempt, .what: a BaseException that is no error
    │   ├── TaskTimeout(TimeoutError)     .task, .attempt, .timeout: one attempt ran too long
    │   ├── WaitTimeout(TimeoutError)     .event, .timeout, .task: a wait's event did not come
    │   ├── RunEnded                      .status: an event sent to (a value asked of) an ended run
    │   ├── RunTimeout(TimeoutError)      .timeout: the run's own deadline passed
    │   ├── GroupFailed(ExceptionGroup)   .exceptions: several root failures, each as raised
    │   │   └── BelowThreshold            .key, .succeeded, .total: too few members succeeded
    │   │       └── SlicesBelowThreshold  .step: too few slices of a sliced step succeeded
    │   └── CompensationFailed(ExceptionGroup)  .original, .exceptions: a revert failed too
    └── AflowInternalError                a bug in aflow

A task's own exception is never wrapped: it reaches the awaiter as raised,
with notes (PEP 678) naming the task, the run and what was reverted. Only
when there is more than one thing to report does aflow raise a group
(``except*`` still matches the task's exception inside it). Cancellation is
never wrapped, converted or swallowed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Self

__all__ = [
    "AflowError",
    "AflowInternalError",
    "AmbiguousProviderError",
    "BelowThreshold",
    "CompensationFailed",
    "CycleError",
    "DefinitionError",
    "DuplicateTaskError",
    "EngineNotFound",
    "FatalError",
    "GroupFailed",
    "IdempotencyConflict",
    "IgnoredOption",
    "LeaseLost",
    "MissingInputError",
    "NotFound",
    "OpIOError",
    "ProvidesError",
    "RecordedError",
    "RemoteError",
    "ResultError",
    "ResumeMismatch",
    "RunCancelled",
    "RunEnded",
    "RunError",
    "RunExists",
    "RunNotFinished",
    "RunNotFound",
    "RunReleased",
    "RunTimeout",
    "SerializationError",
    "SignatureError",
    "SlicesBelowThreshold",
    "StoreError",
    "TaskFailed",
    "TaskTimeout",
    "TransientError",
    "UntrustedManifest",
    "WaitTimeout",
    "WhenError",
    "WorkerLost",
    "WorkerMismatch",
]


class AflowError(Exception):
    """The root of every exception aflow raises."""


class DefinitionError(AflowError, ValueError):
    """A workflow is malformed; raised before any of its tasks runs."""


class CycleError(DefinitionError):
    """The graph has a cycle; :attr:`cycle` lists the nodes on it, in order."""

    def __init__(self, cycle: Sequence[str]) -> None:
        self.cycle: tuple[str, ...] = tuple(cycle)
        path = " -> ".join((*self.cycle, self.cycle[0])) if self.cycle else "?"
        super().__init__(f"cycle: {path}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.cycle,))


class DuplicateTaskError(DefinitionError):
    """Two nodes of one graph were given the same key."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"duplicate node key {name!r}: node keys must be unique within a graph")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name,))


class MissingInputError(DefinitionError):
    """A task requires values that nothing provides: not an upstream task, not the store.

    :attr:`task` names the task and :attr:`missing` every name it lacks.
    """

    def __init__(self, task: str, missing: Sequence[str], detail: str | None = None) -> None:
        self.task = task
        self.missing: tuple[str, ...] = tuple(missing)
        self.detail = detail
        names = ", ".join(repr(m) for m in self.missing)
        text = f"task {task!r} requires {names}, which nothing provides"
        super().__init__(f"{text} ({detail})" if detail else text)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.task, self.missing, self.detail))


class AmbiguousProviderError(DefinitionError):
    """Several tasks of one flow provide the same name, so a consumer cannot tell which it gets.

    :attr:`name` is the value's name and :attr:`providers` the tasks providing it.
    """

    def __init__(self, name: str, providers: Sequence[str], where: str = "") -> None:
        self.name = name
        self.providers: tuple[str, ...] = tuple(providers)
        self.where = where
        both = " and ".join(repr(p) for p in self.providers)
        scope = f" in {where}" if where else ""
        super().__init__(f"{both} both provide {name!r}{scope}: which one is meant is ambiguous")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name, self.providers, self.where))


class SignatureError(DefinitionError, TypeError):
    """A task would be called with arguments its function cannot accept.

    :attr:`task` names the node, :attr:`argument` the parameter at fault
    (or ``None`` when the fault is the number of arguments), and :attr:`reason`
    says what is wrong.
    """

    def __init__(
        self, task: str, reason: str, argument: str | None = None, subject: str = "task"
    ) -> None:
        self.task = task
        self.reason = reason
        self.argument = argument
        self.subject = subject
        if subject == "workflow":
            where = f"parameter {argument!r} of " if argument else ""
        else:
            where = f"argument {argument!r} of " if argument else ""
        super().__init__(f"{where}{subject} {task!r}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.task, self.reason, self.argument, self.subject))


class ProvidesError(AflowError, TypeError):
    """A task returned a value that does not fit what it ``provides``.

    A tuple of names needs a sequence of that length, a set of names a dict
    with those keys. :attr:`task` names the task, :attr:`provides` the names.
    """

    def __init__(self, task: str, provides: Sequence[str], reason: str) -> None:
        self.task = task
        self.provides: tuple[str, ...] = tuple(provides)
        self.reason = reason
        super().__init__(f"task {task!r} provides {list(self.provides)} but {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.task, self.provides, self.reason))


class OpIOError(AflowError, TypeError):
    """An operator (``aflow.ops``) got or gave a value its signature does not allow.

    :attr:`op` names the operator, :attr:`direction` is ``"input"`` or
    ``"output"``, :attr:`key` the field at fault, :attr:`expected` and
    :attr:`actual` say what was wanted and what came.
    """

    def __init__(self, op: str, direction: str, key: str, expected: str, actual: str) -> None:
        self.op = op
        self.direction = direction
        self.key = key
        self.expected = expected
        self.actual = actual
        super().__init__(f"op {op!r} {direction} {key!r}: expected {expected}, got {actual}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.op, self.direction, self.key, self.expected, self.actual))


class SerializationError(AflowError, TypeError):
    """A value cannot be stored by the run's serializer (JSON by default).

    :attr:`task` names the task whose result it is (or, with ``subject="workflow"``,
    the workflow whose parameter it is), :attr:`type` the offending type and
    :attr:`path` where it sits inside the value.
    """

    def __init__(
        self,
        task: str,
        type_: type | str,
        path: str = "",
        detail: str = "",
        subject: str = "task",
    ) -> None:
        self.task = task
        self.type = type_ if isinstance(type_, str) else f"{type_.__module__}.{type_.__qualname__}"
        self.path = path
        self.detail = detail
        self.subject = subject
        where = f" at {path}" if path else ""
        use = (
            "pass JSON-friendly parameters"
            if subject == "workflow"
            else "return JSON-friendly values"
        )
        hint = f": {detail}" if detail else f" ({use}, or opt in to pickle)"
        super().__init__(f"{subject} {task!r}: cannot serialise a {self.type}{where}{hint}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.task, self.type, self.path, self.detail, self.subject))


class ResultError(AflowError, TypeError):
    """A task returned a value aflow refuses to pass on: a coroutine (or another
    awaitable) it forgot to ``await``. :attr:`task` names the task."""

    def __init__(self, task: str, reason: str) -> None:
        self.task = task
        self.reason = reason
        super().__init__(f"task {task!r} {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.task, self.reason))


class StoreError(AflowError):
    """A durable store cannot do what was asked (unknown URL, foreign or corrupt database...)."""


class RunNotFound(StoreError, KeyError):
    """No run with this id in the store."""

    def __init__(self, run_id: str, where: str = "") -> None:
        self.run_id = run_id
        self.where = where
        super().__init__(f"no run {run_id!r}" + (f" in {where}" if where else ""))

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.run_id, self.where))


class ResumeMismatch(StoreError):
    """A run cannot resume: its workflow now builds a different graph (or cannot be rebuilt)."""

    def __init__(self, run_id: str, reason: str) -> None:
        self.run_id = run_id
        self.reason = reason
        super().__init__(f"run {run_id!r} cannot resume: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.run_id, self.reason))


class UntrustedManifest(StoreError, ValueError):
    """An artifact manifest read back from a store that aflow refuses to use (``aflow.ops``):
    a hash that is not a sha256 digest, a name that would leave its folder, or an object
    that is not a regular file of the artifact store. Nothing was read or written.

    :attr:`run_id` and :attr:`step` name the run and the step whose record holds
    it (``None`` for an ``ArtifactValue`` made by hand), :attr:`reason` what is wrong.
    """

    def __init__(self, run_id: str | None, step: str | None, reason: str) -> None:
        self.run_id = run_id
        self.step = step
        self.reason = reason
        where = ", ".join(
            ([f"run {run_id}"] if run_id is not None else [])
            + ([f"step {step!r}"] if step is not None else [])
        )
        what = "the stored artifact manifest" if where else "an artifact manifest"
        super().__init__(f"{where + ': ' if where else ''}{what} is not trusted: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.run_id, self.step, self.reason))


class LeaseLost(StoreError):
    """This process no longer owns a run: its heartbeats failed for longer than the
    lease, or another process took the run over. The run stops here, unreverted."""

    def __init__(self, run_id: str, reason: str) -> None:
        self.run_id = run_id
        self.reason = reason
        super().__init__(f"run {run_id!r}: this process lost its lease on it ({reason})")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.run_id, self.reason))


class RecordedError(AflowError):
    """A failure read back from a store when a run resumed: the text it was recorded as
    (``Type: message``); the original exception object did not survive the process."""

    def __init__(self, text: str) -> None:
        self.text = text
        super().__init__(text)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.text,))


class WhenError(AflowError):
    """A step's ``when`` condition raised (``aflow.ops``): the step fails with this, never
    retried. :attr:`step` names the step and :attr:`error` is what the condition raised."""

    def __init__(self, step: str, error: BaseException) -> None:
        self.step = step
        self.error = error
        super().__init__(
            f"the when condition of step {step!r} raised {type(error).__name__}: {error}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.step, self.error))


class TransientError(AflowError):
    """Raised by an operator (``aflow.ops``) for a failure that may pass: a step retries it
    under its retries (``PythonOPTemplate(retry_on_transient_error=N)`` retries only these).
    dflow's ``TransientError``; raise it with a message, as any exception."""


class FatalError(AflowError):
    """Raised by an operator (``aflow.ops``) for a failure no retry can mend: the step
    fails at once, whatever its retries. dflow's ``FatalError``."""


class IgnoredOption(AflowError, UserWarning):
    """A warning, not an error: a dflow option of ``PythonOPTemplate`` or ``Slices`` that
    has no meaning when the op runs in this process (``image=``, ``requests=``...) was
    given, and is ignored. Issued once per option name per process."""


class RunError(AflowError):
    """Something about a run (rather than a task in it) went wrong."""

    def __init__(self, run_id: str, message: str) -> None:
        self.run_id = run_id
        self.message = message
        super().__init__(f"run {run_id}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.run_id, self.message))


class RunNotFinished(RunError):
    """A result was asked of a run that has not finished."""

    def __init__(self, run_id: str, message: str = "the run has not finished") -> None:
        super().__init__(run_id, message)


class RunCancelled(RunError):
    """The run was cancelled (``run.cancel()``, or its runtime shut down) before it finished.

    The task that cancelled is not itself cancelled, so it gets this error
    instead of ``CancelledError``; a caller whose *own* task is cancelled
    always gets ``CancelledError``.
    """

    def __init__(self, run_id: str, message: str = "the run was cancelled") -> None:
        super().__init__(run_id, message)


class RunReleased(RunCancelled):
    """The runtime shut down before this durable run finished and let go of it: nothing
    was reverted, the store keeps it resumable, and any process with the store (its
    recovery, ``aflow resume``) takes it up from its last checkpoint."""

    def __init__(
        self,
        run_id: str,
        message: str = "the runtime shut down before the run finished; the run is kept "
        "resumable in its store (nothing was reverted)",
    ) -> None:
        super().__init__(run_id, message)


class RunExists(RunError, ValueError):
    """A run was submitted with the id of a run that exists already (active in this
    runtime, or on record in its store)."""

    def __init__(self, run_id: str, where: str = "") -> None:
        self.where = where
        place = f" in {where}" if where else ""
        super().__init__(run_id, f"a run with this id exists already{place}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.run_id, self.where))


class IdempotencyConflict(RunError, ValueError):
    """An idempotency key was reused for a different workflow (or other parameters) than
    the run it names; nothing was started. :attr:`run_id` is the run the key names."""

    def __init__(self, run_id: str, key: str, existing: str, requested: str) -> None:
        self.key = key
        self.existing = existing
        self.requested = requested
        super().__init__(
            run_id,
            f"idempotency key {key!r} names this run of {existing}, not {requested}; "
            "use another key for a different workflow or different parameters",
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.run_id, self.key, self.existing, self.requested))


class TaskFailed(RunError):
    """A task ended with a ``BaseException`` that is neither an error nor a cancellation
    (``GeneratorExit``, a custom ``BaseException``). aflow fails the task with this,
    the original as ``__cause__``, and unwinds the run as for any failure.
    ``KeyboardInterrupt`` and ``SystemExit`` are not wrapped: they propagate."""

    def __init__(self, run_id: str, task: str, attempt: int, what: str) -> None:
        self.task = task
        self.attempt = attempt
        self.what = what
        super().__init__(run_id, f"task {task!r} raised {what} on attempt {attempt}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.run_id, self.task, self.attempt, self.what))


class TaskTimeout(RunError, TimeoutError):
    """One attempt of a task ran past its ``timeout`` (``except TimeoutError`` catches it)."""

    def __init__(self, run_id: str, task: str, attempt: int, timeout: float) -> None:
        self.task = task
        self.attempt = attempt
        self.timeout = timeout
        super().__init__(run_id, f"task {task!r} timed out after {timeout} s on attempt {attempt}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.run_id, self.task, self.attempt, self.timeout))


class WaitTimeout(RunError, TimeoutError):
    """A wait ran past its deadline: a wait node or ``aflow.receive`` whose event did not
    come in time (the step fails, and the run unwinds and compensates as for any
    failure), or ``Runtime.get_event`` whose value was not set in time.
    ``except TimeoutError`` catches it. ``task`` is the waiting node's key (``None``
    for ``get_event``)."""

    def __init__(self, run_id: str, event: str, timeout: float, task: str | None = None) -> None:
        self.event = event
        self.timeout = timeout
        self.task = task
        where = f"task {task!r} waited" if task is not None else "waited"
        super().__init__(run_id, f"{where} {timeout:g} s for {event!r}, which did not come")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.run_id, self.event, self.timeout, self.task))


class RunEnded(RunError):
    """An event was sent to a run that has ended (nothing waits for it any more, and it
    was not kept), or a value was asked of an ended run that never set it."""

    def __init__(self, run_id: str, status: str, message: str) -> None:
        self.status = status
        super().__init__(run_id, f"the run has ended ({status}): {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.run_id, self.status, self.message.split(": ", 1)[-1]))


class RunTimeout(RunError, TimeoutError):
    """The run as a whole ran past its ``timeout``; it was stopped and unwound."""

    def __init__(self, run_id: str, timeout: float) -> None:
        self.timeout = timeout
        super().__init__(run_id, f"the run exceeded its deadline of {timeout} s")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.run_id, self.timeout))


class _RunGroup(RunError, ExceptionGroup):
    """An ExceptionGroup that is also a RunError (so ``except*`` works on it)."""

    def __new__(cls, run_id: str, message: str, exceptions: Sequence[Exception]) -> Self:
        return ExceptionGroup.__new__(cls, message, list(exceptions))

    def __init__(self, run_id: str, message: str, exceptions: Sequence[Exception]) -> None:
        self.run_id = run_id
        self.message_text = message

    def __str__(self) -> str:
        return f"run {self.run_id}: {ExceptionGroup.__str__(self)}"

    def derive(self, excs: Sequence[Exception]) -> _RunGroup:  # type: ignore[override]
        return type(self)(self.run_id, self.message_text, excs)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.run_id, self.message_text, list(self.exceptions)))


class GroupFailed(_RunGroup):
    """Several independent tasks failed; the group holds each task's own exception."""


class BelowThreshold(GroupFailed):
    """Fewer members of a fan-out succeeded than its success threshold asks: a group's or
    a map's ``min_success`` / ``success_ratio``, a sliced step's
    ``continue_on_num_success`` / ``continue_on_success_ratio`` (one rule for all).
    :attr:`key` names the fan-out, :attr:`succeeded` and :attr:`total` count its
    members; the group holds the failed members' errors."""

    _WHAT = "members"

    def __new__(
        cls, run_id: str, key: str, succeeded: int, total: int, exceptions: Sequence[Exception]
    ) -> Self:
        if not exceptions:  # too few members to begin with (a fan-out over a short input)
            exceptions = [ValueError(f"{key!r}: {cls._message(key, succeeded, total)}")]
        return ExceptionGroup.__new__(cls, cls._message(key, succeeded, total), list(exceptions))

    def __init__(
        self, run_id: str, key: str, succeeded: int, total: int, exceptions: Sequence[Exception]
    ) -> None:
        super().__init__(run_id, self._message(key, succeeded, total), exceptions)
        self.key = key
        self.succeeded = succeeded
        self.total = total

    @classmethod
    def _message(cls, key: str, succeeded: int, total: int) -> str:
        return f"{succeeded} of {total} {cls._WHAT} of {key!r} succeeded, below its threshold"

    def derive(self, excs: Sequence[Exception]) -> BelowThreshold:  # type: ignore[override]
        return type(self)(self.run_id, self.key, self.succeeded, self.total, excs)

    def __reduce__(self) -> tuple[Any, ...]:
        args = (self.run_id, self.key, self.succeeded, self.total, list(self.exceptions))
        return (type(self), args)


class SlicesBelowThreshold(BelowThreshold):
    """Fewer slices of a sliced step (``aflow.ops``) succeeded than its
    ``continue_on_num_success`` / ``continue_on_success_ratio`` ask: :attr:`step` names
    the step; the group holds the failed slices' errors (the first is also the
    ``__cause__``)."""

    _WHAT = "slices"

    @property
    def step(self) -> str:
        """The sliced step's key."""
        return self.key


class CompensationFailed(_RunGroup):
    """A revert failed while unwinding a failed run.

    The group holds the root failure(s) first, then every revert failure;
    :attr:`original` is the root failure (or the :class:`GroupFailed` of several).
    :attr:`reverts` maps the key of each node whose revert failed to what it
    raised (a compensation deadline that cut several: each of them to it).
    """

    def __new__(
        cls,
        run_id: str,
        message: str,
        exceptions: Sequence[Exception],
        reverts: Mapping[str, BaseException] | None = None,
    ) -> Self:
        return ExceptionGroup.__new__(cls, message, list(exceptions))

    def __init__(
        self,
        run_id: str,
        message: str,
        exceptions: Sequence[Exception],
        reverts: Mapping[str, BaseException] | None = None,
    ) -> None:
        super().__init__(run_id, message, exceptions)
        self.reverts: dict[str, BaseException] = dict(reverts or {})

    @property
    def original(self) -> BaseException:
        """The forward failure that started the unwinding."""
        return self.exceptions[0]

    def derive(self, excs: Sequence[Exception]) -> CompensationFailed:  # type: ignore[override]
        kept = {k: e for k, e in self.reverts.items() if any(e is x for x in excs)}
        return type(self)(self.run_id, self.message_text, excs, kept)

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            type(self),
            (self.run_id, self.message_text, list(self.exceptions), self.reverts),
        )


class AflowInternalError(AflowError):
    """A bug in aflow: please report it with the traceback."""


class NotFound(AflowError, KeyError):
    """An engine's storage holds no value under that name (yet, or any more): TaskFlow's
    ``NotFound`` (:mod:`aflow.engines`)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"


class EngineNotFound(NotFound, ValueError):
    """``engines.load(..., engine=name)`` names no engine aflow has: TaskFlow's ``NotFound``
    (a ``LookupError``), and a ``ValueError`` like every error found before anything runs."""

    def __init__(self, name: object, known: Sequence[str]) -> None:
        self.name = name
        self.known: tuple[str, ...] = tuple(known)
        super().__init__(f"no engine named {name!r}: engine must be one of {self.known}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name, self.known))


def told(exc: BaseException) -> str:
    """``str(exc)``, or what can be said of it when its ``__str__`` fails (a bad task's
    error must fail the task like any other, not the runtime, a log line or a report)."""
    try:
        return str(exc)
    except Exception as broken:
        return f"<{type(exc).__name__}: str() failed: {type(broken).__name__}>"


class WorkerLost(AflowError):
    """The worker running an attempt died (a process killed, a pool broken): the
    attempt failed, and is retried like any failure (``retries=``). :attr:`task` names
    the task."""

    def __init__(self, task: str, why: str) -> None:
        super().__init__(f"task {task!r}: the worker running it was lost ({why})")
        self.task = task
        self.why = why

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.task, self.why))


class WorkerMismatch(AflowError):
    """A worker runs another Python (major.minor) or another aflow than the process that
    sent it a body: pickles and the calls themselves would not mean the same there. The
    attempt fails (and is retried, maybe on another worker); :attr:`task` names the task,
    :attr:`worker` the worker."""

    def __init__(self, task: str, worker: str, caller: str, theirs: str) -> None:
        super().__init__(
            f"task {task!r}: {worker} runs {theirs}, but the caller runs {caller}: "
            "install the same Python and aflow on the workers"
        )
        self.task = task
        self.worker = worker
        self.caller = caller
        self.theirs = theirs

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.task, self.worker, self.caller, self.theirs))


class RemoteError(AflowError):
    """An error a body raised in another process that could not come back as itself
    (its type cannot be imported here, or it does not pickle): its type's name, its
    message and its traceback there, as text."""

    def __init__(self, type_name: str, message: str, traceback_text: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.type_name, self.message, self.traceback_text))
