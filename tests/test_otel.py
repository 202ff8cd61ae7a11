"""aflow.otel: spans and metrics of runs, read from the SDK's in-memory exporter and reader."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import aflow
import aflow.otel
from aflow import _events, engines
from aflow.patterns import linear_flow

#: an argument value no span, event or metric may hold
SECRET = "4111-1111-1111-1111"


class Declined(Exception):
    pass


@aflow.task
async def reserve(card: str) -> str:
    return f"hold for {card}"


@reserve.revert
async def release(card: str, *, result: Any) -> None:
    pass


@aflow.task
async def charge(hold: str) -> str:
    return f"paid {hold}"


@charge.revert
async def refund(hold: str, *, result: Any) -> None:
    pass


@aflow.task
async def ship(receipt: str) -> str:
    raise Declined("carrier refused the parcel")


@aflow.workflow
def durable_saga(card: str) -> Any:
    return reserve.s(card) | charge.s()


@dataclass
class Telemetry:
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer: trace.Tracer

    def spans(self) -> list[ReadableSpan]:
        return sorted(self.exporter.get_finished_spans(), key=lambda s: s.start_time or 0)

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        (span,) = self.named(name)
        return span

    def metrics(self) -> dict[str, dict[frozenset[tuple[str, Any]], Any]]:
        """Each metric's points: attributes -> sum (counters) or count (histograms)."""
        found: dict[str, dict[frozenset[tuple[str, Any]], Any]] = {}
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    points = found.setdefault(metric.name, {})
                    for point in metric.data.data_points:
                        value = getattr(point, "value", None)
                        if value is None:
                            value = point.count  # type: ignore[union-attr]
                        points[frozenset((point.attributes or {}).items())] = value
        return found


def tree(spans: list[ReadableSpan]) -> list[str]:
    """The spans as an indented outline, children under their parents."""
    by_id = {s.context.span_id: s for s in spans if s.context is not None}

    def depth(span: ReadableSpan) -> int:
        n = 0
        while span.parent is not None and span.parent.span_id in by_id:
            span = by_id[span.parent.span_id]
            n += 1
        return n

    return ["  " * depth(s) + s.name for s in spans]


def assert_no_event_work(sink: _events.EventSink) -> None:
    """The run got no observer and no listener: the scheduler's fast path, no event work
    (but for structlog's, when another test configured it for this process)."""
    assert sink.observers == ()
    assert sink.listeners == ()
    assert sink.node_events is (sink._node_log is not None)


def attrs(*pairs: tuple[str, Any]) -> frozenset[tuple[str, Any]]:
    return frozenset(pairs)


@pytest.fixture
def otel() -> Iterator[Telemetry]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    instrumentation = aflow.otel.instrument(
        tracer_provider=tracer_provider, meter_provider=meter_provider
    )
    try:
        yield Telemetry(exporter, reader, tracer_provider.get_tracer("tests"))
    finally:
        instrumentation.uninstrument()
        tracer_provider.shutdown()
        meter_provider.shutdown()
    assert _events._run_hooks == ()


async def test_a_saga_that_succeeds_has_a_run_span_over_a_span_per_node(otel: Telemetry) -> None:
    assert await aflow.run(reserve.s(SECRET) | charge.s()) == f"paid hold for {SECRET}"

    spans = otel.spans()
    assert tree(spans) == ["run", "  node reserve", "  node charge"]
    run = otel.one("run")
    run_id = run.attributes["aflow.run.id"]  # type: ignore[index]
    assert dict(run.attributes or {}) == {"aflow.run.id": run_id, "aflow.result": "success"}
    assert dict(otel.one("node charge").attributes or {}) == {
        "aflow.run.id": run_id,
        "aflow.node.key": "charge",
        "aflow.task": "charge",
        "aflow.attempt": 1,
        "aflow.executor": "loop",
        "aflow.result": "success",
    }
    for span in spans:
        assert span.kind is trace.SpanKind.INTERNAL
        assert span.status.status_code is trace.StatusCode.UNSET
        assert run.start_time <= span.start_time <= span.end_time <= run.end_time  # type: ignore[operator]
    reserved, charged = otel.named("node reserve")[0], otel.one("node charge")
    assert reserved.end_time <= charged.start_time  # type: ignore[operator]
    # argument values and results are never recorded, anywhere
    for span in spans:
        values = [*(span.attributes or {}).values()]
        values += [v for e in span.events for v in (e.attributes or {}).values()]
        assert not any(SECRET in str(v) for v in values), span.name
    assert SECRET not in repr(otel.metrics())


