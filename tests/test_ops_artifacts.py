"""aflow.ops artifacts and working directories: files, directories and dicts passed
between steps, per-attempt work dirs, and where the artifact store lives."""

from __future__ import annotations

import os
import pathlib
from pathlib import Path

import pytest

import aflow
from aflow import ops
from aflow.ops import Artifact, Step, Workflow, download_artifact, op

from .ops_helpers import run_wf

# --- working directories --------------------------------------------------------------------------


async def test_each_attempt_gets_a_fresh_workdir_and_the_process_cwd_never_changes(
    tmp_path: Path,
) -> None:
    cwd = os.getcwd()
    workdirs: list[Path] = []

    @op(outputs={"f": Artifact(Path)})
    async def flaky(workdir: Path):
        assert os.getcwd() == cwd
        leftovers = list(workdir.iterdir())  # noqa: ASYNC240
        workdirs.append(workdir)
        (workdir / "partial.txt").write_text(str(len(workdirs)))
        if len(workdirs) < 3:
            raise OSError("transient")
        assert leftovers == []  # nothing of the failed attempts leaks in
        return {"f": Path("partial.txt")}

    @op(outputs={"n": int})
    async def other(workdir: Path):
        workdirs.append(workdir)
        return {"n": len(list(workdir.iterdir()))}  # noqa: ASYNC240

    s = Step("s", flaky, retries=2)
    t = Step("t", other)
    wf = Workflow("fresh", artifacts=tmp_path).add(s).add(t)
    assert await run_wf(wf) == "Succeeded"
    assert len(set(workdirs)) == 4
    assert wf.query_step(name="s")[0].attempts == 3
    assert wf.query_step(name="t")[0].outputs.parameters["n"].value == 0
    [f] = download_artifact(wf.query_step(name="s")[0].outputs.artifacts["f"], tmp_path / "out")
    assert f.read_text() == "3"


async def test_work_dirs_go_when_the_run_succeeds_and_stay_when_it_fails(tmp_path: Path) -> None:
    @op(outputs={"f": Artifact(Path)})
    async def keep(workdir: Path):
        (workdir / "a.txt").write_text("a")
        return {"f": Path("a.txt")}

    ok = Workflow("ok", artifacts=tmp_path).add(Step("k", keep))
    assert await run_wf(ok, run_id="../../escape") == "Succeeded"
    assert not (tmp_path.parent.parent / "escape").exists()
    assert list((tmp_path / "work").iterdir()) == []

    @op(outputs={"y": int})
    async def fail(workdir: Path):
        (workdir / "clue.txt").write_text("why")
        raise RuntimeError("no")

    bad = Workflow("bad", artifacts=tmp_path).add(Step("f", fail))
    assert await run_wf(bad) == "Failed"
    clues = list((tmp_path / "work").rglob("clue.txt"))
    assert [c.read_text() for c in clues] == ["why"]  # kept to look into


# --- files, directories and dicts -----------------------------------------------------------------


async def test_directories_dicts_and_local_files_as_artifacts(tmp_path: Path) -> None:
    local = tmp_path / "input.txt"
    local.write_text("from the caller")

    @op  # dflow's own form: the outputs in the return annotation
    async def tree(
        src: Artifact(Path), workdir: Path
    ) -> {
        "d": Artifact(Path),  # noqa: UP037 - ruff reads the keys as quoted annotations
        "m": Artifact(dict[str, Path]),  # noqa: UP037, F821
    }:
        (workdir / "out" / "sub").mkdir(parents=True)
        (workdir / "out" / "sub" / "deep.txt").write_text(src.read_text().upper())
        (workdir / "a.txt").write_text("A")
        (workdir / "b.txt").write_text("B")
        return {"d": Path("out"), "m": {"first": Path("a.txt"), "second": Path("b.txt")}}

    @op(outputs={"text": str})
    async def look(d: Artifact(Path), m: Artifact(dict[str, Path])):
        assert d.is_dir()
        return {
            "text": (d / "sub" / "deep.txt").read_text()
            + m["first"].read_text()
            + m["second"].read_text()
        }

    t = Step("t", tree, artifacts={"src": local})
    u = Step("u", look, artifacts={"d": t.outputs.artifacts["d"], "m": t.outputs.artifacts["m"]})
    wf = Workflow("trees", artifacts=tmp_path / "store").add(t).add(u)
    assert await run_wf(wf) == "Succeeded", [r.error for r in wf.query_step()]
    assert wf.query_step(name="u")[0].outputs.parameters["text"].value == "FROM THE CALLERAB"
    [d] = download_artifact(wf.query_step(name="t")[0].outputs.artifacts["d"], tmp_path / "dl")
    assert (d / "sub" / "deep.txt").read_text() == "FROM THE CALLER"
    assert local.read_text() == "from the caller"


