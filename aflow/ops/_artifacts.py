"""The artifact store: content-addressed files beside the run store, and per-step work dirs.

Layout under the root::

    objects/ab/abcdef...      one file per distinct content (sha256), read-only
    work/<run>/<step>/<n>     the working directory of attempt n of a step

An artifact value in a step's outputs is a *manifest*, plain JSON data:
``{"file": sha, "name": "msg.txt", "size": 12}`` for a file,
``{"dir": "name", "entries": [[relpath, sha, size], ...]}`` for a directory;
a ``list[Path]`` artifact is a list of them, a ``dict[str, Path]`` a dict. A file
or directory an op gave from a sub-folder of its work dir also keeps its path
there, ``"path": "task.0000/OUTCAR"`` (ending in its name), which
:func:`download_artifact` recreates.

A manifest read back from a run store is data, never trusted as a path: every
hash must be a sha256 digest (64 lowercase hex digits), every name a plain name
inside its folder, and every object a regular file of this store (no link), or
:class:`UntrustedManifest` refuses it before anything is read or written.
"""

from __future__ import annotations

import atexit
import errno
import hashlib
import os
import re
import shutil
import stat
import tempfile
import threading
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple, final

from .._exceptions import DefinitionError, OpIOError, UntrustedManifest
from ._sign import Artifact

__all__ = [
    "ArtifactStore",
    "ArtifactValue",
    "Origin",
    "check_artifact",
    "check_manifest",
    "default_root",
    "download_artifact",
]

_CHUNK = 1 << 20
#: The one form of an object's name (and of the hash in a manifest): a sha256 digest.
_HASH = re.compile(r"[0-9a-f]{64}")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_BINARY = getattr(os, "O_BINARY", 0)
_temp_lock = threading.Lock()
_temp_root: tempfile.TemporaryDirectory[str] | None = None


class Origin(NamedTuple):
    """The run and step whose record a manifest comes from: named when it is refused."""

    run_id: str | None = None
    step: str | None = None

    def refuse(self, reason: str) -> UntrustedManifest:
        return UntrustedManifest(self.run_id, self.step, reason)


