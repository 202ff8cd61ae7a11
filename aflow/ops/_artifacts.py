"""The artifact store: content-addressed files beside the run store, and per-step work dirs.

Layout under the root::

    objects/ab/abcdef...      one file per distinct content (sha256), read-only
    work/<run>/<step>/<n>     the working directory of attempt n of a step

An artifact value in a step's outputs is a *manifest*, plain JSON data:
``{"file": sha, "name": "msg.txt", "size": 12}`` for a file,
``{"dir": "name", "entries": [[relpath, sha, size], ...]}`` for a directory;
a ``list[Path]`` artifact is a list of them, a ``dict[str, Path]`` a dict.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import re
import shutil
import stat
import tempfile
import threading
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, final

from .._exceptions import DefinitionError
from ._sign import Artifact, OpIOError

__all__ = [
    "ArtifactStore",
    "ArtifactValue",
    "default_root",
    "download_artifact",
    "manifest_paths",
]

_CHUNK = 1 << 20
_temp_lock = threading.Lock()
_temp_root: tempfile.TemporaryDirectory[str] | None = None


def _process_temp_root() -> Path:
    """A folder for runs without a durable store: it lives as long as this process."""
    global _temp_root
    with _temp_lock:
        if _temp_root is None:
            _temp_root = tempfile.TemporaryDirectory(prefix="aflow-artifacts-")
            atexit.register(_temp_root.cleanup)
        return Path(_temp_root.name)


def default_root(store: object | None) -> Path:
    """Where a run's artifacts go when the workflow does not say.

    Beside a SQLite store (``runs.db`` -> ``runs.db.artifacts/``), else
    ``$AFLOW_ARTIFACTS``, else (no durable store) a folder that lives as long
    as the process. A PostgreSQL store needs a folder every process can reach:
    ``Workflow(artifacts=...)`` or ``$AFLOW_ARTIFACTS``.
    """
    path = getattr(store, "path", None)
    if isinstance(path, str) and path and path != ":memory:":
        return Path(path).resolve().with_name(Path(path).name + ".artifacts")
    env = os.environ.get("AFLOW_ARTIFACTS")
    if env:
        return Path(env).resolve()
    url = getattr(store, "url", "")
    if isinstance(url, str) and url.startswith("postgres"):
        raise DefinitionError(
            "runs in a PostgreSQL store keep their artifacts in a folder every process can "
            "reach: pass ops.Workflow(artifacts='/shared/path') or set AFLOW_ARTIFACTS"
        )
    return _process_temp_root()


def _hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


@final
class ArtifactStore:
    """Content-addressed objects under ``root``; every call does blocking file I/O
    (the step runner calls them in a worker thread)."""

    __slots__ = ("_missing", "_root")

    def __init__(
        self, root: str | os.PathLike[str] | None, missing: DefinitionError | None = None
    ) -> None:
        #: without a root (a PostgreSQL store and no folder given), work dirs go to a
        #: temporary folder and any artifact raises ``missing``
        self._root = Path(root) if root is not None else None
        self._missing = missing

    @property
    def root(self) -> Path:
        if self._root is None:
            raise self._missing or DefinitionError("no artifact folder")
        return self._root

    @classmethod
    def for_run(cls, explicit: Path | None, store: object | None) -> ArtifactStore:
        """The artifact store of a run: ``explicit``, else the default for its run store."""
        if explicit is not None:
            return cls(explicit)
        try:
            return cls(default_root(store))
        except DefinitionError as exc:
            return cls(None, exc)

    def object_path(self, sha: str) -> Path:
        return self.root / "objects" / sha[:2] / sha

    def workdir(self, run_id: str, *parts: str) -> Path:
        """Where one attempt of one step works (``OPIO.workdir`` makes it on first use).

        Each part is escaped (``%xx`` for anything but letters, digits, ``-`` and
        ``_``), so distinct keys never share a folder and none leaves the root.
        """
        return self.run_workdirs(run_id).joinpath(*(_safe(p) for p in parts))

    def run_workdirs(self, run_id: str) -> Path:
        """The folder of every work dir of one run."""
        base = self._root if self._root is not None else _process_temp_root()
        return base / "work" / _safe(run_id)

    def _put_file(self, path: Path) -> tuple[str, int]:
        sha, size = _hash_file(path)
        target = self.object_path(sha)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
            os.close(fd)
            try:
                shutil.copyfile(path, tmp)
                os.chmod(tmp, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
                os.replace(tmp, target)  # atomic: a reader never sees half an object
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return sha, size

    def put(self, path: Path) -> dict[str, Any]:
        """Store a file or a directory; return its manifest."""
        if path.is_dir():
            entries: list[list[Any]] = []
            empty: list[str] = []
            for folder, subdirs, files in os.walk(path):
                here = Path(folder)
                if not subdirs and not files and here != path:
                    empty.append(here.relative_to(path).as_posix())
                for file in files:
                    full = here / file
                    if full.is_file():  # a dangling link is left out
                        sha, size = self._put_file(full)
                        entries.append([full.relative_to(path).as_posix(), sha, size])
            entries.sort()
            manifest: dict[str, Any] = {"dir": path.name, "entries": entries}
            if empty:
                manifest["empty"] = sorted(empty)
            return manifest
        sha, size = self._put_file(path)
        return {"file": sha, "name": path.name, "size": size}

    def copy_from(self, other: ArtifactStore, manifest: dict[str, Any]) -> None:
        """Bring the objects of ``manifest`` over from another store (a reused step's)."""
        for sha in _shas(manifest):
            target = self.object_path(sha)
            if not target.exists():
                source = other.object_path(sha)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)

    def materialize(self, manifest: dict[str, Any], into: Path) -> Path:
        """Write a manifest's file or directory under ``into``; return its path there."""
        _check_manifest(manifest)
        into.mkdir(parents=True, exist_ok=True)
        if "dir" in manifest:
            top = into / (manifest["dir"] or "dir")
            top.mkdir(exist_ok=True)
            for rel, sha, _ in manifest["entries"]:
                dest = top / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                self._copy_object(sha, dest)
            for rel in manifest.get("empty", ()):
                (top / rel).mkdir(parents=True, exist_ok=True)
            return top
        dest = into / str(manifest["name"])
        self._copy_object(manifest["file"], dest)
        return dest

    def _copy_object(self, sha: str, dest: Path) -> None:
        source = self.object_path(sha)
        if not source.exists():
            raise FileNotFoundError(f"artifact object {sha} is missing from {self.root}")
        shutil.copyfile(source, dest)  # a copy: the step may change its inputs freely


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def _safe(part: str) -> str:
    return _UNSAFE.sub(lambda m: "".join(f"%{b:02x}" for b in m.group().encode()), part) or "%"


