"""The public surface stays small, sorted, documented and free of private leaks."""

from __future__ import annotations

import importlib
import pathlib
import pkgutil
import re
import subprocess
import sys
from types import ModuleType

import pytest

import aflow

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_all_is_sorted_and_complete() -> None:
    assert list(aflow.__all__) == sorted(aflow.__all__)
    namespaces = {
        "testing",
        "patterns",
        "engines",
        "retry",
        "stores",
        "ops",
        "errors",
        "fastapi",
        "web",
        "otel",
        "executors",
        "cli",
    }  # public submodules (cli: the `aflow` command's module)
    # (dir(): the runtime's names load when first used)
    public = {n for n in dir(aflow) if not n.startswith("_")} - namespaces - {"annotations"}
    assert public == set(aflow.__all__)
    assert len(aflow.__all__) <= 40


def test_exports_present_as_aflow() -> None:
    for name in aflow.__all__:
        obj = getattr(aflow, name)
        if isinstance(obj, type) or callable(obj):
            assert obj.__module__ == "aflow", name


def test_every_export_has_a_docstring() -> None:
    for name in aflow.__all__:
        assert (getattr(aflow, name).__doc__ or "").strip(), name


def test_readme_and_examples_use_no_private_names() -> None:
    pattern = re.compile(r"\baflow\._\w+|from aflow\._\w+")
    files = [ROOT / "README.md", *sorted((ROOT / "examples").glob("*.py"))]
    for path in files:
        assert not pattern.search(path.read_text()), path


def test_ops_namespace_is_sorted_documented_and_imported_only_on_demand() -> None:
    from aflow import ops

    assert list(ops.__all__) == sorted(ops.__all__)
    for name in ops.__all__:
        assert (getattr(ops, name).__doc__ or "").strip(), name
    # pydantic is paid for only by those who use typed operators
    code = "import sys, aflow; print('pydantic' in sys.modules, 'aflow.ops' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]


def test_py_typed_ships() -> None:
    assert (ROOT / "aflow" / "py.typed").exists()


#: The spellings earlier versions exported, each now only in aflow.errors (they warn for a release).
DEPRECATED_ERRORS = {
    "aflow": [
        "AflowError",
        "CompensationFailed",
        "CycleError",
        "DefinitionError",
        "DuplicateTaskError",
        "GroupFailed",
        "RunCancelled",
        "RunError",
        "RunNotFinished",
        "RunTimeout",
        "SerializationError",
        "SignatureError",
        "TaskTimeout",
    ],
    "aflow.ops": [
        "MissingInputError",
        "OpIOError",
        "SlicesBelowThreshold",
        "UntrustedManifest",
        "WhenError",
    ],
    "aflow.patterns": ["AmbiguousProviderError", "MissingInputError", "ProvidesError"],
    "aflow.engines": ["NotFound"],
    "aflow.stores": [
        "LeaseLost",
        "RecordedError",
        "ResumeMismatch",
        "RunExists",
        "RunNotFound",
        "StoreError",
    ],
}

#: Exceptions still defined outside aflow/_exceptions.py, by the one file that may not move
#: them yet (engines.py is being rewritten): move each into the tree, then drop it here.
NOT_YET_IN_THE_TREE: set[str] = set()


def _exception_classes(module: ModuleType) -> dict[str, type[BaseException]]:
    return {
        name: obj
        for name, obj in vars(module).items()
        if isinstance(obj, type) and issubclass(obj, BaseException) and not name.startswith("_")
    }


def _every_aflow_module() -> list[ModuleType]:
    found = [aflow]
    for info in pkgutil.walk_packages(aflow.__path__, "aflow."):
        found.append(importlib.import_module(info.name))
    return found


def test_errors_namespace_holds_every_exception() -> None:
    """aflow.errors lists the whole tree: every exception class aflow/_exceptions.py defines."""
    from aflow import _exceptions, errors

    defined = _exception_classes(_exceptions)
    assert set(errors.__all__) == set(defined) == set(_exceptions.__all__)
    assert list(errors.__all__) == sorted(errors.__all__)
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert cls is defined[name]
        assert issubclass(cls, aflow.errors.AflowError), name
        assert cls.__module__ == "aflow.errors", name  # what tracebacks and pickles name


def test_no_exception_is_defined_outside_the_tree() -> None:
    """An exception class anywhere else in aflow (public or not) is one the tree misses."""
    outside = {
        f"{cls.__module__}.{cls.__qualname__}"
        for module in _every_aflow_module()
        for cls in _exception_classes(module).values()
        if cls.__module__.startswith("aflow") and cls.__module__ != "aflow.errors"
    }
    assert outside == NOT_YET_IN_THE_TREE


