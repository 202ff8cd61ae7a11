"""examples/fastapi_app.py served by a real uvicorn process on 127.0.0.1 (issue 17): the
request-scoped saga, submit + status + progress, a client that disconnects mid-saga, a
shutdown with runs in flight, in memory and durable (SQLite)."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
#: seconds a server has to start, a condition to come true
DEADLINE = 20.0

pytestmark = pytest.mark.slow


@dataclass
class Server:
    process: subprocess.Popen[str]
    url: str
    log: pathlib.Path

    def output(self) -> str:
        return self.log.read_text()

    def stop(self, timeout: float = DEADLINE) -> bool:
        """SIGTERM (what a deploy sends), then wait for it to exit; True if it shut down
        cleanly (uvicorn raises the signal again once shut down: its exit says SIGTERM)."""
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        log = self.output()
        return code in (0, -signal.SIGTERM) and "Application shutdown complete" in log


@pytest.fixture
def serve(tmp_path: pathlib.Path) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(**env: str) -> Server:
        # the test binds the port and hands the socket to uvicorn: no race for a free port
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        port = listener.getsockname()[1]
        log = tmp_path / f"server-{len(started)}.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "examples.fastapi_app:app",
                    "--fd",
                    str(listener.fileno()),
                    "--log-level",
                    "info",
                    "--no-access-log",
                ],
                cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                pass_fds=(listener.fileno(),),
            )
        listener.close()  # (the server holds its own copy)
        server = Server(process, f"http://127.0.0.1:{port}", log)
        started.append(server)
        until(lambda: _answers(server), "the server answers")
        return server

    yield start
    for server in started:  # stop by process id whatever the test did
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(timeout=DEADLINE)


def _answers(server: Server) -> bool:
    if server.process.poll() is not None:
        raise AssertionError(f"the server exited:\n{server.output()}")
    try:
        return httpx.get(f"{server.url}/runs", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def until(condition: Callable[[], Any], what: str) -> Any:
    """Poll a condition on another process (bounded): its value once truthy."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {what}")


def order(id: str, address: str = "1 Main St", delay: float = 0.0) -> dict[str, Any]:
    return {
        "id": id,
        "items": ["book"],
        "total": 20.0,
        "address": address,
        "email": "a@b.c",
        "ship_delay": delay,
    }


def run_of(server: Server, order_id: str) -> dict[str, Any] | None:
    """The run of an order (by its idempotency key), with its steps, once it exists."""
    found = httpx.get(f"{server.url}/runs", params={"idempotency_key": f"order-{order_id}"})
    runs = found.json()
    if not runs:
        return None
    report: dict[str, Any] = httpx.get(f"{server.url}/runs/{runs[0]['id']}").json()
    return report


def step_state(report: dict[str, Any] | None, key: str) -> str | None:
    if report is None:
        return None
    return next((s["state"] for s in report["steps"] if s["key"] == key), None)


