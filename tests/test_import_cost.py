"""What ``import aflow`` loads (issue 17's import cost): structlog and what it pulls in
(rich, pygments) load only in an application that uses structlog itself; the runtime
(asyncio, anyio, the stores) loads with the first name that needs it. The time it takes
is measured by ``benchmarks/imports.py``, not here."""

from __future__ import annotations

import subprocess
import sys
import textwrap

NOT_ON_IMPORT = ("structlog", "rich", "pygments", "attr", "pydantic", "asyncpg", "fastapi")
#: what building workflows does not need: the runtime loads when first used
RUNTIME = ("asyncio", "anyio", "sqlite3", "aflow._runtime", "aflow.stores", "aflow._serialize")


def _run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.strip()


def test_import_aflow_loads_no_optional_library() -> None:
    loaded = _run(
        f"""
        import sys
        import aflow
        print(sorted(m for m in {NOT_ON_IMPORT!r} if m in sys.modules))
        """
    )
    assert loaded == "[]"


def test_import_aflow_and_building_workflows_load_no_runtime() -> None:
    loaded = _run(
        f"""
        import sys
        import aflow

        @aflow.task
        async def add(x: int, y: int) -> int:
            return x + y

        flow = add.s(1, 2) | aflow.group(add.s(3), add.s(4))
        aflow.compile(flow)
        print(sorted(m for m in {RUNTIME!r} if m in sys.modules))
        """
    )
    assert loaded == "[]"


def test_the_runtime_names_load_when_first_used() -> None:
    out = _run(
        """
        import aflow
        from aflow import Runtime, RunStatus, current_step
        import aflow.stores

        @aflow.task
        async def add(x: int, y: int) -> int:
            return x + y

        assert aflow.run_sync(add.s(1, 2)) == 3
        print(Runtime.__module__, RunStatus.__module__, current_step.__module__,
              aflow.Run.__name__, aflow.engines.__name__, aflow.stores.__name__,
              aflow.patterns.__name__, aflow.retry.__name__)
        """
    )
    assert out == "aflow aflow aflow Run aflow.engines aflow.stores aflow.patterns aflow.retry"


def test_an_application_that_configures_structlog_later_gets_the_records() -> None:
    """aflow never imports structlog: it logs through it once the application has."""
    out = _run(
        """
        import aflow

        @aflow.task
        async def add(x: int, y: int) -> int:
            return x + y

        import structlog
        from structlog.testing import capture_logs

        with capture_logs() as logs:
            assert aflow.run_sync(add.s(1, 2), run_id="r-1") == 3
        print(sorted({entry["event"] for entry in logs if entry.get("run_id") == "r-1"}))
        """
    )
    assert out == "['run_started', 'run_succeeded', 'task_started', 'task_succeeded']"
