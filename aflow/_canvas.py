"""The canvas: signatures, chains, groups and chords (Celery's semantics, kept on purpose).

Every canvas object is an immutable value: ``.set()``, ``.clone()``, ``.link()``
and ``|`` return new objects. Every one is awaitable the same way
(``await sig``), and compiles to the one graph IR.

The rules of data flow (Celery's):

* In a chain, a parent's result is *prepended* to the next signature's
  partial arguments (``sub.s(10)`` after ``30`` calls ``sub(30, 10)``).
* An immutable signature (``.si()``) ignores the parent's result.
* A group passes the incoming value to every member; its value is the list of
  its members' values in declaration order, nested groups flattened.
* A group chained into anything becomes a chord: the next step receives the
  header's list.
* Empty things (Celery's): an empty group in a chain is skipped once the chain
  has a value (a parent, a step before it, partial arguments), so the chain
  passes that value on past it; an empty ``chain()`` is a no-op, dropped from
  groups and chord headers, ``None`` awaited alone; ``aflow.chord([], body)``
  calls the body with ``[]``.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any, Generic, TypeVar, final, overload

from ._canvas_cache import compile_canvas
from ._exceptions import SignatureError
from ._graph import INPUT_ERROR, Graph, GraphBuilder, NodeKind
from ._options import FANOUT_OPTIONS, FLOW_OPTIONS, check_options, layer_options, resolve_options
from ._task import FunctionTask

if TYPE_CHECKING:
    from typing import Literal, Protocol, Self

__all__ = ["Canvas", "Chain", "Chord", "Group", "Signature", "chain", "chord", "group", "signature"]

R = TypeVar("R")
T = TypeVar("T")
In_contra = TypeVar("In_contra", contravariant=True)
Out_co = TypeVar("Out_co", covariant=True)

if TYPE_CHECKING:

    class Step(Protocol[In_contra, Out_co]):
        """Typing only: a canvas that can follow one whose result is ``In_contra``.

        Every canvas can (it takes ``Any``), but a :class:`PartialSignature`
        (``charge.s()``) only after a parent whose result fits its first parameter.
        """

        def _aflow_takes(self, parent: In_contra, /) -> Out_co: ...


_MODES = {"call": NodeKind.TASK, "map": NodeKind.MAP, "starmap": NodeKind.STARMAP}
_NOT_INHERITED = ("name", *sorted(FANOUT_OPTIONS), *sorted(FLOW_OPTIONS))


#: ``resolve(task, key, positional count, keyword names) -> (bindings, extra kwargs)``:
#: inside a flow, the parameters a signature leaves open are looked up by name.
Resolver = Callable[
    [FunctionTask[..., Any], str, int, tuple[str, ...]],
    tuple[tuple[tuple[str, int, Any], ...], Mapping[str, Any]],
]


class _Compiler:
    """Walks a canvas tree once, emitting nodes; linear in the number of nodes."""

    __slots__ = ("builder", "header", "resolve")

    def __init__(self, builder: GraphBuilder | None = None) -> None:
        self.builder = builder or GraphBuilder()
        #: Set while a canvas sits inside a flow (see aflow.patterns).
        self.resolve: Resolver | None = None
        #: ``(start, end)`` of a chord's header while its body's surface compiles (the
        #: body, and the members of a group body): their errbacks see the header fail,
        #: as Celery calls the body's errbacks with the chord's error. Else ``()``.
        self.header: tuple[int, ...] = ()

    def body(
        self, canvas: Canvas[Any], header: tuple[int, int], pred: int, inner: Mapping[str, Any]
    ) -> tuple[tuple[int, ...], bool]:
        """Compile ``canvas`` as the body of a chord whose header is ``header``."""
        if header[1] <= header[0]:  # an empty header cannot fail
            return canvas._compile(self, pred, inner)
        self.header = header
        try:
            return canvas._compile(self, pred, inner)
        finally:
            self.header = ()

    def nothing(self, pred: int) -> int:
        """The node holding a no-op's value (an empty chain's): its input, else ``None``."""
        if pred != -1:
            return pred
        return self.builder.add(NodeKind.JOIN, None, name="chain", when=_no_op)

    def materialize(self, out: tuple[tuple[int, ...], bool], pred: int) -> int:
        """One node holding an element's value: the node itself, or a join for a group.

        ``pred`` is the node the element ran after: an empty group's join must
        still wait for it, or whatever follows would overtake the chain.
        """
        outputs, is_group = out
        if not is_group:
            return outputs[0]
        if outputs:
            return self.builder.add(NodeKind.JOIN, None, parents=outputs, name="join")
        return self.builder.add(
            NodeKind.JOIN, None, parents=(pred,) if pred != -1 else (), args=((),), name="join"
        )


def _no_op(results: Mapping[str, Any]) -> bool:
    """The guard of an empty chain's node: always go on (the node's value is ``None``)."""
    return True


class Canvas(Generic[R]):
    """The base of every canvas object: options, callbacks, ``|``, ``await``."""

    # (weakly referable: aflow.workflow remembers which call built one, while it lives)
    __slots__ = ("__weakref__", "_errbacks", "_links", "_options")

    _options: Mapping[str, Any]
    _links: tuple[Canvas[Any], ...]
    _errbacks: tuple[Canvas[Any], ...]

    def _init_canvas(
        self,
        options: Mapping[str, Any] | None,
        links: tuple[Canvas[Any], ...] = (),
        errbacks: tuple[Canvas[Any], ...] = (),
    ) -> None:
        self._options = check_options(self._owner(), options) if options else _EMPTY
        self._links = links
        self._errbacks = errbacks

    def _owner(self) -> str:
        return type(self).__name__.lower()

    def _copy(self, **changes: Any) -> Self:
        new = object.__new__(type(self))
        for cls in type(self).__mro__:
            for slot in getattr(cls, "__slots__", ()):
                if slot != "__weakref__" and hasattr(self, slot):
                    object.__setattr__(new, slot, changes.get(slot, getattr(self, slot)))
        return new

    @property
    def options(self) -> Mapping[str, Any]:
        """The options set on this object (``name``, ``retries``, ``timeout``, ``limit``)."""
        return dict(self._options)

    def set(self, **options: Any) -> Self:
        """A copy with options merged in (the new ones win)."""
        merged = {**self._options, **check_options(self._owner(), options)}
        return self._copy(_options=merged)

    def link(self, callback: Step[R, Any]) -> Self:
        """A copy that calls ``callback`` with this object's result once it succeeds.

        Unlike Celery, a link on a group receives the group's whole list of results.
        Linking a callback equal to one already linked keeps one (as Celery does).
        """
        callback = _as_canvas(callback, "link")
        if _holds_equal(self._links, callback):
            return self
        return self._copy(_links=(*self._links, callback))

    def link_error(self, errback: Step[Exception, Any]) -> Self:
        """A copy that calls ``errback`` if any task inside it fails.

        The errback runs once, after the run has stopped and unwound, with the
        first failure inside this object as its argument; if it names
        ``failures`` / ``results`` it also gets every failure and every result
        inside this object (node key to value). The run still raises. Linking an
        errback equal to one already linked keeps one (as Celery does).

        It runs for tasks that *failed*: by default the first failure stops the run,
        so tasks cancelled or never started get no errback (the raised error says how
        many did not run), while every task that failed, also while being cancelled,
        gets its own; ``on_error="continue"`` runs every task, so every failing task's
        errbacks run. Where a group goes on past a failure (``continue_on_failed``, a
        success threshold), the failed task's errbacks run but not the group's. On a
        chord's body (or a member of a group body) it also runs when the header fails.
        """
        errback = _as_canvas(errback, "link_error")
        if _holds_equal(self._errbacks, errback):
            return self
        return self._copy(_errbacks=(*self._errbacks, errback))

    def on_error(self, errback: Step[Exception, Any]) -> Self:
        """Alias of :meth:`link_error` (Celery's name on chords)."""
        return self.link_error(errback)

    def clone(
        self, args: Iterable[Any] = (), kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> Self:
        """A copy with partial arguments applied and options merged (new ones win)."""
        new = self._with_partial(tuple(args), dict(kwargs or {}))
        return new.set(**options) if options else new

    def _with_partial(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Self:
        raise NotImplementedError

    def _value(self) -> tuple[Any, ...]:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        """Canvas objects are values: equal when of one kind with equal contents and options.

        (A signature's arguments must also agree on which are plain scalars, which hash
        by value: see :meth:`Signature._key`.)
        """
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Canvas)
        return (self._value(), self._options, self._links, self._errbacks) == (
            other._value(),
            other._options,
            other._links,
            other._errbacks,
        )

    def __hash__(self) -> int:
        """Equal objects hash equal, whatever their arguments (lists, unhashable objects).

        The hash reads a few fields along the first-member path (a group's first member,
        a chain's first step, a chord's header), at most :data:`_HASH_DEPTH` objects
        deep: the kind, the counts of members, options and callbacks, and at the end a
        signature's :meth:`~Signature._key`. Equality implies each of them, so a subclass
        keeps the rule as long as what its ``_hash_head`` reads is implied by equality.
        It never hashes a group's members, so ``asyncio.gather`` of ten canvases costs
        the same whatever their size.
        """
        heads: list[Any] = []
        node: Canvas[Any] | None = self
        while node is not None and len(heads) < _HASH_DEPTH:
            heads.append(node._hash_head())
            node = node._hash_next()
        return hash(tuple(heads))

    def _hash_head(self) -> tuple[Any, ...]:
        return (type(self), len(self._options), len(self._links), len(self._errbacks))

    def _hash_next(self) -> Canvas[Any] | None:
        return None

    if TYPE_CHECKING:

        def _aflow_takes(self, parent: Any, /) -> R:
            """Typing only (see :class:`Step`): any canvas takes any parent's result."""
            raise NotImplementedError

    def __or__(self, other: Step[R, T]) -> Canvas[T]:
        other = _as_canvas(other, "|")
        return Chain._join(self, other)

    def __await__(self) -> Generator[Any, None, R]:
        from ._runtime._run import run

        return run(self).__await__()

    def __aflow_graph__(self) -> Graph:
        return compile_canvas(self, _compile_canvas)

    def _compile_uncached(self) -> Graph:
        compiler = _Compiler()
        out = self._compile(compiler, -1, {})
        output = compiler.materialize(out, -1)
        return compiler.builder.build(output, name=self._options.get("name"))

    # --- compilation -----------------------------------------------------------------------

    def _compile(
        self, c: _Compiler, pred: int, inherited: Mapping[str, Any]
    ) -> tuple[tuple[int, ...], bool]:
        start = len(c.builder.nodes)
        inner = inherited
        if self._options:
            inner = layer_options(inherited, self._options)
            # A name labels this object only, and thresholds belong to this fan-out only.
            for private in _NOT_INHERITED:
                inner.pop(private, None)
        header = c.header  # set when this is a chord's body (or a member of a group body)
        if header and type(self) is not Group:
            c.header = ()  # what is inside is not the body's surface
        try:
            out = self._compile_body(c, pred, inherited, inner)
            if not (self._links or self._errbacks):
                return out
            c.header = ()
            end = len(c.builder.nodes)
            scope = (start, end, *header)
            if not self._links:
                for eb in self._errbacks:
                    eb._compile_errback(c, scope, inherited)
                return out
            value = c.materialize(out, pred)
            for cb in self._links:
                cb._compile(c, value, inherited)
            for eb in self._errbacks:
                eb._compile_errback(c, scope, inherited)
            if out[1]:  # a group with links still yields its flattened members
                return out
            return ((value,), False)
        finally:
            c.header = header

    def _compile_body(
        self,
        c: _Compiler,
        pred: int,
        inherited: Mapping[str, Any],
        inner: Mapping[str, Any],
    ) -> tuple[tuple[int, ...], bool]:
        raise NotImplementedError

    def _compile_errback(
        self, c: _Compiler, scope: tuple[int, ...], inherited: Mapping[str, Any]
    ) -> None:
        raise SignatureError(
            self._owner(), "an error callback must be a task signature, e.g. log_error.s()"
        )


#: The options (or keyword arguments) of the many canvas objects that have none: one
#: shared dict, never written (typed read-only), which copies and pickles as a dict does.
_EMPTY: Mapping[str, Any] = {}

#: How many objects down the first-member path a canvas's hash reads (see Canvas.__hash__).
_HASH_DEPTH = 8
#: Argument types hashed by value; their hashes agree with their equality across them all
#: (``1 == 1.0 == True`` hash alike), and hashing them runs no user code.
_SCALARS = frozenset({int, float, complex, str, bytes, bool, type(None)})


def _scalar_key(value: object) -> int | None:
    """A plain scalar's hash; ``None`` for anything else (lists, objects: not hashed)."""
    return hash(value) if type(value) in _SCALARS else None


def _holds_equal(linked: tuple[Canvas[Any], ...], new: Canvas[Any]) -> bool:
    """Whether ``linked`` holds a callback equal to ``new`` (Celery keeps it once).

    Arguments that cannot be compared (their ``==`` raises, or gives something with no
    truth value, as a numpy array does) make two callbacks different: both are kept.
    """
    for each in linked:
        if each is new:
            return True
        try:
            if each == new:
                return True
        except Exception:
            continue
    return False


def _as_canvas(obj: object, where: str) -> Canvas[Any]:
    if isinstance(obj, Canvas):
        return obj
    if isinstance(obj, FunctionTask):
        return Signature(obj, (), {})
    adapt = getattr(obj, "__aflow_canvas__", None)  # a flow (aflow.patterns) in a canvas
    if adapt is not None:
        canvas = adapt()
        if isinstance(canvas, Canvas):
            return canvas
    raise TypeError(f"{where}: expected a signature, chain, group or chord, got {obj!r}")


@final
class Signature(Canvas[R]):
    """One task call with (possibly partial) arguments and options.

    Build with ``task.s(...)``, ``task.si(...)``, ``task.signature(...)`` or
    :func:`aflow.signature`. Awaiting it runs it: ``await add.s(2, 2)`` is 4.
    """

    __slots__ = ("_args", "_immutable", "_kwargs", "_mode", "_task")

    def __init__(
        self,
        task: FunctionTask[..., Any],
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        immutable: bool = False,
        options: Mapping[str, Any] | None = None,
        mode: str = "call",
    ) -> None:
        if not isinstance(task, FunctionTask):
            raise TypeError(f"a signature needs an @aflow.task, got {task!r}")
        self._task = task
        self._args = tuple(args)
        self._kwargs: Mapping[str, Any] = dict(kwargs) if kwargs else _EMPTY
        self._immutable = immutable
        self._mode = mode
        self._init_canvas(options)

    @classmethod
    def _new(
        cls,
        task: FunctionTask[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        immutable: bool,
    ) -> Signature[Any]:
        """The fast path behind ``task.s()`` / ``task.si()``: nothing to check."""
        sig = object.__new__(cls)
        sig._task = task
        sig._args = args
        sig._kwargs = kwargs if kwargs else _EMPTY  # shared: 64 bytes less a signature
        sig._immutable = immutable
        sig._mode = "call"
        sig._options = _EMPTY
        sig._links = ()
        sig._errbacks = ()
        return sig

    def _owner(self) -> str:
        return self._task.name

    @property
    def task(self) -> FunctionTask[..., R]:
        """The task this signature calls."""
        return self._task

    @property
    def name(self) -> str:
        """The node name: the ``name`` option, else the task's name."""
        name: str = self._options.get("name", self._task.name)
        return name

    @property
    def args(self) -> tuple[Any, ...]:
        """The partial positional arguments."""
        return self._args

    @property
    def kwargs(self) -> Mapping[str, Any]:
        """The partial keyword arguments (a copy)."""
        return dict(self._kwargs)

    @property
    def immutable(self) -> bool:
        """True when the signature ignores its parent's result (built with ``.si()``)."""
        return self._immutable

    def set(self, *, immutable: bool | None = None, **options: Any) -> Signature[R]:
        """A copy with options merged in (new ones win); ``immutable=`` switches immutability."""
        new = super().set(**options)
        if immutable is not None:
            new._immutable = immutable
        return new

    def replace(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> Signature[R]:
        """A copy with its arguments, keyword arguments or options *replaced* (not merged).

        Each one left as ``None`` is kept; callbacks and immutability are kept too.
        Unlike :meth:`clone`, which prepends and merges, this says what the call is::

            add.s(1, 2, debug=True).replace(args=(5, 6))         # add.s(5, 6, debug=True)
            add.s(1, 2).set(timeout=1).replace(options={})       # add.s(1, 2), no options

        Raises:
            SignatureError: ``args`` is not a tuple or list, ``kwargs`` not a mapping of
                names, or an option is unknown or has a wrong value.
        """
        changes: dict[str, Any] = {}
        if args is not None:
            if isinstance(args, str | bytes | bytearray | Mapping | AbstractSet) or not isinstance(
                args, Iterable
            ):  # (a set has no order to give the arguments)
                raise SignatureError(
                    self.name,
                    f"needs a tuple or list of positional arguments, got {args!r}",
                    "args",
                )
            changes["_args"] = tuple(args)
        if kwargs is not None:
            if not isinstance(kwargs, Mapping) or not all(type(k) is str for k in kwargs):
                raise SignatureError(
                    self.name,
                    f"needs a mapping of argument names to values, got {kwargs!r}",
                    "kwargs",
                )
            changes["_kwargs"] = dict(kwargs) if kwargs else _EMPTY
        if options is not None:
            if not isinstance(options, Mapping):
                raise SignatureError(
                    self.name,
                    f"needs a mapping of option names to values, got {options!r}",
                    "options",
                )
            changes["_options"] = check_options(self._owner(), options) if options else _EMPTY
        return self._copy(**changes)

    def _with_partial(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Signature[R]:
        if self._immutable:  # Celery: an immutable signature ignores partial arguments
            return self._copy()
        if self._mode != "call" and args:
            raise SignatureError(
                self.name,
                f"a {self._mode} signature takes its items, not partial positional arguments; "
                "keyword arguments are passed to every call",
            )
        return self._copy(_args=args + self._args, _kwargs={**self._kwargs, **kwargs})

    def _value(self) -> tuple[Any, ...]:
        return (self._task, self._args, self._kwargs, self._immutable, self._mode, self._key())

    def _key(self) -> tuple[Any, ...]:
        """What a signature's hash reads: its task, the hash of each argument that is a
        plain scalar (``None`` in place of any other), the keyword names, immutability and
        mode. Part of equality too, so that equal signatures hash equal: two signatures
        whose arguments compare equal differ where one holds a plain scalar and the other
        an object of another type (``1`` against ``Decimal(1)``, ``mock.ANY`` or a numpy
        value), as a value that cannot be hashed cannot be made to hash like one that can.
        """
        kwargs = self._kwargs
        return (
            id(self._task),
            tuple([_scalar_key(arg) for arg in self._args]),
            frozenset(
                [
                    (name if type(name) is str else None, _scalar_key(value))
                    for name, value in kwargs.items()
                ]
            )
            if kwargs
            else None,
            _scalar_key(self._immutable),
            _scalar_key(self._mode),
        )

    def _hash_head(self) -> tuple[Any, ...]:
        return (*super()._hash_head(), self._key())

    def __repr__(self) -> str:
        parts = [repr(a) for a in self._args]
        parts += [f"{k}={v!r}" for k, v in self._kwargs.items()]
        method = {"call": "si" if self._immutable else "s", "map": "map", "starmap": "starmap"}
        text = f"{self._task.name}.{method[self._mode]}({', '.join(parts)})"
        if self._options:
            text += ".set(" + ", ".join(f"{k}={v!r}" for k, v in self._options.items()) + ")"
        return text

    def _compile(
        self, c: _Compiler, pred: int, inherited: Mapping[str, Any]
    ) -> tuple[tuple[int, ...], bool]:
        if self._links or self._errbacks or self._mode != "call" or c.resolve is not None:
            return super()._compile(c, pred, inherited)
        # The hot path: one plain call, as most nodes of a big workflow are.
        task = self._task
        own = self._options
        if own:
            merged = layer_options(layer_options(task.options, inherited), own)
            merged.pop("name", None)
            node_options = resolve_options(merged)
            name = own.get("name", task.name)
        else:
            node_options = (
                resolve_options(layer_options(task.options, inherited))
                if inherited
                else task.node_options
            )
            name = task.name
        added = c.builder.add_calls(
            task,
            ((self._args, self._kwargs),),
            node_options,
            pred,
            immutable=self._immutable,
            name=name,
        )
        return ((added[0],), False)

    def _compile_body(
        self,
        c: _Compiler,
        pred: int,
        inherited: Mapping[str, Any],
        inner: Mapping[str, Any],
    ) -> tuple[tuple[int, ...], bool]:
        kind = _MODES[self._mode]
        takes_input = pred != -1 and not self._immutable
        if kind is not NodeKind.TASK:
            if takes_input and self._args:
                raise SignatureError(
                    self.name,
                    f"{self._mode} was given items and would also receive its parent's result; "
                    f"use .{self._mode}() without items to map over the parent's result, "
                    "or .set(immutable=True) to ignore it",
                )
            if not takes_input and not self._args:
                raise SignatureError(
                    self.name, f"{self._mode}() without items needs a parent in a chain"
                )
        bindings: tuple[tuple[str, int, Any], ...] = ()
        kwargs: Mapping[str, Any] = self._kwargs
        if kind is NodeKind.TASK:
            node_options = (
                resolve_options(layer_options(self._task.options, inner))
                if inner
                else self._task.node_options
            )
            if c.resolve is not None:
                n_pos = len(self._args) + (1 if takes_input else 0)
                bindings, extra = c.resolve(self._task, self.name, n_pos, tuple(self._kwargs))
                if extra:
                    kwargs = {**extra, **self._kwargs}
        else:
            thresholds = {k: v for k, v in self._options.items() if k in FANOUT_OPTIONS}
            if thresholds and self._args:  # the items are known: check now, not at run time
                _check_reachable(self.name, thresholds, len(self._args[0]))
            merged = layer_options(self._task.options, {**inner, **thresholds})
            node_options = resolve_options(merged, fanout=True)
        return (
            (
                c.builder.add(
                    kind,
                    self._task,
                    name=self.name,
                    args=self._args,
                    kwargs=kwargs,
                    parents=(pred,) if pred != -1 else (),
                    input=pred if takes_input else -1,
                    options=node_options,
                    bindings=bindings,
                ),
            ),
            False,
        )

    def _compile_errback(
        self, c: _Compiler, scope: tuple[int, ...], inherited: Mapping[str, Any]
    ) -> None:
        if self._mode != "call" or self._links or self._errbacks:
            super()._compile_errback(c, scope, inherited)
        options = layer_options(layer_options(self._task.options, inherited), self._options)
        options.pop("name", None)
        c.builder.add(
            NodeKind.TASK,
            self._task,
            name=self.name,
            args=self._args,
            kwargs=self._kwargs,
            options=resolve_options(options),
            error_scope=scope,
            input=-1 if self._immutable else INPUT_ERROR,
        )


if TYPE_CHECKING:

    @final
    class PartialSignature(Signature[R], Generic[In_contra, R]):  # type: ignore[misc]
        """Typing only (no such class at run time): a :class:`Signature` given all but its
        first argument, which its parent's result in a chain fills (``charge.s()``).

        ``|``, ``.link()``, ``.link_error()`` and :func:`chord` check that result against
        ``In_contra``, the task's first parameter.
        """

        def _aflow_takes(self, parent: In_contra, /) -> R:
            raise NotImplementedError

        @overload
        def set(
            self, *, immutable: Literal[False] | None = None, **options: Any
        ) -> PartialSignature[In_contra, R]: ...
        @overload
        def set(self, *, immutable: bool | None = None, **options: Any) -> Signature[R]: ...
        def set(self, *, immutable: bool | None = None, **options: Any) -> Signature[R]:
            raise NotImplementedError


class _ChainNode:
    """A persistent list cell: ``a | b | c`` appends in O(1) and flattens once, in O(n)."""

    __slots__ = ("items", "prev")

    def __init__(self, prev: _ChainNode | None, items: tuple[Canvas[Any], ...]) -> None:
        self.prev = prev
        self.items = items


@final
class Chain(Canvas[R]):
    """Signatures run one after the other, each receiving its parent's result.

    ``chain(a, b, c)`` is ``a | b | c``; nested chains flatten. Its value is
    the last step's value. Example::

        await (add.s(2, 2) | add.s(4) | add.s(8))   # 16

    As in Celery, an empty group is skipped once the chain has a value (so
    ``chain(add.s(2, 2), group(), mul.s(2))`` is ``add.s(2, 2) | mul.s(2)``); one that
    starts a chain with nothing before it gives the next step ``[]`` (Celery's
    ``group() | body``). Partial arguments go to the first real step. An empty
    chain is a no-op: awaited alone it is ``None``.
    """

    __slots__ = ("_cell", "_flat")

    def __init__(self, *tasks: Canvas[Any], **options: Any) -> None:
        items = _flatten_chain(
            tuple(t if type(t) is Signature else _as_canvas(t, "chain") for t in tasks)
        )
        self._cell = _ChainNode(None, items)
        self._flat: tuple[Canvas[Any], ...] | None = items
        self._init_canvas(options)

    @classmethod
    def _join(cls, left: Canvas[Any], right: Canvas[Any]) -> Canvas[Any]:
        # (an empty group stays a chain step, skipped once the chain has a value, so that
        # a | (group() | b) is (a | group()) | b, which is a | b)
        if isinstance(left, Group) and left._tasks and not isinstance(right, Group):
            return Chord(left, right)
        if isinstance(left, Chain) and left._is_plain():
            cell = left._cell
        else:
            cell = _ChainNode(None, (left,))
        items = right.tasks if isinstance(right, Chain) and right._is_plain() else (right,)
        new = object.__new__(cls)
        new._cell = _ChainNode(cell, items)
        new._flat = None
        new._init_canvas(None)
        return new

    def _is_plain(self) -> bool:
        return not (self._options or self._links or self._errbacks)

    @property
    def tasks(self) -> tuple[Canvas[Any], ...]:
        """The steps, flattened."""
        if self._flat is None:
            parts: list[tuple[Canvas[Any], ...]] = []
            cell: _ChainNode | None = self._cell
            while cell is not None:
                parts.append(cell.items)
                cell = cell.prev
            parts.reverse()
            self._flat = tuple(item for part in parts for item in part)
        return self._flat

    def _value(self) -> tuple[Any, ...]:
        return (self.tasks,)

    def _hash_head(self) -> tuple[Any, ...]:
        return (*super()._hash_head(), len(self.tasks))

    def _hash_next(self) -> Canvas[Any] | None:
        tasks = self.tasks
        return tasks[0] if tasks else None

    def _with_partial(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Chain[R]:
        tasks = self.tasks
        if not (args or kwargs):
            return self._copy()
        # They go to the first real step, past leading empty groups and chains (Celery's
        # prepare_steps); those go, as the chain has a value now (one with link callbacks
        # follows that step instead, where it is skipped and its callbacks still run).
        at = next((i for i, step in enumerate(tasks) if not _is_empty(step)), -1)
        if at == -1:
            return self._copy()  # no step to take them
        linked = tuple(step for step in tasks[:at] if step._links)
        flat = (tasks[at].clone(args, kwargs), *linked, *tasks[at + 1 :])
        return self._copy(_cell=_ChainNode(None, flat), _flat=flat)

    def __repr__(self) -> str:
        tasks = self.tasks
        if len(tasks) > 8:
            return " | ".join(repr(t) for t in tasks[:4]) + f" | ... ({len(tasks)} steps)"
        return " | ".join(repr(t) for t in tasks) if tasks else "chain()"

    def _compile_body(
        self,
        c: _Compiler,
        pred: int,
        inherited: Mapping[str, Any],
        inner: Mapping[str, Any],
    ) -> tuple[tuple[int, ...], bool]:
        cur = pred
        out: tuple[tuple[int, ...], bool] | None = None  # the last step's, once there is one
        step_pred = cur
        group_at = -1  # where the last step began, if it was a group: the next is a chord body
        for part in _plain_runs(self.tasks, c):
            if type(part) is not _PlainRun and _is_empty(part):
                # Celery: an empty chain is a no-op, and an empty group is skipped once the
                # chain has a value (a parent, a step before it); one that starts a chain
                # gives it [] (as Celery's group() | body, a chord with an empty header).
                if type(part) is Group and out is None and cur == -1:
                    out = part._compile(c, cur, inner)
                elif part._links:  # skipped, but its callbacks still run off the value
                    if out is not None:
                        cur = step_pred = c.materialize(out, step_pred)
                        out = ((cur,), False)
                    part._compile(c, cur, inner)
                continue
            if out is not None:
                cur = c.materialize(out, step_pred)
            step_pred = cur
            start = len(c.builder.nodes)
            if type(part) is _PlainRun:  # a run of plain calls of one task, one after another
                added = part.add(c, cur, inner, chained=True)
                step_pred = added[-2] if len(added) > 1 else cur
                out = ((added[-1],), False)
            elif group_at >= 0:
                out = c.body(part, (group_at, start), cur, inner)
            else:
                out = part._compile(c, cur, inner)
            group_at = start if type(part) is Group else -1
        if out is None:  # no step, or only skipped ones: the chain passes its input on
            return ((c.nothing(pred),), False)
        # A chain is one value even when it ends in a group: a parent group keeps it nested.
        return ((c.materialize(out, step_pred),), False)


def _is_empty(step: Canvas[Any]) -> bool:
    """A group without members or a chain without steps (skipped in a chain)."""
    kind = type(step)
    return (kind is Group and not step._tasks) or (kind is Chain and not step.tasks)  # type: ignore[attr-defined]


def _flatten_chain(items: tuple[Canvas[Any], ...]) -> tuple[Canvas[Any], ...]:
    if not any(type(item) is Chain for item in items):
        return items
    flat: list[Canvas[Any]] = []
    for item in items:
        if isinstance(item, Chain) and item._is_plain():
            flat.extend(item.tasks)
        else:
            flat.append(item)
    return tuple(flat)


@final
class Group(Canvas[list[Any]]):
    """Members run concurrently; the value is their list of values, in declaration order.

    Nested groups flatten into the list; a one-member group still yields a
    list. Chained into another step, a group becomes a :class:`Chord`. An empty
    ``chain()`` is not a member (a no-op), and an empty group's value is ``[]``.

    ``min_success=k`` or ``success_ratio=r`` (as options) let the group succeed
    when enough members do: a failed member leaves ``None`` in its place and
    its own dependents inside the group are skipped. Below the threshold the
    group fails with :class:`aflow.errors.GroupFailed`. Example::

        await group(add.s(i, i) for i in range(10))   # [0, 2, ..., 18]
    """

    __slots__ = ("_tasks",)

    def __init__(self, tasks: Iterable[Canvas[Any]] = (), **options: Any) -> None:
        noops: list[Canvas[Any]] = []  # (no cost per member for a group of signatures)
        members = tuple(t if type(t) is Signature else _group_member(t, noops) for t in tasks)
        if noops:  # an empty chain is a no-op: not a member (unless callbacks are linked)
            dropped = {id(noop) for noop in noops}
            members = tuple(t for t in members if id(t) not in dropped)
        self._tasks = members
        self._init_canvas(options)

    @property
    def tasks(self) -> tuple[Canvas[Any], ...]:
        """The members, in declaration order."""
        return self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def _value(self) -> tuple[Any, ...]:
        return (self._tasks,)

    def _hash_head(self) -> tuple[Any, ...]:
        return (*super()._hash_head(), len(self._tasks))

    def _hash_next(self) -> Canvas[Any] | None:
        return self._tasks[0] if self._tasks else None

    def _with_partial(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Group:
        return self._copy(_tasks=tuple(t.clone(args, kwargs) for t in self._tasks))

    def __repr__(self) -> str:
        shown = ", ".join(repr(t) for t in self._tasks[:4])
        more = f", ... ({len(self._tasks)} members)" if len(self._tasks) > 4 else ""
        return f"group([{shown}{more}])"

    def _compile_body(
        self,
        c: _Compiler,
        pred: int,
        inherited: Mapping[str, Any],
        inner: Mapping[str, Any],
    ) -> tuple[tuple[int, ...], bool]:
        start = len(c.builder.nodes)
        outputs: list[int] = []
        for part in _plain_runs(self._tasks, c):
            if type(part) is _PlainRun:  # a run of plain calls of one task (a big fan-out)
                outputs.extend(part.add(c, pred, inner, chained=False))
                continue
            outs, is_group = part._compile(c, pred, inner)
            if is_group:
                outputs.extend(outs)  # nested groups flatten, in declaration order
            else:
                outputs.append(outs[0])
        thresholds = {k: v for k, v in self._options.items() if k in FANOUT_OPTIONS}
        if not thresholds:
            return (tuple(outputs), True)
        _check_reachable(self._options.get("name", "group"), thresholds, len(outputs))
        # A group with a success threshold gets its own join, which tolerates the
        # failures of the group's nodes up to the threshold; it is one value even
        # inside an enclosing group.
        end = len(c.builder.nodes)
        join = c.builder.add(
            NodeKind.JOIN,
            None,
            name=self._options.get("name", "group"),
            parents=tuple(outputs) if outputs else ((pred,) if pred != -1 else ()),
            args=(tuple(outputs),),
            options=resolve_options(thresholds, fanout=True),
            tolerates=(start, end),
        )
        return ((join,), False)


def _group_member(member: object, noops: list[Canvas[Any]]) -> Canvas[Any]:
    """``member`` as a canvas, noted in ``noops`` if it is a no-op (see :func:`_is_noop`)."""
    canvas = _as_canvas(member, "group")
    if type(canvas) is Chain and _is_noop(canvas):
        noops.append(canvas)
    return canvas


def _is_noop(canvas: Canvas[Any]) -> bool:
    """An empty chain with no links, or a chain of nothing but such (``chain(chain().set(
    name="x"))``, which does not flatten: its step has options): it does nothing."""
    stack = [canvas]  # (no recursion: chains nest deeper than the recursion limit)
    while stack:
        step = stack.pop()
        if type(step) is not Chain or step._links:
            return False
        stack.extend(step.tasks)
    return True


@final
class _PlainRun:
    """Consecutive plain calls of one task in a group or a chain, added in one go."""

    __slots__ = ("calls", "immutable", "task")

    def __init__(self, task: FunctionTask[..., Any], immutable: bool) -> None:
        self.task = task
        self.immutable = immutable
        self.calls: list[tuple[tuple[Any, ...], Mapping[str, Any]]] = []

    def add(self, c: _Compiler, pred: int, inner: Mapping[str, Any], *, chained: bool) -> range:
        task = self.task
        options = (
            resolve_options(layer_options(task.options, inner)) if inner else task.node_options
        )
        return c.builder.add_calls(
            task, self.calls, options, pred, immutable=self.immutable, chained=chained
        )


def _plain_runs(items: Iterable[Canvas[Any]], c: _Compiler) -> Iterator[Canvas[Any] | _PlainRun]:
    """``items`` with each run of plain calls (no options, callbacks or mode, compiled
    without named inputs) of one task gathered into a :class:`_PlainRun`."""
    run: _PlainRun | None = None
    plain = c.resolve is None
    for item in items:
        if (
            plain
            and type(item) is Signature
            and not item._options
            and not item._links
            and not item._errbacks
            and item._mode == "call"
        ):
            if run is None or run.task is not item._task or run.immutable != item._immutable:
                if run is not None:
                    yield run
                run = _PlainRun(item._task, item._immutable)
            run.calls.append((item._args, item._kwargs))
            continue
        if run is not None:
            yield run
            run = None
        yield item
    if run is not None:
        yield run


def _check_reachable(owner: str, thresholds: Mapping[str, Any], members: int) -> None:
    """A ``min_success`` larger than the fan-out could never be met: say so before running."""
    needed = thresholds.get("min_success")
    if needed is not None and needed > members:
        raise SignatureError(
            owner,
            f"min_success={needed} can never be met by {members} member(s)",
            "min_success",
        )


@final
class Chord(Canvas[R]):
    """A header group, then a body called with the header's list of results.

    The header is a group, or one signature, chain or chord (a one-member header).
    An empty header calls the body with ``[]``. Example::

        await chord((add.s(i, i) for i in range(100)), tsum.s())   # 9900
    """

    __slots__ = ("_body", "_header")

    def __init__(
        self, header: Iterable[Canvas[Any]] | Canvas[Any], body: Step[list[Any], R], **options: Any
    ):
        self._header = _header_group(header)
        self._body = _as_canvas(body, "chord body")
        self._init_canvas(options)

    @property
    def header(self) -> Group:
        """The group that runs first."""
        return self._header

    @property
    def body(self) -> Canvas[R]:
        """The step that receives the header's results."""
        return self._body

    def _value(self) -> tuple[Any, ...]:
        return (self._header, self._body)

    def _hash_next(self) -> Canvas[Any] | None:
        return self._header

    def _with_partial(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Chord[R]:
        return self._copy(_header=self._header.clone(args, kwargs))

    def __repr__(self) -> str:
        return f"chord({self._header!r}, {self._body!r})"

    def _compile_body(
        self,
        c: _Compiler,
        pred: int,
        inherited: Mapping[str, Any],
        inner: Mapping[str, Any],
    ) -> tuple[tuple[int, ...], bool]:
        start = len(c.builder.nodes)
        header = c.materialize(self._header._compile(c, pred, inner), pred)
        body = c.body(self._body, (start, len(c.builder.nodes)), header, inner)
        return ((c.materialize(body, header),), False)


def _header_group(header: object) -> Group:
    """A chord's header as a group: a group as it is, one canvas (a signature, a chain,
    a chord) as a one-member group, else an iterable of members."""
    if isinstance(header, Group):
        return header
    if isinstance(header, Canvas | FunctionTask) or hasattr(header, "__aflow_canvas__"):
        return Group((_as_canvas(header, "chord header"),))
    if isinstance(header, str | bytes | Mapping) or not isinstance(header, Iterable):
        raise SignatureError(
            "chord",
            "the header must be a signature, chain, group or chord, or an iterable of them; "
            f"got {header!r}",
            "header",
        )
    return Group(header)


def _compile_canvas(canvas: Canvas[Any]) -> Graph:
    return canvas._compile_uncached()


# --- the functional API -------------------------------------------------------------------


def _members(tasks: tuple[Any, ...]) -> tuple[Canvas[Any], ...]:
    if len(tasks) == 1 and not isinstance(tasks[0], Canvas | FunctionTask):
        return tuple(tasks[0])  # chain([a, b]) / group(generator)
    return tasks


def chain(*tasks: Canvas[Any] | Iterable[Canvas[Any]], **options: Any) -> Chain[Any]:
    """Run steps one after another, each receiving its parent's result (``a | b | c``)."""
    return Chain(*_members(tasks), **options)


def group(*tasks: Canvas[Any] | Iterable[Canvas[Any]], **options: Any) -> Group:
    """Run members concurrently; the value is the list of their values, in order."""
    return Group(_members(tasks), **options)


@overload
def chord(
    header: Iterable[Canvas[Any]] | Canvas[Any], body: Step[list[Any], R], **options: Any
) -> Chord[R]: ...
@overload
def chord(
    header: Iterable[Canvas[Any]] | Canvas[Any], body: None = None
) -> Callable[[Step[list[Any], R]], Chord[R]]: ...
def chord(
    header: Iterable[Canvas[Any]] | Canvas[Any],
    body: Step[list[Any], Any] | None = None,
    **options: Any,
) -> Chord[Any] | Callable[[Step[list[Any], Any]], Chord[Any]]:
    """A header group and a body called with the header's results.

    ``chord(header, body)`` or Celery's ``chord(header)(body)``. The header is a
    group, an iterable of members, or one signature, chain or chord (a one-member
    header: the body gets a one-item list).
    """
    header_group = _header_group(header)
    if body is None:
        return lambda b: Chord(header_group, b, **options)
    return Chord(header_group, body, **options)


def signature(
    task: FunctionTask[..., R] | Signature[R],
    args: Iterable[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    immutable: bool = False,
    **options: Any,
) -> Signature[R]:
    """Build a signature from a task, an args tuple, a kwargs dict and options.

    The loosely typed form, for partial signatures under a type checker::

        aflow.signature(add, (4,))           # add.s(4), its first argument still to come
    """
    if isinstance(task, Signature):
        sig = task.clone(args, kwargs, **options)
        return sig.set(immutable=True) if immutable else sig
    return Signature(task, tuple(args), kwargs, immutable=immutable, options=options)
