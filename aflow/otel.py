"""OpenTelemetry spans and metrics for aflow runs (the ``aflow[otel]`` extra)::

    import aflow.otel

    aflow.otel.instrument()  # or instrument(tracer_provider=..., meter_provider=...)

Every run made afterwards, by any means, is traced: a ``run {workflow}`` span (a child
of the span current where the run was made), a ``node {key}`` span per attempt of each
node, a ``compensate {key}`` span per attempt of each revert, and the spans a task body
makes nest under its node's. A body run by an executor in another process continues the
trace there (an ``execute {key}`` span, where that process has a tracer provider).
Attributes are ``aflow.*`` and ``error.type``; argument values and results are never
recorded. Metrics: ``aflow.runs``, ``aflow.nodes``,
``aflow.run.duration``, ``aflow.node.duration``, ``aflow.node.retries`` and
``aflow.node.reverts``. Without ``instrument()``, or while no tracer or meter provider is
configured (the API's defaults), a run costs what it did: it gets no listener at all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, final

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics, propagate, trace
except ImportError as exc:  # pragma: no cover (the extra is a dev dependency)
    raise ImportError("aflow.otel needs OpenTelemetry: pip install 'aflow[otel]'") from exc

from . import __version__
from ._events import (
    REVERT_FAILED,
    REVERT_RETRIED,
    REVERT_STARTED,
    REVERT_SUCCEEDED,
    RUN_CANCELLED,
    RUN_FAILED,
    RUN_RELEASED,
    RUN_REVERTED,
    RUN_STARTED,
    RUN_SUCCEEDED,
    RUN_SUSPENDED,
    RUN_WAITING,
    TASK_CANCELLED,
    TASK_FAILED,
    TASK_RETRIED,
    TASK_SKIPPED,
    TASK_STARTED,
    TASK_SUCCEEDED,
    Event,
    EventSink,
    add_run_hook,
    remove_run_hook,
)
from ._exceptions import RunTimeout, told

__all__ = ["Instrumentation", "instrument", "uninstrument"]

#: ``aflow.result``: how a run, a node's attempt or a revert ended.
SUCCESS = "success"
FAILURE = "failure"
TIMEOUT = "timeout"
SKIP = "skip"
CANCELLATION = "cancellation"
COMPENSATED = "compensated"

RUN_ID = "aflow.run.id"
WORKFLOW = "aflow.workflow"
NODE_KEY = "aflow.node.key"
TASK = "aflow.task"
ATTEMPT = "aflow.attempt"
EXECUTOR = "aflow.executor"
RESULT = "aflow.result"
RUN_STATUS = "aflow.run.status"  # a run span that ends without an outcome: suspended...
REVERT = "aflow.revert"  # on aflow.node.retries: a revert's attempt was retried
ERROR_TYPE = "error.type"

_INTERNAL = trace.SpanKind.INTERNAL
_ERROR = trace.StatusCode.ERROR


@final
class Instrumentation:
    """What :func:`instrument` turned on; :meth:`uninstrument` (or the end of a ``with``
    block) turns it off for runs made afterwards (runs made before keep their spans)."""

    __slots__ = ("_hook", "_meter_provider", "_telemetry", "_tracer_provider")

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None,
        meter_provider: metrics.MeterProvider | None,
    ) -> None:
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        self._telemetry: _Telemetry | None = None
        self._hook = self._observe  # (one bound method: removed by identity)

    @property
    def active(self) -> bool:
        """Whether runs made now are traced (when a provider is configured)."""
        return _current is self

    def uninstrument(self) -> None:
        """Runs made from now on are not traced (idempotent)."""
        global _current
        remove_run_hook(self._hook)
        if _current is self:
            _current = None

    def __enter__(self) -> Instrumentation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.uninstrument()

    def _observe(self, sink: EventSink) -> _RunObserver | None:
        """The run hook: an observer for the run ``sink`` belongs to, or None while
        neither provider is configured (the run then gets no listener)."""
        telemetry = self._telemetry_now()
        if telemetry is None:
            return None
        return _RunObserver(telemetry, sink, otel_context.get_current())

    def _telemetry_now(self) -> _Telemetry | None:
        tracer_provider = self._tracer_provider
        if tracer_provider is None:
            tracer_provider = trace.get_tracer_provider()
        meter_provider = self._meter_provider
        if meter_provider is None:
            meter_provider = metrics.get_meter_provider()
        telemetry = self._telemetry
        if (
            telemetry is not None
            and telemetry.tracer_provider is tracer_provider
            and telemetry.meter_provider is meter_provider
        ):
            return telemetry
        if not (_configured(tracer_provider) or _configured(meter_provider)):
            return None
        telemetry = self._telemetry = _Telemetry(tracer_provider, meter_provider)
        return telemetry


_current: Instrumentation | None = None


def instrument(
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> Instrumentation:
    """Trace every aflow run made from now on, in this process.

    Without providers, the global ones are used (``trace.set_tracer_provider()``...),
    as they are when each run is made: until the application configures one, runs
    get no listener and cost nothing more. Idempotent: while instrumented, a second
    call returns the same :class:`Instrumentation` (other providers: ``RuntimeError``).
    """
    global _current
    current = _current
    if current is not None:
        if tracer_provider not in (None, current._tracer_provider) or meter_provider not in (
            None,
            current._meter_provider,
        ):
            raise RuntimeError(
                "aflow.otel is instrumented with other providers: uninstrument() first"
            )
        return current
    current = _current = Instrumentation(tracer_provider, meter_provider)
    add_run_hook(current._hook)
    return current


def uninstrument() -> None:
    """Stop tracing runs made from now on (what :func:`instrument` turned on)."""
    if _current is not None:
        _current.uninstrument()


def _configured(provider: object) -> bool:
    """A provider the application set, not one of the API's defaults (no-op or proxy)."""
    return not isinstance(
        provider,
        (trace.ProxyTracerProvider, trace.NoOpTracerProvider, metrics.NoOpMeterProvider),
    ) and (type(provider).__name__ != "_ProxyMeterProvider")