async def test_a_saga_that_fails_has_an_error_span_and_compensate_spans(otel: Telemetry) -> None:
    with pytest.raises(Declined):
        await aflow.run(reserve.s(SECRET) | charge.s() | ship.s())

    spans = otel.spans()
    assert tree(spans) == [
        "run",
        "  node reserve",
        "  node charge",
        "  node ship",
        "  compensate charge",
        "  compensate reserve",
    ]
    failed = otel.one("node ship")
    assert failed.attributes["aflow.result"] == "failure"  # type: ignore[index]
    assert failed.attributes["error.type"] == f"{__name__}.Declined"  # type: ignore[index]
    assert failed.status.status_code is trace.StatusCode.ERROR
    assert failed.status.description == "carrier refused the parcel"
    (exception,) = failed.events
    assert exception.name == "exception"
    for name in ("compensate charge", "compensate reserve"):
        span = otel.one(name)
        assert span.attributes["aflow.result"] == "compensated"  # type: ignore[index]
        assert span.status.status_code is trace.StatusCode.UNSET
    run = otel.one("run")
    assert run.attributes["aflow.result"] == "compensated"  # type: ignore[index]
    assert run.attributes["error.type"] == f"{__name__}.Declined"  # type: ignore[index]
    assert run.status.status_code is trace.StatusCode.ERROR

    metrics = otel.metrics()
    assert metrics["aflow.runs"] == {attrs(("aflow.result", "compensated")): 1}
    assert metrics["aflow.run.duration"] == {attrs(("aflow.result", "compensated")): 1}
    assert metrics["aflow.nodes"] == {
        attrs(("aflow.task", "reserve"), ("aflow.result", "success")): 1,
        attrs(("aflow.task", "charge"), ("aflow.result", "success")): 1,
        attrs(("aflow.task", "ship"), ("aflow.result", "failure")): 1,
    }
    assert metrics["aflow.node.reverts"] == {
        attrs(("aflow.task", "reserve"), ("aflow.result", "compensated")): 1,
        attrs(("aflow.task", "charge"), ("aflow.result", "compensated")): 1,
    }
    assert set(metrics["aflow.node.duration"].values()) == {1}


async def test_each_attempt_of_a_retried_node_has_its_own_span(otel: Telemetry) -> None:
    attempts = 0

    @aflow.task(retries=2)
    def flaky() -> str:  # (sync: its attempts run in worker threads)
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ConnectionError("line busy")
        return "through"

    assert await aflow.run(flaky.s()) == "through"

    spans = otel.named("node flaky")
    assert [(s.attributes["aflow.attempt"], s.attributes["aflow.result"]) for s in spans] == [  # type: ignore[index]
        (1, "failure"),
        (2, "failure"),
        (3, "success"),
    ]
    assert [s.attributes.get("error.type") for s in spans] == [  # type: ignore[union-attr]
        "ConnectionError",
        "ConnectionError",
        None,
    ]
    assert spans[0].end_time <= spans[1].start_time  # type: ignore[operator]
    metrics = otel.metrics()
    retried = attrs(("aflow.task", "flaky"), ("aflow.result", "failure"), ("aflow.revert", False))
    assert metrics["aflow.node.retries"] == {retried: 2}
    assert metrics["aflow.nodes"] == {
        attrs(("aflow.task", "flaky"), ("aflow.result", "success")): 1
    }


async def test_a_node_that_times_out_and_a_run_past_its_deadline(otel: Telemetry) -> None:
    @aflow.task(timeout=0.05)
    async def stuck() -> None:
        await anyio.sleep_forever()

    @aflow.task
    async def stalls() -> None:
        await anyio.sleep_forever()

    with pytest.raises(aflow.errors.TaskTimeout):
        await aflow.run(stuck.s())
    with pytest.raises(aflow.errors.RunTimeout):
        await aflow.run(stalls.s(), timeout=0.05)

    node = otel.one("node stuck")
    assert node.attributes["aflow.result"] == "timeout"  # type: ignore[index]
    assert node.attributes["error.type"] == "aflow.errors.TaskTimeout"  # type: ignore[index]
    assert node.status.status_code is trace.StatusCode.ERROR
    runs = otel.named("run")
    assert [r.attributes["aflow.result"] for r in runs] == ["failure", "timeout"]  # type: ignore[index]
    assert runs[1].attributes["error.type"] == "aflow.errors.RunTimeout"  # type: ignore[index]
    assert otel.one("node stalls").attributes["aflow.result"] == "cancellation"  # type: ignore[index]


