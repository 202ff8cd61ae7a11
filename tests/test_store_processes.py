"""Several real processes sharing one store, one of them killed (issue 14, item 5)."""

from __future__ import annotations

import os
import pathlib
import random
import signal
import subprocess
import sys
import textwrap

import anyio
import pytest

import aflow

from . import process_workflows as wf

ROOT = pathlib.Path(__file__).resolve().parent.parent

#: Opens the store and says ``ready``; on a line on stdin submits each key of argv[3]
#: (comma-separated) as an idempotency key, all at once, says ``submitted``, then
#: prints ``key run_id result`` for each once all have ended.
SUBMITTER = textwrap.dedent(
    """
    import asyncio, sys
    import aflow
    from tests import process_workflows as wf

    async def main():
        url, lease, keys = sys.argv[1], float(sys.argv[2]), sys.argv[3].split(",")
        async with aflow.Runtime(store=url, lease=lease) as rt:
            print("ready", flush=True)
            await asyncio.to_thread(sys.stdin.readline)
            submits = (rt.submit(wf.steps, key=key, idempotency_key=key) for key in keys)
            runs = list(zip(keys, await asyncio.gather(*submits)))
            print("submitted", flush=True)
            for key, run in runs:
                print(key, run.id, await run.result(), flush=True)

    asyncio.run(main())
    """
)


def start(
    store_url: str, lease: float, keys: list[str], env: dict[str, str], stderr: pathlib.Path
) -> subprocess.Popen[str]:
    """A submitter, once it is ready; its stderr goes to a file (its stdout is read
    line by line, which communicate() would not mix with)."""
    with stderr.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", SUBMITTER, store_url, str(lease), ",".join(keys)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == "ready", stderr.read_text()
    return proc


def say(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


def expect(proc: subprocess.Popen[str], line: str, stderr: pathlib.Path) -> None:
    assert proc.stdout is not None
    found = proc.stdout.readline().strip()
    assert found == line, stderr.read_text()


@pytest.mark.slow
def test_processes_sharing_a_store_run_each_key_once_while_one_is_killed(
    store_url: str, tmp_path: pathlib.Path
) -> None:
    log = tmp_path / "steps.log"
    env = {**os.environ, "AFLOW_LOG": str(log)}
    keys = [f"k{i}" for i in range(32)]
    errors = [tmp_path / f"stderr-{n}" for n in range(4)]
    procs: list[subprocess.Popen[str]] = []
    try:
        # The victim creates k0's run and blocks inside its step two; its short lease
        # lets the others take the run over soon after it dies.
        procs.append(start(store_url, 0.5, ["k0"], {**env, "AFLOW_HANG": "k0"}, errors[0]))
        for seed in range(1, 4):  # every key from each of the others, in an order of its own
            order = random.Random(seed).sample(keys, len(keys))
            procs.append(start(store_url, 10.0, order, env, errors[seed]))
        victim, *submitters = procs
        say(victim, "go")
        assert victim.stdout is not None
        lines = {victim.stdout.readline().strip() for _ in range(2)}  # in either order
        assert lines == {"submitted", "hanging k0"}, errors[0].read_text()
        for proc in submitters:  # at once: they all create runs and write at the same time
            say(proc, "go")
        for proc, error in zip(submitters, errors[1:], strict=True):
            expect(proc, "submitted", error)
        victim.send_signal(signal.SIGKILL)  # while the others run their runs
        assert victim.wait(timeout=30) == -signal.SIGKILL
        outputs = []
        for proc, error in zip(submitters, errors[1:], strict=True):
            assert proc.stdout is not None
            out = proc.stdout.read()  # to the end: the process has exited
            assert proc.wait(timeout=30) == 0, error.read_text()
            assert error.read_text() == ""  # not even a warning: no store call failed
            outputs.append(sorted(tuple(line.split()) for line in out.splitlines()))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
    assert outputs[0] == outputs[1] == outputs[2]  # one run per key, whoever created it
    assert [key for key, _, _ in outputs[0]] == sorted(keys)
    assert all(value == f"{key}:{wf.LENGTH}" for key, _, value in outputs[0])

    async def stored() -> list[aflow.stores.RunRecord]:
        store = aflow.stores.open_store(store_url)
        await store.open()
        try:
            return await store.list_runs()
        finally:
            await store.close()

    runs = anyio.run(stored)
    assert sorted((r.idempotency_key, r.run_id, r.status) for r in runs) == [
        (key, run_id, "succeeded") for key, run_id, _ in outputs[0]
    ]
    # Nothing that had completed ran again; only the step running in the killed
    # process ran a second time (at-least-once), and nothing was reverted.
    names = ["one", "two", *(f"step{n}" for n in range(1, wf.LENGTH + 1))]
    expected = {f"{name} {key}": 1 for key in keys for name in names}
    expected["two k0"] = 2
    assert wf.read_log(log) == expected
