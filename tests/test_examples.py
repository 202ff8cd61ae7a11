"""Every example runs, so none can rot."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

EXAMPLES = sorted((pathlib.Path(__file__).resolve().parent.parent / "examples").glob("*.py"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(path: pathlib.Path) -> None:
    done = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


async def test_taskflow_style_example_computes_the_seed_result() -> None:
    sys.path.insert(0, str(EXAMPLES[0].parent))
    try:
        import taskflow_style  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    context = await taskflow_style.main()
    assert context["final_res"] == 1 + 4 + 5
    assert context["res_a"] == 1
