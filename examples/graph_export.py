"""Compile a workflow to its graph and draw it as Graphviz DOT and as Mermaid."""

from __future__ import annotations

import aflow


@aflow.task
async def fetch(url: str) -> str:
    return url


@aflow.task
async def merge(pages: list[str]) -> str:
    return "".join(pages)


@aflow.task
async def alert(exc: BaseException) -> None:
    pass


if __name__ == "__main__":
    workflow = aflow.chord([fetch.s("a"), fetch.s("b")], merge.s()).link_error(alert.s())
    graph = aflow.compile(workflow)
    print(graph)
    print(graph.to_dot())
    print(graph.to_mermaid())
