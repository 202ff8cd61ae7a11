"""add_exception_handlers (aflow/fastapi/_errors.py): a run whose revert failed, or that
failed in several places, is answered by the app's own handler for its root failure; with
no handler for it, everything goes on as without add_exception_handlers.

Real sagas (aflow.run inside the endpoint) on FastAPI and plain Starlette apps, called
through httpx's ASGI transport.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

import aflow
from aflow.errors import AflowError, CompensationFailed, GroupFailed
from aflow.fastapi._errors import (
    RevertFailure,
    add_exception_handlers,
    revert_failures,
    root_failure,
)
from aflow.testing import FakeClock


class AddressRejected(Exception):
    pass


class OutOfStock(Exception):
    pass


class RefundDown(Exception):
    pass


def order_saga(failure: Exception, *, refund_fails: bool = True) -> aflow.Canvas[Any]:
    """charge (whose refund fails if asked) then ship, which raises ``failure``."""

    @aflow.task
    async def charge() -> str:
        return "receipt"

    @charge.revert
    async def refund() -> None:
        if refund_fails:
            raise RefundDown("the bank is down")

    @aflow.task
    async def ship(receipt: str) -> None:
        raise failure

    return charge.s() | ship.s()


def two_failures(
    first: Exception, second: Exception, *, refund_fails: bool = True
) -> aflow.Canvas[Any]:
    """charge, then two thread tasks that fail together (before either can stop the
    other): a GroupFailed of both, inside a CompensationFailed if the refund fails."""
    barrier = threading.Barrier(2)

    @aflow.task
    async def charge() -> str:
        return "receipt"

    @charge.revert
    async def refund() -> None:
        if refund_fails:
            raise RefundDown("the bank is down")

    @aflow.task
    def fail_together(which: int) -> None:
        barrier.wait(5)
        raise (first, second)[which]

    return charge.s() | aflow.group(fail_together.si(0), fail_together.si(1))


async def rejected(request: Request, exc: Exception) -> Response:
    """The app's own handler: a 422 saying what could not be undone."""
    kept = [(f.step, repr(f.error)) for f in revert_failures(exc)]
    return JSONResponse({"error": repr(exc), "not_undone": kept}, status_code=422)


