"""The benchmark scripts keep working (figures are never asserted here: see benchmarks/)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_script(script: str, out: pathlib.Path, *extra: str) -> str:
    """Run ``benchmarks/<script>`` in its quick mode; return the table it wrote."""
    done = subprocess.run(
        [
            sys.executable,
            f"benchmarks/{script}",
            "--quick",
            "--repeat",
            "1",
            *extra,
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
    return out.read_text()


@pytest.mark.slow
def test_benchmark_script_runs(tmp_path: pathlib.Path) -> None:
    table = run_script("run.py", tmp_path / "results.md")
    for workload in ("fan-out + sum", "chain", "DAG", "sleeps", "waiting at once", "random DAG"):
        assert workload in table
    for impl in ("| asyncio |", "| anyio |", "| aflow |"):
        assert impl in table
    assert "## Targets" in table
    for failure in ("wrong result", "timed out", "exit status", "no JSON", "cannot run"):
        assert failure not in table  # every worker run succeeded, with the same result


@pytest.mark.slow
def test_flow_benchmark_script_runs(tmp_path: pathlib.Path) -> None:
    table = run_script("flows.py", tmp_path / "flows.md")
    assert "| asyncio | linear | 1,000 |" in table
    assert "| asyncio | unordered | 1,000 |" in table


@pytest.mark.slow
def test_durable_benchmark_script_runs(tmp_path: pathlib.Path) -> None:
    table = run_script("durable.py", tmp_path / "durable.md", "--no-postgres")
    assert "| chain | 100 | sqlite |" in table


@pytest.mark.slow
def test_ops_benchmark_script_runs(tmp_path: pathlib.Path) -> None:
    table = run_script("ops.py", tmp_path / "ops.md")
    for workload in ("| chain 50 |", "| slices 50 |", "| files 10 |"):
        assert workload in table


@pytest.mark.slow
def test_executors_benchmark_script_runs(tmp_path: pathlib.Path) -> None:
    table = run_script("executors.py", tmp_path / "executors.md")
    assert "## Executors" in table
    assert '| aflow, `executor="process"` |' in table
    assert "speed-up" in table
    assert "| `aflow.executors.Dask` (" in table
    assert "| chain of 20 tiny bodies (one hop after another) |" in table


@pytest.mark.slow
def test_dashboard_benchmark_script_runs(tmp_path: pathlib.Path) -> None:
    table = run_script("dashboard.py", tmp_path / "dashboard.md")
    assert "## Dashboard pages" in table
    for where in ("held, in memory", "held, durable (SQLite)", "store alone (aflow ui)"):
        assert f"| {where} | run page, 2,000 steps (page 7) |" in table


@pytest.mark.slow
def test_short_run_benchmark_script_runs_and_keeps_its_section(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "results.md"
    out.write_text("# Benchmark results\n\nwritten by run.py\n")
    for _ in range(2):  # a second run replaces its section, never adds one
        done = subprocess.run(
            [
                sys.executable,
                "benchmarks/short.py",
                "--rounds",
                "1",
                "--runs",
                "4",
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
    text = out.read_text()
    assert text.startswith("# Benchmark results\n\nwritten by run.py\n")
    assert text.count("## Short runs: per run, as a web handler sees it") == 1
    for row in ("| 1-step run, aflow.run | asyncio |", "| saga, rt.submit + result() | uvloop |"):
        assert row in text
    assert "| 64 sagas at once, rt.run | asyncio |" in text
    assert "x by hand" in text
    assert "| met |" in text or "| missed |" in text


def test_results_sections_survive_a_rewrite(tmp_path: pathlib.Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from _markdown import replace_section, sections
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    path = tmp_path / "RESULTS.md"
    replace_section(path, "A", "first")
    replace_section(path, "B", "second")
    replace_section(path, "A", "first, again")
    kept = sections(path)
    assert [s.splitlines()[1] for s in kept] == ["## A", "## B"]
    assert "first, again" in kept[0]
    assert "second" in kept[1]


TITLE = "Over HTTP: the order saga endpoint (uvicorn + FastAPI)"


@pytest.mark.slow
@pytest.mark.timeout(180)  # 12 uvicorn processes start at once: ~14 s alone, more beside a suite
def test_http_benchmark_serves_every_endpoint(tmp_path: pathlib.Path) -> None:
    """Real uvicorn servers (both loops): every endpoint is checked before a tiny load
    (the script fails if an answer or its reverts are wrong); the section is updated
    in place in a file that has one already."""
    out = tmp_path / "results.md"
    out.write_text(
        f"# Results\n\nkept\n\n<!-- section: {TITLE} -->\n## {TITLE}\n\nstale\n"
        "<!-- /section -->\n\n## After\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "benchmarks/http.py",
            "--rounds",
            "1",
            "--warmup",
            "0.1",
            "--duration",
            "0.3",
            "--connections",
            "4",
            "--markdown",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert text.startswith(f"# Results\n\nkept\n\n<!-- section: {TITLE} -->\n## {TITLE}\n")
    assert text.endswith("<!-- /section -->\n\n## After\n")
    assert text.count(f"## {TITLE}") == 1
    assert "stale" not in text
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| ")]
    cells = {(cell[0].strip(), cell[1].strip()): cell for cell in rows[1:]}
    for endpoint in ("hand-written", "aflow.run", "Runtime.run"):
        for label in (endpoint, f"{endpoint}, fail=1"):
            for loop in ("asyncio", "uvloop"):
                cell = cells[label, loop]
                assert float(cell[2].replace(",", "")) > 0, cell  # req/s
                assert cell[5].strip() == "0", cell  # no wrong status, no dropped connection


@pytest.mark.slow
def test_waiting_runs_benchmark_runs(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "waits.md"
    done = subprocess.run(
        [sys.executable, "benchmarks/waits.py", "--quick", "--runs", "200", "--loop",
         "asyncio", "--settle", "0", "--markdown", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    table = out.read_text()
    for row in ("not waiting: blocked in a task", "wait_for, unloaded; caller keeps run ids"):
        assert row in table
