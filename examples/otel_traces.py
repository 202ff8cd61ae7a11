"""OpenTelemetry traces of a saga that fails and is compensated (``aflow[otel]``).

    reserve -> charge (retried once) -> ship (the carrier refuses): refund, release

Run it with ``python examples/otel_traces.py``. It sets up the OpenTelemetry SDK with
an in-memory exporter (an application would send spans to its collector with an OTLP
exporter instead), calls ``aflow.otel.instrument()``, runs the saga inside a
"POST /orders" span, and prints the trace as a tree: the run span under the request,
a span per node attempt, the spans the task bodies made under their node's, and the
compensations. Then the metrics it recorded.
"""

from __future__ import annotations

from typing import Any

import anyio
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import aflow
import aflow.otel

exporter = InMemorySpanExporter()
tracer_provider = TracerProvider()
tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
metric_reader = InMemoryMetricReader()
meter_provider = MeterProvider(metric_readers=[metric_reader])
tracer = tracer_provider.get_tracer("shop")


class AddressRejected(Exception):
    """The carrier cannot deliver to this address."""


@aflow.task
async def reserve(order: dict[str, Any]) -> str:
    with tracer.start_as_current_span("POST inventory/reservations"):  # (an HTTP client's span)
        await anyio.sleep(0.01)
    return f"rsv-{order['id']}"


@reserve.revert
async def release(order: dict[str, Any], *, result: Any) -> None:
    with tracer.start_as_current_span("DELETE inventory/reservations"):
        await anyio.sleep(0.005)


attempts = 0


@aflow.task(retries=2)
async def charge(reservation: str) -> str:
    global attempts
    attempts += 1
    await anyio.sleep(0.01)
    if attempts == 1:
        raise ConnectionError("payment gateway busy")
    return f"rcpt-{reservation}"


@charge.revert
async def refund(reservation: str, *, result: Any) -> None:
    await anyio.sleep(0.005)


@aflow.task
def ship(receipt: str) -> str:
    """A blocking call: a worker thread, and its spans still nest under its node's."""
    with tracer.start_as_current_span("carrier.book"):
        raise AddressRejected("no such street")


def print_tree(spans: tuple[ReadableSpan, ...]) -> None:
    children: dict[int | None, list[ReadableSpan]] = {}
    for span in sorted(spans, key=lambda s: s.start_time or 0):
        parent = span.parent.span_id if span.parent is not None else None
        children.setdefault(parent, []).append(span)

    def show(span: ReadableSpan, depth: int) -> None:
        took = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
        attributes = span.attributes or {}
        said = ", ".join(
            f"{k}={attributes[k]!s}"
            for k in ("aflow.attempt", "aflow.result", "error.type")
            if k in attributes
        )
        print(f"{'  ' * depth}{span.name:<{44 - 2 * depth}} {took:6.1f} ms  {said}")
        for child in children.get(span.context.span_id if span.context else None, []):
            show(child, depth + 1)

    for root in children.get(None, []):
        show(root, 0)


async def main() -> None:
    instrumented = aflow.otel.instrument(
        tracer_provider=tracer_provider, meter_provider=meter_provider
    )
    with instrumented, tracer.start_as_current_span("POST /orders"):
        try:
            await aflow.run(reserve.s({"id": 7}) | charge.s() | ship.s())
        except AddressRejected as exc:
            print(f"the run was compensated: {exc!r}\n")
    print_tree(exporter.get_finished_spans())
    print()
    data = metric_reader.get_metrics_data()
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    value = getattr(point, "value", None)
                    shown = value if value is not None else f"{point.count} recorded"  # type: ignore[union-attr]
                    print(f"{metric.name:<20} {dict(point.attributes or {})}: {shown}")
    tracer_provider.shutdown()
    meter_provider.shutdown()


if __name__ == "__main__":
    anyio.run(main)