@pytest.fixture(params=["memory", "sqlite"])
def store_env(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> dict[str, str]:
    if request.param == "memory":
        return {"AFLOW_SHUTDOWN_TIMEOUT": "0.5"}
    return {"AFLOW_STORE": f"sqlite:///{tmp_path / 'orders.db'}", "AFLOW_SHUTDOWN_TIMEOUT": "0.5"}


def test_the_saga_in_the_request(serve: Callable[..., Server], store_env: dict[str, str]) -> None:
    server = serve(**store_env)
    done = httpx.post(f"{server.url}/orders", json=order("o-1"), timeout=DEADLINE)
    assert done.status_code == 200, done.text
    assert done.json()["tracking"] == "trk-o-1"
    again = httpx.post(f"{server.url}/orders", json=order("o-1"), timeout=DEADLINE)
    assert again.json() == done.json()  # the same order: the first run's answer
    rejected = httpx.post(f"{server.url}/orders", json=order("o-2", "nowhere"), timeout=DEADLINE)
    assert rejected.status_code == 422
    assert "cannot deliver" in rejected.json()["detail"]
    report = run_of(server, "o-2")
    assert report is not None
    assert report["status"] == "reverted"
    assert {s["key"]: s["state"] for s in report["steps"]} == {
        "validate": "succeeded",
        "reserve_stock": "reverted",
        "quote_shipping": "succeeded",
        "charge": "reverted",
        "ship": "failed",
        "notify": "pending",
    }
    assert (
        report["error"]["type"].endswith("AddressRejected")
        or "AddressRejected" in (report["error"]["message"])
    )
    assert server.stop()
    assert "undo: refunded 25.00 (rcpt-o-2)" in server.output()
    assert "undo: released rsv-o-2" in server.output()


def test_submit_then_status_and_progress(
    serve: Callable[..., Server], store_env: dict[str, str]
) -> None:
    server = serve(**store_env)
    accepted = httpx.post(f"{server.url}/orders/async", json=order("o-3", delay=0.2))
    assert accepted.status_code == 202
    links = accepted.json()
    names = []
    with httpx.stream("GET", f"{server.url}{links['events']}", timeout=DEADLINE) as events:
        assert events.headers["content-type"].startswith("text/event-stream")
        for line in events.iter_lines():
            if line.startswith("event: "):
                names.append(line[7:])
    assert names[0] == "run_started"
    assert names[-2:] == ["run_succeeded", "end"]
    assert names.count("task_succeeded") == 6
    report = httpx.get(f"{server.url}{links['status']}").json()
    assert (report["status"], report["result"]["tracking"]) == ("succeeded", "trk-o-3")
    assert [s["state"] for s in report["steps"]] == ["succeeded"] * 6
    assert server.stop()


def test_a_client_that_disconnects_mid_saga_unwinds_its_run(
    serve: Callable[..., Server], store_env: dict[str, str]
) -> None:
    server = serve(**store_env)
    host, port = server.url.removeprefix("http://").split(":")
    body = json.dumps(order("o-4", delay=60)).encode()
    client = socket.create_connection((host, int(port)))
    client.sendall(
        b"POST /orders HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    until(lambda: step_state(run_of(server, "o-4"), "ship") == "running", "ship is running")
    client.close()  # the client goes away mid-saga
    report = until(
        lambda: (r := run_of(server, "o-4")) is not None and r["finished"] and r,
        "the run ended",
    )
    assert report["status"] == "cancelled"
    states = {s["key"]: s["state"] for s in report["steps"]}
    assert (states["charge"], states["reserve_stock"], states["ship"]) == (
        "reverted",
        "reverted",
        "cancelled",
    )
    assert server.stop()
    assert "undo: refunded 25.00 (rcpt-o-4)" in server.output()


def test_a_shutdown_with_a_run_in_flight(
    serve: Callable[..., Server], store_env: dict[str, str], tmp_path: pathlib.Path
) -> None:
    """In memory the run is cancelled and unwinds before the process exits; with a store
    it is released, and the next process takes it up and finishes it."""
    server = serve(**store_env)
    accepted = httpx.post(f"{server.url}/orders/async", json=order("o-5", delay=2.0)).json()
    until(lambda: step_state(run_of(server, "o-5"), "ship") == "running", "ship is running")
    began = time.monotonic()
    assert server.stop()
    assert time.monotonic() - began < 1.5  # the 0.5 s shutdown timeout, not the 2 s step
    if "AFLOW_STORE" not in store_env:
        assert "undo: refunded 25.00 (rcpt-o-5)" in server.output()
        return
    assert "undo:" not in server.output()  # released: nothing undone
    successor = serve(**store_env)
    report = until(
        lambda: (r := httpx.get(f"{successor.url}{accepted['status']}").json())["finished"] and r,
        "the next process finished the run",
    )
    assert report["status"] == "succeeded"
    assert report["result"]["tracking"] == "trk-o-5"
    assert successor.stop()
