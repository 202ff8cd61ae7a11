"""The ``aflow`` command: run, list, show, resume and cancel durable runs, send events to
waiting ones; draw workflows.

Usage::

    aflow run examples.orders:order_saga --param order_id=o-42 [--store URL]
    aflow runs [--status running]
    aflow show RUN_ID [--history]
    aflow resume RUN_ID [--allow-module pkg.mod]
    aflow cancel RUN_ID
    aflow send RUN_ID payment-confirmed [--payload '{"amount": 5}'] [--message-id evt_1]
    aflow send --key order-42 payment-confirmed
    aflow graph examples.orders:order_saga --param order_id=o-42 --format mermaid
    aflow ui [--host 127.0.0.1] [--port 8765] [--allow-actions [--allow-module pkg.mod]]

The store defaults to ``$AFLOW_STORE`` or ``sqlite:///aflow-runs.db``. Exit
codes: 0 succeeded, 1 failed or reverted, 2 bad input, 3 cancelled.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import anyio
from rich.markup import escape
from rich.text import Text

from ._exceptions import AflowError, DefinitionError, StoreError
from ._runtime._handle import Run
from ._runtime._runtime import Runtime
from ._runtime._states import RunStatus
from ._workflow import resolve_workflow
from .stores import StoredRunStatus, open_store

__all__ = ["main"]

DEFAULT_STORE = "sqlite:///aflow-runs.db"
#: The exit code of a run that ended, by its status (a RunStatus's value, or as stored).
EXIT: dict[str, int] = {
    StoredRunStatus.SUCCEEDED: 0,
    StoredRunStatus.FAILED: 1,
    StoredRunStatus.REVERTED: 1,
    StoredRunStatus.CANCELLED: 3,
}


def _params(pairs: Sequence[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise DefinitionError(f"--param wants key=value, got {pair!r}")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw  # a bare word is a string
    return params


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aflow", description="Run and inspect aflow workflows.")
    parser.add_argument(
        "--store", default=os.environ.get("AFLOW_STORE", DEFAULT_STORE), help="store URL"
    )
    parser.add_argument(
        "--serializer",
        choices=("json", "pickle"),
        default="json",
        help="how results are stored (pickle: trusted stores only; loading a pickle runs code)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a workflow to its end, with live progress")
    run.add_argument("workflow", help="package.module:function (an @aflow.workflow)")
    run.add_argument("--param", action="append", default=[], help="key=value (JSON or text)")
    run.add_argument("--max-concurrency", type=int, default=None)
    run.add_argument("--key", default=None, help="idempotency key")
    run.add_argument("--quiet", action="store_true", help="no progress display")
    runs = sub.add_parser("runs", help="list runs, newest first")
    runs.add_argument(
        "--status", default=None, choices=[s.value for s in StoredRunStatus], help="only these"
    )
    runs.add_argument("--limit", type=int, default=50)
    runs.add_argument("--json", action="store_true", help="one RunReport (JSON) per line")
    show = sub.add_parser("show", help="a run and its nodes")
    show.add_argument("run_id")
    show.add_argument("--history", action="store_true", help="every transition, oldest first")
    show.add_argument(
        "--json",
        action="store_true",
        help="the run as a RunReport (JSON); with --history, its events, one per line",
    )
    resume = sub.add_parser(
        "resume", help="take up a run a dead process left unfinished (or recovery parked)"
    )
    resume.add_argument("run_id")
    resume.add_argument("--quiet", action="store_true")
    resume.add_argument(
        "--allow-module",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE for the run's workflow (a stored run never names what to import)",
    )
    cancel = sub.add_parser("cancel", help="cancel an unfinished run (it is unwound)")
    cancel.add_argument("run_id")
    send = sub.add_parser(
        "send", help="send an event to a run (an aflow.wait_for or aflow.receive takes it)"
    )
    send.add_argument("run_id", nargs="?", default=None, help="the run (or name it by --key)")
    send.add_argument("event", help="the event's name")
    send.add_argument("--payload", default=None, help="the event's value (JSON or text)")
    send.add_argument("--message-id", default=None, help="sent once per run, event and message id")
    send.add_argument("--key", default=None, help="the run's idempotency key, instead of its id")
    graph = sub.add_parser("graph", help="draw a workflow's graph")
    graph.add_argument("workflow")
    graph.add_argument("--param", action="append", default=[])
    graph.add_argument("--format", choices=("mermaid", "dot"), default="mermaid")
    ui = sub.add_parser(
        "ui", help="serve the runs dashboard over the store (needs aflow[web]; read-only)"
    )
    ui.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    ui.add_argument("--port", type=int, default=8765, help="the port (0: any free one)")
    ui.add_argument(
        "--allow-actions",
        action="store_true",
        help="let the dashboard cancel runs (and resume, retry and fork those of the "
        "workflows --allow-module names: this process then runs them)",
    )
    ui.add_argument(
        "--allow-module",
        action="append",
        default=[],
        metavar="MODULE",
        help="with --allow-actions: import MODULE for the workflows it may run",
    )
    ui.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name clients reach it by (besides localhost and --host): others "
        "are refused, so a web page that rebinds its name to this address reads nothing",
    )
    ui.add_argument("--title", default="aflow", help="the dashboard's title")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aflow`` command; returns the exit code."""
    args = _parser().parse_args(argv)
    if os.getcwd() not in sys.path:  # `aflow run myapp.flows:thing` from the project's folder
        sys.path.insert(0, os.getcwd())
    try:
        code: int = anyio.run(_dispatch, args)
    except (DefinitionError, StoreError) as exc:
        print(f"aflow: {exc}", file=sys.stderr)
        return 2
    except BaseExceptionGroup as group:  # raised from inside the runtime's task group
        bad = group.subgroup((DefinitionError, StoreError))
        if bad is None:
            raise
        for leaf in _leaves(bad):
            print(f"aflow: {leaf}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 3
    return code


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


async def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "graph":
        graph = resolve_workflow(args.workflow).build(_params(args.param))
        print(graph.to_mermaid() if args.format == "mermaid" else graph.to_dot(), end="")
        return 0
    if args.command in ("runs", "show", "cancel", "send"):
        # none of these creates a store; runs and show do not even write to one
        writes = args.command in ("cancel", "send")
        store = open_store(args.store, read_only=not writes, create=False)
        await store.open()
        try:
            if args.command == "runs":
                status = None if args.status is None else StoredRunStatus(args.status)
                if args.json:
                    return await _runs_json(store, status, args.limit, args.serializer)
                return await _runs(store, status, args.limit)
            if args.command == "show":
                if args.json:
                    return await _show_json(store, args.run_id, args.serializer, args.history)
                return await _show(store, args.run_id, history=args.history)
            if args.command == "send":
                return await _send(store, args)
            return await _cancel(store, args.run_id)
        finally:
            await store.close()
    if args.command == "ui":
        return await _ui(args)
    if args.command == "run":
        workflow = resolve_workflow(args.workflow)  # named on the command line: imported
        async with Runtime(
            store=args.store, serializer=args.serializer, max_concurrency=args.max_concurrency
        ) as rt:
            handle = await rt.submit(workflow, params=_params(args.param), idempotency_key=args.key)
            return await _follow(handle, quiet=args.quiet)
    store = open_store(args.store, create=False)  # resuming: the store must exist already
    await store.open()
    try:
        async with Runtime(
            store=store, serializer=args.serializer, workflows=args.allow_module or None
        ) as rt:
            handle = await rt.resume(args.run_id)
            return await _follow(handle, quiet=args.quiet)
    finally:
        await store.close()


async def _ui(args: argparse.Namespace) -> int:
    """Serve the dashboard over the store until interrupted."""
    try:
        import uvicorn
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        from . import web
    except ImportError as exc:
        raise DefinitionError(
            f"aflow ui needs the web extra: pip install 'aflow[web]' ({exc})"
        ) from None
    if args.allow_module and not args.allow_actions:
        raise DefinitionError("--allow-module is for --allow-actions (the workflows it may run)")
    hosts = _ui_hosts(args.host, args.allow_host)
    store = open_store(args.store, read_only=not args.allow_actions, create=False)
    await store.open()
    try:
        async with contextlib.AsyncExitStack() as stack:
            source: Any = store
            if args.allow_module:
                source = await stack.enter_async_context(
                    Runtime(store=store, serializer=args.serializer, workflows=args.allow_module)
                )
            board = web.app(source, actions=args.allow_actions, title=args.title)
            # told to stop, the event streams end (uvicorn waits for open responses)
            closing = board.state.dashboard.closing = anyio.Event()  # type: ignore[attr-defined]
            loop = asyncio.get_running_loop()
            config = uvicorn.Config(
                TrustedHostMiddleware(board, allowed_hosts=hosts),
                host=args.host,
                port=args.port,
                log_level="warning",
                lifespan="on",
                timeout_graceful_shutdown=5,
            )
            mode = "actions on" if args.allow_actions else "read-only"

            class Server(uvicorn.Server):
                def handle_exit(self, sig: int, frame: Any) -> None:
                    super().handle_exit(sig, frame)
                    loop.call_soon_threadsafe(closing.set)  # (safe in a signal handler)

                async def startup(self, sockets: Any = None) -> None:
                    await super().startup(sockets)
                    for server in self.servers:
                        for sock in server.sockets:
                            host, port = sock.getsockname()[:2]
                            print(
                                f"aflow ui: http://{host}:{port}/ ({mode}, {store.url})", flush=True
                            )

            await Server(config).serve()
    finally:
        await store.close()
    return 0


_LOOPBACK = ("localhost", "127.0.0.1", "::1")


def _ui_hosts(host: str, allowed: Sequence[str]) -> list[str]:
    """The host names ``aflow ui`` answers (a Host header naming another is refused)."""
    if host in ("0.0.0.0", "::", "") and not allowed:
        raise DefinitionError(
            f"--host {host or repr(host)} listens on every address: name the host names "
            "clients use with --allow-host (the dashboard has no login: keep it behind "
            "your network's, or your proxy's)"
        )
    return [*_LOOPBACK, f"[{_LOOPBACK[2]}]", host, *allowed]


async def _follow(handle: Run[Any], *, quiet: bool) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    console = Console(stderr=True)
    console.print(f"run [bold]{handle.id}[/bold]")
    if quiet or not console.is_terminal:
        await handle.wait()
    else:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            console=console,
            transient=True,
        ) as progress:
            stats = handle.statistics()
            bar = progress.add_task("nodes", total=stats.total, detail="")
            with anyio.move_on_after(None):
                while handle.status in (RunStatus.PENDING, RunStatus.RUNNING):
                    stats = handle.statistics()
                    done = stats.succeeded + stats.failed + stats.skipped + stats.reverted
                    detail = f"{stats.running} running, {stats.failed} failed"
                    progress.update(bar, completed=done, detail=detail)
                    with anyio.move_on_after(0.1):
                        await handle.wait()
    status = handle.status.value
    try:
        value = await handle.result()
    except AflowError as exc:
        console.print(f"[red]{status}[/red]: {escape(str(exc))}")
    except Exception as exc:
        console.print(f"[red]{status}[/red]: {escape(f'{type(exc).__name__}: {exc}')}")
    else:
        console.print(f"[green]{status}[/green]")
        print(json.dumps(value, default=repr))
    return EXIT.get(status, 1)


