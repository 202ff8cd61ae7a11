"""The benchmark script keeps working (figures are never asserted here: see benchmarks/)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_benchmark_script_runs(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "results.md"
    done = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--quick", "--repeat", "1", "--markdown", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    table = out.read_text()
    for workload in ("fan-out + sum", "chain", "DAG", "sleeps"):
        assert workload in table


@pytest.mark.slow
def test_flow_benchmark_script_runs(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "flows.md"
    done = subprocess.run(
        [sys.executable, "benchmarks/flows.py", "--quick", "--repeat", "1", "--markdown", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    table = out.read_text()
    assert "| asyncio | linear | 1,000 |" in table
    assert "| asyncio | unordered | 1,000 |" in table


@pytest.mark.slow
def test_durable_benchmark_script_runs(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "durable.md"
    done = subprocess.run(
        [
            sys.executable,
            "benchmarks/durable.py",
            "--quick",
            "--repeat",
            "1",
            "--no-postgres",
            "--markdown",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "| chain | 101 | sqlite |" in out.read_text()
