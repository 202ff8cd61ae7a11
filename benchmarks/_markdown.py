"""Sections of a results file that several benchmark scripts write into.

A section is a ``## title`` heading and its text between two markers; a script
rewrites its own section and leaves the rest of the file as it is, and
``benchmarks/run.py`` keeps them when it rewrites RESULTS.md.
"""

from __future__ import annotations

import re
from pathlib import Path

_SECTION = re.compile(r"<!-- section: (?P<title>.+?) -->\n.*?<!-- /section -->\n", re.S)


def section(title: str, text: str) -> str:
    return f"<!-- section: {title} -->\n## {title}\n\n{text.strip()}\n<!-- /section -->\n"


def replace_section(path: Path, title: str, text: str) -> None:
    """Write ``text`` as the section ``title`` of ``path``: in its place, or at the end."""
    old = path.read_text() if path.exists() else ""
    new = section(title, text)
    for found in _SECTION.finditer(old):
        if found["title"] == title:
            path.write_text(old[: found.start()] + new + old[found.end() :])
            return
    path.write_text(old.rstrip("\n") + ("\n\n" if old else "") + new)


def sections(path: Path) -> list[str]:
    """The marked sections of ``path`` (none if it does not exist), in order."""
    return [m[0] for m in _SECTION.finditer(path.read_text())] if path.exists() else []
