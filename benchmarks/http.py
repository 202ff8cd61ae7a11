"""Over HTTP: the order saga endpoint written by hand and with aflow, under uvicorn.

Usage: ``python benchmarks/http.py [--quick] [--rounds N] [--duration S] [--connections C]
[--loops asyncio,uvloop] [--http httptools|h11] [--markdown PATH]``

Every endpoint gets uvicorn processes of its own, one per event loop (``--loop asyncio``
and ``--loop uvloop``, one worker, ``--http httptools``, no access log, log level
warning), serving ``benchmarks/http_app.py`` on 127.0.0.1 at a free port: what one
endpoint leaves in its process (a Runtime's history of finished runs, garbage) must not
slow another's, as a shared process lets it (measured: the hand-written endpoint costs
15% more CPU per request once the Runtime endpoints have run in its process). They all
start at once and idle while another cell is measured. The endpoints run the same
5-node order saga (the same step functions): by hand (``asyncio.gather`` and
try/except compensation), through ``aflow.run`` with the canvas built per request,
and through ``rt.run`` on a lifespan-managed ``aflow.Runtime``; each also with
``?fail=1`` (the last step raises, both reverts run, the answer is a 409). Before
measuring, every server's every endpoint is called once and its answer and reverts are
checked.

The load generator is this script again in a process of its own (``--generate``), so
the server's CPU is its own: a fixed number of HTTP/1.1 keep-alive connections
(default 64), raw asyncio streams on uvloop, each sending its next request as soon as
the previous answer is in, for a warm-up and then a fixed window. Only requests
started and answered inside the window count; each one's latency is recorded.

Every round runs every cell (endpoint x loop) once, in an order rotated from round to
round; reported are the medians over rounds of req/s, p50 and p99, the server's CPU
time per request (read from /proc), and the median of the per-round ratios of req/s
to the hand-written endpoint's on the same loop with the same ``fail``. The target
(issue 16): aflow's endpoint serves at least 0.8x the hand-written one's requests/s.

The generator and the server share the machine's cores: on 2 cores each gets about
one, and the generator's CPU share is printed so you can see which side is saturated.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Run as a script, this file's folder comes first on sys.path and its name would
# shadow the standard library's ``http`` (which uvicorn, asyncio and urllib import).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from importlib.metadata import PackageNotFoundError  # noqa: E402
from importlib.metadata import version as dist_version  # noqa: E402
from typing import Any  # noqa: E402

#: (label, path, expected status, compared with), in table order
ENDPOINTS: tuple[tuple[str, str, int, str], ...] = (
    ("hand-written", "/hand/saga", 200, "hand-written"),
    ("aflow.run", "/aflow/saga", 200, "hand-written"),
    ("Runtime.run", "/aflow/runtime", 200, "hand-written"),
    ("aflow.fastapi", "/integrated/saga", 200, "hand-written"),
    ("hand-written, fail=1", "/hand/saga?fail=1", 409, "hand-written, fail=1"),
    ("aflow.run, fail=1", "/aflow/saga?fail=1", 409, "hand-written, fail=1"),
    ("Runtime.run, fail=1", "/aflow/runtime?fail=1", 409, "hand-written, fail=1"),
    ("aflow.fastapi, fail=1", "/integrated/saga?fail=1", 409, "hand-written, fail=1"),
)
LOOPS = ("asyncio", "uvloop")
TARGET = 0.8
TITLE = "Over HTTP: the order saga endpoint (uvicorn + FastAPI)"


# --- the load generator (its own process) ------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """A process's user + system CPU time so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one_connection(
    port: int, request: bytes, expect: bytes, warm: float, end: float, out: list[float]
) -> int:
    """Requests back to back on one keep-alive connection; returns the errors in the window.

    Appends the latency (seconds) of every request started at or after ``warm`` and
    answered by ``end``; a request answered later is neither counted nor timed.
    """
    clock = time.perf_counter
    errors = 0
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while True:
            start = clock()
            if start >= end:
                return errors
            try:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                at = head.lower().find(b"content-length:")
                length = int(head[at + 15 : head.index(b"\r\n", at)]) if at >= 0 else 0
                if length:
                    await reader.readexactly(length)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                if start >= warm:
                    errors += 1
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            done = clock()
            if start >= warm and done <= end:
                out.append(done - start)
                if head[9:12] != expect:
                    errors += 1
    finally:
        writer.close()


