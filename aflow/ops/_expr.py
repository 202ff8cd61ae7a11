"""dflow-style ``when`` expressions, evaluated without ``eval``.

``f"{s1.outputs.parameters['y']} > 5"`` formats to
``"{{steps.s1.outputs.parameters.y}} > 5"``. Each reference becomes a variable
bound to the step's actual (typed) output, so ``"a b" == "a b"`` style quoting
problems of text substitution cannot happen. The rest is parsed with
:mod:`ast` and walked over a small whitelist: literals, lists and tuples,
``and`` / ``or`` / ``not`` (also ``&&``, ``||``), comparisons (including
``in``), ``+ - * / // %``, unary ``-``, and ``true`` / ``false`` / ``null``.
Anything else (calls, attributes, subscripts, lambdas...) is refused when the
step is built.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any, final

from .._exceptions import SignatureError

__all__ = ["TEMPLATE_INPUT", "Expression"]

#: The name a reference is bound to (no expression writes it by accident).
_BOUND = "__aflow_ref_"
_MAX_LENGTH = 2000
_MAX_DEPTH = 50
# a reference, alone or quoted as Argo writes strings ('{{...}}' == 'yes'): either way it
# is bound to the value itself
_REF = re.compile(
    r"""(['"]?)\{\{\s*(?:steps\.([A-Za-z0-9][A-Za-z0-9_-]*)\.outputs|inputs)\.parameters\."""
    r"""([^\s{}'"]+)\s*\}\}\1"""
)
#: The step name of a reference to the enclosing template's input
#: (``{{inputs.parameters.x}}``): no step is named so.
TEMPLATE_INPUT = ""
_CONSTANTS = {
    "true": True,
    "false": False,
    "True": True,
    "False": False,
    "null": None,
    "None": None,
}

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}


@final
class Expression:
    """A parsed ``when`` expression; :attr:`refs` lists ``(step, parameter)`` it reads
    (``step`` is :data:`TEMPLATE_INPUT` for an input of the enclosing template)."""

    __slots__ = ("_tree", "refs", "text")

    def __init__(self, text: str, step: str) -> None:
        self.text = text
        refs: list[tuple[str, str]] = []

        def bind(match: re.Match[str]) -> str:
            ref = (match.group(2) or TEMPLATE_INPUT, match.group(3))
            if ref not in refs:
                refs.append(ref)
            return f" {_BOUND}{refs.index(ref)} "

        if _BOUND in text:
            raise SignatureError(step, f"{_BOUND!r} is reserved in when expressions", "when")
        source = _REF.sub(bind, text)
        if "{{" in source:
            raise SignatureError(step, f"cannot read the reference in {text!r}", "when")
        source = _logical_words(source)
        if len(source) > _MAX_LENGTH:
            raise SignatureError(
                step, f"a when expression is at most {_MAX_LENGTH} characters", "when"
            )
        try:
            tree = ast.parse(source.strip(), mode="eval")
        except RecursionError:
            raise SignatureError(step, f"is nested too deeply: {text[:60]!r}...", "when") from None
        except SyntaxError as exc:
            raise SignatureError(
                step, f"is not a valid expression: {text!r} ({exc.msg})", "when"
            ) from None
        bound = {f"{_BOUND}{i}" for i in range(len(refs))}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and _BOUND in str(node.value):
                raise SignatureError(
                    step,
                    f"a reference inside a longer string is not supported: {text!r}; "
                    "compare the whole value (quoted or not), or give a callable",
                    "when",
                )
        if _depth(tree) > _MAX_DEPTH:
            raise SignatureError(step, f"is nested too deeply: {text[:60]!r}...", "when")
        for node in ast.walk(tree):
            if not isinstance(
                node,
                ast.Expression
                | ast.BoolOp
                | ast.And
                | ast.Or
                | ast.UnaryOp
                | ast.Not
                | ast.USub
                | ast.UAdd
                | ast.BinOp
                | ast.Compare
                | ast.Constant
                | ast.Name
                | ast.Load
                | ast.List
                | ast.Tuple
                | ast.cmpop
                | ast.operator,
            ):
                raise SignatureError(
                    step,
                    f"{type(node).__name__} is not allowed in a when expression: {text!r}",
                    "when",
                )
            if isinstance(node, ast.operator) and type(node) not in _BINARY:
                raise SignatureError(
                    step, f"operator {type(node).__name__} is not allowed: {text!r}", "when"
                )
            if isinstance(node, ast.cmpop) and type(node) not in _COMPARE:
                raise SignatureError(
                    step, f"comparison {type(node).__name__} is not allowed: {text!r}", "when"
                )
            if isinstance(node, ast.Name) and not (node.id in _CONSTANTS or node.id in bound):
                raise SignatureError(
                    step, f"unknown name {node.id!r} in {text!r} (quote strings)", "when"
                )
        self._tree = tree
        self.refs = tuple(refs)

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"

    def evaluate(self, values: Mapping[tuple[str, str], Any]) -> Any:
        """The expression's value with each reference bound to ``values[(step, parameter)]``."""
        bound = {f"{_BOUND}{i}": values[ref] for i, ref in enumerate(self.refs)}
        return _eval(self._tree.body, bound)


def _logical_words(source: str) -> str:
    """``&&`` and ``||`` (Argo's) as ``and`` / ``or``, outside string literals only."""
    out: list[str] = []
    quote = ""
    i = 0
    while i < len(source):
        char = source[i]
        if quote:
            if char == "\\":
                out.append(source[i : i + 2])
                i += 2
                continue
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif source.startswith(("&&", "||"), i):
            out.append(" and " if char == "&" else " or ")
            i += 2
            continue
        out.append(char)
        i += 1
    return "".join(out)


def _depth(node: ast.AST) -> int:
    """How deep the tree goes (iteratively: a deep tree must not exhaust the stack here)."""
    deepest = 0
    stack = [(node, 1)]
    while stack:
        current, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(current))
    return deepest


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _eval(node: ast.AST, names: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return names[node.id] if node.id in names else _CONSTANTS[node.id]
    if isinstance(node, ast.BoolOp):
        if isinstance(node.op, ast.And):
            value: Any = True
            for item in node.values:
                value = _eval(item, names)
                if not value:
                    return value
            return value
        value = False
        for item in node.values:
            value = _eval(item, names)
            if value:
                return value
        return value
    if isinstance(node, ast.UnaryOp):
        operand = _eval(node.operand, names)
        if isinstance(node.op, ast.Not):
            return not operand
        return -operand if isinstance(node.op, ast.USub) else +operand
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left, names), _eval(node.right, names)
        if isinstance(node.op, ast.Mult | ast.Mod) and not (_is_number(left) and _is_number(right)):
            raise TypeError("'*' and '%' in a when expression take numbers only")
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.Compare):
        left = _eval(node.left, names)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = _eval(right_node, names)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.List):
        return [_eval(item, names) for item in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_eval(item, names) for item in node.elts)
    raise TypeError(f"unexpected {type(node).__name__}")  # pragma: no cover - refused at parse
