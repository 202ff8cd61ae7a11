"""Operators: the ``OP`` base class, the ``@op`` decorator, templates and slices."""

from __future__ import annotations

import inspect
import typing
import warnings
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, final, overload

from .._exceptions import SignatureError
from ._sign import MISSING, OPIO, Artifact, OPIOSign, Parameter, check_sign

__all__ = ["OP", "PythonOPTemplate", "Slices", "op", "template_of"]


class OP:
    """A typed operator: declare its signatures, implement :meth:`execute`.

    Example::

        class WriteFile(OP):
            @classmethod
            def get_input_sign(cls):
                return OPIOSign({"msg": str, "number": int})

            @classmethod
            def get_output_sign(cls):
                return OPIOSign({"out_art": Artifact(list[Path])})

            def execute(self, op_in: OPIO) -> OPIO:   # or async def
                (op_in.workdir / "msg.txt").write_text(op_in["msg"])
                return OPIO({"out_art": [Path("msg.txt")]})

    A plain ``def execute`` runs in a worker thread; ``async def`` on the loop.
    The class is instantiated without arguments for every attempt of a step
    (pass an instance to share one). Inputs and outputs are checked against
    the signatures in pydantic's strict mode.
    """

    @classmethod
    def get_input_sign(cls) -> OPIOSign:
        """The inputs: name -> type, ``Parameter(type, default=...)`` or ``Artifact(...)``."""
        return OPIOSign()

    @classmethod
    def get_output_sign(cls) -> OPIOSign:
        """The outputs: name -> type or ``Artifact(...)``."""
        return OPIOSign()

    def execute(self, op_in: OPIO) -> OPIO | Awaitable[OPIO]:
        """Do the work; return every output key of :meth:`get_output_sign`."""
        raise NotImplementedError(f"{type(self).__name__} does not implement execute()")

    @classmethod
    def function(
        cls, fn: Callable[..., Any] | None = None, /, *, outputs: Mapping[str, Any] | None = None
    ) -> Any:
        """dflow's ``@OP.function``: an op made of a function (as :func:`op` makes one),
        as a callable instance. Called inside ``with Workflow(...) as wf:`` it adds a step
        (named after the function: ``duplicate-0``, ``duplicate-1``...) and returns its
        outputs by name, to pass to the next call; called elsewhere it runs the function.
        It is also a template: ``Step("s", PythonOPTemplate(Duplicate), ...)``."""
        from ._call import function_op

        if fn is None:
            return lambda f: function_op(f, outputs)
        return function_op(fn, outputs)

    @staticmethod
    def exec_sign_check(fn: Callable[..., Any]) -> Callable[..., Any]:
        """dflow compatibility: aflow always checks signatures, so this changes nothing."""
        return fn


def _is_async(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004
    )


def _sign_from(annotation: Any, where: str) -> dict[str, Any]:
    if annotation is None or annotation is inspect.Signature.empty or annotation is type(None):
        return {}
    if isinstance(annotation, dict):
        return dict(annotation)
    if typing.is_typeddict(annotation):
        return dict(typing.get_type_hints(annotation, include_extras=True))
    raise SignatureError(
        where,
        "the return annotation of an @op function names its outputs: a dict such as "
        "{'sum': int, 'out': Artifact(Path)} or a TypedDict",
        "return",
    )


def _unwrap(annotation: Any) -> Any:
    """``Annotated[Path, Artifact(Path)]`` -> ``Artifact(Path)``, so mypy users can annotate."""
    if typing.get_origin(annotation) is typing.Annotated:
        for meta in annotation.__metadata__:
            if isinstance(meta, Artifact | Parameter):
                return meta
        return typing.get_args(annotation)[0]
    return annotation


