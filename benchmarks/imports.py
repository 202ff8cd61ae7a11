"""What ``import aflow`` costs: against ``import anyio``, each in fresh processes.

Usage: ``python benchmarks/imports.py [--runs N] [--markdown PATH]``

Every CLI call and every worker process pays for ``import aflow``. Each import is
timed by the interpreter itself (``python -X importtime -c "import X"``, the
cumulative time of the top module), in a fresh process, with byte-code compiled
beforehand; the two modules alternate, and the median of ``--runs`` is reported with
the modules ``import aflow`` loads. Target (issue 17): at most 2x ``import anyio``.
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _markdown import replace_section  # noqa: E402

TARGET = 2.0


def import_time_us(module: str) -> int:
    """The cumulative µs of ``import module`` in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=env,
    )
    last = done.stderr.strip().splitlines()[-1]  # "import time: self | cumulative | name"
    return int(last.split("|")[1])


def loaded_by_aflow() -> list[str]:
    code = (
        "import sys; before = set(sys.modules); import aflow; "
        "print(' '.join(sorted(m for m in set(sys.modules) - before "
        "if '.' not in m and not m.startswith('_'))))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT, env=env
    )
    return done.stdout.split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--markdown", type=Path, help="write/update this file's section")
    args = parser.parse_args()
    compileall.compile_dir(ROOT / "aflow", quiet=1)  # (as an installed package has it)
    times: dict[str, list[int]] = {"aflow": [], "anyio": []}
    for _ in range(args.runs):
        for module in times:
            times[module].append(import_time_us(module))
    ours = statistics.median(times["aflow"]) / 1000
    theirs = statistics.median(times["anyio"]) / 1000
    ratio = ours / theirs
    verdict = "met" if ratio <= TARGET else "missed"
    text = (
        f"Median of {args.runs} fresh processes each, alternating, `python -X importtime`; "
        f"`python benchmarks/imports.py --runs {args.runs}`.\n\n"
        "| import | ms | x anyio | target | |\n|---|---:|---:|---:|---|\n"
        f"| `import anyio` | {theirs:.1f} | 1.00 | | |\n"
        f"| `import aflow` | {ours:.1f} | {ratio:.2f} | <= {TARGET:g}x | {verdict} |\n\n"
        f"Top-level modules `import aflow` loads: {', '.join(loaded_by_aflow())}.\n"
    )
    print(text)
    if args.markdown is not None:
        replace_section(args.markdown, "Import time", text)
        print(f"markdown: {args.markdown}")


if __name__ == "__main__":
    main()
