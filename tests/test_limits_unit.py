"""The limits unit (aflow/_runtime/_limits.py) on its own: slots are taken without waiting,
a full limit parks the node, a freed slot is handed to the first waiter of a live run,
and no slot is held while parked (no hold-and-wait). Deterministic: no loop, no clock."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from aflow._runtime._limits import Limit, SlotWaiter, release, try_acquire


class FakeRun:
    """What the limits see of a run: its grants, whether it starts nodes, its ready queue."""

    def __init__(self, starting: bool = True) -> None:
        self.grants: dict[int, tuple[Limit, ...]] = {}
        self.starting = starting
        self.requeued: list[tuple[int, bool]] = []

    def grant(self, index: int, limit: Limit) -> None:
        self.grants[index] = (*self.grants.get(index, ()), limit)

    def take_grants(self, index: int) -> tuple[Limit, ...]:
        return self.grants.pop(index, ())

    def requeue(self, index: int, *, wake: bool) -> None:
        self.requeued.append((index, wake))


def test_a_free_slot_is_taken_at_once_and_a_full_limit_parks() -> None:
    db = Limit("db", 1)
    run = FakeRun()
    assert try_acquire((db,), run, 0)  # type: ignore[arg-type]
    assert db.borrowed == 1
    assert not try_acquire((db,), run, 1)  # type: ignore[arg-type]
    assert list(db.waiters) == [(run, 1)]
    assert db.borrowed == 1


def test_a_freed_slot_is_handed_to_the_first_waiter_not_returned() -> None:
    db = Limit("db", 1)
    a, b = FakeRun(), FakeRun()
    assert try_acquire((db,), a, 0)  # type: ignore[arg-type]
    assert not try_acquire((db,), b, 0)  # type: ignore[arg-type]
    release((db,), a)  # type: ignore[arg-type]
    assert db.borrowed == 1  # still borrowed: now on b's behalf
    assert b.grants == {0: (db,)}
    assert b.requeued == [(0, True)]  # another run: its worker is woken
    # a cannot take it straight back
    assert not try_acquire((db,), a, 1)  # type: ignore[arg-type]
    assert try_acquire((db,), b, 0)  # type: ignore[arg-type]  (b takes its grant)
    assert db.borrowed == 1
    assert not b.grants


def test_a_stopped_run_is_passed_over() -> None:
    db = Limit("db", 1)
    holder, stopped, live = FakeRun(), FakeRun(), FakeRun()
    assert try_acquire((db,), holder, 0)  # type: ignore[arg-type]
    assert not try_acquire((db,), stopped, 0)  # type: ignore[arg-type]
    assert not try_acquire((db,), live, 0)  # type: ignore[arg-type]
    stopped.starting = False
    release((db,), holder)  # type: ignore[arg-type]
    assert not stopped.grants
    assert live.grants == {0: (db,)}


def test_no_slot_is_held_while_parked_on_another_limit() -> None:
    a_limit, b_limit = Limit("a", 1), Limit("b", 1)
    run, other = FakeRun(), FakeRun()
    assert try_acquire((b_limit,), other, 0)  # type: ignore[arg-type]
    # handed a slot of "a", then finds "b" full: gives "a" back before parking
    run.grant(0, a_limit)
    a_limit.borrowed = 1
    assert not try_acquire((a_limit, b_limit), run, 0)  # type: ignore[arg-type]
    assert a_limit.borrowed == 0
    assert list(b_limit.waiters) == [(run, 0)]


def test_a_slot_waiter_inside_a_node_is_served_in_turn() -> None:
    db = Limit("db", 1)
    run = FakeRun()
    assert try_acquire((db,), run, 0)  # type: ignore[arg-type]
    waiter = SlotWaiter()
    db.waiters.append((waiter, -1))
    release((db,), run)  # type: ignore[arg-type]
    assert waiter.granted
    assert waiter.event.is_set()
    assert db.borrowed == 1


@settings(max_examples=200, deadline=None)
@given(
    total=st.integers(min_value=1, max_value=4),
    script=st.lists(
        st.tuples(st.sampled_from(["take", "free", "stop"]), st.integers(0, 3), st.integers(0, 5)),
        max_size=60,
    ),
)
def test_slots_are_conserved(total: int, script: list[tuple[str, int, int]]) -> None:
    """Whatever the order of takes, frees and stops: borrowed = slots held + slots handed
    and not yet taken, never above the total, and once everything is freed and every
    grant given back, nothing is borrowed."""
    limit = Limit("x", total)
    runs = [FakeRun() for _ in range(4)]
    held: list[tuple[FakeRun, int]] = []
    for action, r, index in script:
        run = runs[r]
        if action == "take" and (run, index) not in held and index not in run.grants:
            if any(w == (run, index) for w in limit.waiters):
                continue
            if try_acquire((limit,), run, index):  # type: ignore[arg-type]
                held.append((run, index))
        elif action == "free" and held:
            run, index = held.pop(0)
            release((limit,), run)  # type: ignore[arg-type]
        elif action == "stop":
            run.starting = False
        # granted nodes of live runs take their slot when requeued
        for live in runs:
            for i in list(live.grants):
                if live.starting and try_acquire((limit,), live, i):  # type: ignore[arg-type]
                    held.append((live, i))
        granted = sum(len(g) for x in runs for g in x.grants.values())
        assert limit.borrowed == len(held) + granted <= total
    for run, _ in held:
        release((limit,), run)  # type: ignore[arg-type]
    for run in runs:  # what a closing run does with what it was handed (_return_grants)
        run.starting = False
    for run in runs:
        while run.grants:
            _, limits = run.grants.popitem()
            release(limits, None)
    assert limit.borrowed == 0
