"""Helpers for testing code that uses aflow (and for aflow's own tests)."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import structlog.testing

__all__ = ["capture_events"]


@contextmanager
def capture_events() -> Iterator[list[MutableMapping[str, Any]]]:
    """Capture aflow's structlog events as dicts while the block runs.

    Each entry has ``event`` (``task_started``, ``run_succeeded``...),
    ``log_level`` and the fixed keys ``run_id``, ``node``, ``task``,
    ``attempt`` and ``duration_s`` where they apply. Assert on these, never
    on rendered text.
    """
    with structlog.testing.capture_logs() as entries:
        yield entries
