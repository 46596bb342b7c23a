"""A small, safe expression language for task files.

Oracles, tool arguments, gates and end-state checks are written in task YAML as Python
expressions. They are parsed once, checked against a whitelist of syntax, and evaluated
with no builtins beyond the lab's own helper functions, so a task file can never run
arbitrary code. The free names of an expression are known before it runs, which lets the
loader report an unknown field or helper with "did you mean" at load time.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any, Mapping

_ALLOWED_NODES: tuple[type[ast.AST], ...] = (
    ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.BinOp, ast.Add, ast.Sub, ast.Mult,
    ast.Div, ast.FloorDiv, ast.Mod, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd, ast.Compare,
    ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn, ast.Is,
    ast.IsNot, ast.Call, ast.keyword, ast.Name, ast.Load, ast.Store, ast.Constant,
    ast.Subscript, ast.Slice, ast.List, ast.Tuple, ast.Dict, ast.IfExp, ast.ListComp,
    ast.GeneratorExp, ast.comprehension,
)


class ExpressionError(ValueError):
    """An expression in a task file is not valid in the task language."""


@dataclass(frozen=True)
class Expression:
    """A parsed, whitelisted expression and the names it reads."""

    source: str
    free_names: frozenset[str]
    called_names: frozenset[str]
    _code: Any = field(repr=False, compare=False)

    def evaluate(self, namespace: Mapping[str, Any]) -> Any:
        """Evaluate against ``namespace`` (fields, tool results and helper functions)."""
        scope: dict[str, Any] = {"__builtins__": {}}
        scope.update(namespace)
        return eval(self._code, scope)  # noqa: S307 - the AST was whitelisted in compile_expression


def compile_expression(source: str) -> Expression:
    """Parse ``source`` and reject anything outside the task language."""
    if not isinstance(source, str) or not source.strip():
        raise ExpressionError("expected a non-empty expression string")
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"syntax error: {exc.msg} (column {exc.offset})") from None
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
    code = compile(tree, "<task-expression>", "eval")
    return Expression(source.strip(), frozenset(loaded - bound), frozenset(called), code)