@final
class _Telemetry:
    """A tracer and the instruments, of one tracer provider and one meter provider."""

    __slots__ = (
        "_attributes",
        "meter_provider",
        "node_duration",
        "nodes",
        "retries",
        "reverts",
        "run_duration",
        "runs",
        "tracer",
        "tracer_provider",
    )

    def __init__(
        self, tracer_provider: trace.TracerProvider, meter_provider: metrics.MeterProvider
    ) -> None:
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.tracer = tracer_provider.get_tracer("aflow", __version__)
        meter = meter_provider.get_meter("aflow", __version__)
        self.runs = meter.create_counter(
            "aflow.runs", unit="{run}", description="Runs ended, by aflow.result"
        )
        self.nodes = meter.create_counter(
            "aflow.nodes", unit="{node}", description="Nodes ended, by aflow.result"
        )
        self.run_duration = meter.create_histogram(
            "aflow.run.duration", unit="s", description="How long runs took, by aflow.result"
        )
        self.node_duration = meter.create_histogram(
            "aflow.node.duration",
            unit="s",
            description="How long nodes took, retries included, by aflow.result",
        )
        self.retries = meter.create_counter(
            "aflow.node.retries",
            unit="{retry}",
            description="Attempts that failed and were retried",
        )
        self.reverts = meter.create_counter(
            "aflow.node.reverts", unit="{revert}", description="Reverts ended, by aflow.result"
        )
        self._attributes: dict[tuple[Any, ...], Mapping[str, Any]] = {}

    def attributes(self, *pairs: Any) -> Mapping[str, Any]:
        """``{name: value, ...}`` of ``name, value, ...`` (made once: few distinct sets)."""
        found = self._attributes.get(pairs)
        if found is None:
            it = iter(pairs)
            found = self._attributes[pairs] = dict(zip(it, it, strict=True))
        return found


