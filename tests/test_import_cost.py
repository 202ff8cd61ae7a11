"""What ``import aflow`` loads (issue 17's import cost): structlog and what it pulls in
(rich, pygments) load only in an application that uses structlog itself."""

from __future__ import annotations

import subprocess
import sys
import textwrap

NOT_ON_IMPORT = ("structlog", "rich", "pygments", "attr", "pydantic", "asyncpg", "fastapi")


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
