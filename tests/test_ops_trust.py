"""aflow.ops never trusts a stored artifact manifest as a path (issue 14, item 6).

A store row is data: a crafted hash or member name must not make a resumed
step, ``download_artifact`` or a reuse read a file outside the artifact store
or write outside the folder it writes to. Rows are crafted through
``aflow.stores``, as anyone who can write the database could.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import pytest

import aflow
from aflow.ops import Artifact, Slices, Step, Workflow, download_artifact, op
from aflow.stores import NodeRecord, open_store

SECRET = b"the contents of a file outside the artifact store"


def _fail_first(name: str) -> None:
    """The step named by ``AFLOW_TRUST_FAIL`` fails (a run to take up later)."""
    if os.environ.get("AFLOW_TRUST_FAIL") == name:
        raise RuntimeError(f"{name} fails this time")


@op(outputs={"out": Artifact(Path)})
def produce(text: str, workdir: Path):
    (workdir / "out.txt").write_text(text)
    return {"out": Path("out.txt")}


@op(outputs={"text": str})
def consume(src: Annotated[Path, Artifact(Path)]):
    _fail_first("consume")
    return {"text": src.read_text()}


@op(outputs={"tree": Artifact(Path)})
def make_tree(names: list[str], workdir: Path):
    for name in names:
        path = workdir / "tree" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"content of {name}")
    return {"tree": Path("tree")}


@op(outputs={"files": dict[str, str]})
def read_tree(tree: Annotated[Path, Artifact(Path)]):
    _fail_first("read_tree")
    found = sorted(p for p in tree.rglob("*") if p.is_file())
    return {"files": {p.relative_to(tree).as_posix(): p.read_text() for p in found}}


@op(outputs={"out": Artifact(Path)})
def produce_one(text: str, workdir: Path):
    _fail_first(text)
    (workdir / f"{text}.txt").write_text(text)
    return {"out": Path(f"{text}.txt")}


@op(outputs={"texts": list[str]})
def consume_all(srcs: Annotated[list[Path], Artifact(list[Path])]):
    return {"texts": [p.read_text() for p in srcs]}


@aflow.workflow
def files_flow(text: str, artifacts: str | None = None) -> Workflow:
    p = Step("produce", produce, parameters={"text": text})
    c = Step("consume", consume, artifacts={"src": p.outputs.artifacts["out"]})
    return Workflow("files", artifacts=artifacts).add(p).add(c)


@aflow.workflow
def tree_flow(names: list[str]) -> Workflow:
    t = Step("tree", make_tree, parameters={"names": names})
    r = Step("read", read_tree, artifacts={"tree": t.outputs.artifacts["tree"]})
    return Workflow("tree").add(t).add(r)


@aflow.workflow
def local_flow(path: str) -> Workflow:
    return Workflow("local").add(Step("consume", consume, artifacts={"src": Path(path)}))


@aflow.workflow
def sliced_flow() -> Workflow:
    sliced = Slices(input_parameter=["text"], output_artifact=["out"], group_size=2, pool_size=1)
    w = Step("work", produce_one, parameters={"text": ["a", "b"]}, slices=sliced)
    c = Step("all", consume_all, artifacts={"srcs": w.outputs.artifacts["out"]})
    return Workflow("sliced").add(w).add(c)


# --- helpers ------------------------------------------------------------------------------------


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A readable file outside every artifact store of the test."""
    path = tmp_path / "elsewhere" / "secret.txt"
    path.parent.mkdir()
    path.write_bytes(SECRET)
    return path