async def test_directories_keep_empty_folders_and_manifests_stay_inside(tmp_path: Path) -> None:
    @op(outputs={"d": Artifact(Path)})
    async def tree(workdir: Path):
        (workdir / "out" / "empty" / "deeper").mkdir(parents=True)
        (workdir / "out" / "f.txt").write_text("f")
        return {"d": Path("out")}

    wf = Workflow("w", artifacts=tmp_path / "s").add(Step("t", tree))
    assert await run_wf(wf) == "Succeeded"
    value = wf.query_step()[0].outputs.artifacts["d"]
    assert value is not None
    [d] = download_artifact(value, tmp_path / "dl")
    assert (d / "empty" / "deeper").is_dir()
    assert (d / "f.txt").read_text() == "f"
    evil = ops.ArtifactValue(value.root, {"file": "0" * 64, "name": "../escape"}, "one")
    with pytest.raises(ValueError, match="outside"):
        download_artifact(evil, tmp_path / "dl2")


# --- where the artifacts live ---------------------------------------------------------------------


async def test_artifacts_default_beside_the_sqlite_store(
    tmp_path: Path, counts: pathlib.Path
) -> None:
    from tests import durable_workflows as dw

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with aflow.Runtime(store=url) as rt:
        wf = dw.ops_files(start=3)  # built by an @aflow.workflow: durable
        run = await wf.submit(runtime=rt)
        assert await run.result() == {"consume": {"text": "hello 3"}}
    assert (tmp_path / "runs.db.artifacts" / "objects").is_dir()
    [path] = download_artifact(wf.query_step(name="produce")[0].outputs.artifacts["out"], tmp_path)
    assert path.read_text() == "hello 3"
    # later, another runtime (another process, say) reads the run back from the store
    async with aflow.Runtime(store=url):
        again = await Workflow.load(run.id)
    assert again.query_status() == "Succeeded"
    records = {r.name: r for r in again.query_step()}
    assert records["consume"].outputs.parameters["text"].value == "hello 3"
    assert records["produce"].attempts == 1
    assert records["produce"].started_at is not None
    [copy] = download_artifact(records["produce"].outputs.artifacts["out"], tmp_path / "again")
    assert copy.read_text() == "hello 3"


async def test_a_postgres_run_that_passes_files_needs_a_shared_folder(
    store_url: str, counts: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests import durable_workflows as dw

    monkeypatch.delenv("AFLOW_ARTIFACTS", raising=False)
    async with aflow.Runtime(store=store_url) as rt:
        wf = dw.ops_files(start=1)
        if store_url.startswith("postgres"):  # refused before anything runs
            with pytest.raises(aflow.errors.DefinitionError, match="AFLOW_ARTIFACTS"):
                await wf.submit(runtime=rt)
            assert await rt.store.list_runs() == []  # type: ignore[union-attr]
        else:  # beside the SQLite file
            await wf.submit(runtime=rt)
            assert await wf.wait() == "Succeeded"
