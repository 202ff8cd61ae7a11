"""``upload_artifact``: local files put in an artifact store ahead of a run, as dflow's."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ._artifacts import ArtifactStore, ArtifactValue, default_root

__all__ = ["upload_artifact"]


def upload_artifact(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    artifacts: str | os.PathLike[str] | None = None,
) -> ArtifactValue:
    """Put a local file or folder (or a list of them) in an artifact store now, and return
    the artifact: give it as a step's artifact input (``artifacts={"src": art}``) or to
    ``record.modify_output_artifact(...)``. Its content is what the files hold now;
    later changes to them do not reach a run.

    ``artifacts`` is the store's folder (default: ``$AFLOW_ARTIFACTS``, else a folder
    that lives as long as the process); a run whose own store is elsewhere copies the
    files in when its step starts.
    """
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    for item in paths:
        if not isinstance(item, str | os.PathLike):
            raise TypeError(f"upload_artifact takes paths, got {item!r}")
        if not Path(item).exists():
            raise FileNotFoundError(f"upload_artifact: no such file or directory {item}")
    root = Path(artifacts).resolve() if artifacts is not None else default_root(None)
    store = ArtifactStore(root)
    manifests = [store.put(Path(item).absolute()) for item in paths]
    if isinstance(path, str | os.PathLike):
        return ArtifactValue(root, manifests[0], "one")
    return ArtifactValue(root, manifests, "list")