def artifact_root(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///") + ".artifacts")


def traversal(secret: Path, root: Path) -> str:
    """A "hash" that joined to ``root/objects/<first two>/`` names ``secret``."""
    return os.path.relpath(secret, root)  # "../elsewhere/secret.txt": its first two are ".."


def files_in(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative name: text), links not followed."""
    if not folder.exists():
        return {}
    return {
        p.relative_to(folder).as_posix(): p.read_text(errors="replace")
        for p in folder.rglob("*")
        if p.is_file() and not p.is_symlink()
    }


def copies_of_secret(*folders: Path) -> list[Path]:
    return [
        p
        for folder in folders
        if folder.exists()
        for p in folder.rglob("*")
        if p.is_file() and not p.is_symlink() and p.read_bytes() == SECRET
    ]


async def rewrite(url: str, run_id: str, key: str, change: Callable[[Any], Any]) -> None:
    """Overwrite a node's stored result, as anyone who can write the store could."""
    store = open_store(url)
    await store.open()
    try:
        found = (await store.load_nodes(run_id))[key]
        assert found.result is not None
        value = change(json.loads(found.result))
        await store.write_nodes(
            run_id, [NodeRecord(key, found.state, found.attempt, json.dumps(value))]
        )
    finally:
        await store.close()


async def interrupt(url: str, run_id: str, *keys: str) -> None:
    """Leave the run as a process that died while ``keys`` ran would have."""
    store = open_store(url)
    await store.open()
    try:
        await store.write_nodes(run_id, [NodeRecord(k, "running", 1) for k in keys])
        await store.set_status(run_id, "running")
    finally:
        await store.close()


def set_file_hash(sha: str) -> Callable[[Any], Any]:
    def change(value: Any) -> Any:
        value["artifacts"]["out"]["file"] = sha
        return value

    return change


def refused(
    exc: pytest.ExceptionInfo[aflow.errors.UntrustedManifest], run_id: str, step: str
) -> None:
    error = exc.value
    assert isinstance(error, aflow.errors.StoreError)
    assert (error.run_id, error.step) == (run_id, step)
    assert f"run {run_id}" in str(error)
    assert f"step {step!r}" in str(error)
    assert "stored artifact manifest is not trusted" in str(error)


async def failed_run(rt: aflow.Runtime, failing: str, workflow: Any, **params: Any) -> str:
    """A durable run whose ``failing`` step failed (the rest is on record). The same
    runtime takes it up again later: it owns the run, so no lease has to run out."""
    os.environ["AFLOW_TRUST_FAIL"] = failing
    try:
        wf = workflow(**params)
        await wf.submit(runtime=rt)
        assert await wf.wait() == "Failed"
        return str(wf.run.id)
    finally:
        del os.environ["AFLOW_TRUST_FAIL"]


# --- a traversal hash ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["relative", "absolute"])
async def test_a_resumed_step_refuses_a_traversal_hash(
    tmp_path: Path, secret: Path, kind: str
) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    root = artifact_root(url)
    sha = traversal(secret, root) if kind == "relative" else str(secret)
    async with aflow.Runtime(store=url) as rt:
        run_id = await failed_run(rt, "consume", files_flow, text="hello")
        await rewrite(url, run_id, "produce", set_file_hash(sha))
        await interrupt(url, run_id, "consume")
        run = await rt.resume(run_id)
        with pytest.raises(aflow.errors.UntrustedManifest) as exc:
            await run.result()
    refused(exc, run_id, "produce")
    assert "is not a sha256 digest" in str(exc.value)
    assert copies_of_secret(root) == []


@pytest.mark.parametrize("kind", ["relative", "absolute"])
async def test_download_artifact_refuses_a_traversal_hash(
    tmp_path: Path, secret: Path, kind: str
) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    root = artifact_root(url)
    async with aflow.Runtime(store=url) as rt:
        wf = files_flow(text="hello")
        run = await wf.submit(runtime=rt)
        await run.result()
    sha = traversal(secret, root) if kind == "relative" else str(secret)
    await rewrite(url, run.id, "produce", set_file_hash(sha))
    async with aflow.Runtime(store=url) as rt:
        stored = await Workflow.load(run.id, runtime=rt)
    out = tmp_path / "download"
    produced = stored.query_step(name="produce")[0].outputs.artifacts["out"]
    read = stored.query_step(name="consume")[0].inputs.artifacts["src"]
    for value in (produced, read):  # the consumer's view of it names the producer too
        with pytest.raises(aflow.errors.UntrustedManifest) as exc:
            download_artifact(value, out)
        refused(exc, run.id, "produce")
    assert copies_of_secret(out, root) == []


async def test_reuse_refuses_a_traversal_hash_before_writing_anything(
    tmp_path: Path, secret: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'a' / 'runs.db'}"
    (tmp_path / "a").mkdir()
    root = artifact_root(url)
    async with aflow.Runtime(store=url) as rt:
        first = files_flow(text="hello")
        run = await first.submit(runtime=rt)
        await run.result()
    # joined to the other store's objects/ folder, the same hash names a file beside it
    other = tmp_path / "b" / "c" / "store"
    escape = traversal(secret, root)
    outside = other / escape
    await rewrite(url, run.id, "produce", set_file_hash(escape))
    async with aflow.Runtime(store=url) as rt:
        stored = await Workflow.load(run.id, runtime=rt)
    [record] = stored.query_step(name="produce")
    async with aflow.Runtime() as rt:
        second = files_flow(text="hello", artifacts=str(other))
        with pytest.raises(aflow.errors.UntrustedManifest) as exc:
            await second.submit(runtime=rt, reuse_step=[record])
        refused(exc, run.id, "produce")
        # modify_output_artifact copies the new artifact's objects into the record's store
        fresh = files_flow(text="x", artifacts=str(other))
        await fresh.submit(runtime=rt)
        assert await fresh.wait() == "Succeeded"
        [target] = fresh.query_step(name="produce")
        crafted = record.outputs.artifacts["out"]
        assert crafted is not None
        with pytest.raises(aflow.errors.UntrustedManifest) as exc:
            target.modify_output_artifact("out", crafted)
        refused(exc, run.id, "produce")
    assert not outside.resolve().exists()
    assert copies_of_secret(tmp_path / "b", root) == []


# --- names inside a directory manifest ----------------------------------------------------------

BAD_MEMBERS = [
    "../escape.txt",
    "sub/../../escape.txt",
    "..",
    "/abs/escape.txt",
    "a\x00b",
    "",
    "sub//x",
    "sub/./x",
    "trailing/",
]


@pytest.mark.parametrize("member", BAD_MEMBERS)
async def test_a_directory_member_outside_its_folder_is_refused(
    tmp_path: Path, member: str
) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"

    def change(value: Any) -> Any:
        [[_, sha, size]] = value["artifacts"]["tree"]["entries"]
        value["artifacts"]["tree"]["entries"] = [[member, sha, size]]
        return value

    async with aflow.Runtime(store=url) as rt:
        run_id = await failed_run(rt, "read_tree", tree_flow, names=["ok.txt"])
        await rewrite(url, run_id, "tree", change)
        await interrupt(url, run_id, "read")
        run = await rt.resume(run_id)
        with pytest.raises(aflow.errors.UntrustedManifest) as exc:
            await run.result()
    refused(exc, run_id, "tree")
    assert "outside its folder" in str(exc.value)
    async with aflow.Runtime(store=url) as rt:
        stored = await Workflow.load(run_id, runtime=rt)
    out = tmp_path / "download" / "deeper"
    with pytest.raises(aflow.errors.UntrustedManifest) as exc:
        download_artifact(stored.query_step(name="tree")[0].outputs.artifacts["tree"], out)
    refused(exc, run_id, "tree")
    assert files_in(tmp_path / "download") == {}
    assert [p for p in files_in(tmp_path) if p.endswith("escape.txt")] == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("dir", ".."),
        ("dir", "a/b"),
        ("empty", ["../outside"]),
        ("entries", [["x", "0" * 64, 1], ["x/y", "0" * 64, 1]]),  # a file and a folder
        ("entries", [["x", "0" * 64, 1], ["x", "0" * 64, 1]]),
        ("entries", [["x", "0" * 64]]),
        ("entries", "x"),
    ],
)
async def test_a_malformed_directory_manifest_is_refused(
    tmp_path: Path, field: str, value: Any
) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with aflow.Runtime(store=url) as rt:
        wf = tree_flow(names=["ok.txt"])
        run = await wf.submit(runtime=rt)
        await run.result()

    def change(stored: Any) -> Any:
        stored["artifacts"]["tree"][field] = value
        return stored

    await rewrite(url, run.id, "tree", change)
    async with aflow.Runtime(store=url) as rt:
        stored = await Workflow.load(run.id, runtime=rt)
    with pytest.raises(aflow.errors.UntrustedManifest) as exc:
        download_artifact(stored.query_step(name="tree")[0].outputs.artifacts["tree"], tmp_path)
    refused(exc, run.id, "tree")
    assert not (tmp_path / "tree").exists()


