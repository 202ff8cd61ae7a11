"""Operators: the ``OP`` base class, the ``@op`` decorator, templates and slices."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, final, overload

from .._exceptions import SignatureError
from ._sign import MISSING, OPIO, Artifact, OPIOSign, Parameter

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


@final
class Slices:
    """Fan a step out over list inputs, one call per item (dflow's ``Slices``).

    ``input_parameter`` / ``input_artifact`` name the inputs given as lists
    (all the same length); item *i* gets element *i* of each. The outputs
    named in ``output_parameter`` / ``output_artifact`` are stacked into
    lists in input order. ``group_size`` items run one after another in one
    call group; at most ``pool_size`` groups run at once.
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
    ) -> None:
        if slices not in (None, "{{item}}"):
            raise ValueError(
                f"Slices takes '{{{{item}}}}' or nothing as its pattern, got {slices!r}"
            )
        for label, size in (("group_size", group_size), ("pool_size", pool_size)):
            if size is not None and (
                not isinstance(size, int) or isinstance(size, bool) or size < 1
            ):
                raise ValueError(f"Slices {label} must be an int >= 1, got {size!r}")
        self.slices = slices
        self.input_parameter = tuple(input_parameter)
        self.input_artifact = tuple(input_artifact)
        self.output_parameter = tuple(output_parameter)
        self.output_artifact = tuple(output_artifact)
        self.group_size = group_size or 1
        self.pool_size = pool_size
        if not self.input_parameter and not self.input_artifact:
            raise ValueError("Slices needs input_parameter or input_artifact to slice over")

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
    """An operator as a step's template, with dflow's slices (``image`` is accepted and
    ignored: aflow runs the op in this process)."""

    __slots__ = ("image", "op", "slices")

    def __init__(
        self,
        op: type[OP] | OP,
        slices: Slices | None = None,
        *,
        image: str | None = None,
        **_ignored: Any,
    ) -> None:
        if not (isinstance(op, OP) or (isinstance(op, type) and issubclass(op, OP))):
            raise TypeError(f"PythonOPTemplate takes an OP class or instance, got {op!r}")
        if slices is not None and not isinstance(slices, Slices):
            raise TypeError(f"slices must be an aflow.ops.Slices, got {slices!r}")
        self.op = op
        self.slices = slices
        self.image = image

    def __repr__(self) -> str:
        return f"PythonOPTemplate({op_name(self.op)})"


def op_name(operator: type[OP] | OP) -> str:
    cls = operator if isinstance(operator, type) else type(operator)
    return cls.__qualname__


def template_of(template: Any, step: str) -> PythonOPTemplate:
    """A step's template as a :class:`PythonOPTemplate` (an OP class or instance is wrapped)."""
    if isinstance(template, PythonOPTemplate):
        return template
    if isinstance(template, OP) or (isinstance(template, type) and issubclass(template, OP)):
        return PythonOPTemplate(template)
    raise SignatureError(
        step,
        f"a step's template is an OP class, an OP or a PythonOPTemplate, got {template!r}",
        "template",
    )
