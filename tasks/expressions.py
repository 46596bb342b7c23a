"""A small, safe expression language for task files.

Oracles, tool arguments, gates and end-state checks are written in task YAML as Python
expressions. They are parsed once, checked against a whitelist of syntax, and evaluated
with no builtins beyond the lab's own helper functions, so a task file can never run
arbitrary code. The free names of an expression are known before it runs, which lets the
loader report an unknown field or helper with "did you mean" at load time.

Task files are untrusted, so an expression is also bounded: its text, nesting and
comprehension depth at compile time, and its work and memory at run time (a
:class:`~coordlab.tasks.budget.Budget` charged by guards the compiler wraps around
operators, calls, comparisons and comprehensions). Every failure is an
:class:`ExpressionError` naming the expression.
"""

from __future__ import annotations

import ast
import functools
import operator
import warnings
from dataclasses import dataclass, field
from types import GeneratorType
from typing import Any, Callable, Mapping

from .budget import Budget, BudgetExceeded, check_product_size
from .functions import FormatError, template_fields

MAX_EXPRESSION_CHARS = 10_000
"""Longest expression text; room for a long ``fmt`` template, not for a program."""
MAX_EXPRESSION_DEPTH = 40
"""Deepest syntax tree; the built-in suite needs about 10."""
MAX_COMPREHENSION_DEPTH = 3
"""Most ``for`` clauses in one chain of nested comprehensions; the suite uses 1."""

_ALLOWED_NODES: tuple[type[ast.AST], ...] = (
    ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.BinOp, ast.Add, ast.Sub, ast.Mult,
    ast.Div, ast.FloorDiv, ast.Mod, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd, ast.Compare,
    ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn, ast.Is,
    ast.IsNot, ast.Call, ast.keyword, ast.Name, ast.Load, ast.Store, ast.Constant,
    ast.Subscript, ast.Slice, ast.List, ast.Tuple, ast.Dict, ast.IfExp, ast.ListComp,
    ast.GeneratorExp, ast.comprehension,
)
_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "Add": operator.add, "Sub": operator.sub, "Mult": operator.mul, "Div": operator.truediv,
    "FloorDiv": operator.floordiv, "Mod": operator.mod,
}
# Guard names start with "__", which task expressions may not use, so no task can call or shadow them.
_SPEND, _BINOP, _ITERATE = "__coordlab_spend", "__coordlab_binop", "__coordlab_iterate"


class ExpressionError(ValueError):
    """An expression in a task file is not valid in the task language, or cannot be evaluated."""


class ExpressionEvaluationError(ExpressionError):
    """Evaluating a valid expression failed; ``source`` names it and ``__cause__`` holds why."""

    def __init__(self, source: str, reason: str):
        self.source = source
        super().__init__(f"cannot evaluate {_quote(source)}: {reason}")


def _quote(source: str, limit: int = 120) -> str:
    return repr(source if len(source) <= limit else source[:limit] + "...")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, NameError) and getattr(exc, "name", None):
        return f"unknown name {exc.name!r}"
    if isinstance(exc, (BudgetExceeded, MemoryError)):
        return str(exc) or "out of memory"
    if isinstance(exc, RecursionError):
        return "values are nested too deeply"
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class Expression:
    """A parsed, whitelisted expression and the names it reads."""

    source: str
    free_names: frozenset[str]
    called_names: frozenset[str]
    _code: Any = field(repr=False, compare=False)

    def evaluate(self, namespace: Mapping[str, Any]) -> Any:
        """Evaluate against ``namespace`` (fields, tool results and helper functions).

        Any failure raises :class:`ExpressionEvaluationError`; a generator result is
        collected into a list while the budget still applies.
        """
        budget = Budget()
        scope: dict[str, Any] = dict(namespace)
        scope.update({_SPEND: budget.spend_on, _ITERATE: budget.iterate, _BINOP: functools.partial(_binop, budget)})
        scope["__builtins__"] = {}
        try:
            with budget.active():
                result = eval(self._code, scope)  # noqa: S307 - whitelisted and guarded in compile_expression
                return list(result) if isinstance(result, GeneratorType) else result
        except Exception as exc:  # noqa: BLE001 - every failure becomes one error type naming the expression
            raise ExpressionEvaluationError(self.source, _reason(exc)) from exc


def _binop(budget: Budget, name: str, left: Any, right: Any) -> Any:
    """An arithmetic operator whose cost is charged, and refused before a huge result exists."""
    budget.charge(budget.size(left) + budget.size(right))
    if name == "Mult":
        budget.charge(budget.repeated_size(left, right))
        check_product_size(left, right)
    if name == "Mod" and isinstance(left, (str, bytes)):
        raise TypeError("'%' formatting of text is not part of the task language; use fmt()")
    return _OPERATORS[name](left, right)


