"""Run ids: random version-4 UUIDs as 32 hex digits, unique across threads and forks."""

from __future__ import annotations

import os
import threading
import uuid

import pytest

import aflow
from aflow._runtime._ids import new_run_id


def test_a_run_id_is_a_random_uuid4_in_hex() -> None:
    ids = [new_run_id() for _ in range(5000)]
    for text in ids[:50]:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, parsed.hex) == (4, uuid.RFC_4122, text)
    assert len(set(ids)) == len(ids)


def test_ids_are_unique_across_threads() -> None:
    out: list[list[str]] = [[] for _ in range(8)]
    start = threading.Barrier(8)

    def draw(mine: list[str]) -> None:
        start.wait()
        mine.extend(new_run_id() for _ in range(3000))

    threads = [threading.Thread(target=draw, args=(o,)) for o in out]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for o in out for i in o]
    assert len(set(every)) == len(every) == 24_000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on this platform")
def test_a_forked_child_never_repeats_its_parents_ids() -> None:
    new_run_id()  # the parent has a pool with ids left in it
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        try:
            os.write(write, "".join(new_run_id() for _ in range(8)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    theirs = {text[i : i + 32] for i in range(0, len(text), 32)}
    ours = {new_run_id() for _ in range(8)}
    assert len(theirs) == 8
    assert not theirs & ours


async def test_runs_get_such_ids() -> None:
    @aflow.task
    async def one() -> int:
        return aflow.current_step().run_id.__len__()

    assert await aflow.run(one.s()) == 32
