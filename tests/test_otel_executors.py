"""aflow.otel across processes (issue 21): a body run by an executor continues its
attempt's trace where it runs, a worker process or a Dask worker: as an ``execute {key}``
span when the worker has a tracer provider, else as the attempt's span context alone."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest

import aflow
import aflow.executors
from tests import otel_worker_workflows as ow
from tests.test_otel import Telemetry, otel  # noqa: F401  (the fixture)


@pytest.fixture
def fresh_workers() -> Iterator[None]:
    """The process pool's workers start again (they import the workflows afresh)."""
    aflow.executors.shutdown()
    yield
    aflow.executors.shutdown()


async def test_a_body_elsewhere_runs_in_its_attempts_trace(
    otel: Telemetry,  # noqa: F811
    fresh_workers: None,
    elsewhere: Any,
) -> None:
    trace_id, span_id, pid = await aflow.run(ow.traced.s(1), executor=elsewhere)
    assert pid != os.getpid()
    node = otel.one("node traced")
    assert node.context is not None
    assert (trace_id, span_id) == (node.context.trace_id, node.context.span_id)


async def test_without_instrumenting_nothing_goes_along(fresh_workers: None) -> None:
    trace_id, span_id, _ = await aflow.run(ow.traced.s(1), executor="process")
    assert (trace_id, span_id) == (0, 0)  # (no span current there: the invalid one)


async def test_a_worker_with_a_tracer_provider_records_an_execute_span(
    otel: Telemetry,  # noqa: F811
    fresh_workers: None,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exported = tmp_path / "spans.jsonl"
    monkeypatch.setenv("AFLOW_OTEL_SPANS", str(exported))  # (read by workers as they start)
    trace_id, span_id, pid = await aflow.run(ow.traced.s(1), executor="process")
    node = otel.one("node traced")
    assert node.context is not None
    assert node.context.trace_id == trace_id
    spans = {s["name"]: s for s in ow.spans_in(str(exported))}
    execute, inside = spans["execute traced"], spans["inside the body"]
    assert execute["context"]["trace_id"] == f"0x{trace_id:032x}"
    assert execute["parent_id"] == f"0x{node.context.span_id:016x}"  # under the attempt's
    assert execute["context"]["span_id"] == f"0x{span_id:016x}"  # current in the body
    assert inside["parent_id"] == execute["context"]["span_id"]
    assert execute["attributes"] == {
        "aflow.run.id": execute["attributes"]["aflow.run.id"],
        "aflow.node.key": "traced",
        "aflow.task": "traced",
        "aflow.attempt": 1,
        "aflow.worker": f"worker process {pid}",
    }