async def test_a_skipped_node_has_a_span_that_says_so(otel: Telemetry) -> None:
    async with aflow.Runtime() as rt:
        run = await rt.submit(
            aflow.group(ship.s("x") | charge.s(), reserve.s("y")), on_error="continue"
        )
        await run.wait()

    skipped = otel.one("node charge")
    assert skipped.attributes["aflow.result"] == "skip"  # type: ignore[index]
    assert skipped.attributes["aflow.attempt"] == 0  # type: ignore[index]
    assert skipped.start_time == skipped.end_time
    assert skipped.status.status_code is trace.StatusCode.UNSET
    nodes = otel.metrics()["aflow.nodes"]
    assert nodes[attrs(("aflow.task", "charge"), ("aflow.result", "skip"))] == 1
    assert "aflow.node.duration" in otel.metrics()


async def test_a_cancelled_run_and_its_node_end_in_cancellation(otel: Telemetry) -> None:
    started = anyio.Event()

    @aflow.task
    async def waits(hold: str) -> None:
        started.set()
        await anyio.sleep_forever()

    async with aflow.Runtime() as rt:
        run = await rt.submit(reserve.s("x") | waits.s())
        await started.wait()
        await run.cancel()
        await run.wait()

    assert otel.one("run").attributes["aflow.result"] == "cancellation"  # type: ignore[index]
    assert otel.one("node waits").attributes["aflow.result"] == "cancellation"  # type: ignore[index]
    assert otel.one("compensate reserve").attributes["aflow.result"] == "compensated"  # type: ignore[index]
    assert otel.metrics()["aflow.runs"] == {attrs(("aflow.result", "cancellation")): 1}


async def test_the_run_span_is_a_child_of_the_span_current_where_it_was_run(
    otel: Telemetry,
) -> None:
    with otel.tracer.start_as_current_span("request") as request:
        await aflow.run(reserve.s("x"))
    run = otel.one("run")
    assert run.parent is not None
    assert run.parent.span_id == request.get_span_context().span_id
    assert run.context.trace_id == request.get_span_context().trace_id
    # and a Runtime's run: the span current where it was submitted
    with otel.tracer.start_as_current_span("request 2") as request:
        async with aflow.Runtime() as rt:
            run_handle = await rt.submit(reserve.s("x"))
            await run_handle.result()
    later = otel.named("run")[1]
    assert later.parent is not None
    assert later.parent.span_id == request.get_span_context().span_id


async def test_spans_a_task_body_makes_nest_under_its_node_span(otel: Telemetry) -> None:
    tracer = otel.tracer

    @aflow.task
    async def fetch(x: int) -> int:
        with tracer.start_as_current_span("http GET"):
            await anyio.lowlevel.checkpoint()
        return x

    @aflow.task
    def crunch(x: int) -> int:  # a sync body: in a worker thread
        with tracer.start_as_current_span("numpy"):
            return x * 2

    @crunch.revert
    def uncrunch(x: int, *, result: Any) -> None:
        with tracer.start_as_current_span("undo numpy"):
            pass

    @aflow.task
    async def fails(x: int) -> None:
        raise Declined("no")

    with pytest.raises(Declined):
        await aflow.run(fetch.s(1) | crunch.s() | fails.s())

    spans = otel.spans()
    assert tree(spans) == [
        "run",
        "  node fetch",
        "    http GET",
        "  node crunch",
        "    numpy",
        "  node fails",
        "  compensate crunch",
        "    undo numpy",
    ]


async def test_a_retried_flows_nodes_nest_under_the_flows_node(otel: Telemetry) -> None:
    calls = 0

    class Pay(aflow.Task):
        default_provides = "paid"

        async def execute(self, amount: int) -> int:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ConnectionError("busy")
            return amount

    flow = linear_flow.Flow("checkout").add(
        linear_flow.Flow("pay", retry=aflow.retry.Times(2)).add(Pay())
    )
    assert (await engines.run(flow, store={"amount": 3}))["paid"] == 3
    spans = otel.spans()
    assert tree(spans) == ["run", "  node pay", "    node Pay", "    node Pay"]
    assert [s.attributes["aflow.result"] for s in otel.named("node Pay")] == [  # type: ignore[index]
        "failure",
        "success",
    ]


