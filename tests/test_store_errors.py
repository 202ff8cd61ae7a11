"""Every store problem is a StoreError that names the file or URL and says what to do,
and a store aflow refuses is left as it was (issue 14, items 8 and 14)."""

from __future__ import annotations

import contextlib
import os
import pathlib
import random
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator

import anyio
import pytest

import aflow
from aflow.errors import RunExists, StoreError
from aflow.stores import RunRecord, open_store

from . import durable_workflows as wf

ROOT = pathlib.Path(__file__).resolve().parent.parent


def record() -> RunRecord:
    now = time.time()
    return RunRecord(uuid.uuid4().hex, "mod:wf", "{}", "fp", "pending", None, now, now)


async def make_store(path: pathlib.Path) -> str:
    """A store with one run in it, closed; its run id."""
    store = open_store(f"sqlite:///{path}")
    await store.open()
    try:
        run = record()
        await store.create_run(run)
        return run.run_id
    finally:
        await store.close()


async def open_and_close(url: str) -> None:
    store = open_store(url)
    await store.open()
    await store.close()


def cli(*args: str, store: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aflow.cli", "--store", store, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_reported(done: subprocess.CompletedProcess[str], *parts: str) -> None:
    """Exit code 2 and one line ``aflow: ...`` holding ``parts``: no traceback."""
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("aflow: "), done.stderr
    for part in parts:
        assert part in line


@contextlib.contextmanager
def read_only(path: pathlib.Path) -> Iterator[None]:
    """Make a file or folder read-only for this process. Root ignores permission bits,
    so as root the file gets the immutable attribute instead (chattr +i)."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(mode & ~0o222)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", path], check=False).returncode:
        # (never skipped: the machines this project runs on, as root, support it)
        pytest.fail(f"as root, chattr +i {path} is what makes it read-only, and it failed")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", path], check=True)


# --- files aflow refuses, unchanged -------------------------------------------------------


def overwrite_pages(offset: int) -> Callable[[pathlib.Path], None]:
    def damage(path: pathlib.Path) -> None:
        size = path.stat().st_size
        noise = random.Random(offset).randbytes(size - offset)
        with path.open("r+b") as f:
            f.seek(offset)
            f.write(noise)

    return damage


def run_sql(*statements: str) -> Callable[[pathlib.Path], None]:
    def change(path: pathlib.Path) -> None:
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            for statement in statements:
                db.execute(statement)

    return change


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        pytest.param(overwrite_pages(100), "is damaged", id="random-bytes-after-the-header"),
        pytest.param(overwrite_pages(4096), "is damaged", id="random-bytes-after-page-1"),
        pytest.param(
            run_sql("UPDATE aflow_meta SET value = 'three' WHERE key = 'schema_version'"),
            "no valid schema version ('three')",
            id="version-not-a-number",
        ),
        pytest.param(
            run_sql("DELETE FROM aflow_meta"), "no valid schema version (none)", id="no-version"
        ),
        pytest.param(
            run_sql("DROP TABLE aflow_nodes"),
            "lacks part of aflow's schema 5 (no table aflow_nodes; "
            "no trigger aflow_nodes_log_insert; no trigger aflow_nodes_log_update)",
            id="dropped-table",
        ),
        pytest.param(
            run_sql("ALTER TABLE aflow_runs DROP COLUMN recoveries"),
            "(no column aflow_runs.recoveries)",
            id="dropped-column",
        ),
        pytest.param(
            run_sql("DROP TRIGGER aflow_nodes_log_update"),
            "(no trigger aflow_nodes_log_update)",
            id="dropped-trigger",
        ),
        pytest.param(
            run_sql("UPDATE aflow_meta SET value = '99' WHERE key = 'schema_version'"),
            "has schema 99, newer than this aflow's 5: upgrade aflow",
            id="newer-schema",
        ),
    ],
)
async def test_a_store_aflow_cannot_use_is_refused_on_open_and_left_as_it_was(
    tmp_path: pathlib.Path, damage: Callable[[pathlib.Path], None], message: str
) -> None:
    path = tmp_path / "runs.db"
    await make_store(path)
    damage(path)
    before = path.read_bytes()
    for url in (f"sqlite:///{path}", f"sqlite:///{path}?busy_timeout=1"):
        with pytest.raises(StoreError) as info:
            async with aflow.Runtime(store=url):
                pass
        assert str(path) in str(info.value)
        assert message in str(info.value)
    shown = await anyio.to_thread.run_sync(lambda: cli("runs", store=f"sqlite:///{path}"))
    assert_reported(shown, str(path), message)
    assert path.read_bytes() == before  # not migrated, not switched to WAL, not written


async def test_an_older_store_is_migrated_by_a_writer_only(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "runs.db"
    run_id = await make_store(path)
    run_sql(  # what schemas 3 to 5 added goes, as in a store aflow 0.1 wrote
        "ALTER TABLE aflow_runs DROP COLUMN recoveries",
        "DROP INDEX aflow_runs_wake",
        "ALTER TABLE aflow_runs DROP COLUMN wake_at",
        "ALTER TABLE aflow_runs DROP COLUMN waiting_for",
        "DROP TABLE aflow_events",
        "DROP TABLE aflow_values",
        "DROP TABLE aflow_waits",
        "DROP TABLE aflow_shapes",
        "UPDATE aflow_meta SET value = '2' WHERE key = 'schema_version'",
    )(path)
    before = path.read_bytes()
    shown = await anyio.to_thread.run_sync(lambda: cli("show", run_id, store=f"sqlite:///{path}"))
    assert_reported(shown, "has schema 2, older than this aflow's 5", "open it once for writing")
    assert path.read_bytes() == before
    await open_and_close(f"sqlite:///{path}")  # a writer migrates it
    shown = await anyio.to_thread.run_sync(lambda: cli("show", run_id, store=f"sqlite:///{path}"))
    assert shown.returncode == 0, shown.stderr


async def test_the_schema_is_checked_on_postgresql_too(store_url: str) -> None:
    await open_and_close(store_url)
    if store_url.startswith("sqlite"):
        change = run_sql("DROP TABLE aflow_transitions")
        await anyio.to_thread.run_sync(change, pathlib.Path(store_url[len("sqlite:///") :]))
    else:
        import asyncpg

        conn = await asyncpg.connect(store_url)
        await conn.execute("DROP TABLE aflow_transitions")
        await conn.close()
    with pytest.raises(StoreError, match=r"lacks part of aflow's schema 5 \(no table aflow_trans"):
        await open_and_close(store_url)
    if store_url.startswith("postgres"):
        conn = await asyncpg.connect(store_url)
        await conn.execute("UPDATE aflow_meta SET value = 'x' WHERE key = 'schema_version'")
        await conn.close()
        with pytest.raises(StoreError, match=r"no valid schema version \('x'\)"):
            await open_and_close(store_url)


async def test_a_table_dropped_under_an_open_store_is_a_store_error(store_url: str) -> None:
    store = open_store(store_url)
    await store.open()
    try:
        run = record()
        await store.create_run(run)
        if store_url.startswith("sqlite"):
            change = run_sql("DROP TABLE aflow_nodes")
            await anyio.to_thread.run_sync(change, pathlib.Path(store_url[len("sqlite:///") :]))
        else:
            import asyncpg

            conn = await asyncpg.connect(store_url)
            await conn.execute("DROP TABLE aflow_nodes")
            await conn.close()
        with pytest.raises(StoreError, match="lacks part of aflow's schema") as info:
            await store.load_nodes(run.run_id)
        assert store_url.removeprefix("sqlite:///") in str(info.value)  # the file, or URL
    finally:
        await store.close()


# --- files aflow cannot write, or cannot reach ----------------------------------------------


async def test_a_read_only_store_file_is_refused_on_open_and_still_readable(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "runs.db"
    run_id = await make_store(path)
    before = path.read_bytes()
    with read_only(path):
        with pytest.raises(StoreError, match="cannot be written") as info:
            async with aflow.Runtime(store=f"sqlite:///{path}"):
                pass  # it used to open, and the first submit failed with a raw error
        assert str(path) in str(info.value)
        shown = await anyio.to_thread.run_sync(
            lambda: cli("show", run_id, store=f"sqlite:///{path}")
        )
        assert shown.returncode == 0, shown.stderr  # the read-only commands work
        assert run_id in shown.stdout
    assert path.read_bytes() == before


async def test_a_store_in_a_read_only_folder_is_refused_for_what_it_is(
    tmp_path: pathlib.Path,
) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "runs.db"
    await make_store(path)
    with read_only(folder), pytest.raises(StoreError) as info:
        await open_and_close(f"sqlite:///{path}")
    assert str(path) in str(info.value)
    assert "create files in the folder" in str(info.value)  # not "not an aflow store"


LOCKER = textwrap.dedent(
    """
    import sqlite3, sys
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    sys.stdin.readline()  # until the test is done
    """
)


@contextlib.contextmanager
def locked(path: pathlib.Path) -> Iterator[None]:
    """Another process holds the store's write lock meanwhile."""
    with subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdin is not None
        try:
            assert proc.stdout.readline().strip() == "locked"
            yield
        finally:
            proc.stdin.close()
            if proc.wait(timeout=30) != 0:
                proc.kill()


async def test_a_store_locked_by_another_process_is_a_store_error_saying_so(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "runs.db"
    await make_store(path)
    url = f"sqlite:///{path}?busy_timeout=0.05"
    store = open_store(url)
    await store.open()
    try:
        with locked(path):
            with pytest.raises(StoreError, match="stayed locked by another connection") as info:
                await store.create_run(record())
            assert str(path) in str(info.value)
            assert "busy_timeout" in str(info.value)
            with pytest.raises(StoreError, match="stayed locked"):
                await open_and_close(url)  # checked on open too
        await store.create_run(record())  # the lock is gone: it works again
    finally:
        await store.close()


@pytest.mark.parametrize("command", ["runs", "show", "cancel"])
def test_the_read_commands_and_cancel_never_create_a_store(
    tmp_path: pathlib.Path, command: str
) -> None:
    path = tmp_path / "runs.db"
    done = cli(command, *(["some-run"] if command != "runs" else []), store=f"sqlite:///{path}")
    assert_reported(done, f"no store at {path}")
    assert list(tmp_path.iterdir()) == []


async def test_the_read_commands_create_no_store_on_postgresql_either(
    store_url: str, counts: pathlib.Path
) -> None:
    async def has_store() -> bool:
        if store_url.startswith("sqlite"):
            return await anyio.Path(store_url[len("sqlite:///") :]).exists()
        import asyncpg

        conn = await asyncpg.connect(store_url)
        try:
            return bool(await conn.fetchval("SELECT to_regclass('aflow_meta') IS NOT NULL"))
        finally:
            await conn.close()

    for args in (("runs",), ("show", "some-run"), ("cancel", "some-run")):
        done = await anyio.to_thread.run_sync(lambda args=args: cli(*args, store=store_url))
        assert_reported(done, "no store")
    assert not await has_store()
    async with aflow.Runtime(store=store_url) as rt:
        run = await rt.submit(wf.abc, start=1)
        await run.result()
    for args in (("runs",), ("show", run.id, "--history")):
        done = await anyio.to_thread.run_sync(lambda args=args: cli(*args, store=store_url))
        assert done.returncode == 0, done.stderr
        assert run.id in done.stdout


def test_aflow_runs_and_show_change_no_store(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "runs.db"
    run_id = anyio.run(make_store, path)
    before = path.read_bytes()
    for args in (("runs",), ("show", run_id), ("show", run_id, "--history")):
        done = cli(*args, store=f"sqlite:///{path}")
        assert done.returncode == 0, done.stderr
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    "args", [("run", "tests.durable_workflows:abc", "--param", "start=1"), ("runs",)]
)
def test_a_store_in_a_folder_that_does_not_exist_is_one_clear_line(
    tmp_path: pathlib.Path, args: tuple[str, ...]
) -> None:
    path = tmp_path / "missing" / "runs.db"
    done = cli(*args, store=f"sqlite:///{path}")
    # one line: no "Event loop is closed" from a connection thread left behind
    if args[0] == "run":
        assert_reported(done, f"the folder {path.parent} does not exist")
    else:
        assert_reported(done, f"no store at {path}")
    assert not path.parent.exists()


def test_bad_sqlite_url_options_are_store_errors() -> None:
    with pytest.raises(StoreError, match="unknown option 'timeout'"):
        open_store("sqlite:///runs.db?timeout=5")
    with pytest.raises(StoreError, match="busy_timeout='soon'"):
        open_store("sqlite:///runs.db?busy_timeout=soon")
    assert open_store("sqlite:///runs.db?busy_timeout=2.5").busy_timeout == 2.5  # type: ignore[attr-defined]


async def test_an_unreachable_postgresql_is_a_store_error_without_the_password() -> None:
    with socket_bound() as port:  # nothing listens there
        url = f"postgresql://aflow:s3cret@127.0.0.1:{port}/runs"
        with pytest.raises(StoreError) as info:
            async with aflow.Runtime(store=url):
                pass
    text = str(info.value)
    assert f"postgresql://aflow@127.0.0.1:{port}/runs" in text
    assert "s3cret" not in text
    assert "cannot reach" in text


@contextlib.contextmanager
def socket_bound() -> Iterator[int]:
    """A port that is taken (so nothing else gets it) but not listened on."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


# --- item 14: a run id that exists ---------------------------------------------------------


async def test_a_run_id_on_record_is_refused_with_run_exists_by_another_runtime(
    store_url: str, counts: pathlib.Path
) -> None:
    async with aflow.Runtime(store=store_url) as rt:
        assert await (await rt.submit(wf.abc, start=1, run_id="order-1")).result() == 104
    async with aflow.Runtime(store=store_url) as rt:  # a new runtime: only the store knows
        with pytest.raises(RunExists) as info:
            await rt.submit(wf.abc, start=2, run_id="order-1")
        assert rt.store is not None
        assert (await rt.store.get_run("order-1")).status == "succeeded"  # left as it was
    assert info.value.run_id == "order-1"
    assert "postgresql://" in info.value.where or "sqlite:///" in info.value.where
    assert wf.read_counts(counts) == {"A": 1, "B": 1, "C": 1}
