"""Workflows for tests/test_durable_writes.py (importable by the processes it kills).

``probe`` checks, as it starts, what the store has committed: through a connection of
its own (which sees committed rows only), it counts the steps on record as succeeded
(the store holds one run), and notes ``(its position, that count)`` in :data:`SEEN`.
``logged`` appends its position to the file named by ``AFLOW_STEP_LOG`` (one line per
call), so a test can tell what ran in a process it killed.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from typing import Any

import aflow

#: (position, steps committed as succeeded when it started), one per probe call
SEEN: list[tuple[int, int]] = []
#: the SQLite file the probes read, set by the test
DATABASE: list[str] = []


@aflow.task
async def probe(x: int) -> int:
    with contextlib.closing(sqlite3.connect(DATABASE[0])) as db:
        ((count,),) = db.execute(
            "SELECT count(*) FROM aflow_nodes WHERE state = 'succeeded'"
        ).fetchall()
    SEEN.append((x, count))
    return x + 1


@probe.revert
async def unprobe(x: int, *, result: Any) -> None:
    pass


@aflow.task
async def plain_probe(x: int) -> int:
    return await probe(x)  # a direct call: the body alone


@aflow.workflow
def probe_chain(n: int) -> Any:
    """``n`` steps, every other one with a revert (its start is written ahead)."""
    return aflow.chain(
        plain_probe.s(0), *(probe.s() if i % 2 else plain_probe.s() for i in range(1, n))
    )


@aflow.task
async def logged(x: int) -> int:
    _append(x)
    return x + 1


def _append(x: int) -> None:
    with open(os.environ["AFLOW_STEP_LOG"], "a") as log:
        log.write(f"{x}\n")


@aflow.workflow
def logged_chain(n: int) -> Any:
    return aflow.chain(logged.s(0), *(logged.s() for _ in range(n - 1)))


def read_log(path: str) -> list[int]:
    with contextlib.suppress(FileNotFoundError), open(path) as log:
        return [int(line) for line in log]
    return []
