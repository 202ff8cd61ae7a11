"""The runs dashboard: ``pip install aflow[web]``.

Mounted in your own service (no server of its own)::

    app = FastAPI(lifespan=aflow.fastapi.lifespan(store="sqlite:///runs.db"))
    app.mount("/aflow", aflow.web.app())

or alone over a store: ``aflow ui --store sqlite:///runs.db`` (read-only unless
``--allow-actions``). See the README's "Operating aflow" section.
"""

from __future__ import annotations

from ._app import Authorize as Authorize
from ._app import app as app

__all__ = ["Authorize", "app"]