def _when(at: float | None, timespec: str = "seconds") -> str:
    """A stored time as text; one that is no time (a crafted row) is shown as it is."""
    import datetime as dt

    if at is None:
        return ""
    try:
        return dt.datetime.fromtimestamp(at).isoformat(sep=" ", timespec=timespec)
    except (OverflowError, OSError, ValueError, TypeError):
        return repr(at)


async def _runs(store: Any, status: StoredRunStatus | None, limit: int) -> int:
    from rich.console import Console
    from rich.table import Table

    # Stored text is shown as text (Text cells), never read as rich markup.
    table = Table("workflow", "status", "started", "key")
    table.add_column("run", no_wrap=True)
    for record in await store.list_runs(status, limit):
        status_text = str(record.status)
        if record.recoveries:  # taken over from dead processes this often (parked: too often)
            status_text += f" ({record.recoveries} recoveries)"
        table.add_row(
            *map(
                Text,
                (
                    record.workflow,
                    status_text,
                    _when(record.created_at),
                    record.idempotency_key or "",
                    record.run_id,
                ),
            )
        )
    Console().print(table)
    return 0


async def _show(store: Any, run_id: str, *, history: bool = False) -> int:
    from rich.console import Console
    from rich.table import Table

    record = await store.get_run(run_id)
    console = Console()
    console.print(
        Text.assemble(
            "run ", (record.run_id, "bold"), f"  {record.workflow}  ", (record.status, "bold")
        )
    )
    if record.error:
        console.print(Text(f"error: {record.error}"))
    if history:
        table = Table("at", "node", "state", "attempt", "error")
        for node in await store.load_history(run_id):
            at = node.finished_at or node.started_at
            row = (
                _when(at, "milliseconds"),
                node.key,
                node.state,
                str(node.attempt),
                node.error or "",
            )
            table.add_row(*map(Text, row))
        console.print(table)
        return EXIT.get(record.status, 0)
    table = Table("node", "state", "attempts", "duration", "error")
    nodes = await store.load_nodes(run_id)
    for key, node in nodes.items():
        duration = ""
        if node.started_at is not None and node.finished_at is not None:
            try:
                duration = f"{(node.finished_at - node.started_at) * 1000:.1f} ms"
            except (TypeError, OverflowError):
                duration = "?"
        table.add_row(*map(Text, (key, node.state, str(node.attempt), duration, node.error or "")))
    console.print(table)
    for wait in await _waits_of(store, record, nodes):
        what = "a timer" if wait.event is None else f"event {wait.event!r}"
        until = "no deadline" if wait.deadline is None else f"until {_when(wait.deadline)}"
        console.print(Text(f"{wait.key} waits for {what}, {until}"))
    return EXIT.get(record.status, 0)