@overload
def op(fn: Callable[..., Any], /) -> type[OP]: ...
@overload
def op(*, outputs: Mapping[str, Any] | None = None) -> Callable[[Callable[..., Any]], type[OP]]: ...
def op(
    fn: Callable[..., Any] | None = None, /, *, outputs: Mapping[str, Any] | None = None
) -> type[OP] | Callable[[Callable[..., Any]], type[OP]]:
    """Make an operator of a function; its annotations are its signatures.

    Parameters are inputs (a default makes one optional; a parameter named
    ``workdir`` receives the step's working directory instead). The outputs
    are named by ``outputs=``, or by the return annotation (a dict, as in
    dflow, or a ``TypedDict``), and the function returns a dict of them::

        @op(outputs={"num": int, "bar": Artifact(Path)})
        async def duplicate(num: int, foo: Annotated[Path, Artifact(Path)]):
            ...

        @op  # dflow's form (type checkers and linters dislike it)
        def duplicate(num: int, foo: Artifact(Path)) -> {"num": int, "bar": Artifact(Path)}:
            ...
    """
    if fn is None:
        return lambda f: _make_op(f, outputs)
    return _make_op(fn, outputs)


def _make_op(fn: Callable[..., Any], declared: Mapping[str, Any] | None) -> type[OP]:
    name = getattr(fn, "__qualname__", repr(fn))
    try:
        annotations = inspect.get_annotations(fn, eval_str=True)
    except Exception as exc:
        raise SignatureError(name, f"cannot read the annotations of the function: {exc}") from exc
    params = inspect.signature(fn).parameters
    inputs: dict[str, Any] = {}
    takes_workdir = False
    for pname, param in params.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise SignatureError(name, "an @op function takes named parameters only", pname)
        if pname == "workdir":
            takes_workdir = True
            continue
        spec = _unwrap(annotations.get(pname, Any))
        if param.default is not param.empty:
            if isinstance(spec, Parameter) and spec.default is not MISSING:
                raise SignatureError(
                    name, "the default is given twice (in Parameter() and after '=')", pname
                )
            if isinstance(spec, Artifact):
                spec = Artifact(spec.type, optional=True)
            else:
                spec = Parameter(
                    spec.type if isinstance(spec, Parameter) else spec, default=param.default
                )
        inputs[pname] = spec
    if declared is not None:
        outputs = {k: _unwrap(v) for k, v in declared.items()}
    else:
        outputs = {k: _unwrap(v) for k, v in _sign_from(annotations.get("return"), name).items()}
    input_sign = OPIOSign(inputs)
    output_sign = OPIOSign(outputs)
    run_async = _is_async(fn)

    if run_async:

        async def execute_async(self: OP, op_in: OPIO) -> OPIO:
            kwargs = dict(op_in)
            if takes_workdir:
                kwargs["workdir"] = op_in.workdir
            return OPIO(await fn(**kwargs) or {})

        execute: Callable[..., Any] = execute_async
    else:

        def execute_sync(self: OP, op_in: OPIO) -> OPIO:
            kwargs = dict(op_in)
            if takes_workdir:
                kwargs["workdir"] = op_in.workdir
            return OPIO(fn(**kwargs) or {})

        execute = execute_sync

    namespace: dict[str, Any] = {
        "__doc__": fn.__doc__,
        "__module__": getattr(fn, "__module__", __name__),
        "__qualname__": name,
        "execute": execute,
        "get_input_sign": classmethod(lambda cls: input_sign),
        "get_output_sign": classmethod(lambda cls: output_sign),
        "function": staticmethod(fn),
    }
    return type(getattr(fn, "__name__", "op"), (OP,), namespace)


