"""What must hold of a run once it closes (see the fields of :class:`._run_state.RunState`).

:meth:`RunState._check_invariants` raises :class:`aflow.errors.AflowInternalError`
listing every violation. A run checks itself as it closes when ``AFLOW_CHECK_INVARIANTS``
is set in the environment (the test suite sets it: every run of every test, faults
and cancels included, is checked); it costs nothing otherwise.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ._states import NodeState, RunStatus

if TYPE_CHECKING:
    from ._run_state import RunState

__all__ = ["CHECK_INVARIANTS", "FOUND", "violations"]

#: Check every run as it closes (tests; see the module docstring).
CHECK_INVARIANTS = os.environ.get("AFLOW_CHECK_INVARIANTS", "") not in ("", "0")
#: Every violation found by a check, kept even if the error it raised was caught (a test
#: expecting an ``AflowError`` would otherwise take an internal error for its own).
FOUND: list[str] = []

_IN_FLIGHT = (NodeState.RUNNING, NodeState.RETRYING, NodeState.REVERTING)
_FAILED_OR_CANCELLED = (NodeState.FAILED, NodeState.CANCELLED)
_RAN = (NodeState.SUCCEEDED, NodeState.FAILED, NodeState.CANCELLED)
#: Above this many (reverted nodes x nodes) the revert-order check is skipped (cost).
_ORDER_CHECK_LIMIT = 2_000_000


def violations(run: RunState) -> list[str]:
    """Every invariant a closed run breaks, as text (empty: all hold)."""
    found: list[str] = []
    nodes = run._nodes
    states = run._states
    key = [node.key for node in nodes]

    # Nothing is left in flight, parked, holding a slot or running in a worker.
    if run._running:
        found.append(f"{run._running} node(s) counted as running")
    if run._parked:
        found.append(f"{run._parked} node(s) counted as parked on a limit")
    if run.grants:
        found.append(f"slots granted and never taken or released: {sorted(run.grants)}")
    for limit in (*run._global_limits, *run._limits.values()):
        if any(waiter is run for waiter, _ in limit.waiters):
            found.append(f"limit {limit.name!r} still queues a node of this run")
    if run._crew or run._crew_open or run._spare_scopes:
        found.append("the crew still has workers, or takes new ones")
    in_flight = [key[i] for i, s in enumerate(states) if s in _IN_FLIGHT]
    if in_flight:
        found.append(f"nodes still in flight: {in_flight}")
    if run.starting:
        found.append("a closed run still lets nodes start")

    # What each state promises.
    for i, state in enumerate(states):
        if state in _FAILED_OR_CANCELLED and (i not in run._errors or i not in run._failures):
            found.append(f"{key[i]!r} is {state.value} with no error on record")
        if state is NodeState.CANCELLED and i in run._failures and not run._failures[i].cancelled:
            found.append(f"{key[i]!r} is cancelled, but its failure says it failed")
        if state is NodeState.REVERT_FAILED and i not in run._revert_errors:
            found.append(f"{key[i]!r}'s revert failed with no error on record")
        started, finished = run._started[i], run._finished[i]
        if started is not None and state in _RAN and (finished is None or finished < started):
            found.append(f"{key[i]!r} ended before it started ({started} > {finished})")
    if len(set(run._reverted)) != len(run._reverted):
        found.append("a node was reverted twice")
    for i in run._reverted:
        if states[i] is not NodeState.REVERTED:
            found.append(f"{key[i]!r} is listed as reverted but is {states[i].value}")

    # Counts.
    if run._done_count > run._done_goal:
        found.append(f"done count {run._done_count} above its goal {run._done_goal}")
    if run._reverting:
        # After an unwind, _remaining counts consumers not unwound: a reverted node has none.
        for i in run._reverted:
            if run._remaining[i] != 0:
                found.append(f"{key[i]!r} reverted before {run._remaining[i]} consumer(s)")
        if not run.restored:
            found.extend(_revert_order(run))
    elif not run.restored:
        # Forward: a node starts only once every parent released it.
        for i, state in enumerate(states):
            if state in _RAN and run._started[i] is not None and run._remaining[i] != 0:
                found.append(f"{key[i]!r} ran with {run._remaining[i]} parent(s) unfinished")

    # The status agrees with the nodes.
    status = run.status
    if status in (RunStatus.PENDING, RunStatus.RUNNING):
        found.append(f"closed with status {status.value}")
    if status is RunStatus.SUCCEEDED:
        if run._done_count != run._done_goal:
            found.append(f"succeeded with {run._done_count} of {run._done_goal} nodes done")
        if run._failure is not None or run._root_failures():
            found.append("succeeded, yet a failure stopped it")
        undone = [key[i] for i, s in enumerate(states) if s is NodeState.REVERTED]
        if undone and not run._resumed_unwinding:
            found.append(f"succeeded, yet reverted {undone}")
    if status is RunStatus.REVERTED and (not run._reverted or run._revert_errors):
        found.append("reverted, yet nothing was reverted or a revert failed")

    # A closed run has handed every checkpoint to its store (unless the store failed or
    # the run was let go of, when a resume takes it up from what was written).
    journal = run._journal
    held = journal is not None and journal.holding
    if held and run._store_error is None and not run.released:
        found.append("checkpoints still buffered at close")
    return found


def _revert_order(run: RunState) -> list[str]:
    """Consumers first: every revert reachable downstream of a reverted node (through
    nodes without one) ended before it."""
    reverted = run._reverted
    if len(reverted) * len(run._nodes) > _ORDER_CHECK_LIMIT:
        return []
    position = {i: n for n, i in enumerate(reverted)}
    reverting = run._reverting
    children = run._children
    found: list[str] = []
    for i in reverted:
        seen: set[int] = set()
        stack = list(children[i])
        while stack:
            c = stack.pop()
            if c in seen:
                continue
            seen.add(c)
            if c in reverting:
                if position.get(c, len(reverted)) > position[i]:
                    found.append(
                        f"{run._nodes[i].key!r} was reverted before its consumer "
                        f"{run._nodes[c].key!r}"
                    )
                continue
            stack.extend(children[c])
    return found