_NOWHERE = Origin()


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
        if not isinstance(sha, str) or not _HASH.fullmatch(sha):  # checked by every caller
            raise _NOWHERE.refuse(f"object hash {sha!r} is not a sha256 digest")
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

    def put_bytes(self, data: bytes) -> str:
        """Store ``data`` as an object; return its hash."""
        sha = hashlib.sha256(data).hexdigest()
        target = self.object_path(sha)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                os.chmod(tmp, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return sha

    def read_bytes(self, sha: str, origin: Origin = _NOWHERE) -> bytes:
        """An object's content, checked against its hash (``sha`` is data: checked first)."""
        if not isinstance(sha, str) or not _HASH.fullmatch(sha):
            raise origin.refuse(f"not an object's hash: {sha!r}")
        with self._open_object(sha, origin) as source:
            data = source.read()
        if hashlib.sha256(data).hexdigest() != sha:
            raise origin.refuse(f"object {sha} in {self.root} does not hash to its name")
        return data

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

    def copy_from(self, other: ArtifactStore, manifest: Any, origin: Origin = _NOWHERE) -> None:
        """Bring the objects of ``manifest`` over from another store (a reused step's);
        each copy must hash to its name (it is written under that name)."""
        check_manifest(manifest, origin)
        for sha in _shas(manifest):
            target = self.object_path(sha)
            if target.exists():
                continue
            folder = target.parent
            folder.mkdir(parents=True, exist_ok=True)
            if folder.resolve() != self.root.resolve() / "objects" / sha[:2]:
                raise origin.refuse(f"the folder of object {sha} in {self.root} is a link")
            with other._open_object(sha, origin) as source:
                fd, tmp = tempfile.mkstemp(dir=folder, prefix=".incoming-")
                try:
                    digest = hashlib.sha256()
                    with os.fdopen(fd, "wb") as out:
                        while chunk := source.read(_CHUNK):
                            digest.update(chunk)
                            out.write(chunk)
                    if digest.hexdigest() != sha:
                        raise origin.refuse(
                            f"object {sha} of {other.root} holds other content "
                            f"(sha256 {digest.hexdigest()})"
                        )
                    os.chmod(tmp, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
                    os.replace(tmp, target)
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise

    def materialize(self, manifest: Any, into: Path, origin: Origin = _NOWHERE) -> Path:
        """Write a manifest's file or directory under ``into``; return its path there.

        Nothing is written through a link: one in the way is refused.
        """
        check_manifest(manifest, origin)
        into.mkdir(parents=True, exist_ok=True)
        if "dir" not in manifest:
            name: str = manifest["name"]
            dest = into / name
            self._copy_object(manifest["file"], dest, origin)
            return dest
        top = into / (manifest["dir"] or "dir")
        made: dict[str, Path] = {}

        def folder(rel: str) -> Path:  # made one level at a time, never through a link
            found = made.get(rel)
            if found is None:
                parent, _, name = rel.rpartition("/")
                found = folder(parent) / name if rel else top
                if found.is_symlink():
                    raise origin.refuse(f"{found} is a link: the manifest would write through it")
                found.mkdir(exist_ok=True)
                made[rel] = found
            return found

        folder("")
        for rel, sha, _ in manifest["entries"]:
            parent, _, name = rel.rpartition("/")
            self._copy_object(sha, folder(parent) / name, origin)
        for rel in manifest.get("empty", ()):
            folder(rel)
        return top

    def _open_object(self, sha: str, origin: Origin) -> IO[bytes]:
        """An object, open for reading: a regular file where its hash says, no link."""
        path = self.object_path(sha)
        try:
            real = path.resolve(strict=True)
        except FileNotFoundError:
            raise FileNotFoundError(f"artifact object {sha} is missing from {self.root}") from None
        except (OSError, RuntimeError) as exc:  # a link loop
            raise origin.refuse(f"object {sha} in {self.root} cannot be resolved: {exc}") from None
        if real != self.root.resolve() / "objects" / sha[:2] / sha:
            raise origin.refuse(f"object {sha} in {self.root} is a link to {real}")
        try:  # O_NOFOLLOW: no link swapped in since
            fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _BINARY)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise origin.refuse(f"object {sha} in {self.root} is a link") from None
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise origin.refuse(f"object {sha} in {self.root} is not a regular file")
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def _copy_object(self, sha: str, dest: Path, origin: Origin) -> None:
        # a copy: the step may change its inputs freely
        with self._open_object(sha, origin) as source:
            if dest.is_symlink():
                raise origin.refuse(f"{dest} is a link: the manifest would write through it")
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _NOFOLLOW | _BINARY
            with os.fdopen(os.open(dest, flags, 0o666), "wb") as out:
                shutil.copyfileobj(source, out, _CHUNK)


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def _safe(part: str) -> str:
    return _UNSAFE.sub(lambda m: "".join(f"%{b:02x}" for b in m.group().encode()), part) or "%"


def _plain_name(name: object) -> bool:
    """One file or folder name: no separator, drive, root, ``.``, ``..`` or NUL (what
    separates or anchors a path is the running system's: ``\\`` and ``C:`` are plain
    names on POSIX, not on Windows)."""
    if not isinstance(name, str) or name in ("", ".", "..") or "\0" in name or "/" in name:
        return False
    path = Path(name)
    return path.parts == (name,) and not path.anchor


def _relative(rel: object) -> bool:
    """A path inside a folder, as a manifest writes it: plain names joined by ``/``."""
    return isinstance(rel, str) and all(_plain_name(part) for part in rel.split("/"))


def _size(value: object) -> bool:
    return type(value) is int and value >= 0


def check_manifest(manifest: Any, origin: Origin = _NOWHERE) -> None:
    """Refuse a manifest unless it has the form :meth:`ArtifactStore.put` writes: every
    hash a sha256 digest, every name inside its folder, no file that is also a folder."""
    if not isinstance(manifest, dict):
        raise origin.refuse(f"a manifest is a dict, got {type(manifest).__name__}")

    def digest(sha: object) -> None:
        if not isinstance(sha, str) or not _HASH.fullmatch(sha):
            raise origin.refuse(
                f"object hash {sha!r} is not a sha256 digest (64 lowercase hex digits)"
            )

    if "dir" in manifest:
        top, entries, empty = manifest["dir"], manifest.get("entries"), manifest.get("empty", [])
        if top != "" and not _plain_name(top):
            raise origin.refuse(f"folder name {top!r} names a path outside its folder")
        if not isinstance(entries, list | tuple) or not isinstance(empty, list | tuple):
            raise origin.refuse("a folder's entries and empty folders are lists")
        files: set[str] = set()
        for entry in entries:
            if not isinstance(entry, list | tuple) or len(entry) != 3:
                raise origin.refuse(f"entry {entry!r} is not [path, hash, size]")
            rel, sha, size = entry
            if not _relative(rel):
                raise origin.refuse(f"entry {rel!r} names a path outside its folder")
            digest(sha)
            if not _size(size):
                raise origin.refuse(f"entry {rel!r} has size {size!r}")
            if rel in files:
                raise origin.refuse(f"entry {rel!r} is listed twice")
            files.add(rel)
        for rel in empty:
            if not _relative(rel):
                raise origin.refuse(f"empty folder {rel!r} names a path outside its folder")
        folders = set(empty)
        for rel in (*files, *empty):
            parts = rel.split("/")
            folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
        clash = files & folders
        if clash:
            raise origin.refuse(f"{min(clash)!r} is both a file and a folder")
    elif "file" in manifest:
        digest(manifest["file"])
        name = manifest.get("name")
        if not _plain_name(name):
            raise origin.refuse(f"file name {name!r} names a path outside its folder")
        if not _size(manifest.get("size")):
            raise origin.refuse(f"file {name!r} has size {manifest.get('size')!r}")
    else:
        raise origin.refuse(f"a manifest has a 'file' or a 'dir', got keys {sorted(manifest)}")
    if "path" in manifest:  # where the op made it, in its work dir: a relative path to its name
        path = manifest["path"]
        if not _relative(path):
            raise origin.refuse(f"path {path!r} names a place outside its folder")
        last = path.rpartition("/")[2]
        if last != (manifest.get("name") if "file" in manifest else manifest["dir"]):
            raise origin.refuse(f"path {path!r} does not end in the artifact's name")


def check_artifact(value: Any, shape: str, origin: Origin = _NOWHERE) -> list[dict[str, Any]]:
    """The manifests in an artifact value of this shape (``one``, ``list``, ``dict``),
    each checked; ``None`` stands for no artifact (an optional one, a failed slice)."""
    if value is None:
        return []
    if shape == "one":
        items = [value]
    elif shape == "list":
        if not isinstance(value, list | tuple):
            raise origin.refuse(f"a list artifact is a list, got {type(value).__name__}")
        items = [m for m in value if m is not None]
    elif not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise origin.refuse(f"a dict artifact maps str names to manifests, got {value!r:.80}")
    else:
        items = list(value.values())
    for manifest in items:
        check_manifest(manifest, origin)
    return items


def _shas(manifest: dict[str, Any]) -> Iterator[str]:
    if "dir" in manifest:
        for _, sha, _ in manifest["entries"]:
            yield sha
    else:
        yield manifest["file"]


def _sub_path(path: Path, workdir: Path, inputs: Sequence[Path]) -> str | None:
    """``path``'s place in the work dir when it lies in a sub-folder of it (not among the
    op's materialised inputs), as ``a/b/name``; ``None`` otherwise (just its name)."""
    full = os.path.abspath(path)
    base = os.path.abspath(workdir)
    try:  # (paths on two drives have no common path)
        if os.path.commonpath([full, base]) != base or any(
            os.path.commonpath([full, outside]) == outside
            for outside in map(os.path.abspath, inputs)
        ):
            return None
    except ValueError:
        return None
    rel = Path(os.path.relpath(full, base)).as_posix()
    return rel if "/" in rel and _relative(rel) else None


def store_output(
    store: ArtifactStore,
    op: str,
    field: str,
    spec: Artifact,
    value: Any,
    workdir: Path,
    inputs: Sequence[Path] = (),
) -> Any:
    """Check an artifact output's shape, store its files, return its manifest(s).

    A file or directory in a sub-folder of ``workdir`` keeps its path there
    (``"path"`` in its manifest); the op's own inputs (``inputs``, under the work
    dir) and paths elsewhere keep only their name.
    """

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
        manifest = store.put(path)
        sub = _sub_path(path, workdir, inputs)
        if sub is not None:
            manifest["path"] = sub
        return manifest

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
    store: ArtifactStore,
    spec: Artifact | None,
    shape: str,
    value: Any,
    into: Path,
    origin: Origin = _NOWHERE,
) -> Any:
    """Materialise an artifact input under ``into``: the local path(s) the op receives."""
    as_str = False
    if spec is not None:
        element = spec.type if spec.shape == "one" else typing.get_args(spec.type)[-1]
        as_str = element is str

    def local(manifest: dict[str, Any], sub: Path) -> Any:
        path = store.materialize(manifest, sub, origin)
        return str(path) if as_str else path

    if value is None:
        return None
    check_artifact(value, shape, origin)
    if shape == "one":
        return local(value, into)
    if shape == "list":
        return [None if m is None else local(m, into / str(i)) for i, m in enumerate(value)]
    return {k: local(m, into / f"{i}") for i, (k, m) in enumerate(value.items())}