async def out_of_stock(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": repr(exc)}, status_code=409)


NOT_UNDONE = [["charge", "RefundDown('the bank is down')"]]
Handlers = Mapping[Any, Callable[..., Any]]


def make_app(
    kind: str, workflow: Callable[[], aflow.Canvas[Any]], handlers: Handlers, add: bool = True
) -> Starlette:
    """A FastAPI or Starlette app whose ``GET /order`` runs ``workflow()``."""

    async def order(request: Request) -> Response:
        await aflow.run(workflow())
        return PlainTextResponse("shipped")

    app: Starlette
    if kind == "fastapi":
        app = FastAPI(openapi_url=None)
        app.add_api_route("/order", order)
    else:
        app = Starlette(routes=[Route("/order", order)])
    for key, handler in handlers.items():
        app.add_exception_handler(key, handler)
    if add:
        add_exception_handlers(app)
    return app


async def get(app: Starlette, raise_app_exceptions: bool = False) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get("/order")


KINDS = pytest.mark.parametrize("kind", ["fastapi", "starlette"])


@KINDS
class TestAnswers:
    async def test_a_failed_revert_is_answered_by_the_handler_for_the_root_failure(
        self, kind: str
    ) -> None:
        app = make_app(
            kind, lambda: order_saga(AddressRejected("no street")), {AddressRejected: rejected}
        )
        answer = await get(app)
        assert answer.status_code == 422
        assert answer.json() == {"error": "AddressRejected('no street')", "not_undone": NOT_UNDONE}

    async def test_without_it_the_client_gets_a_500(self, kind: str) -> None:
        """Why: Starlette looks the group's type up, never the root failure inside it."""
        app = make_app(
            kind,
            lambda: order_saga(AddressRejected("no street")),
            {AddressRejected: rejected},
            add=False,
        )
        answer = await get(app)
        assert answer.status_code == 500
        with pytest.raises(CompensationFailed):
            await get(app, raise_app_exceptions=True)

    async def test_a_root_failure_the_app_has_no_handler_for_goes_on_as_without_it(
        self, kind: str
    ) -> None:
        """The group propagates untouched: ServerErrorMiddleware's 500, then the server's log."""
        for add in (True, False):
            app = make_app(
                kind, lambda: order_saga(OutOfStock("none")), {AddressRejected: rejected}, add=add
            )
            answer = await get(app)
            assert (answer.status_code, answer.text) == (500, "Internal Server Error")
            with pytest.raises(CompensationFailed) as caught:
                await get(app, raise_app_exceptions=True)
            assert type(caught.value) is CompensationFailed
            assert [type(e) for e in caught.value.exceptions] == [OutOfStock, RefundDown]

    async def test_without_a_root_handler_the_apps_handlers_for_the_group_still_apply(
        self, kind: str
    ) -> None:
        """A handler for a base of the group (``AflowError``) or for ``Exception`` (the
        ServerErrorMiddleware's) gets the group, as it did before."""

        async def by_base(request: Request, exc: Exception) -> Response:
            return PlainTextResponse(f"base {type(exc).__name__}", status_code=503)

        async def by_exception(request: Request, exc: Exception) -> Response:
            return PlainTextResponse(f"any {type(exc).__name__}", status_code=500)

        for handlers, expected in (
            ({AflowError: by_base}, (503, "base CompensationFailed")),
            ({Exception: by_exception}, (500, "any CompensationFailed")),
        ):
            for add in (True, False):
                app = make_app(kind, lambda: order_saga(OutOfStock("none")), handlers, add=add)
                answer = await get(app)
                assert (answer.status_code, answer.text) == expected

    async def test_the_handler_found_along_the_roots_mro_is_used(self, kind: str) -> None:
        class Undeliverable(AddressRejected):
            pass

        app = make_app(kind, lambda: order_saga(Undeliverable("moon")), {AddressRejected: rejected})
        answer = await get(app)
        assert answer.status_code == 422
        assert answer.json()["error"] == "Undeliverable('moon')"

    async def test_a_sync_handler_is_called_in_a_thread(self, kind: str) -> None:
        threads: list[bool] = []

        def sync_handler(request: Request, exc: Exception) -> Response:
            threads.append(threading.current_thread() is not threading.main_thread())
            return PlainTextResponse(repr(exc), status_code=422)

        app = make_app(
            kind, lambda: order_saga(AddressRejected("x")), {AddressRejected: sync_handler}
        )
        answer = await get(app)
        assert (answer.status_code, answer.text) == (422, "AddressRejected('x')")
        assert threads == [True]

    async def test_an_http_exception_root_gets_its_status_handler_first(self, kind: str) -> None:
        async def conflict(request: Request, exc: Exception) -> Response:
            return PlainTextResponse(f"conflict: {exc}", status_code=409)

        app = make_app(kind, lambda: order_saga(HTTPException(409, "taken")), {409: conflict})
        answer = await get(app)
        assert (answer.status_code, answer.text) == (409, "conflict: 409: taken")

    async def test_an_http_exception_root_gets_the_apps_default_handler(self, kind: str) -> None:
        app = make_app(kind, lambda: order_saga(HTTPException(409, "taken")), {})
        answer = await get(app)
        assert answer.status_code == 409
        if kind == "fastapi":
            assert answer.json() == {"detail": "taken"}
        else:
            assert answer.text == "taken"

    async def test_a_handler_the_app_has_for_the_group_is_kept(self, kind: str) -> None:
        async def own(request: Request, exc: Exception) -> Response:
            return PlainTextResponse("own", status_code=502)

        app = make_app(
            kind,
            lambda: order_saga(AddressRejected("x")),
            {CompensationFailed: own, AddressRejected: rejected},
        )
        answer = await get(app)
        assert (answer.status_code, answer.text) == (502, "own")

    async def test_a_run_whose_reverts_all_ran_raises_the_root_itself(self, kind: str) -> None:
        app = make_app(
            kind,
            lambda: order_saga(AddressRejected("x"), refund_fails=False),
            {AddressRejected: rejected},
        )
        answer = await get(app)
        assert answer.status_code == 422
        assert answer.json() == {"error": "AddressRejected('x')", "not_undone": []}


@KINDS
class TestSeveralRoots:
    async def test_roots_one_handler_answers_are_answered_by_it_with_the_first(
        self, kind: str
    ) -> None:
        app = make_app(
            kind,
            lambda: two_failures(AddressRejected("a"), AddressRejected("b")),
            {AddressRejected: rejected},
        )
        answer = await get(app)
        assert answer.status_code == 422
        assert answer.json()["error"] in ("AddressRejected('a')", "AddressRejected('b')")
        assert answer.json()["not_undone"] == NOT_UNDONE

    async def test_a_group_failed_without_reverts_is_answered_the_same_way(self, kind: str) -> None:
        app = make_app(
            kind,
            lambda: two_failures(AddressRejected("a"), AddressRejected("b"), refund_fails=False),
            {AddressRejected: rejected},
        )
        answer = await get(app)
        assert answer.status_code == 422
        assert answer.json()["not_undone"] == []

    @pytest.mark.parametrize("refund_fails", [True, False])
    async def test_roots_different_handlers_answer_propagate_the_group(
        self, kind: str, refund_fails: bool
    ) -> None:
        """Picking one would hide the other (one of them may be a bug): a 500."""
        app = make_app(
            kind,
            lambda: two_failures(AddressRejected("a"), OutOfStock("b"), refund_fails=refund_fails),
            {AddressRejected: rejected, OutOfStock: out_of_stock},
        )
        assert (await get(app)).status_code == 500
        with pytest.raises(CompensationFailed if refund_fails else GroupFailed):
            await get(app, raise_app_exceptions=True)

    async def test_a_root_without_a_handler_propagates_the_group(self, kind: str) -> None:
        app = make_app(
            kind,
            lambda: two_failures(AddressRejected("a"), KeyError("bug"), refund_fails=False),
            {AddressRejected: rejected},
        )
        assert (await get(app)).status_code == 500

    async def test_a_fan_out_below_its_threshold_is_answered_for_its_members(
        self, kind: str
    ) -> None:
        @aflow.task
        async def deliver(n: int) -> int:
            if n:
                raise AddressRejected(f"parcel {n}")
            return n

        app = make_app(
            kind,
            lambda: deliver.map([0, 1, 2]).set(min_success=2),
            {AddressRejected: rejected},
        )
        answer = await get(app)
        assert answer.status_code == 422
        assert answer.json()["error"].startswith("AddressRejected('parcel ")


class TestHelpers:
    async def test_root_failure_and_revert_failures_of_a_compensation_failed(self) -> None:
        with pytest.raises(CompensationFailed) as caught:
            await aflow.run(order_saga(AddressRejected("x")))
        group = caught.value
        assert root_failure(group) is group.original
        (failure,) = revert_failures(group)
        assert failure == RevertFailure(group.run_id, "charge", group.exceptions[1])
        assert isinstance(failure.error, RefundDown)

    async def test_any_other_exception_is_its_own_root_with_no_revert_failures(self) -> None:
        error = ValueError("plain")
        assert root_failure(error) is error
        assert revert_failures(error) == ()

    async def test_root_failure_unwraps_a_group_inside_a_compensation_failed(self) -> None:
        with pytest.raises(CompensationFailed) as caught:
            await aflow.run(two_failures(AddressRejected("a"), AddressRejected("b")))
        group = caught.value
        assert isinstance(group.original, GroupFailed)
        assert root_failure(group) is group.original.exceptions[0]
        assert [f.step for f in revert_failures(group)] == ["charge"]

    async def test_a_compensation_deadline_is_a_failure_of_each_step_it_cut(self) -> None:
        """(It was a failure of no one step while the step was read from the revert's
        note, which a shared deadline has none of; CompensationFailed.reverts says.)"""

        @aflow.task
        async def charge() -> str:
            return "receipt"

        @charge.revert
        async def refund() -> None:
            await anyio.sleep_forever()

        @aflow.task
        async def ship(receipt: str) -> None:
            raise AddressRejected("x")

        async with FakeClock() as clock:
            with pytest.raises(CompensationFailed) as caught:
                await aflow.run(charge.s() | ship.s(), clock=clock, compensation_timeout=30)
        (failure,) = revert_failures(caught.value)
        assert failure.step == "charge"
        assert isinstance(failure.error, TimeoutError)
        assert caught.value.reverts == {"charge": failure.error}
        assert isinstance(root_failure(caught.value), AddressRejected)

    async def test_the_step_is_read_back_whatever_its_key(self) -> None:
        """A node key with quotes and spaces (the note holds its repr)."""

        @aflow.task
        async def charge() -> str:
            return "receipt"

        @charge.revert
        async def refund() -> None:
            raise RefundDown("down")

        @aflow.task
        async def ship(receipt: str) -> None:
            raise AddressRejected("x")

        key = "charge 'the card' failed in run x"
        with pytest.raises(CompensationFailed) as caught:
            await aflow.run(charge.s().set(name=key) | ship.s())
        assert [f.step for f in revert_failures(caught.value)] == [key]