@final
class _RunObserver:
    """One run's spans and metrics, from its events (a nested run's, without a run span:
    its nodes' spans are children of the span current where it was made)."""

    __slots__ = (
        "_first",
        "_name",
        "_nodes",
        "_parent",
        "_reverts",
        "_run_id",
        "_run_span",
        "_run_start",
        "_sink",
        "_t",
        "_under",
    )

    def __init__(self, telemetry: _Telemetry, sink: EventSink, parent: otel_context.Context):
        self._t = telemetry
        self._run_id = sink.run_id
        #: (the workflow's name is read as the run starts: its runtime names it after
        #: making it)
        self._sink = sink
        self._name = sink.name
        #: the context where the run was made; its node spans' parent, until the run span
        self._parent = parent
        self._under = parent
        self._run_span: trace.Span | None = None
        self._run_start = 0.0
        #: the span of the attempt running now, by node key; a revert's
        self._nodes: dict[str, trace.Span] = {}
        self._reverts: dict[str, trace.Span] = {}
        #: when the node's first attempt started (its duration includes its retries)
        self._first: dict[str, float] = {}

    def __call__(self, event: Event) -> None:
        if not event.replayed:
            handler = _HANDLERS.get(event.name)
            if handler is not None:
                handler(self, event)

    def enter_body(self, key: str, attempt: int, revert: bool, executor: str) -> None:
        """Make the attempt's span current in its body's context (a copy: never reset),
        and say where the body runs."""
        span = (self._reverts if revert else self._nodes).get(key)
        if span is not None:
            span.set_attribute(EXECUTOR, executor)
        else:
            span = self._run_span
        if span is not None:
            otel_context.attach(trace.set_span_in_context(span))

    def trace_carrier(self) -> dict[str, str]:
        """The trace context current here (an attempt's body: its span), as W3C headers,
        for a body run in another process to continue it (its ``execute {key}`` span)."""
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return carrier

    # --- the run ---------------------------------------------------------------------

    def _run_started(self, event: Event) -> None:
        if self._run_span is not None:  # (never: a run's span ends as it stops)
            self._run_span.end(_ns(event.timestamp))
        name = self._name = self._sink.name
        attributes = {RUN_ID: self._run_id}
        if name is not None:
            attributes[WORKFLOW] = name
        span = self._t.tracer.start_span(
            f"run {name}" if name else "run",
            self._parent,
            _INTERNAL,
            attributes,
            start_time=_ns(event.timestamp),
        )
        self._run_span = span
        self._run_start = event.timestamp
        self._under = trace.set_span_in_context(span, self._parent)

    def _run_ended(self, event: Event) -> None:
        span = self._run_span
        if span is None:
            return
        self._run_span = None
        self._under = self._parent
        self._end_leftovers(event.timestamp)
        ended = event.name
        error = event.error
        if ended == RUN_SUCCEEDED:
            result = SUCCESS
        elif ended == RUN_CANCELLED:
            result = CANCELLATION
            error = None  # (the caller's cancellation, not the run's failure)
        elif isinstance(error, RunTimeout):
            result = TIMEOUT
        else:
            result = COMPENSATED if ended == RUN_REVERTED else FAILURE
        _end(span, result, error, event.timestamp)
        t = self._t
        name = self._name
        if name is None:
            attributes = t.attributes(RESULT, result)
        else:
            attributes = t.attributes(RESULT, result, WORKFLOW, name)
        t.runs.add(1, attributes)
        duration = event.duration_s
        t.run_duration.record(
            duration if duration is not None else event.timestamp - self._run_start, attributes
        )

    def _run_paused(self, event: Event) -> None:
        """Suspended, released or waiting: the span ends, with no outcome (a run taken up
        again has a span of its own)."""
        span = self._run_span
        if span is None:
            return
        self._run_span = None
        self._under = self._parent
        self._end_leftovers(event.timestamp)
        span.set_attribute(RUN_STATUS, event.name.removeprefix("run_"))
        span.end(_ns(event.timestamp))

    def _end_leftovers(self, at: float) -> None:
        """Spans of attempts the run ended without telling how (a compensation that timed
        out, a run let go of): cut short."""
        for spans in (self._nodes, self._reverts):
            for span in spans.values():
                _end(span, CANCELLATION, None, at)
            spans.clear()
        self._first.clear()

    # --- nodes -----------------------------------------------------------------------

    def _start(self, event: Event, spans: dict[str, trace.Span], what: str) -> trace.Span:
        key = _key(event)
        old = spans.pop(key, None)
        if old is not None:  # (never: an attempt's span ends before the next starts)
            old.end(_ns(event.timestamp))
        span = self._t.tracer.start_span(
            f"{what} {key}",
            self._under,
            _INTERNAL,
            {
                RUN_ID: self._run_id,
                NODE_KEY: key,
                TASK: _task(event),
                ATTEMPT: event.attempt,
                EXECUTOR: "loop",
            },
            start_time=_ns(event.timestamp - (event.duration_s or 0.0)),
        )
        spans[key] = span
        return span

    def _ended(self, event: Event, spans: dict[str, trace.Span], what: str) -> trace.Span:
        """The attempt's span, started now if it was not (a node that never ran)."""
        span = spans.pop(_key(event), None)
        if span is None:
            span = self._start(event, spans, what)
            del spans[_key(event)]
        return span

    def _task_started(self, event: Event) -> None:
        self._start(event, self._nodes, "node")
        self._first.setdefault(_key(event), event.timestamp)

    def _task_retried(self, event: Event) -> None:
        result = _failed(event.error)
        _end(self._ended(event, self._nodes, "node"), result, event.error, event.timestamp)
        t = self._t
        t.retries.add(1, t.attributes(TASK, _task(event), RESULT, result, REVERT, False))

    def _task_ended(self, event: Event) -> None:
        name = event.name
        if name == TASK_SUCCEEDED:
            result = SUCCESS
        elif name == TASK_CANCELLED:
            result = CANCELLATION
        elif name == TASK_SKIPPED:
            result = SKIP
        else:
            result = _failed(event.error)
        _end(self._ended(event, self._nodes, "node"), result, event.error, event.timestamp)
        t = self._t
        attributes = t.attributes(TASK, _task(event), RESULT, result)
        t.nodes.add(1, attributes)
        first = self._first.pop(_key(event), None)
        if result is not SKIP:
            duration = event.duration_s
            if duration is None:
                duration = 0.0 if first is None else event.timestamp - first
            t.node_duration.record(duration, attributes)

    def _revert_started(self, event: Event) -> None:
        self._start(event, self._reverts, "compensate")

    def _revert_retried(self, event: Event) -> None:
        result = _failed(event.error)
        span = self._ended(event, self._reverts, "compensate")
        _end(span, result, event.error, event.timestamp)
        t = self._t
        t.retries.add(1, t.attributes(TASK, _task(event), RESULT, result, REVERT, True))

    def _revert_ended(self, event: Event) -> None:
        result = COMPENSATED if event.name == REVERT_SUCCEEDED else _failed(event.error)
        span = self._ended(event, self._reverts, "compensate")
        _end(span, result, event.error, event.timestamp)
        t = self._t
        t.reverts.add(1, t.attributes(TASK, _task(event), RESULT, result))