class _Guard(ast.NodeTransformer):
    """Rewrites a whitelisted tree so every costly operation goes through the budget."""

    @staticmethod
    def spend(node: ast.expr) -> ast.expr:
        if isinstance(node, ast.Constant):
            return node
        return ast.Call(ast.Name(_SPEND, ast.Load()), [node], [])

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        name = ast.Constant(type(node.op).__name__)
        return ast.Call(ast.Name(_BINOP, ast.Load()), [name, node.left, node.right], [])

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        node.left = self.spend(node.left)
        node.comparators = [self.spend(c) for c in node.comparators]
        return node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        node.args = [self.spend(a) for a in node.args]
        for keyword in node.keywords:
            keyword.value = self.spend(keyword.value)
        return self.spend(node)

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.slice, ast.Slice):
            return self.spend(node)
        node.slice = self.spend(node.slice)
        return node

    def visit_Dict(self, node: ast.Dict) -> ast.AST:
        self.generic_visit(node)
        node.keys = [None if k is None else self.spend(k) for k in node.keys]
        node.values = [self.spend(v) if k is None else v for k, v in zip(node.keys, node.values)]
        return node

    def visit_comprehension(self, node: ast.comprehension) -> ast.AST:
        self.generic_visit(node)
        node.iter = ast.Call(ast.Name(_ITERATE, ast.Load()), [node.iter], [])
        return node

    def visit_ListComp(self, node: ast.ListComp) -> ast.AST:
        self.generic_visit(node)
        node.elt = self.spend(node.elt)
        return node

    visit_GeneratorExp = visit_ListComp


def _depths(tree: ast.AST) -> tuple[int, int]:
    """The deepest nesting of the tree and of ``for`` clauses, walked without recursion."""
    deepest = deepest_loops = 0
    stack: list[tuple[ast.AST, int, int]] = [(tree, 1, 0)]
    while stack:
        node, depth, loops = stack.pop()
        loops += len(node.generators) if isinstance(node, (ast.ListComp, ast.GeneratorExp)) else 0
        deepest, deepest_loops = max(deepest, depth), max(deepest_loops, loops)
        stack.extend((child, depth + 1, loops) for child in ast.iter_child_nodes(node))
    return deepest, deepest_loops


def _parse(source: str) -> ast.Expression:
    """The syntax tree of ``source``, refused when its text, nesting or comprehensions exceed the limits."""
    if len(source) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(f"the expression is {len(source):,} characters long; "
                              f"the limit is {MAX_EXPRESSION_CHARS:,}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", SyntaxWarning)  # "invalid decimal literal" and kin: a located problem
            tree = ast.parse(source, mode="eval")
    except (SyntaxError, SyntaxWarning) as exc:
        column = getattr(exc, "offset", None)
        raise ExpressionError(f"syntax error: {getattr(exc, 'msg', exc)} (column {column})") from None
    except ValueError as exc:
        raise ExpressionError(f"cannot parse: {exc}") from None
    except (RecursionError, MemoryError):
        raise ExpressionError("the expression is nested too deeply") from None
    depth, loops = _depths(tree)
    if depth > MAX_EXPRESSION_DEPTH:
        raise ExpressionError(f"the expression is nested {depth} levels deep; the limit is {MAX_EXPRESSION_DEPTH}")
    if loops > MAX_COMPREHENSION_DEPTH:
        raise ExpressionError(f"comprehensions nest {loops} 'for' clauses; the limit is {MAX_COMPREHENSION_DEPTH}")
    return tree


def _check_constant_template(call: ast.Call) -> None:
    """Refuse a ``fmt`` call whose written template ``fmt`` would refuse, or whose fields it is not given."""
    if not call.args or not isinstance(call.args[0], ast.Constant) or not isinstance(call.args[0].value, str):
        return
    try:
        fields = template_fields(call.args[0].value)
    except FormatError as exc:
        raise ExpressionError(str(exc)) from None
    if any(keyword.arg is None for keyword in call.keywords):
        return
    missing = sorted(fields - {keyword.arg for keyword in call.keywords})
    if missing:
        raise ExpressionError(f"fmt: the template fills {', '.join(missing)} but no such value is passed "
                              f"(add {missing[0]}=...)")


def compile_expression(source: str) -> Expression:
    """Parse ``source`` and reject anything outside the task language."""
    if not isinstance(source, str) or not source.strip():
        raise ExpressionError("expected a non-empty expression string")
    tree = _parse(source.strip())
    bound: set[str] = set()
    loaded: set[str] = set()
    called: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            raise ExpressionError(f"{type(node).__name__} is not allowed in task expressions")
        if isinstance(node, ast.Name):
            if node.id.startswith("__"):
                raise ExpressionError(f"name {node.id!r} is not allowed")
            (bound if isinstance(node.ctx, ast.Store) else loaded).add(node.id)
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name):
                raise ExpressionError("only helper functions may be called, not methods")
            called.add(node.func.id)
            if node.func.id == "fmt":
                _check_constant_template(node)
    guarded = ast.fix_missing_locations(_Guard().visit(tree))
    try:
        with warnings.catch_warnings():
            # Python's own hints ("'int' object is not subscriptable") become located problems, not stray output.
            warnings.simplefilter("error", SyntaxWarning)
            code = compile(guarded, "<task-expression>", "eval")
    except (SyntaxError, SyntaxWarning) as exc:
        raise ExpressionError(f"syntax error: {getattr(exc, 'msg', exc)}") from None
    return Expression(source.strip(), frozenset(loaded - bound), frozenset(called), code)