async def test_a_durable_run_is_traced(otel: Telemetry, tmp_path: pathlib.Path) -> None:
    with otel.tracer.start_as_current_span("request") as request:
        result = await aflow.run(
            durable_saga, params={"card": SECRET}, store=f"sqlite:///{tmp_path / 'r.db'}"
        )
    assert result == f"paid hold for {SECRET}"
    name = "run tests.test_otel:durable_saga"  # (run {workflow})
    assert tree(otel.spans()) == ["request", f"  {name}", "    node reserve", "    node charge"]
    run = otel.one(name)
    assert run.attributes["aflow.workflow"] == "tests.test_otel:durable_saga"  # type: ignore[index]
    assert run.parent is not None
    assert run.parent.span_id == request.get_span_context().span_id
    assert run.attributes["aflow.result"] == "success"  # type: ignore[index]
    for span in otel.spans():
        assert not any(SECRET in str(v) for v in (span.attributes or {}).values())


async def test_the_run_span_names_its_workflow_however_the_run_is_made(otel: Telemetry) -> None:
    await aflow.run(durable_saga, params={"card": "c"})
    async with aflow.Runtime() as rt:
        await (await rt.submit(durable_saga, card="c")).wait()
        await (await rt.submit(durable_saga(card="c"))).wait()  # (what a call of it builds)
        await (await rt.submit(reserve.s("c") | charge.s())).wait()  # a canvas: no name
    names = [s.name for s in otel.spans() if s.name.startswith("run")]
    assert names == ["run tests.test_otel:durable_saga"] * 3 + ["run"]
    points = otel.metrics()["aflow.runs"]
    named = attrs(("aflow.result", "success"), ("aflow.workflow", "tests.test_otel:durable_saga"))
    assert points[named] == 3


async def test_a_forked_durable_run_names_its_workflow_too(
    otel: Telemetry, tmp_path: pathlib.Path
) -> None:
    async with aflow.Runtime(store=f"sqlite:///{tmp_path / 'r.db'}") as rt:
        first = await rt.submit(durable_saga, card="c")
        await first.wait()
        forked = await rt.fork(first.id, ["reserve"])
        await forked.wait()
    runs = [s for s in otel.spans() if s.name.startswith("run")]
    assert [s.name for s in runs] == ["run tests.test_otel:durable_saga"] * 2
    assert [s.attributes["aflow.run.id"] for s in runs] == [first.id, forked.id]  # type: ignore[index]
    assert tree(otel.spans())[-2:] == ["run tests.test_otel:durable_saga", "  node charge"]


async def test_uninstrument_stops_spans_for_runs_made_afterwards(otel: Telemetry) -> None:
    instrumentation = aflow.otel.instrument()
    was_active = instrumentation.active
    instrumentation.uninstrument()
    assert (was_active, instrumentation.active) == (True, False)
    await aflow.run(reserve.s("x") | charge.s())
    assert otel.spans() == []
    async with aflow.Runtime() as rt:
        run = await rt.submit(reserve.s("x"))
        await run.result()
        sink = run._execution._events
    assert_no_event_work(sink)
    instrumentation.uninstrument()  # idempotent
    aflow.otel.uninstrument()


async def test_instrument_twice_is_idempotent(otel: Telemetry) -> None:
    first = aflow.otel.instrument()
    assert aflow.otel.instrument() is first
    with pytest.raises(RuntimeError, match="other providers"):
        aflow.otel.instrument(tracer_provider=TracerProvider())
    await aflow.run(reserve.s("x"))
    assert tree(otel.spans()) == ["run", "  node reserve"]  # once, not twice
    assert otel.metrics()["aflow.runs"] == {attrs(("aflow.result", "success")): 1}


async def test_the_context_manager_uninstruments_at_its_end() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with aflow.otel.instrument(tracer_provider=provider) as instrumentation:
        await aflow.run(reserve.s("x"))
    assert not instrumentation.active
    await aflow.run(reserve.s("x"))
    assert [s.name for s in exporter.get_finished_spans()] == ["node reserve", "run"]
    provider.shutdown()


async def test_nothing_is_recorded_when_instrument_was_never_called() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    assert _events._run_hooks == ()
    with provider.get_tracer("tests").start_as_current_span("request"):
        async with aflow.Runtime() as rt:
            run = await rt.submit(reserve.s("x") | charge.s())
            await run.result()
    assert [s.name for s in exporter.get_finished_spans()] == ["request"]
    assert_no_event_work(run._execution._events)
    provider.shutdown()


async def test_without_a_configured_provider_a_run_gets_no_listener() -> None:
    """instrument() with the API's defaults (no SDK set up): zero cost, as uninstrumented."""
    # (no test sets the global provider: it must still be the API's proxy)
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    with aflow.otel.instrument():
        async with aflow.Runtime() as rt:
            run = await rt.submit(reserve.s("x"))
            await run.result()
    assert_no_event_work(run._execution._events)
