"""Shared test helpers: a peak-in-flight probe and an order recorder."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio


@dataclass
class Probe:
    """Counts how many instrumented tasks are in flight, and the peak."""

    current: int = 0
    peak: int = 0
    order: list[str] = field(default_factory=list)

    def enter(self, name: str = "") -> None:
        self.current += 1
        self.peak = max(self.peak, self.current)
        self.order.append(f"start {name}")

    def leave(self, name: str = "") -> None:
        self.current -= 1
        self.order.append(f"end {name}")


class Gate:
    """An event-driven barrier: tasks wait at it until the test opens it."""

    def __init__(self) -> None:
        self.opened = anyio.Event()
        self.arrived = 0

    async def wait(self) -> None:
        self.arrived += 1
        await self.opened.wait()

    def open(self) -> None:
        self.opened.set()
