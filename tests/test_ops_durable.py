"""aflow.ops durable runs: which workflows may run on a store, and runs that survive a
crash (artifacts, slices, local files) or are taken up by wait."""

from __future__ import annotations

import pathlib
from pathlib import Path

import anyio
import pytest

import aflow
from aflow.ops import Step, Workflow, download_artifact
from aflow.testing import FakeClock

from .ops_helpers import add

# --- what may run durably -------------------------------------------------------------------------


async def test_a_plain_workflow_cannot_run_durably(tmp_path: Path) -> None:
    wf = Workflow("w").add(Step("a", add, parameters={"x": 1}))
    async with aflow.Runtime(store=f"sqlite:///{tmp_path / 'r.db'}"):
        with pytest.raises(aflow.errors.DefinitionError, match=r"@aflow\.workflow"):
            await wf.submit()


async def test_a_durable_workflow_changed_after_its_builder_is_refused(
    tmp_path: Path, counts: Path
) -> None:
    from tests import durable_workflows as dw

    wf = dw.ops_files(start=1)
    wf.add(Step("extra", add, parameters={"x": 1}))
    async with aflow.Runtime(store=f"sqlite:///{tmp_path / 'r.db'}") as rt:
        with pytest.raises(aflow.errors.DefinitionError, match="changed after"):
            await wf.submit(runtime=rt)


async def test_any_change_after_the_builder_is_refused_for_a_durable_run(
    tmp_path: Path, counts: Path
) -> None:
    from tests import durable_workflows as dw

    wf = dw.ops_files(start=1)
    wf.steps[0].parameters["text"] = "changed"
    async with aflow.Runtime(store=f"sqlite:///{tmp_path / 'r.db'}") as rt:
        with pytest.raises(aflow.errors.DefinitionError, match="changed after"):
            await wf.submit(runtime=rt)
        await dw.ops_files(start=1).submit(runtime=rt)  # unchanged: accepted