def _inside(rel: str) -> bool:
    path = Path(rel)
    return bool(rel) and not path.is_absolute() and ".." not in path.parts


def _check_manifest(manifest: dict[str, Any]) -> None:
    """A manifest names files inside the folder it is written to, and nothing else."""
    if "dir" in manifest:
        names = [manifest["dir"] or "dir", *(e[0] for e in manifest["entries"])]
        names += list(manifest.get("empty", ()))
    else:
        names = [manifest["name"]]
    bad = [n for n in names if not isinstance(n, str) or not _inside(n)]
    if (
        bad
        or ("dir" in manifest and "/" in (manifest["dir"] or ""))
        or "/" in manifest.get("name", "")
    ):
        raise ValueError(f"artifact manifest names a path outside its folder: {bad or names}")


def _shas(manifest: dict[str, Any]) -> Iterator[str]:
    if "dir" in manifest:
        for _, sha, _ in manifest["entries"]:
            yield sha
    else:
        yield manifest["file"]


def manifest_paths(value: Any, shape: str) -> list[dict[str, Any]]:
    """The manifests in an artifact value of this shape (``one``, ``list``, ``dict``)."""
    if value is None:
        return []
    if shape == "one":
        return [value]
    items = value if shape == "list" else value.values()
    return [m for m in items if m is not None]  # a failed slice leaves None in its place


