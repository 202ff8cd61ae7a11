"""A workflow for tests/test_store_processes.py, run by several processes at once.

Every step appends a line ``<step> <key>`` to the file named by ``AFLOW_LOG``
(one ``write`` in append mode, so lines of several processes never mix, unlike a
counter file that is read and rewritten). ``AFLOW_HANG=<key>`` makes step
``two`` of that key's run say ``hanging <key>`` on stdout and block, in the
process that has it in its environment, so a test can kill it right there.
"""

from __future__ import annotations

import collections
import os
import pathlib
from typing import Any

import anyio

import aflow


def log(step: str, key: str) -> None:
    line = f"{step} {key}\n".encode()
    fd = os.open(os.environ["AFLOW_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_log(path: pathlib.Path) -> collections.Counter[str]:
    """How many times each ``<step> <key>`` ran, in all processes."""
    return (
        collections.Counter(path.read_text().splitlines())
        if path.exists()
        else collections.Counter()
    )


#: Steps after ``two``: each one a checkpoint more, so the processes write at once.
LENGTH = 3


@aflow.task
async def one(key: str) -> str:
    log("one", key)
    return f"{key}:0"


@aflow.task
async def two(value: str) -> str:
    key = value.partition(":")[0]
    log("two", key)
    if os.environ.get("AFLOW_HANG") == key:
        print(f"hanging {key}", flush=True)
        await anyio.sleep_forever()  # until the test kills this process
    return value


@two.revert  # a step with a revert starts only once its start is on record
async def undo_two(value: str, *, result: Any) -> None:
    log("revert-two", value.partition(":")[0])


@aflow.task
async def step(value: str) -> str:
    """Step ``n`` of the rest: logs ``step<n> <key>``, returns ``<key>:<n>``."""
    key, _, done = value.partition(":")
    log(f"step{int(done) + 1}", key)
    return f"{key}:{int(done) + 1}"


@aflow.workflow
def steps(key: str) -> Any:
    return aflow.chain(one.s(key), two.s(), *(step.s() for _ in range(LENGTH)))
