"""Test configuration: scheduler and canvas tests run on asyncio and on uvloop."""

from __future__ import annotations

import asyncio
import os
import pathlib
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

# Every run of every test checks its invariants as it closes (aflow/_runtime/_invariants.py),
# in this process and in the processes tests start.
os.environ["AFLOW_CHECK_INVARIANTS"] = "1"
from aflow._runtime import _invariants

_invariants.CHECK_INVARIANTS = True

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dev dependency
    uvloop = None

#: Modules whose tests run on both loops (the issue asks for scheduler and canvas).
BOTH_LOOPS = {
    "test_canvas",
    "test_scheduler",
    "test_runtime",
    "test_properties",
    "test_saga",
    "test_policies",
    "test_ops_steps",
    "test_ops_signatures",
    "test_ops_expressions",
    "test_ops_policies",
    "test_ops_slices",
    "test_ops_artifacts",
    "test_ops_queries",
    "test_ops_durable",
}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
        "asyncio": asyncio.new_event_loop
    }
    module = getattr(item, "module", None)
    name = module.__name__.rsplit(".", 1)[-1] if module is not None else ""
    if name in BOTH_LOOPS or item.get_closest_marker("both_loops"):
        if uvloop is None:
            raise pytest.UsageError("uvloop is required for the both-loops tests: make test")
        factories["uvloop"] = uvloop.new_event_loop
    return factories


@pytest.fixture(autouse=True)
def _runs_keep_their_invariants() -> Iterator[None]:
    """Fail a test in which any run broke an invariant, even if the test caught the error."""
    _invariants.FOUND.clear()
    yield
    found = list(_invariants.FOUND)
    _invariants.FOUND.clear()
    assert not found, f"runs broke their invariants: {found}"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server for the session (see tests/pg.py)."""
    from .pg import postgres_cluster

    try:
        cluster = postgres_cluster()
        url = cluster.__enter__()
    except RuntimeError as exc:
        # make test installs PostgreSQL (scripts/ensure-postgres), so its absence is a
        # failure; a developer without it may opt out loudly, never under CI.
        opted_out = os.environ.get("AFLOW_WITHOUT_POSTGRES") == "1"
        if opted_out and os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
            pytest.skip(f"AFLOW_WITHOUT_POSTGRES=1: PostgreSQL tests not run ({exc})")
        pytest.fail(f"PostgreSQL is required (run scripts/ensure-postgres): {exc}")
    try:
        yield url
    finally:
        cluster.__exit__(None, None, None)


@pytest.fixture
def counts(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """The side-effect counter file of tests/durable_workflows.py."""
    path = tmp_path / "counts.json"
    monkeypatch.setenv("AFLOW_COUNTS", str(path))
    monkeypatch.delenv("AFLOW_HANG", raising=False)
    return path


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    """A fresh durable store: a SQLite file, or a new database on the session's PostgreSQL."""
    return new_store_url(request, tmp_path, request.param)


def new_store_url(request: pytest.FixtureRequest, tmp_path: pathlib.Path, kind: str) -> str:
    """A fresh store of ``kind`` (memory, sqlite, postgres) for a test."""
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'runs.db'}"
    url: str = request.getfixturevalue("postgres_url")
    import anyio
    import asyncpg

    async def create() -> str:
        name = f"t{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(url)
        await conn.execute(f"CREATE DATABASE {name}")
        await conn.close()
        return url.rsplit("/", 1)[0] + f"/{name}"

    return anyio.run(create)


@pytest.fixture(scope="session")
def dask_address() -> Iterator[str]:
    """The session's Dask cluster (see tests/dask_cluster.py): its scheduler's address."""
    from .dask_cluster import dask_cluster

    with dask_cluster() as address:
        yield address


@pytest.fixture(params=["process", "dask"])
def elsewhere(request: pytest.FixtureRequest) -> Iterator[Any]:
    """An executor of another process: "process", or a Dask executor on the session's
    cluster (closed after the test)."""
    if request.param == "process":
        yield "process"
        return
    import aflow.executors

    dask = aflow.executors.Dask(request.getfixturevalue("dask_address"))
    yield dask
    dask.close()