#: dflow's options with no meaning in-process, and why: each given (other than dflow's
#: default) warns once per process with :class:`aflow.errors.IgnoredOption`.
_NO_POD = "the op runs in this process: there is no container, pod or Kubernetes scheduler"
_NO_SCRIPT = "the op is called in this process: no script is written or run"
_STORE = "artifacts live in the run's content-addressed store, as they are"
_SLICING = "slice with Slices(input_parameter=..., input_artifact=..., output_...=...)"
_TEMPLATE_OPTIONS: dict[str, tuple[Any, str]] = {
    "command": (None, _NO_SCRIPT),
    "annotations": (None, _NO_POD),
    "labels": (None, _NO_POD),
    "node_selector": (None, _NO_POD),
    "tolerations": (None, _NO_POD),
    "affinity": (None, _NO_POD),
    "output_artifact_save": (None, _STORE),
    "output_artifact_archive": (None, _STORE),
    "input_artifact_prefix": (None, _STORE),
    "input_artifact_slices": (None, _SLICING),
    "input_parameter_slices": (None, _SLICING),
    "output_artifact_slices": (None, _SLICING),
    "output_parameter_slices": (None, _SLICING),
    "output_artifact_global_name": (None, "a workflow has no global outputs: wire the step's"),
    "output_parameter_global_name": (None, "a workflow has no global outputs: wire the step's"),
    "python_packages": (None, "the op runs in this process, with what it imports"),
    "memoize_key": (None, "no memoization: reuse steps with submit(reuse_step=...)"),
    "volumes": (None, _NO_POD),
    "mounts": (None, _NO_POD),
    "image_pull_policy": (None, _NO_POD),
    "requests": (None, _NO_POD),
    "limits": (None, _NO_POD),
    "upload_dflow": (True, "the op runs in this process, with what it imports"),
    "envs": (None, "the op shares this process's environment (set no variables per op)"),
    "init_containers": (None, _NO_POD),
    "sidecars": (None, _NO_POD),
    "tmp_root": ("/tmp", "each attempt works in its own op_in.workdir"),
    "pre_script": ("", _NO_SCRIPT),
    "post_script": ("", _NO_SCRIPT),
    "success_tag": (False, "a failed slice is reported by the step's record"),
    "create_slice_dir": (False, "each slice already works in a directory of its own"),
    "skip_slice_input": (False, _SLICING),
}
_SLICES_OPTIONS: dict[str, tuple[Any, str]] = {
    "shuffle": (False, "groups are made in input order"),
    "random_seed": (0, "groups are made in input order"),
    "pool_timeout": (None, "give timeout= to the step or the template: it applies per slice"),
    "register_first_only": (False, "there is no lineage registry"),
    "create_dir": (False, "each slice already works in a directory of its own"),
    "raise_for_group": (False, "a failed slice fails the step (unless a success threshold)"),
}
_warned: set[str] = set()


def ignored(owner: str, name: str, why: str, depth: int = 1) -> None:
    """Warn (once per option name per process) that dflow option ``name`` is ignored;
    the warning points ``depth`` frames above the caller (the user's code)."""
    if name in _warned:
        return
    _warned.add(name)
    from .._exceptions import IgnoredOption

    warnings.warn(IgnoredOption(f"{owner}({name}=...) is ignored: {why}"), stacklevel=2 + depth)


def _is_default(value: Any, default: Any) -> bool:
    if value is default:
        return True
    try:
        return type(value) is type(default) and bool(value == default)
    except Exception:  # an array, say: not the default
        return False


def _dflow_options(
    owner: str, known: Mapping[str, tuple[Any, str]], given: Mapping[str, Any]
) -> None:
    """Warn of each dflow option given (other than its default); a name dflow does not
    have is refused, as Python refuses an unknown keyword."""
    for name, value in given.items():
        if name not in known:
            raise TypeError(f"{owner}() got an unexpected keyword argument {name!r}")
        default, why = known[name]
        if not _is_default(value, default):
            ignored(owner, name, why, depth=2)


