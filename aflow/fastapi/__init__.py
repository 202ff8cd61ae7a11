"""aflow in a FastAPI (or Starlette) service: ``pip install aflow[fastapi]``.

Filled in by issue 17 step by step; see the README's "Web services" section.
"""

from __future__ import annotations

__all__: list[str] = []
