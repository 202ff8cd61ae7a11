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
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
#: seconds a server has to start, a condition to come true
DEADLINE = 20.0

pytestmark = pytest.mark.slow


class Server:
    """A uvicorn process serving the example; its output is read as it comes (a thread
    per server), so a test waits for a line, not for time to pass."""

    def __init__(self, process: subprocess.Popen[str], url: str) -> None:
        self.process = process
        self.url = url
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()
        self.process.stdout.close()
        with self._changed:
            self._lines.append("")  # (the end of its output)
            self._changed.notify_all()

    def output(self) -> str:
        with self._changed:
            return "".join(self._lines)

    def wait_for(self, text: str) -> None:
        """Wait (bounded) until the server has printed ``text``."""
        with self._changed:
            found = self._changed.wait_for(
                lambda: any(text in line for line in self._lines) or self._ended(), DEADLINE
            )
            if not found or not any(text in line for line in self._lines):
                raise AssertionError(f"the server never printed {text!r}:\n{self.output()}")

    def _ended(self) -> bool:
        return bool(self._lines) and self._lines[-1] == ""

    def stop(self, timeout: float = DEADLINE) -> bool:
        """SIGTERM (what a deploy sends), then wait for it to exit; True if it shut down
        cleanly (uvicorn raises the signal again once shut down: its exit says SIGTERM)."""
        self.process.send_signal(signal.SIGTERM)
        code = self.exited(timeout)
        return code in (0, -signal.SIGTERM) and "Application shutdown complete" in self.output()

    def exited(self, timeout: float = DEADLINE) -> int:
        """Wait for the process to exit and its output to be read whole; its exit code."""
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout)
        return code


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(**env: str) -> Server:
        # The test binds the port and hands the socket to uvicorn: no race for a free
        # port, and a request waits in the socket's backlog until the server serves it.
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        port = listener.getsockname()[1]
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
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            pass_fds=(listener.fileno(),),
        )
        listener.close()  # (the server holds its own copy)
        server = Server(process, f"http://127.0.0.1:{port}")
        started.append(server)
        server.wait_for("Application startup complete")
        return server

    yield start
    for server in started:  # stop by process id whatever the test did
        if server.process.poll() is None:
            server.process.kill()
        server.exited()  # (its pipe read to the end and closed)


def follow(server: Server, run_id: str) -> dict[str, Any]:
    """Read the run's event stream to its end (the server ends it when the run ends):
    the run's report, from the stream's last event."""
    last: dict[str, Any] = {}
    with httpx.stream("GET", f"{server.url}/runs/{run_id}/events", timeout=DEADLINE) as events:
        for line in events.iter_lines():
            if line.startswith("data: "):
                last = json.loads(line[6:])
    return last


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
    server.wait_for("carrier: booking o-4")  # the saga is at its ship step
    running = run_of(server, "o-4")
    assert running is not None
    assert step_state(running, "ship") == "running"
    client.close()  # the client goes away mid-saga
    assert follow(server, running["id"])["status"] == "cancelled"
    report = run_of(server, "o-4")
    assert report is not None
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
    server.wait_for("carrier: booking o-5")  # the saga is at its ship step
    began = time.monotonic()
    assert server.stop()
    assert time.monotonic() - began < 1.5  # the 0.5 s shutdown timeout, not the 2 s step
    if "AFLOW_STORE" not in store_env:
        assert "undo: refunded 25.00 (rcpt-o-5)" in server.output()
        return
    assert "undo:" not in server.output()  # released: nothing undone
    successor = serve(**store_env)
    assert follow(successor, accepted["run_id"])["status"] == "succeeded"
    report = httpx.get(f"{successor.url}{accepted['status']}").json()
    assert report["status"] == "succeeded"
    assert report["result"]["tracking"] == "trk-o-5"
    assert successor.stop()


def webhook(server: Server, order_id: str, amount: float) -> httpx.Response:
    """The payment provider's webhook, signed as it signs it."""
    from examples import payment_webhook

    body = json.dumps(payment_webhook.provider_event(order_id, amount)).encode()
    headers = {"X-Signature": payment_webhook.sign(body), "Content-Type": "application/json"}
    return httpx.post(
        f"{server.url}/webhooks/payments", content=body, headers=headers, timeout=DEADLINE
    )


def settled(server: Server, run_id: str) -> dict[str, Any]:
    """The run's report once it has ended (its event stream ends with it)."""
    follow(server, run_id)
    report: dict[str, Any] = httpx.get(f"{server.url}/runs/{run_id}").json()
    return report


def test_a_checkout_waits_for_its_webhook_and_ships_once(
    serve: Callable[..., Server], store_env: dict[str, str]
) -> None:
    server = serve(**store_env)
    started = httpx.post(f"{server.url}/checkout", json={"id": "o-7", "total": 12.0})
    assert started.status_code == 202, started.text
    run_id = started.json()["run_id"]
    assert started.json()["checkout_url"] == "https://pay.example/checkout/ch_o-7"
    waiting = httpx.get(f"{server.url}/runs/{run_id}").json()
    assert waiting["status"] in ("running", "waiting")  # (unloaded once it waits, with a store)
    forged = httpx.post(f"{server.url}/webhooks/payments", json={}, headers={"X-Signature": "x"})
    assert forged.status_code == 401
    assert webhook(server, "o-7", 12.0).json() == {"delivered": True}
    assert webhook(server, "o-7", 12.0).json() == {"delivered": False}  # a redelivery
    report = settled(server, run_id)
    assert report["status"] == "succeeded", report
    assert report["result"]["tracking"] == "trk-o-7"
    assert webhook(server, "o-nobody", 1.0).status_code == 404
    unpaid = httpx.post(
        f"{server.url}/checkout", json={"id": "o-8", "total": 3.0, "confirm_within": 0.3}
    )
    report = settled(server, unpaid.json()["run_id"])
    assert report["status"] == "reverted"
    assert {s["key"]: s["state"] for s in report["steps"]} == {
        "create_charge": "reverted",
        "wait_for:payment": "failed",
        "check_payment": "pending",
        "ship": "pending",
    }
    assert server.stop()
    assert "undo: refunded 3.00 (ch_o-8)" in server.output()
    assert "refunded 12.00" not in server.output()


def test_a_webhook_reaches_a_run_that_waited_through_a_restart(
    serve: Callable[..., Server], tmp_path: pathlib.Path
) -> None:
    """The service is redeployed while the run waits for its payment: the new process
    takes the webhook, and the run goes on from its wait (nothing runs twice)."""
    env = {"AFLOW_STORE": f"sqlite:///{tmp_path / 'orders.db'}", "AFLOW_SHUTDOWN_TIMEOUT": "0.5"}
    first = serve(**env)
    run_id = httpx.post(f"{first.url}/checkout", json={"id": "o-9", "total": 4.0}).json()["run_id"]
    # The checkout answers once the link is published, just before the wait; a
    # shutdown waits for each run to leave (end, or be unloaded as it waits): the run is
    # recorded waiting before the process exits.
    assert first.stop()
    second = serve(**env)
    assert httpx.get(f"{second.url}/runs/{run_id}").json()["status"] == "waiting"
    assert webhook(second, "o-9", 4.0).json() == {"delivered": True}
    report = settled(second, run_id)
    assert report["status"] == "succeeded", report
    assert [s["attempts"] for s in report["steps"]] == [1, 1, 1, 1]
    assert second.stop()