@final
class Slices:
    """Fan a step out over list inputs, one call per item (dflow's ``Slices``).

    ``input_parameter`` / ``input_artifact`` name the inputs given as lists
    (all the same length); item *i* gets element *i* of each. The outputs
    named in ``output_parameter`` / ``output_artifact`` are stacked into
    lists in input order. As in dflow, items go in groups of ``group_size``
    (default 1), every group runs at once (within the run's ``max_concurrency``),
    and the items of one group run ``pool_size`` at a time (default 1: one after
    another; ``-1``: all at once).
    """

    __slots__ = (
        "group_size",
        "input_artifact",
        "input_parameter",
        "output_artifact",
        "output_parameter",
        "pool_size",
        "slices",
    )

    def __init__(
        self,
        slices: str | None = None,
        *,
        input_parameter: Sequence[str] = (),
        input_artifact: Sequence[str] = (),
        output_parameter: Sequence[str] = (),
        output_artifact: Sequence[str] = (),
        group_size: int | None = None,
        pool_size: int | None = None,
        sub_path: bool = False,
        **dflow_options: Any,
    ) -> None:
        if slices not in (None, "{{item}}"):
            raise ValueError(
                f"Slices takes '{{{{item}}}}' or nothing as its pattern, got {slices!r}"
            )
        if sub_path:
            raise ValueError(
                "Slices(sub_path=True) is not supported: slice over a list artifact "
                "(input_artifact=[...]) of the files instead"
            )
        for label, size in (("group_size", group_size), ("pool_size", pool_size)):
            if size is not None and (
                not isinstance(size, int)
                or isinstance(size, bool)
                or (size < 1 and not (label == "pool_size" and size == -1))
            ):
                more = " (or -1: all of a group at once)" if label == "pool_size" else ""
                raise ValueError(f"Slices {label} must be an int >= 1{more}, got {size!r}")
        _dflow_options("Slices", _SLICES_OPTIONS, dflow_options)
        self.slices = slices
        self.input_parameter = tuple(input_parameter)
        self.input_artifact = tuple(input_artifact)
        self.output_parameter = tuple(output_parameter)
        self.output_artifact = tuple(output_artifact)
        self.group_size = group_size or 1
        self.pool_size = pool_size
        if not self.input_parameter and not self.input_artifact:
            raise ValueError("Slices needs input_parameter or input_artifact to slice over")

    @property
    def per_group(self) -> int:
        """How many items of one group run at once."""
        if self.pool_size is None:
            return 1
        return self.group_size if self.pool_size == -1 else self.pool_size

    def __repr__(self) -> str:
        return (
            f"Slices(input_parameter={list(self.input_parameter)}, "
            f"input_artifact={list(self.input_artifact)}, "
            f"output_parameter={list(self.output_parameter)}, "
            f"output_artifact={list(self.output_artifact)}, group_size={self.group_size}, "
            f"pool_size={self.pool_size})"
        )


