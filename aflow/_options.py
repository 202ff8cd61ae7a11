"""Task options: their checks, how levels combine, and the interned per-node form."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, final

from ._exceptions import SignatureError

if TYPE_CHECKING:
    import random

__all__ = [
    "DEFAULT_OPTIONS",
    "FLOW_OPTIONS",
    "OPTION_NAMES",
    "Backoff",
    "NodeOptions",
    "RetryOn",
    "check_options",
    "layer_options",
    "resolve_options",
]

#: What ``retry_on=`` accepts: exception types, or a predicate over the exception.
RetryOn = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]

#: Options of a node (task, signature, or inherited from a group or chain).
NODE_OPTIONS = frozenset(
    {
        "name",
        "retries",
        "timeout",
        "limit",
        "backoff",
        "retry_on",
        "deadline",
        "continue_on_failed",
        "priority",
    }
)
#: Options of a fan-out (a group, or a map/starmap signature).
FANOUT_OPTIONS = frozenset({"min_success", "success_ratio"})
#: Options that only matter inside a flow (aflow.patterns): the name(s) a value is stored under.
FLOW_OPTIONS = frozenset({"provides"})
OPTION_NAMES = NODE_OPTIONS | FANOUT_OPTIONS | FLOW_OPTIONS


@final
@dataclass(frozen=True, slots=True)
class Backoff:
    """How long to wait before retry number *n*: ``min(max, base * factor ** (n - 1))``.

    With ``jitter=True`` the wait is drawn uniformly from ``[0, that]`` ("full
    jitter"), so many clients retrying at once spread out.

    Example::

        @aflow.task(retries=5, backoff=aflow.Backoff(base=0.5, factor=2, max=30, jitter=True))
        async def call_api(): ...
    """

    base: float = 0.1
    factor: float = 2.0
    max: float = 30.0
    jitter: bool = False

    def __post_init__(self) -> None:
        for name, minimum in (("base", 0), ("factor", 1), ("max", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
                raise ValueError(f"Backoff {name} must be a number >= {minimum}, got {value!r}")
        if not isinstance(self.jitter, bool):
            raise ValueError(f"Backoff jitter must be True or False, got {self.jitter!r}")

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry)."""
        wait = min(self.max, self.base * self.factor ** (retry - 1))
        if self.jitter:
            if rng is None:
                import random  # (with the first jittered retry: import aflow stays light)

                return random.uniform(0, wait)
            wait = rng.uniform(0, wait)
        return wait


@final
@dataclass(frozen=True, slots=True)
class NodeOptions:
    """The resolved per-node options the scheduler reads.

    Instances are interned: nodes that resolve to the same options share one
    object, so a million-node graph holds a handful of these.
    """

    retries: int = 0
    timeout: float | None = None
    limits: tuple[str, ...] = ()
    backoff: Backoff | None = None
    retry_on: RetryOn | None = None
    deadline: float | None = None
    continue_on_failed: bool = False
    min_success: int | None = None
    success_ratio: float | None = None
    #: Among ready nodes, the higher runs (and reverts) first; ties in readiness order.
    priority: float = 0
    #: One attempt, no deadline: the scheduler's fast path (computed, not an option).
    single_shot: bool = field(init=False, compare=False, repr=False)
    #: It takes limit slots or has a priority (computed): RunShape looks closer then.
    queued: bool = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        single = self.retries == 0 and self.timeout is None and self.deadline is None
        object.__setattr__(self, "single_shot", single)
        object.__setattr__(self, "queued", bool(self.limits) or self.priority != 0)

    def should_retry(self, error: BaseException) -> bool:
        """True if ``retry_on`` admits ``error`` (any ``Exception`` when unset)."""
        rule = self.retry_on
        if rule is None:
            return isinstance(error, Exception)
        if isinstance(rule, type | tuple):
            return isinstance(error, rule)
        return bool(rule(error))

    def threshold_met(self, succeeded: int, total: int) -> bool:
        """Whether a fan-out with ``succeeded`` of ``total`` members may go on."""
        if self.min_success is not None and succeeded < self.min_success:
            return False
        if self.success_ratio is not None and total and succeeded / total < self.success_ratio:
            return False
        return self.min_success is not None or self.success_ratio is not None or succeeded == total

    @property
    def tolerant(self) -> bool:
        """True when failed members are tolerated up to a threshold."""
        return self.min_success is not None or self.success_ratio is not None


DEFAULT_OPTIONS = NodeOptions()
_interned: dict[tuple[Any, ...], NodeOptions] = {}


def _number(owner: str, name: str, value: Any, *, minimum: float, strict: bool) -> None:
    bad = not isinstance(value, int | float) or isinstance(value, bool)
    if not bad:
        bad = value <= minimum if strict else value < minimum
    if bad:
        sign = ">" if strict else ">="
        raise SignatureError(owner, f"must be a number {sign} {minimum}, got {value!r}", name)


def check_options(owner: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Validate option names and values; return them as a new dict."""
    unknown = set(options) - OPTION_NAMES
    if unknown:
        bad = sorted(unknown)[0]
        raise SignatureError(
            owner, f"unknown option; known options are {sorted(OPTION_NAMES)}", argument=bad
        )
    out = dict(options)
    if "name" in out and (not isinstance(out["name"], str) or not out["name"]):
        raise SignatureError(owner, "must be a non-empty string", argument="name")
    retries = out.get("retries", 0)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise SignatureError(owner, f"must be an int >= 0, got {retries!r}", argument="retries")
    for name in ("timeout", "deadline"):
        if out.get(name) is not None:
            _number(owner, name, out[name], minimum=0, strict=True)
    limit = out.get("limit")
    if limit is not None:
        names = (limit,) if isinstance(limit, str) else limit
        if not isinstance(names, tuple | list) or not all(isinstance(n, str) and n for n in names):
            raise SignatureError(
                owner, f"must be a limit name or a sequence of names, got {limit!r}", "limit"
            )
        out["limit"] = tuple(names)
    backoff = out.get("backoff")
    if backoff is not None and not isinstance(backoff, Backoff):
        raise SignatureError(owner, f"must be an aflow.Backoff, got {backoff!r}", "backoff")
    retry_on = out.get("retry_on")
    if retry_on is not None:
        if isinstance(retry_on, list):
            retry_on = out["retry_on"] = tuple(retry_on)
        types = retry_on if isinstance(retry_on, tuple) else (retry_on,)
        is_types = all(isinstance(t, type) and issubclass(t, BaseException) for t in types)
        if not is_types and not (callable(retry_on) and not isinstance(retry_on, type)):
            raise SignatureError(
                owner, f"must be exception types or a predicate, got {retry_on!r}", "retry_on"
            )
        if is_types and any(
            issubclass(t, BaseException) and not issubclass(t, Exception) for t in types
        ):
            raise SignatureError(
                owner, "cancellation and other BaseExceptions are never retried", "retry_on"
            )
    provides = out.get("provides")
    if provides is not None and not isinstance(provides, str | tuple | list | set | frozenset):
        raise SignatureError(
            owner,
            f"must be a name, a tuple of names or a set of names, got {provides!r}",
            "provides",
        )
    priority = out.get("priority", 0)
    if not isinstance(priority, int | float) or isinstance(priority, bool) or priority != priority:
        raise SignatureError(owner, f"must be a number, got {priority!r}", "priority")
    if "continue_on_failed" in out and not isinstance(out["continue_on_failed"], bool):
        raise SignatureError(owner, "must be True or False", "continue_on_failed")
    min_success = out.get("min_success")
    if min_success is not None and (
        not isinstance(min_success, int) or isinstance(min_success, bool) or min_success < 0
    ):
        raise SignatureError(owner, f"must be an int >= 0, got {min_success!r}", "min_success")
    ratio = out.get("success_ratio")
    if ratio is not None:
        _number(owner, "success_ratio", ratio, minimum=0, strict=False)
        if ratio > 1:
            raise SignatureError(owner, f"must be between 0 and 1, got {ratio!r}", "success_ratio")
    return out


def layer_options(outer: Mapping[str, Any], inner: Mapping[str, Any]) -> dict[str, Any]:
    """Options of a more specific level (``inner``) over a broader one.

    The more specific value wins (a signature's ``timeout`` over its group's,
    a group's over the decorator's), except ``limit``: limits add up, so a
    task declared ``limit="db"`` inside a group set to ``limit="api"`` takes
    a slot of both.
    """
    merged = {**outer, **inner}
    if "limit" in outer and "limit" in inner:
        merged["limit"] = tuple(dict.fromkeys((*outer["limit"], *inner["limit"])))
    return merged


def resolve_options(merged: Mapping[str, Any], *, fanout: bool = False) -> NodeOptions:
    """Turn merged (already checked) options into an interned NodeOptions.

    Fan-out thresholds apply only to the fan-out they were set on, so they are
    kept only when ``fanout`` is true (a map node, or a group's join).
    """
    key = (
        merged.get("retries", 0),
        merged.get("timeout"),
        merged.get("limit") or (),
        merged.get("backoff"),
        merged.get("retry_on"),
        merged.get("deadline"),
        merged.get("continue_on_failed", False),
        merged.get("min_success") if fanout else None,
        merged.get("success_ratio") if fanout else None,
        merged.get("priority", 0),
    )
    found = _interned.get(key)
    if found is None:
        found = _interned[key] = NodeOptions(*key)
    return found
