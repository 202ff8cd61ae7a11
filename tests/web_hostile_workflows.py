"""Workflows for tests/test_web_dashboard_hostile.py (importable: durable runs of them are
rebuilt, resumed, retried and forked, and ``aflow ui`` reads them from another process).

``GATES`` holds the events a test opens (``<name>-started`` / ``<name>-go``); ``CALLS``
counts each step's calls; ``REVERTED`` lists the reverts in the order they ran;
``UNPICKLED`` counts the :class:`Bomb` values unpickled in this process.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import anyio

import aflow

GATES: dict[str, anyio.Event] = {}
CALLS: Counter[str] = Counter()
REVERTED: list[str] = []
UNPICKLED: list[str] = []

#: Text a hostile user would put wherever a page shows text.
SCRIPT = "</script><script>alert('xss')</script>"
ATTR = '"><svg onload=alert(1)>'
JINJA = "{{ 7*7 }}{% raw %}"
BIDI = "\u202egnp.exe\u202c"
CONTROL = "nul\x00bell\x07esc\x1b[31m"


def reset() -> None:
    GATES.clear()
    CALLS.clear()
    REVERTED.clear()
    UNPICKLED.clear()


def gates(*names: str) -> None:
    for name in names:
        GATES[f"{name}-started"] = anyio.Event()
        GATES[f"{name}-go"] = anyio.Event()


async def _gate(name: str) -> None:
    started = GATES.get(f"{name}-started")
    if started is not None:
        started.set()
    go = GATES.get(f"{name}-go")
    if go is not None:
        await go.wait()


# --- a small chain with reverts -------------------------------------------------------------


@aflow.task
async def first(x: int) -> int:
    CALLS["first"] += 1
    await _gate("first")
    return x + 1


@first.revert
async def unfirst(x: int, *, result: Any) -> None:
    REVERTED.append("first")


@aflow.task
async def second(x: int) -> int:
    CALLS["second"] += 1
    await _gate("second")
    if "second-fails" in GATES:
        raise RuntimeError("second failed on purpose")
    return x + 1


@second.revert
async def unsecond(x: int, *, result: Any) -> None:
    REVERTED.append("second")


@aflow.task
async def third(x: int) -> int:
    CALLS["third"] += 1
    await _gate("third")
    if "third-fails" in GATES:
        raise RuntimeError("third failed on purpose")
    return x + 1


@third.revert
async def unthird(x: int, *, result: Any) -> None:
    REVERTED.append("third")


@aflow.workflow
def chain3(x: int) -> aflow.Canvas[int]:
    """first -> second -> third, each with a revert."""
    return first.s(x) | second.s() | third.s()


@aflow.workflow
def paid(x: int) -> aflow.Canvas[Any]:
    """first, then wait for the ``payment`` event, then third."""
    return first.s(x) | aflow.wait_for("payment") | third.s()


# --- hostile text everywhere ----------------------------------------------------------------


@aflow.task
async def echo(text: str) -> str:
    return text


@aflow.task
async def explode(text: str) -> str:
    raise ValueError(text)


@aflow.task
async def hold(text: str) -> str:
    await _gate("hold")
    return text


@aflow.workflow
def hostile(text: str) -> aflow.Canvas[Any]:
    """A step that returns ``text`` and one, named ``text``, that fails with it."""
    return echo.s(text) | explode.s().set(name=text)


@aflow.workflow
def echoed(text: str) -> aflow.Canvas[str]:
    return echo.s(text)


# --- a value whose unpickling leaves a trace ------------------------------------------------


def _unpickled(mark: str) -> Bomb:
    UNPICKLED.append(mark)
    trace = os.environ.get("AFLOW_TEST_UNPICKLE_TRACE")
    if trace:  # (another process: leaves a file)
        with open(trace, "a") as out:
            out.write(mark + "\n")
    return Bomb(mark)


class Bomb:
    """A value whose unpickling is seen (``UNPICKLED``, and the trace file)."""

    def __init__(self, mark: str) -> None:
        self.mark = mark

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_unpickled, (self.mark,))

    def __repr__(self) -> str:
        return f"Bomb({self.mark!r})"


@aflow.task
async def bomb(mark: str) -> Bomb:
    return Bomb(mark)


@aflow.workflow
def pickled(mark: str) -> aflow.Canvas[Bomb]:
    return bomb.s(mark)


# --- odd values -----------------------------------------------------------------------------


class Opaque:
    """Not JSON; its repr is hostile."""

    def __repr__(self) -> str:
        return f"<Opaque {SCRIPT}>"


@aflow.task
async def opaque(x: int) -> Opaque:
    return Opaque()


@aflow.task
async def big_text(n: int) -> str:
    return ("<b>" + "x" * n)[:n]


@aflow.task
async def noop(x: int) -> int:
    return x


@aflow.workflow
def wide(n: int) -> Any:
    """n independent steps."""
    return aflow.group(noop.s(i) for i in range(n))


@aflow.workflow
def long(n: int) -> Any:
    """n steps one after the other."""
    return aflow.chain(*(noop.s(0) if i == 0 else noop.s() for i in range(n)))


@aflow.workflow
def paid_twice(x: int) -> aflow.Canvas[Any]:
    """first, then two payments (the second wait's key is ``wait_for:payment#2``)."""
    return first.s(x) | aflow.wait_for("payment") | aflow.wait_for("payment") | third.s()
