"""Test configuration: scheduler and canvas tests run on asyncio and on uvloop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dev dependency
    uvloop = None

#: Modules whose tests run on both loops (the issue asks for scheduler and canvas).
BOTH_LOOPS = {
    "test_canvas",
    "test_scheduler",
    "test_runtime",
    "test_properties",
    "test_saga",
    "test_policies",
}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
        "asyncio": asyncio.new_event_loop
    }
    module = getattr(item, "module", None)
    name = module.__name__.rsplit(".", 1)[-1] if module is not None else ""
    if name in BOTH_LOOPS or item.get_closest_marker("both_loops"):
        if uvloop is None:
            raise pytest.UsageError("uvloop is required for the both-loops tests: make test")
        factories["uvloop"] = uvloop.new_event_loop
    return factories