def test_no_other_namespace_exports_an_exception() -> None:
    """aflow.errors is the one public home: no other __all__ lists an exception, and the
    namespaces that used to re-export them no longer hold them."""
    for module in _every_aflow_module():
        if module.__name__ in ("aflow.errors", "aflow._exceptions"):
            continue
        listed = getattr(module, "__all__", [])
        exceptions = {
            name
            for name in listed
            if isinstance(getattr(module, name), type)
            and issubclass(getattr(module, name), BaseException)
            and f"{module.__name__}.{name}" not in NOT_YET_IN_THE_TREE
        }
        assert not exceptions, module.__name__
    for module_name in DEPRECATED_ERRORS:
        assert not _exception_classes(importlib.import_module(module_name)), module_name


@pytest.mark.parametrize(
    ("module_name", "name"),
    [(module, name) for module, names in DEPRECATED_ERRORS.items() for name in names],
)
def test_an_old_spelling_warns_and_gives_the_same_class(module_name: str, name: str) -> None:
    module = importlib.import_module(module_name)
    message = f"{module_name}.{name} is deprecated: use aflow.errors.{name}"
    with pytest.warns(DeprecationWarning, match="is deprecated") as caught:
        old = getattr(module, name)
    assert old is getattr(aflow.errors, name)
    assert [(str(w.message), w.filename) for w in caught] == [(message, __file__)]
    # a package's ``from`` import asks twice (importlib's hasattr, then the import itself)
    with pytest.warns(DeprecationWarning, match="is deprecated") as caught:
        exec(f"from {module_name} import {name} as old", namespace := {})
    assert namespace["old"] is old
    assert {(str(w.message), w.filename) for w in caught} == {(message, "<string>")}


def test_an_unknown_name_is_still_an_attribute_error() -> None:
    for module_name in DEPRECATED_ERRORS:
        module = importlib.import_module(module_name)
        with pytest.raises(AttributeError, match="NoSuchError"):
            module.NoSuchError
        assert not hasattr(module, "NoSuchError")


def _drawn_tree() -> list[tuple[int, str, list[str]]]:
    """(depth, name, names in parentheses) for each line of the drawing in _exceptions."""
    from aflow import _exceptions

    doc = _exceptions.__doc__ or ""
    drawing = doc.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    line = re.compile(
        r"^    (?P<lead>(?:[│ ]   )*(?:[├└]── )?)(?P<name>\w+)(?:\((?P<bases>[\w, ]+)\))?"
    )
    rows = []
    for text in drawing.splitlines():
        match = line.match(text)
        assert match, text
        bases = [b.strip() for b in (match["bases"] or "").split(",") if b.strip()]
        rows.append((len(match["lead"]) // 4, match["name"], bases))
    return rows


def _drawn_bases(cls: type) -> tuple[type, list[type]]:
    """A class's parent in the drawing (its first public base) and its other bases."""
    parent, others = cls.__bases__[0], list(cls.__bases__[1:])
    while parent.__name__.startswith("_"):  # _RunGroup: RunError and ExceptionGroup
        others = list(parent.__bases__[1:]) + others
        parent = parent.__bases__[0]
    return parent, others


def test_the_drawn_tree_names_every_exception_once_where_it_sits() -> None:
    """The docstring of aflow/_exceptions.py draws each class once, under its parent, with
    its builtin second base in parentheses (the root: its own base)."""
    rows = _drawn_tree()
    names = [name for _, name, _ in rows]
    assert sorted(names) == sorted(aflow.errors.__all__)  # every one, exactly once
    path: list[str] = []
    for depth, name, bases in rows:
        cls = getattr(aflow.errors, name)
        parent, others = _drawn_bases(cls)
        del path[depth:]
        if depth == 0:
            assert [parent.__name__] == bases, name
        else:
            assert parent is getattr(aflow.errors, path[-1]), name
            assert [b.__name__ for b in others] == bases, name
        path.append(name)


def test_readme_and_examples_use_no_deprecated_spelling() -> None:
    names = "|".join(aflow.errors.__all__)
    dotted = re.compile(
        rf"\b(?:aflow|ops|patterns|stores)\.(?:(?:ops|patterns|stores)\.)?({names})\b"
    )
    imported = re.compile(rf"from aflow(?:\.\w+)? import [^\n]*\b({names})\b")
    files = [ROOT / "README.md", *sorted((ROOT / "examples").glob("*.py"))]
    files += sorted((ROOT / "benchmarks").glob("*.py"))
    for path in files:
        text = path.read_text()
        assert not dotted.search(text), (path, dotted.search(text))
        for match in imported.finditer(text):
            assert match[0].startswith("from aflow.errors import"), (path, match[0])


def test_importing_aflow_warns_of_nothing_and_leaves_ops_alone() -> None:
    """Neither ``import aflow`` nor ``import aflow.errors`` pays for the typed operators,
    and neither reads a deprecated spelling on the way."""
    code = (
        "import sys, aflow, aflow.errors, pickle; "
        "pickle.loads(pickle.dumps(aflow.errors.RunCancelled('r'))); "
        "print('pydantic' in sys.modules, 'aflow.ops' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["False", "False"]
