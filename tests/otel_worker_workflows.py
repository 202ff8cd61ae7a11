"""Tasks for tests/test_otel_executors.py: bodies that tell which span is current where
they run (a worker process, a Dask worker). A worker that imports this module with
``AFLOW_OTEL_SPANS`` set configures an OpenTelemetry SDK there, exporting its spans to
that file as JSON lines (what an application does in its workers)."""

from __future__ import annotations

import json
import os
from typing import Any

import aflow

_SPANS = os.environ.get("AFLOW_OTEL_SPANS")
if _SPANS:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    _provider = TracerProvider()
    _provider.add_span_processor(
        SimpleSpanProcessor(
            ConsoleSpanExporter(
                out=open(_SPANS, "a"),  # noqa: SIM115  (the worker's life long)
                formatter=lambda span: json.dumps(json.loads(span.to_json())) + "\n",
            )
        )
    )
    trace.set_tracer_provider(_provider)


@aflow.task
def traced(x: int) -> tuple[int, int, int]:
    """The current span's trace and span ids where the body runs (and one it makes)."""
    from opentelemetry import trace

    with trace.get_tracer("tests").start_as_current_span("inside the body"):
        pass
    context = trace.get_current_span().get_span_context()
    return context.trace_id, context.span_id, os.getpid() + 0 * x


def spans_in(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