@final
class PythonOPTemplate:
    """An operator as a step's template, with dflow's options.

    ``slices`` fans it out. ``timeout`` (seconds, per call of the op) and the retry
    policies apply as in dflow, unless the step sets its own: ``retry_on_transient_error=N``
    retries up to N times an op raising :class:`aflow.errors.TransientError` (with
    ``timeout_as_transient_error=True``, a timed-out call too); ``retry_on_failure=N``
    (or ``retry_on_failure_and_error=N``) retries any failure. A
    :class:`aflow.errors.FatalError` is never retried. ``output_parameter_default``
    gives output parameters the op may leave out. dflow's other options (``image``,
    ``requests``, ``envs``...) mean nothing in this process: each warns once
    (:class:`aflow.errors.IgnoredOption`); a name dflow does not have is a ``TypeError``.
    """

    __slots__ = (
        "image",
        "op",
        "output_parameter_default",
        "retries",
        "retry_on",
        "slices",
        "timeout",
    )

    def __init__(
        self,
        op: type[OP] | OP,
        slices: Slices | None = None,
        *,
        image: str | None = None,
        timeout: float | None = None,
        retry_on_transient_error: int | None = None,
        retry_on_failure: int | None = None,
        retry_on_error: int | None = None,
        retry_on_failure_and_error: int | None = None,
        timeout_as_transient_error: bool = False,
        output_parameter_default: Mapping[str, Any] | None = None,
        **dflow_options: Any,
    ) -> None:
        if not (isinstance(op, OP) or (isinstance(op, type) and issubclass(op, OP))):
            raise TypeError(f"PythonOPTemplate takes an OP class or instance, got {op!r}")
        if slices is not None and not isinstance(slices, Slices):
            raise TypeError(f"slices must be an aflow.ops.Slices, got {slices!r}")
        if dflow_options:
            _dflow_options("PythonOPTemplate", _TEMPLATE_OPTIONS, dflow_options)
        if image is not None:
            ignored("PythonOPTemplate", "image", _NO_POD)
        self.op = op
        self.slices = slices
        self.image = image
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
        ):
            raise ValueError(f"PythonOPTemplate timeout must be seconds > 0, got {timeout!r}")
        self.timeout: float | None = timeout
        #: the retries and the errors retried (None: any), from dflow's policies
        self.retries: int | None = None
        self.retry_on: tuple[type[BaseException], ...] | None = None
        if (
            retry_on_transient_error is not None
            or retry_on_failure is not None
            or retry_on_error is not None
            or retry_on_failure_and_error is not None
            or timeout_as_transient_error
        ):
            policies = {
                "retry_on_transient_error": retry_on_transient_error,
                "retry_on_failure": retry_on_failure,
                "retry_on_error": retry_on_error,
                "retry_on_failure_and_error": retry_on_failure_and_error,
            }
            self._retry_policy(policies, timeout_as_transient_error)
        #: output parameters' defaults, for those the op leaves out
        self.output_parameter_default: dict[str, Any] = {}
        if output_parameter_default:
            fields = op.get_output_sign().fields
            for key in output_parameter_default:
                field = fields.get(key)
                if field is None or field.artifact is not None:
                    params = sorted(k for k, f in fields.items() if f.artifact is None)
                    raise TypeError(
                        f"PythonOPTemplate output_parameter_default: {op_name(op)} has no "
                        f"output parameter {key!r}; it has {params}"
                    )
            self.output_parameter_default = dict(output_parameter_default)

    def _retry_policy(self, policies: Mapping[str, int | None], timeout_counts: bool) -> None:
        """dflow's retry policies: the first given wins (dflow's order)."""
        chosen = None
        for name, count in policies.items():
            if count is None:
                continue
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ValueError(f"PythonOPTemplate {name} must be an int >= 0, got {count!r}")
            if chosen is not None:
                ignored("PythonOPTemplate", name, f"{chosen} is given too, and comes first", 2)
            elif name == "retry_on_error":
                ignored(
                    "PythonOPTemplate",
                    name,
                    "it retries Argo's errors (of the pod, not the op), which an op run in "
                    "this process cannot have: retry_on_failure retries the op's failures",
                    2,
                )
            else:
                chosen = name
                self.retries = count
        if chosen == "retry_on_transient_error":
            from .._exceptions import TaskTimeout, TransientError

            self.retry_on = (TransientError, TaskTimeout) if timeout_counts else (TransientError,)
        elif timeout_counts:
            ignored(
                "PythonOPTemplate",
                "timeout_as_transient_error",
                "it applies with retry_on_transient_error only",
                2,
            )

    def __repr__(self) -> str:
        return f"PythonOPTemplate({op_name(self.op)})"


def op_name(operator: Any) -> str:
    """An operator's class name, or a template's (``Steps 'iter'``)."""
    if not isinstance(operator, type) and not isinstance(operator, OP):
        return f"{type(operator).__name__} {getattr(operator, 'name', '?')!r}"
    cls = operator if isinstance(operator, type) else type(operator)
    return cls.__qualname__


def template_of(template: Any, step: str) -> PythonOPTemplate:
    """A step's template as a :class:`PythonOPTemplate` (an OP class or instance is wrapped)."""
    if isinstance(template, OP) or (isinstance(template, type) and issubclass(template, OP)):
        template = PythonOPTemplate(template)
    if isinstance(template, PythonOPTemplate):
        # a parameter type that cannot be checked is refused here, naming the step
        check_sign(step, template.op.get_input_sign(), "input")
        check_sign(step, template.op.get_output_sign(), "output")
        return template
    raise SignatureError(
        step,
        f"a step's template is an OP class, an OP or a PythonOPTemplate, got {template!r}",
        "template",
    )