async def generate(
    port: int, path: str, expect: int, connections: int, warmup: float, duration: float, pid: int
) -> dict[str, Any]:
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    latencies: list[float] = []
    started = time.perf_counter()
    warm, end = started + warmup, started + warmup + duration

    async def window() -> tuple[float, float]:
        await asyncio.sleep(max(0.0, warm - time.perf_counter()))
        return cpu_seconds(pid), time.process_time()

    marks = asyncio.ensure_future(window())
    errors = await asyncio.gather(
        *(
            one_connection(port, request, str(expect).encode(), warm, end, latencies)
            for _ in range(connections)
        )
    )
    server_cpu = cpu_seconds(pid) - (await marks)[0]
    own_cpu = time.process_time() - (await marks)[1]
    latencies.sort()
    n = len(latencies)
    return {
        "requests": n,
        "rps": n / duration,
        "p50_ms": latencies[n // 2] * 1e3 if n else float("nan"),
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1e3 if n else float("nan"),
        "errors": sum(errors),
        "server_cpu": server_cpu / duration,
        "generator_cpu": own_cpu / duration,
        "server_us_per_request": server_cpu / n * 1e6 if n else float("nan"),
    }


def generate_main(argv: list[str]) -> None:
    port, path, expect, connections, warmup, duration, pid = argv
    coro = generate(
        int(port), path, int(expect), int(connections), float(warmup), float(duration), int(pid)
    )
    try:
        import uvloop
    except ImportError:
        found = asyncio.run(coro)
    else:
        found = uvloop.run(coro)
    print(json.dumps(found))


# --- the server ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def get(port: int, path: str) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        conn.close()


def die_with_parent() -> None:
    """In a server's process (Linux): be sent SIGTERM if this script dies, even by SIGKILL."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Server:
    """One uvicorn process serving benchmarks/http_app.py on 127.0.0.1."""

    loop: str
    http: str
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        command = [
            sys.executable, "-m", "uvicorn", "benchmarks.http_app:app",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--loop", self.loop, "--http", self.http,
            "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
        self.proc = subprocess.Popen(command, cwd=ROOT, preexec_fn=die_with_parent)

    def wait_ready(self, timeout: float = 30.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"uvicorn ({self.loop}) exited with {self.proc.returncode}")
            try:
                get(self.port, "/stats")
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"uvicorn ({self.loop}) not up after {timeout} s") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def check(self) -> None:
        """Every endpoint answers as it should, and its reverts run when it fails."""
        for label, path, status, _ in ENDPOINTS:
            before = get(self.port, "/stats")[1]
            got, body = get(self.port, path)
            after = get(self.port, "/stats")[1]
            reverted = {k: after[k] - before[k] for k in after}
            fails = status == 409
            want_body = "error" if fails else "result"
            want_reverts = {"release": int(fails), "refund": int(fails)}
            if got != status or want_body not in body or reverted != want_reverts:
                raise RuntimeError(
                    f"{label} on {self.loop}: {got} {body}, reverts {reverted} "
                    f"(expected {status}, {want_body!r}, reverts {want_reverts})"
                )


def measure(server: Server, path: str, status: int, args: argparse.Namespace) -> dict[str, Any]:
    assert server.proc is not None
    command = [
        sys.executable, __file__, "--generate", str(server.port), path, str(status),
        str(args.connections), str(args.warmup), str(args.duration), str(server.proc.pid),
    ]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=args.duration + 60
    )
    if done.returncode != 0:
        raise RuntimeError(f"the load generator failed on {path}: {done.stderr[-2000:]}")
    found: dict[str, Any] = json.loads(done.stdout)
    return found


# --- the report ---------------------------------------------------------------------------


def version(dist: str) -> str:
    try:
        return dist_version(dist)
    except PackageNotFoundError:
        return "-"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def table(
    runs: dict[tuple[str, str], list[dict[str, Any]]], loops: list[str]
) -> tuple[list[str], list[str]]:
    """The markdown table, and one verdict line per aflow cell."""
    rows = [
        "| endpoint | loop | req/s | p50 ms | p99 ms | errors | server CPU µs/req "
        "| server CPU | generator CPU | x hand-written | target ≥ 0.8x |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    verdicts = []
    for label, _, _, base in ENDPOINTS:
        for loop in loops:
            cells = runs[label, loop]

            def med(key: str, cells: list[dict[str, Any]] = cells) -> float:
                return float(statistics.median(c[key] for c in cells))

            ratio = statistics.median(
                c["rps"] / h["rps"] for c, h in zip(cells, runs[base, loop], strict=True)
            )
            verdict = "-" if label == base else ("met" if ratio >= TARGET else "missed")
            rows.append(
                f"| {label} | {loop} | {med('rps'):,.0f} | {med('p50_ms'):.2f} | "
                f"{med('p99_ms'):.2f} | {sum(c['errors'] for c in cells)} | "
                f"{med('server_us_per_request'):.0f} | {med('server_cpu'):.0%} | "
                f"{med('generator_cpu'):.0%} | {ratio:.2f} | {verdict} |"
            )
            if label != base:
                verdicts.append(f"{verdict.upper():6} {label} on {loop}: {ratio:.2f}x {base}")
    return rows, verdicts


def write_markdown(path: Path, args: argparse.Namespace, rows: list[str], loops: list[str]) -> None:
    command = shlex.join(["python", "benchmarks/http.py", *sys.argv[1:]])
    section = [
        f"This section is written by `{command}`, apart from the rest of the file; every "
        "figure in it is from that one invocation.",
        "",
        f"- machine: {machine()}",
        f"- Python {platform.python_version()}; aflow {version('aflow')}, uvicorn "
        f"{version('uvicorn')} (`--http {args.http}`, one worker, no access log), fastapi "
        f"{version('fastapi')}, uvloop {version('uvloop')}",
        f"- load: {args.connections} HTTP/1.1 keep-alive connections, each sending its next "
        f"request when the last is answered; {args.warmup:g} s warm-up, then {args.duration:g} s "
        f"measured, per cell; {args.rounds} interleaved rounds, medians (the ratio is the "
        "median of each round's ratio to the hand-written endpoint on the same loop). The "
        "generator (raw asyncio streams on uvloop) is a process of its own on the same "
        "machine: it and the server share its cores (server and generator CPU: their share "
        "of one core in the window).",
        "- every endpoint has uvicorn processes of its own (one per loop), so that what one "
        "leaves in its process (a Runtime's history of finished runs, garbage) does not slow "
        "another's; server CPU µs/req is the server process's CPU time (/proc) per request "
        "answered, which other load on the machine moves less than req/s.",
        "- the app: `benchmarks/http_app.py`, validate → group(reserve, quote) → charge → "
        "ship, each step awaiting `anyio.sleep(0)`; the same step functions in every "
        "endpoint. `fail=1`: ship raises, refund and release run, the answer is a 409.",
        "",
        *rows,
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    _markdown().replace_section(path, TITLE, "\n".join(section))
    print(f"markdown: {path}")


def _markdown() -> Any:
    """benchmarks/_markdown.py (this folder is off sys.path: see the top of the file)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_markdown", HERE / "_markdown.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- command line -------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 1.5 s a cell")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5; quick 2)")
    parser.add_argument("--duration", type=float, help="seconds measured per cell (3; quick 1.5)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per cell (1; quick 0.5)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--loops", default=",".join(LOOPS), help="comma-separated")
    parser.add_argument("--http", default="httptools", choices=("httptools", "h11"))
    parser.add_argument("--markdown", type=Path, help="write/update this file's HTTP section")
    args = parser.parse_args()
    quick = args.quick
    args.rounds = args.rounds or (2 if quick else 5)
    args.duration = args.duration or (1.5 if quick else 3.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if quick else 1.0)
    args.loops = [loop for loop in args.loops.split(",") if loop]
    unknown = sorted(set(args.loops) - set(LOOPS))
    if unknown:
        parser.error(f"--loops: unknown {', '.join(unknown)}")
    return args


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers (finally)
    cells = [
        (label, path, status, loop) for loop in args.loops for label, path, status, _ in ENDPOINTS
    ]
    print(
        f"{machine()}; Python {platform.python_version()}; uvicorn --http {args.http}; "
        f"{args.connections} connections; {args.rounds} rounds of {args.warmup:g} + "
        f"{args.duration:g} s a cell; the load generator runs beside the server",
        flush=True,
    )
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    servers = {(label, loop): Server(loop, args.http) for label, _, _, loop in cells}
    started = time.perf_counter()
    try:
        for server in servers.values():
            server.spawn()
        for server in servers.values():
            server.wait_ready()
            server.check()
        for round_ in range(args.rounds):
            shift = round_ % len(cells)
            for label, path, status, loop in cells[shift:] + cells[:shift]:
                found = measure(servers[label, loop], path, status, args)
                runs.setdefault((label, loop), []).append(found)
                print(
                    f"round {round_ + 1}/{args.rounds}  {loop:7} {label:22} "
                    f"{found['rps']:8,.0f} req/s  p50 {found['p50_ms']:6.2f} ms  "
                    f"p99 {found['p99_ms']:6.2f} ms  errors {found['errors']}  "
                    f"server {found['server_us_per_request']:5.0f} µs/req "
                    f"({found['server_cpu']:.0%} CPU), generator {found['generator_cpu']:.0%} CPU",
                    flush=True,
                )
    finally:
        for server in servers.values():
            server.stop()
    rows, verdicts = table(runs, args.loops)
    print("\n" + "\n".join(rows) + "\n")
    for line in verdicts:
        print(line)
    if args.markdown:
        write_markdown(args.markdown, args, rows, args.loops)
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--generate"]:
        generate_main(sys.argv[2:])
    else:
        main()
