"""The ``aflow`` command, run as a real subprocess against a SQLite store."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import anyio
import pytest

import aflow as aflow_pkg

from . import wait_workflows
from .durable_workflows import read_counts

ROOT = pathlib.Path(__file__).resolve().parent.parent


def aflow(
    *args: str, store: pathlib.Path, counts: pathlib.Path
) -> subprocess.CompletedProcess[str]:
    env = {"AFLOW_COUNTS": str(counts), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "aflow.cli", "--store", f"sqlite:///{store}", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def paths(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    return tmp_path / "runs.db", tmp_path / "counts.json"


def test_run_prints_the_result_and_exits_0(paths: tuple[pathlib.Path, pathlib.Path]) -> None:
    store, counts = paths
    done = aflow(
        "run", "tests.durable_workflows:abc", "--param", "start=1", store=store, counts=counts
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == 104
    assert "succeeded" in done.stderr
    listed = aflow("runs", store=store, counts=counts)
    assert listed.returncode == 0
    assert "succeeded" in listed.stdout
    run_id = done.stderr.split()[1]
    shown = aflow("show", run_id, store=store, counts=counts)
    assert shown.returncode == 0
    for key in ("step_a", "step_b", "step_c"):
        assert key in shown.stdout


def test_a_failed_run_exits_1_and_shows_its_error(paths: tuple[pathlib.Path, pathlib.Path]) -> None:
    store, counts = paths
    done = aflow(
        "run", "tests.durable_workflows:abc_fails", "--param", "start=1", store=store, counts=counts
    )
    assert done.returncode == 1
    assert "card declined" in done.stderr
    assert "reverted" in done.stderr


def test_graph_draws_mermaid_and_dot(paths: tuple[pathlib.Path, pathlib.Path]) -> None:
    store, counts = paths
    mermaid = aflow(
        "graph", "tests.durable_workflows:abc", "--param", "start=1", store=store, counts=counts
    )
    assert mermaid.stdout.startswith("flowchart LR")
    dot = aflow(
        "graph",
        "tests.durable_workflows:abc",
        "--param",
        "start=1",
        "--format",
        "dot",
        store=store,
        counts=counts,
    )
    assert dot.stdout.startswith('digraph "workflow"')


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("show", "no-such-run"), "no run 'no-such-run'"),
        (("resume", "no-such-run"), "no run 'no-such-run'"),
        (("cancel", "no-such-run"), "no run 'no-such-run'"),
        (("send", "no-such-run", "paid"), "no run 'no-such-run'"),
        (("send", "--key", "no-such-key", "paid"), "no run has idempotency key 'no-such-key'"),
        (("send", "r-1", "paid", "--key", "k"), "by its id or by --key, not both"),
        (("run", "tests.durable_workflows:nope"), "no workflow 'nope'"),
        (("run", "tests.durable_workflows:step_a"), "not marked @aflow.workflow"),
        (("run", "tests.durable_workflows:abc", "--param", "oops"), "key=value"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(
    paths: tuple[pathlib.Path, pathlib.Path], args: tuple[str, ...], message: str
) -> None:
    store, counts = paths
    aflow("runs", store=store, counts=counts)  # (read-only: it creates no store)
    assert not store.exists()
    aflow("run", "tests.durable_workflows:abc", "--param", "start=1", store=store, counts=counts)
    done = aflow(*args, store=store, counts=counts)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr


def test_an_unknown_store_scheme_exits_2(tmp_path: pathlib.Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "aflow.cli", "--store", "redis://x", "runs"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "unknown store URL scheme 'redis'" in done.stderr


def test_cancel_marks_an_unfinished_run_and_refuses_a_finished_one(
    paths: tuple[pathlib.Path, pathlib.Path],
) -> None:
    store, counts = paths
    done = aflow(
        "run", "tests.durable_workflows:abc", "--param", "start=1", store=store, counts=counts
    )
    run_id = done.stderr.split()[1]
    refused = aflow("cancel", run_id, store=store, counts=counts)
    assert refused.returncode == 2
    assert "finished already" in refused.stderr


def test_json_gives_the_run_models_the_web_service_gives(
    paths: tuple[pathlib.Path, pathlib.Path],
) -> None:
    """`aflow runs --json` / `show --json` print aflow.RunReport (issue 17: one model)."""
    import aflow as af

    store, counts = paths
    done = aflow(
        "run", "tests.durable_workflows:abc_fails", "--param", "start=1", store=store, counts=counts
    )
    run_id = done.stderr.split()[1]
    listed = aflow("runs", "--json", store=store, counts=counts)
    assert listed.returncode == 0, listed.stderr
    brief = af.RunReport.model_validate_json(listed.stdout.splitlines()[0])
    assert (brief.id, brief.status, brief.params, brief.steps) == (
        run_id,
        "reverted",
        {"start": 1},
        None,
    )
    shown = aflow("show", run_id, "--json", store=store, counts=counts)
    assert shown.returncode == 1  # (a run that did not succeed, as without --json)
    report = af.RunReport.model_validate_json(shown.stdout)
    assert [(s.key, s.state) for s in report.steps or ()] == [
        ("step_a", "reverted"),
        ("step_b", "reverted"),
        ("step_c_fails", "failed"),
    ]
    failed = (report.steps or [])[2]
    assert failed.error is not None
    assert (failed.error.type, failed.error.message) == ("RuntimeError", "card declined")
    history = aflow("show", run_id, "--json", "--history", store=store, counts=counts)
    events = [af.EventReport.model_validate_json(line) for line in history.stdout.splitlines()]
    assert [(e.name, e.node) for e in events] == [
        ("run_started", None),
        ("task_started", "step_a"),
        ("task_succeeded", "step_a"),
        ("task_started", "step_b"),
        ("task_succeeded", "step_b"),
        ("task_started", "step_c_fails"),
        ("task_failed", "step_c_fails"),
        ("revert_started", "step_b"),
        ("revert_succeeded", "step_b"),
        ("revert_started", "step_a"),
        ("revert_succeeded", "step_a"),
        ("run_reverted", None),
    ]


def test_cancel_of_a_run_being_undone_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    """The owner may take the cancel up between the store's update and its read-back, and
    write ``reverting`` (seen under load with PostgreSQL): the run has not finished, the
    cancel worked, so the command says the run is being undone and exits 0 (it said
    'finished already' and exited 2)."""
    import asyncio

    from aflow import cli
    from aflow.stores import StoredRunStatus

    class Store:
        async def request_cancel(self, run_id: str, reason: str) -> StoredRunStatus:
            return StoredRunStatus.REVERTING

    assert asyncio.run(cli._cancel(Store(), "r-1")) == 0
    assert "being undone already (reverting)" in capsys.readouterr().out


async def test_send_delivers_an_event_to_a_waiting_run_once(
    paths: tuple[pathlib.Path, pathlib.Path], counts: pathlib.Path
) -> None:
    """A webhook relayed by a script: the run waits unloaded in the store, ``aflow send``
    (another process, no runtime) keeps the event, and the runtime here takes it up."""
    store, _ = paths  # (the counts fixture points this process at the same file)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return aflow(*args, store=store, counts=counts)

    async with aflow_pkg.Runtime(store=f"sqlite:///{store}", poll=0.05) as rt:
        run = await rt.submit(wait_workflows.two_waits, order="o-cli", idempotency_key="o-cli")
        with anyio.fail_after(10):
            while (await rt.report(run.id)).status != "waiting":  # noqa: ASYNC110 - the store
                await anyio.sleep(0.01)
        shown = await anyio.to_thread.run_sync(lambda: cli("show", run.id))
        assert "wait_for:item waits for event 'item', no deadline" in shown.stdout, shown.stdout
        as_json = json.loads(
            (await anyio.to_thread.run_sync(lambda: cli("show", run.id, "--json"))).stdout
        )
        assert (as_json["status"], [w["event"] for w in as_json["waits"]]) == ("waiting", ["item"])
        listed = await anyio.to_thread.run_sync(lambda: cli("runs", "--status", "waiting"))
        assert run.id in listed.stdout
        sent = await anyio.to_thread.run_sync(
            lambda: cli(
                "send",
                "--key",
                "o-cli",
                "item",
                "--payload",
                '{"amount": 5}',
                "--message-id",
                "evt_1",
            )
        )
        assert sent.returncode == 0, sent.stderr
        assert "sent" in sent.stdout
        again = await anyio.to_thread.run_sync(
            lambda: cli("send", run.id, "item", "--payload", "7", "--message-id", "evt_1")
        )
        assert again.returncode == 0, again.stderr
        assert "sent already" in again.stdout  # (the run waits for a second "item")
        second = await anyio.to_thread.run_sync(
            lambda: cli("send", run.id, "item", "--payload", "second", "--message-id", "evt_2")
        )
        assert second.returncode == 0, second.stderr
        with anyio.fail_after(10):
            assert await run.result() == "shipped after second"
        redelivered = await anyio.to_thread.run_sync(
            lambda: cli("send", run.id, "item", "--message-id", "evt_2")
        )
        assert redelivered.returncode == 0, redelivered.stderr  # a redelivery, after the end
        assert "sent already" in redelivered.stdout
        late = await anyio.to_thread.run_sync(lambda: cli("send", run.id, "paid"))
        assert late.returncode == 2
        assert "finished already" in late.stderr
    assert read_counts(counts) == {"charge": 1, "ship": 1}