_HANDLERS: dict[str, Callable[[_RunObserver, Event], None]] = {
    RUN_STARTED: _RunObserver._run_started,
    RUN_SUCCEEDED: _RunObserver._run_ended,
    RUN_FAILED: _RunObserver._run_ended,
    RUN_REVERTED: _RunObserver._run_ended,
    RUN_CANCELLED: _RunObserver._run_ended,
    RUN_SUSPENDED: _RunObserver._run_paused,
    RUN_RELEASED: _RunObserver._run_paused,
    RUN_WAITING: _RunObserver._run_paused,
    TASK_STARTED: _RunObserver._task_started,
    TASK_RETRIED: _RunObserver._task_retried,
    TASK_SUCCEEDED: _RunObserver._task_ended,
    TASK_FAILED: _RunObserver._task_ended,
    TASK_CANCELLED: _RunObserver._task_ended,
    TASK_SKIPPED: _RunObserver._task_ended,
    REVERT_STARTED: _RunObserver._revert_started,
    REVERT_RETRIED: _RunObserver._revert_retried,
    REVERT_SUCCEEDED: _RunObserver._revert_ended,
    REVERT_FAILED: _RunObserver._revert_ended,
}


def _key(event: Event) -> str:
    return event.node or ""


def _task(event: Event) -> str:
    return event.task or event.node or ""


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _failed(error: BaseException | None) -> str:
    return TIMEOUT if isinstance(error, TimeoutError) else FAILURE


def _end(span: trace.Span, result: str, error: BaseException | None, at: float) -> None:
    span.set_attribute(RESULT, result)
    if error is not None:
        span.set_attribute(ERROR_TYPE, _type_name(error))
        span.record_exception(error, timestamp=_ns(at))
        span.set_status(_ERROR, told(error))
    span.end(_ns(at))


def _type_name(error: BaseException) -> str:
    """The error's qualified type name (``ValueError``, ``aflow.errors.TaskTimeout``)."""
    kind = type(error)
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"