@pytest.mark.parametrize(
    "manifest",
    [
        "a string",
        ["a", "list"],
        {"name": "x.txt", "size": 1},
        {"file": "A" * 64, "name": "x.txt", "size": 1},  # hex digits are lowercase
        {"file": "0" * 63, "name": "x.txt", "size": 1},
        {"file": "0" * 64 + "\n", "name": "x.txt", "size": 1},
        {"file": "0" * 64, "name": "../x.txt", "size": 1},
        {"file": "0" * 64, "name": "a/x.txt", "size": 1},
        {"file": "0" * 64, "name": "x.txt", "size": -1},
    ],
)
async def test_a_malformed_file_manifest_is_refused(tmp_path: Path, manifest: Any) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with aflow.Runtime(store=url) as rt:
        wf = files_flow(text="hello")
        run = await wf.submit(runtime=rt)
        await run.result()

    def change(value: Any) -> Any:
        value["artifacts"]["out"] = manifest
        return value

    await rewrite(url, run.id, "produce", change)
    async with aflow.Runtime(store=url) as rt:
        stored = await Workflow.load(run.id, runtime=rt)
    out = tmp_path / "download"
    with pytest.raises(aflow.errors.UntrustedManifest) as exc:
        download_artifact(stored.query_step(name="produce")[0].outputs.artifacts["out"], out)
    refused(exc, run.id, "produce")
    assert not out.exists()


