"""Every exception aflow raises, in its one public namespace.

Catch :class:`AflowError` for all of them, or one by name::

    import aflow.errors

    try:
        await run
    except aflow.errors.RunCancelled:
        ...

No other namespace exports an exception. The old spellings (``aflow.RunCancelled``,
``aflow.stores.StoreError``, ``aflow.ops.OpIOError``, ``aflow.patterns.ProvidesError``...)
still work for one release, with a ``DeprecationWarning``.

The tree, drawn where the classes are defined, follows.
"""

from __future__ import annotations

from . import _exceptions
from ._exceptions import AflowError as AflowError
from ._exceptions import AflowInternalError as AflowInternalError
from ._exceptions import AmbiguousProviderError as AmbiguousProviderError
from ._exceptions import BelowThreshold as BelowThreshold
from ._exceptions import CompensationFailed as CompensationFailed
from ._exceptions import CycleError as CycleError
from ._exceptions import DefinitionError as DefinitionError
from ._exceptions import DuplicateTaskError as DuplicateTaskError
from ._exceptions import EngineNotFound as EngineNotFound
from ._exceptions import FatalError as FatalError
from ._exceptions import GroupFailed as GroupFailed
from ._exceptions import IdempotencyConflict as IdempotencyConflict
from ._exceptions import IgnoredOption as IgnoredOption
from ._exceptions import LeaseLost as LeaseLost
from ._exceptions import MissingInputError as MissingInputError
from ._exceptions import NotFound as NotFound
from ._exceptions import OpIOError as OpIOError
from ._exceptions import ProvidesError as ProvidesError
from ._exceptions import RecordedError as RecordedError
from ._exceptions import RemoteError as RemoteError
from ._exceptions import ResultError as ResultError
from ._exceptions import ResumeMismatch as ResumeMismatch
from ._exceptions import RunCancelled as RunCancelled
from ._exceptions import RunEnded as RunEnded
from ._exceptions import RunError as RunError
from ._exceptions import RunExists as RunExists
from ._exceptions import RunNotFinished as RunNotFinished
from ._exceptions import RunNotFound as RunNotFound
from ._exceptions import RunReleased as RunReleased
from ._exceptions import RunTimeout as RunTimeout
from ._exceptions import SerializationError as SerializationError
from ._exceptions import SignatureError as SignatureError
from ._exceptions import SlicesBelowThreshold as SlicesBelowThreshold
from ._exceptions import StoreError as StoreError
from ._exceptions import TaskFailed as TaskFailed
from ._exceptions import TaskTimeout as TaskTimeout
from ._exceptions import TransientError as TransientError
from ._exceptions import UntrustedManifest as UntrustedManifest
from ._exceptions import WaitTimeout as WaitTimeout
from ._exceptions import WhenError as WhenError
from ._exceptions import WorkerLost as WorkerLost
from ._exceptions import WorkerMismatch as WorkerMismatch

__all__ = [
    "AflowError",
    "AflowInternalError",
    "AmbiguousProviderError",
    "BelowThreshold",
    "CompensationFailed",
    "CycleError",
    "DefinitionError",
    "DuplicateTaskError",
    "EngineNotFound",
    "FatalError",
    "GroupFailed",
    "IdempotencyConflict",
    "IgnoredOption",
    "LeaseLost",
    "MissingInputError",
    "NotFound",
    "OpIOError",
    "ProvidesError",
    "RecordedError",
    "RemoteError",
    "ResultError",
    "ResumeMismatch",
    "RunCancelled",
    "RunEnded",
    "RunError",
    "RunExists",
    "RunNotFinished",
    "RunNotFound",
    "RunReleased",
    "RunTimeout",
    "SerializationError",
    "SignatureError",
    "SlicesBelowThreshold",
    "StoreError",
    "TaskFailed",
    "TaskTimeout",
    "TransientError",
    "UntrustedManifest",
    "WaitTimeout",
    "WhenError",
    "WorkerLost",
    "WorkerMismatch",
]

for _name in __all__:  # users see aflow.errors.RunCancelled, not aflow._exceptions.RunCancelled
    globals()[_name].__module__ = __name__
del _name

if __doc__ and _exceptions.__doc__:  # (not under python -OO)
    __doc__ = f"{__doc__}\n{_exceptions.__doc__}"