@final
class ArtifactValue:
    """An artifact a step produced, as :meth:`Workflow.query_step` shows it.

    ``download_artifact(value, path=...)`` copies its files out. ``run_id`` and
    ``step`` name the run and the step whose record holds it.
    """

    __slots__ = ("manifest", "root", "run_id", "shape", "step")

    def __init__(
        self,
        root: Path,
        manifest: Any,
        shape: str,
        run_id: str | None = None,
        step: str | None = None,
    ) -> None:
        self.root = root
        self.manifest = manifest
        self.shape = shape
        self.run_id = run_id
        self.step = step

    @property
    def origin(self) -> Origin:
        return Origin(self.run_id, self.step)

    def __repr__(self) -> str:
        try:
            items = check_artifact(self.manifest, self.shape)
        except UntrustedManifest:
            return "<ArtifactValue (untrusted manifest)>"
        return f"<ArtifactValue {[m.get('name') or m.get('dir') for m in items]}>"


def download_artifact(
    artifact: ArtifactValue | None,
    path: str | os.PathLike[str] = ".",
    *,
    skip_exists: bool = False,
) -> list[Path]:
    """Copy an artifact's files (or directories) into ``path``; return their local paths.

    Files keep their names, and the sub-folders of the op's work dir they were
    made in (``task.0000/OUTCAR``, as dflow keeps them); when members of a list
    artifact would land on one another (one path, or one inside the other), every
    member goes into a numbered sub-folder (``0/``, ``1/``...).
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
    origin = artifact.origin
    manifests = check_artifact(artifact.manifest, artifact.shape, origin)  # before any path
    places = [
        manifest.get("path") or manifest.get("name") or manifest.get("dir") or "dir"
        for manifest in manifests
    ]
    clash = _overlap(places)
    out: list[Path] = []
    for i, (manifest, place) in enumerate(zip(manifests, places, strict=True)):
        base = target / str(i) if clash else target
        folder = place.rpartition("/")[0]
        if skip_exists and (base / place).exists():
            out.append(base / place)
            continue
        into = _folder(base, folder, origin) if folder else base
        out.append(store.materialize(manifest, into, origin))
    return out


def _overlap(places: list[str]) -> bool:
    """Two members that would land on one another: one path, or one inside the other."""
    seen = set(places)
    if len(seen) != len(places):
        return True
    return any(
        "/".join(place.split("/")[:i]) in seen
        for place in places
        for i in range(1, place.count("/") + 1)
    )


def _folder(base: Path, rel: str, origin: Origin) -> Path:
    """``base/rel``, made one level at a time, never through a link."""
    base.mkdir(parents=True, exist_ok=True)
    here = base
    for part in rel.split("/"):
        here = here / part
        if here.is_symlink():
            raise origin.refuse(f"{here} is a link: the manifest would write through it")
        here.mkdir(exist_ok=True)
    return here