async def test_a_builder_with_temp_paths_and_plain_objects_is_not_taken_for_changed(
    tmp_path: Path, counts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests import durable_workflows as dw

    local = tmp_path / "in.txt"
    local.write_text("x")
    monkeypatch.setenv("AFLOW_LOCAL_FILE", str(local))
    async with aflow.Runtime(store=f"sqlite:///{tmp_path / 'r.db'}") as rt:
        wf = dw.ops_local(start=1)
        monkeypatch.setenv("AFLOW_LOCAL_FILE", str(tmp_path / "moved.txt"))  # a rebuild differs
        (tmp_path / "moved.txt").write_text("y")
        await wf.submit(runtime=rt)
        assert await wf.wait() == "Succeeded"


# --- a crashed run resumes ------------------------------------------------------------------------


@pytest.mark.slow
async def test_artifacts_survive_a_crash_and_the_resumed_run_reads_them(
    store_url: str, counts: pathlib.Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.durable_workflows import read_counts
    from tests.test_durable import LEASE, crash_in, later

    if store_url.startswith("postgres"):
        monkeypatch.setenv("AFLOW_ARTIFACTS", str(tmp_path / "shared-artifacts"))
    run_id = await anyio.to_thread.run_sync(crash_in, store_url, "ops_files", "consume", counts)
    assert read_counts(counts) == {"produce": 1, "consume": 1}
    clock = later()  # the dead process's heartbeat goes stale
    async with aflow.Runtime(store=store_url, recover=True, lease=LEASE, clock=clock) as rt:
        run = rt.get(run_id)
        assert await run.result() == {"consume": {"text": "hello 1"}}
    # the file the dead process produced was read by the resumed run; produce ran once
    assert read_counts(counts) == {"produce": 1, "consume": 2}
    async with aflow.Runtime(store=store_url) as rt:
        wf = await Workflow.load(run_id, runtime=rt)
    [produce] = wf.query_step(name="produce")
    [path] = download_artifact(produce.outputs.artifacts["out"], tmp_path / "dl")
    assert path.read_text() == "hello 1"


@pytest.mark.slow
async def test_a_resumed_run_does_not_run_finished_slices_again(
    store_url: str, counts: pathlib.Path
) -> None:
    from tests.durable_workflows import read_counts
    from tests.test_durable import LEASE, crash_in, later

    run_id = await anyio.to_thread.run_sync(crash_in, store_url, "ops_slices", "slice-3", counts)
    assert read_counts(counts) == {"slice-1": 1, "slice-2": 1, "slice-3": 1}
    clock = later()  # the dead process's heartbeat goes stale
    async with aflow.Runtime(store=store_url, recover=True, lease=LEASE, clock=clock) as rt:
        run = rt.get(run_id)
        assert await run.result() == {"work": {"y": [10, 20, 30, 40]}}
        wf = await Workflow.load(run_id, runtime=rt)
        [record] = wf.query_step(name="work")
        assert [s.attempts for s in record.slices] == [1, 1, 1, 1]
    # slices 1 and 2 were on record; 3 ran again (at-least-once), 4 ran once
    assert read_counts(counts) == {"slice-1": 1, "slice-2": 1, "slice-3": 2, "slice-4": 1}


@pytest.mark.slow
async def test_a_resumed_run_reads_the_local_file_as_it_was_first_read(
    tmp_path: Path, counts: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.durable_workflows import read_counts
    from tests.test_durable import LEASE, crash_in, later

    local = tmp_path / "input.txt"
    local.write_text("as submitted")
    monkeypatch.setenv("AFLOW_LOCAL_FILE", str(local))
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    run_id = await anyio.to_thread.run_sync(crash_in, url, "ops_local", "read-local", counts)
    local.write_text("changed afterwards")
    clock = later()  # the dead process's heartbeat goes stale
    async with aflow.Runtime(store=url, recover=True, lease=LEASE, clock=clock) as rt:
        assert await rt.get(run_id).result() == {"read": {"text": "as submitted"}}
    assert read_counts(counts) == {"read-local": 2}


# --- wait takes up a loaded run -------------------------------------------------------------------


@pytest.mark.slow
async def test_wait_takes_up_a_loaded_run_whose_process_died(
    tmp_path: Path, counts: pathlib.Path
) -> None:
    from tests.durable_workflows import read_counts
    from tests.test_durable import LEASE, crash_in

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    run_id = await anyio.to_thread.run_sync(crash_in, url, "ops_files", "consume", counts)
    async with (
        FakeClock() as clock,  # virtual: a poll of a minute takes no time
        aflow.Runtime(store=url, lease=LEASE, clock=clock) as rt,  # no recover=True
    ):
        wf = await Workflow.load(run_id, runtime=rt)
        assert wf.query_status() == "Running"
        with anyio.fail_after(10):  # polls on the wall clock would not be done by then
            assert await wf.wait(poll=60) == "Succeeded"
        assert await wf.run.result() == {"consume": {"text": "hello 1"}}
    assert read_counts(counts) == {"produce": 1, "consume": 2}


async def test_wait_takes_up_a_dead_run_once_its_lease_runs_out_on_the_runtime_s_clock(
    tmp_path: Path, counts: pathlib.Path
) -> None:
    """The dead owner renewed its lease just before it died: ten minutes left. wait reads
    the lease and polls on the runtime's (virtual) clock: it takes the run up once they
    have passed there, not before, and in no time."""
    from tests import durable_workflows as dw
    from tests.test_resume import dead_run

    async with (
        FakeClock() as clock,
        aflow.Runtime(store=f"sqlite:///{tmp_path / 'runs.db'}", clock=clock) as rt,
    ):
        start = clock.now()
        run_id = await dead_run(rt.store, dw.ops_files, [], status="running", lease_left=600)
        wf = await Workflow.load(run_id, runtime=rt)
        assert wf.query_status() == "Running"
        with anyio.fail_after(10):
            assert await wf.wait(poll=60) == "Succeeded"
        assert clock.now() - start >= 600  # its lease had run out
        assert await wf.run.result() == {"consume": {"text": "hello 1"}}
    assert dw.read_counts(counts) == {"produce": 1, "consume": 1}


@pytest.mark.slow
async def test_wait_raises_when_a_dead_run_cannot_be_taken_up(
    tmp_path: Path, counts: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests import durable_workflows as dw
    from tests.test_durable import LEASE, crash_in

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    run_id = await anyio.to_thread.run_sync(crash_in, url, "ops_files", "consume", counts)
    original = dw.ops_files.fn

    def redeployed(start: int) -> Workflow:  # a new version adds a step
        return original(start).add(Step("extra", add, parameters={"x": 1}))

    async with (
        FakeClock() as clock,  # virtual: a poll of a minute takes no time
        aflow.Runtime(store=url, lease=LEASE, clock=clock) as rt,
    ):
        wf = await Workflow.load(run_id, runtime=rt)
        monkeypatch.setattr(dw.ops_files, "fn", redeployed)
        with anyio.fail_after(10), pytest.raises(aflow.errors.ResumeMismatch, match="different"):
            await wf.wait(poll=60)


async def test_wait_raises_once_the_lease_of_a_run_it_cannot_take_up_runs_out_on_its_clock(
    tmp_path: Path, counts: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, and the workflow changed since: wait raises, with the run's lease read on
    the runtime's clock (on the wall clock it has ten minutes left: taken up elsewhere)."""
    from tests import durable_workflows as dw
    from tests.test_resume import dead_run

    original = dw.ops_files.fn

    def redeployed(start: int) -> Workflow:  # a new version adds a step
        return original(start).add(Step("extra", add, parameters={"x": 1}))

    async with (
        FakeClock() as clock,
        aflow.Runtime(store=f"sqlite:///{tmp_path / 'runs.db'}", clock=clock) as rt,
    ):
        start = clock.now()
        run_id = await dead_run(rt.store, dw.ops_files, [], status="running", lease_left=600)
        wf = await Workflow.load(run_id, runtime=rt)
        monkeypatch.setattr(dw.ops_files, "fn", redeployed)
        with anyio.fail_after(10), pytest.raises(aflow.errors.ResumeMismatch, match="different"):
            await wf.wait(poll=60)
        assert clock.now() - start >= 600
    assert dw.read_counts(counts) == {}
