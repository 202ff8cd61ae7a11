"""The public surface stays small, sorted, documented and free of private leaks."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

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
    }  # public submodules
    public = {n for n in vars(aflow) if not n.startswith("_")} - namespaces - {"annotations"}
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


def test_errors_namespace_holds_every_exception() -> None:
    """aflow.errors lists the whole tree: every exception class aflow defines."""
    import inspect

    from aflow import _exceptions, errors

    defined = {
        name
        for name, obj in vars(_exceptions).items()
        if inspect.isclass(obj) and issubclass(obj, BaseException) and not name.startswith("_")
    }
    assert set(errors.__all__) == defined
    assert list(errors.__all__) == sorted(errors.__all__)
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), aflow.AflowError), name