async def _waits_of(store: Any, record: Any, nodes: Any) -> list[Any]:
    """What a stored run waits for now (its waits whose node has not ended)."""
    from ._runtime._report import report_of_record

    if record.status in EXIT or not hasattr(store, "load_waits"):
        return []
    waits = await store.load_waits(record.run_id)
    return report_of_record(record, nodes, (), _reader(record, "json"), None, waits).waits


def _reader(record: Any, serializer: str) -> Any:
    """How the command reads a stored run's values: JSON, or pickle if asked for."""
    from ._serialize import serializer_for

    if record.serializer in ("json", serializer):
        return serializer_for(record.serializer).loads

    def unreadable(text: str) -> Any:
        raise ValueError(f"written with {record.serializer}: give --serializer to read it")

    return unreadable


async def _runs_json(
    store: Any, status: StoredRunStatus | None, limit: int, serializer: str
) -> int:
    from ._runtime._report import report_of_record

    for record in await store.list_runs(status, limit):
        report = report_of_record(record, None, (), _reader(record, serializer), None)
        print(report.model_dump_json())
    return 0


async def _show_json(store: Any, run_id: str, serializer: str, history: bool) -> int:
    from ._runtime._report import events_of_history, report_of_record

    record = await store.get_run(run_id)
    past = await store.load_history(run_id)
    if history:
        for event in events_of_history(record, past):
            print(event.model_dump_json())
    else:
        nodes = await store.load_nodes(run_id)
        waits = await store.load_waits(run_id) if hasattr(store, "load_waits") else None
        reader = _reader(record, serializer)
        report = report_of_record(record, nodes, past, reader, None, waits)
        print(report.model_dump_json(indent=2))
    return EXIT.get(record.status, 0)


