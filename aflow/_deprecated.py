"""Old spellings kept working for one release, each with a ``DeprecationWarning``."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterable

__all__ = ["moved", "moved_from"]


def moved_from(module: str, name: str, to: str) -> object:
    """``to.name``, read through its old spelling ``module.name``: warns, naming the new one.

    Call it from ``module``'s own ``__getattr__`` (the warning points at the code that
    read the old spelling, two frames up).
    """
    warnings.warn(
        f"{module}.{name} is deprecated: use {to}.{name}", DeprecationWarning, stacklevel=3
    )
    return getattr(importlib.import_module(to), name)


def moved(module: str, names: Iterable[str], to: str) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``names``, which moved from ``module`` to module ``to``.

    Reading ``module.name`` (or ``from module import name``) returns the object
    from ``to`` and warns; any other name raises ``AttributeError`` as usual. The
    names must be gone from ``module`` itself, or Python never asks::

        __getattr__ = moved("aflow.stores", ["StoreError"], to="aflow.errors")
    """
    old = frozenset(names)

    def __getattr__(name: str) -> object:
        if name in old:
            return moved_from(module, name, to)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