# --- other stored rows that hold manifests ------------------------------------------------------


async def test_a_resumed_step_refuses_a_crafted_record_of_its_local_files(
    tmp_path: Path, secret: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    root = artifact_root(url)
    local = tmp_path / "local.txt"
    local.write_text("mine")

    def change(value: Any) -> Any:
        value["src"]["file"] = traversal(secret, root)
        return value

    async with aflow.Runtime(store=url) as rt:
        run_id = await failed_run(rt, "consume", local_flow, path=str(local))
        await rewrite(url, run_id, "_inputs-consume", change)
        await interrupt(url, run_id, "consume")
        run = await rt.resume(run_id)
        with pytest.raises(aflow.errors.UntrustedManifest) as exc:
            await run.result()
    refused(exc, run_id, "consume")
    assert copies_of_secret(root) == []


async def test_a_resumed_sliced_step_refuses_a_crafted_checkpoint(
    tmp_path: Path, secret: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    root = artifact_root(url)
    async with aflow.Runtime(store=url) as rt:
        run_id = await failed_run(rt, "b", sliced_flow)  # slice 0 on record, slice 1 failed
        await rewrite(url, run_id, "_slice:work:0", set_file_hash(traversal(secret, root)))
        await interrupt(url, run_id, "work")
        run = await rt.resume(run_id)
        with pytest.raises(aflow.errors.UntrustedManifest) as exc:
            await run.result()
    refused(exc, run_id, "work-0")
    assert copies_of_secret(root) == []


# --- the objects themselves ---------------------------------------------------------------------


@pytest.mark.parametrize("link", ["object", "folder"])
async def test_an_object_that_is_a_link_out_of_the_store_is_refused(
    tmp_path: Path, secret: Path, link: str
) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    root = artifact_root(url)
    out = tmp_path / "download"
    async with aflow.Runtime(store=url) as rt:
        run_id = await failed_run(rt, "consume", files_flow, text="hello")
        stored = await Workflow.load(run_id, runtime=rt)
        value = stored.query_step(name="produce")[0].outputs.artifacts["out"]
        assert value is not None
        sha = value.manifest["file"]
        obj = root / "objects" / sha[:2] / sha
        if link == "object":  # the well-formed hash names a link to a file elsewhere
            obj.unlink()
            obj.symlink_to(secret)
        else:
            elsewhere = tmp_path / "elsewhere" / sha[:2]
            elsewhere.mkdir()
            (elsewhere / sha).symlink_to(secret)
            obj.unlink()
            obj.parent.rmdir()
            obj.parent.symlink_to(elsewhere, target_is_directory=True)
        with pytest.raises(aflow.errors.UntrustedManifest, match="is a link") as exc:
            download_artifact(value, out)
        refused(exc, run_id, "produce")
        await interrupt(url, run_id, "consume")
        run = await rt.resume(run_id)
        with pytest.raises(aflow.errors.UntrustedManifest, match="is a link") as exc:
            await run.result()
    refused(exc, run_id, "produce")
    assert copies_of_secret(out, root / "work") == []


async def test_reuse_copies_no_object_whose_content_is_not_its_hash(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a' / 'runs.db'}"
    (tmp_path / "a").mkdir()
    root = artifact_root(url)
    async with aflow.Runtime(store=url) as rt:
        first = files_flow(text="hello")
        await first.submit(runtime=rt)
        assert await first.wait() == "Succeeded"
    [record] = first.query_step(name="produce")
    value = record.outputs.artifacts["out"]
    assert value is not None
    obj = root / "objects" / value.manifest["file"][:2] / value.manifest["file"]
    obj.chmod(0o600)
    obj.write_bytes(SECRET)  # the store was tampered with: not what the hash says
    other = tmp_path / "b"
    async with aflow.Runtime() as rt:
        second = files_flow(text="hello", artifacts=str(other))
        with pytest.raises(aflow.errors.UntrustedManifest, match="holds other content") as exc:
            await second.submit(runtime=rt, reuse_step=[record])
    refused(exc, first.run.id, "produce")
    assert copies_of_secret(other) == []


async def test_reuse_writes_no_object_through_a_link_in_the_target_store(tmp_path: Path) -> None:
    first = files_flow(text="hello", artifacts=str(tmp_path / "a"))
    async with aflow.Runtime() as rt:
        await first.submit(runtime=rt)
        assert await first.wait() == "Succeeded"
    [record] = first.query_step(name="produce")
    value = record.outputs.artifacts["out"]
    assert value is not None
    sha = value.manifest["file"]
    other, elsewhere = tmp_path / "b", tmp_path / "elsewhere"
    (other / "objects").mkdir(parents=True)
    elsewhere.mkdir()
    (other / "objects" / sha[:2]).symlink_to(elsewhere, target_is_directory=True)
    async with aflow.Runtime() as rt:
        second = files_flow(text="hello", artifacts=str(other))
        with pytest.raises(aflow.errors.UntrustedManifest, match="is a link") as exc:
            await second.submit(runtime=rt, reuse_step=[record])
    refused(exc, first.run.id, "produce")
    assert files_in(elsewhere) == {}


async def test_the_keys_of_a_dict_artifact_are_never_paths(tmp_path: Path) -> None:
    keys = ["../up", "/abs", "a/../../b", "C:\\drive"]

    @op(outputs={"files": Artifact(dict[str, Path])})
    def many(workdir: Path):
        for i, key in enumerate(keys):
            (workdir / f"{i}.txt").write_text(key)
        return {"files": {key: Path(f"{i}.txt") for i, key in enumerate(keys)}}

    @op(outputs={"where": dict[str, str]})
    def where(files: Annotated[dict[str, Path], Artifact(dict[str, Path])], workdir: Path):
        assert all(p.resolve().is_relative_to(workdir.resolve()) for p in files.values())
        return {"where": {k: p.read_text() for k, p in files.items()}}

    m = Step("many", many)
    w = Step("where", where, artifacts={"files": m.outputs.artifacts["files"]})
    wf = Workflow("keys", artifacts=tmp_path / "store").add(m).add(w)
    async with aflow.Runtime() as rt:
        await wf.submit(runtime=rt)
        assert await wf.wait() == "Succeeded"
    assert wf.query_step(name="where")[0].outputs.parameters["where"].value == {k: k for k in keys}
    out = tmp_path / "download"
    got = download_artifact(wf.query_step(name="many")[0].outputs.artifacts["files"], out)
    assert all(p.parent == out for p in got)


# --- no false positives -------------------------------------------------------------------------

ODD_NAMES = [
    "plain.txt",
    "with space.txt",
    " leading and trailing ",
    "ünïcödé-名前.txt",
    "-starts-with-dash",
    ".hidden",
    "..two-dots-then-more",
    "...",
    "a..b",
    "percent%2e%2e",
    "semi;colon&amp'quote\"",
    "deep/er/still/file.txt",
    "tab\tand\nnewline",
]
if sys.platform != "win32":
    ODD_NAMES += ["colon:name", "back\\slash", "C:not-a-drive-here"]


async def test_well_formed_manifests_with_odd_names_still_work(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    expected = {name: f"content of {name}" for name in ODD_NAMES}
    async with aflow.Runtime(store=url) as rt:
        run_id = await failed_run(rt, "read_tree", tree_flow, names=ODD_NAMES)
        await interrupt(url, run_id, "read")
        run = await rt.resume(run_id)  # the stored manifest, read back and used
        assert await run.result() == {"read": {"files": expected}}
        stored = await Workflow.load(run_id, runtime=rt)
    [record] = stored.query_step(name="tree")
    tree = record.outputs.artifacts["tree"]
    assert tree is not None
    [top] = download_artifact(tree, tmp_path / "download")
    assert files_in(top) == expected
    async with aflow.Runtime() as rt:  # reused into another store: every object copied over
        second = tree_flow(names=ODD_NAMES)
        await second.submit(runtime=rt, reuse_step=[record])
        assert await second.wait() == "Succeeded"
        assert second.query_step(name="read")[0].outputs.parameters["files"].value == expected


# --- slice keys on record -----------------------------------------------------------------------


async def test_crafted_slice_keys_build_no_slices(tmp_path: Path) -> None:
    """A stored key is data: "²" is no index (int() refuses it), and an index far past
    the slices on record makes no billion records."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with aflow.Runtime(store=url) as rt:
        run_id = await failed_run(rt, "b", sliced_flow)  # slice 0 on record, slice 1 failed
        store = open_store(url)
        await store.open()
        try:
            crafted = ["_slice:work:\u00b2", "_slice:work:999999999", "_slice:work:007"]
            await store.write_nodes(run_id, [NodeRecord(k, "succeeded", 1, "{}") for k in crafted])
        finally:
            await store.close()
    async with aflow.Runtime(store=url) as rt:  # another process reads it from the store
        loaded = await Workflow.load(run_id, runtime=rt)
        [work] = loaded.query_step(name="work")
    assert [s.phase for s in work.slices] == ["Succeeded", "Failed"]