async def _cancel(store: Any, run_id: str) -> int:
    status = await store.request_cancel(run_id, "RunCancelled: cancelled from the command line")
    if status == StoredRunStatus.REVERTING:  # not finished: it is being undone already
        print(f"run {run_id}: being undone already (reverting); its process goes on unwinding it")
        return 0
    if status != StoredRunStatus.CANCELLING:
        print(f"aflow: run {run_id} has finished already ({status})", file=sys.stderr)
        return 2
    print(f"run {run_id}: cancel requested (its process unwinds it; a dead one's recovery does)")
    return 0


async def _send(store: Any, args: argparse.Namespace) -> int:
    """Keep the event for the run, as :meth:`Runtime.send` does; a process that holds
    the run (or takes it up once it is due) delivers it. Nothing here runs the workflow."""
    import time

    from ._runtime._waits import wait_store
    from ._serialize import serializer_for

    if (args.run_id is None) == (args.key is None):
        raise DefinitionError("aflow send: name the run by its id or by --key, not both")
    if not args.event:
        raise DefinitionError("aflow send: an event's name is a non-empty string")
    store = wait_store(store)
    run_id = args.run_id
    if run_id is None:
        run_id = await store.run_of_key(args.key)
        if run_id is None:
            print(f"aflow: no run has idempotency key {args.key!r}", file=sys.stderr)
            return 2
    payload = None if args.payload is None else _params([f"payload={args.payload}"])["payload"]
    record = await store.get_run(run_id)  # RunNotFound: a StoreError (exit 2)
    text = (
        None
        if payload is None  # a payload from the command line is plain data: any serializer
        else serializer_for(record.serializer).dumps(payload, task=f"event {args.event!r}")
    )
    outcome, status = await store.send_event(
        run_id, args.event, args.message_id or "", text, time.time()
    )
    if outcome == "ended":
        print(f"aflow: run {run_id} has finished already ({status}); not sent", file=sys.stderr)
        return 2
    if outcome == "duplicate":
        print(f"run {run_id}: event {args.event!r} was sent already (message kept once)")
        return 0
    print(f"run {run_id}: event {args.event!r} sent (the run is {status})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