def store_output(
    store: ArtifactStore, op: str, field: str, spec: Artifact, value: Any, workdir: Path
) -> Any:
    """Check an artifact output's shape, store its files, return its manifest(s)."""

    def one(item: Any, where: str) -> dict[str, Any]:
        if not isinstance(item, str | os.PathLike):
            raise OpIOError(op, "output", where, "a path", f"{type(item).__name__} ({item!r})")
        path = Path(item)
        if not path.is_absolute():
            path = workdir / path
        if not path.exists():
            raise OpIOError(
                op, "output", where, "an existing file or directory", f"missing path {path}"
            )
        return store.put(path)

    if value is None:
        if spec.optional:
            return None
        raise OpIOError(op, "output", field, repr(spec), "None")
    if spec.shape == "one":
        return one(value, field)
    if spec.shape == "list":
        if not isinstance(value, list | tuple):
            raise OpIOError(op, "output", field, repr(spec), type(value).__name__)
        return [one(item, f"{field}[{i}]") for i, item in enumerate(value)]
    if not isinstance(value, dict):
        raise OpIOError(op, "output", field, repr(spec), type(value).__name__)
    return {str(k): one(item, f"{field}[{k!r}]") for k, item in value.items()}


def load_input(
    store: ArtifactStore, spec: Artifact | None, shape: str, value: Any, into: Path
) -> Any:
    """Materialise an artifact input under ``into``: the local path(s) the op receives."""
    as_str = False
    if spec is not None:
        element = spec.type if spec.shape == "one" else typing.get_args(spec.type)[-1]
        as_str = element is str

    def local(manifest: dict[str, Any], sub: Path) -> Any:
        path = store.materialize(manifest, sub)
        return str(path) if as_str else path

    if value is None:
        return None
    if shape == "one":
        return local(value, into)
    if shape == "list":
        return [None if m is None else local(m, into / str(i)) for i, m in enumerate(value)]
    return {k: local(m, into / f"{i}") for i, (k, m) in enumerate(value.items())}


@final
class ArtifactValue:
    """An artifact a step produced, as :meth:`Workflow.query_step` shows it.

    ``download_artifact(value, path=...)`` copies its files out.
    """

    __slots__ = ("manifest", "root", "shape")

    def __init__(self, root: Path, manifest: Any, shape: str) -> None:
        self.root = root
        self.manifest = manifest
        self.shape = shape

    def __repr__(self) -> str:
        names = [m.get("name") or m.get("dir") for m in manifest_paths(self.manifest, self.shape)]
        return f"<ArtifactValue {names}>"


def download_artifact(
    artifact: ArtifactValue | None,
    path: str | os.PathLike[str] = ".",
    *,
    skip_exists: bool = False,
) -> list[Path]:
    """Copy an artifact's files (or directories) into ``path``; return their local paths.

    Files keep their names; when members of a list artifact share a name,
    every member goes into a numbered sub-folder (``0/``, ``1/``...).
    ``skip_exists=True`` leaves files already there.
    """
    if artifact is None:
        raise ValueError("this artifact is empty: the step gave none (optional), or did not run")
    if not isinstance(artifact, ArtifactValue):
        raise TypeError(
            f"download_artifact takes step.outputs.artifacts[name] from query_step(), "
            f"got {type(artifact).__name__}"
        )
    target = Path(path)
    store = ArtifactStore(artifact.root)
    manifests = manifest_paths(artifact.manifest, artifact.shape)
    names = [m.get("name") or m.get("dir") for m in manifests]
    clash = len(set(names)) != len(names)
    out: list[Path] = []
    for i, manifest in enumerate(manifests):
        into = target / str(i) if clash else target
        name = manifest.get("name") or manifest.get("dir") or "dir"
        if skip_exists and (into / name).exists():
            out.append(into / name)
            continue
        out.append(store.materialize(manifest, into))
    return out
