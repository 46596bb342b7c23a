"""Located problems in a YAML file the lab reads (a task file, a tool library), collected, not thrown.

A :class:`ProblemCollector` walks a parsed document and records every problem with its
file, line and field instead of stopping at the first, so an author fixes a file in one
pass; unknown names answer "did you mean". The task loader and the tool-declaration
parser share it, so a tool declared in a task file and one in the built-in library are
reported the same way.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .expressions import Expression, ExpressionError, compile_expression
from .functions import HELPERS

FieldPath = tuple[Any, ...]

MAX_PROBLEMS = 100
"""Problems reported per file before validation stops (a broken 1 MiB file could have a million)."""
_MAX_HINT_NAMES = 1_000
_MAX_HINT_LENGTH = 200
_MAX_LISTED_NAMES = 20


@dataclass(frozen=True)
class Problem:
    """One located problem in a task file."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}"


class TaskValidationError(ValueError):
    """A task file has one or more problems; ``problems`` lists them all."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__(f"{len(problems)} problem(s) in task file(s):\n" +
                         "\n".join(f"  {p}" for p in problems))


def did_you_mean(name: str, known: Iterable[Any], listed: Iterable[Any] | None = None) -> str:
    """A hint naming the closest known names, or else listing ``listed`` (default: all known).

    Names are compared as text (a task file may use numbers as keys); matching is skipped
    past :data:`_MAX_HINT_NAMES` names or for very long ones (difflib is quadratic in the
    worst case), and the listing is cut short, so a hint stays cheap.
    """
    known = sorted({str(k) for k in known})
    candidates = [k for k in known if len(k) <= _MAX_HINT_LENGTH]
    matchable = len(name) <= _MAX_HINT_LENGTH and len(candidates) <= _MAX_HINT_NAMES
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6) if matchable else []
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    listed = sorted({str(k) for k in (known if listed is None else listed)})
    shown = ", ".join(clip(n) for n in listed[:_MAX_LISTED_NAMES])
    more = f" and {len(listed) - _MAX_LISTED_NAMES} more" if len(listed) > _MAX_LISTED_NAMES else ""
    return "known: " + (shown + more if listed else "(none)")


def clip(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters, for echoing file content in a message."""
    return text if len(text) <= limit else text[:limit] + "..."


def show(value: Any) -> str:
    """A short repr of a value from the file, for messages."""
    return clip(repr(value), 80)


def field_name(path: FieldPath) -> str:
    """``steps[2].tools[0].call`` for the path ``("steps", 2, "tools", 0, "call")``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(file)"


class TooManyProblems(Exception):
    """A file reached :data:`MAX_PROBLEMS`; the rest would only bury the first ones."""


class ProblemCollector:
    """Records located problems while a parsed document is checked; see the module docstring."""

    def __init__(self, file: str, lines: Mapping[FieldPath, int]):
        self.file, self.lines = file, lines
        self.problems: list[Problem] = []

    def problem(self, path: FieldPath, message: str) -> None:
        """Record ``message`` at ``path`` (the line of its nearest located ancestor)."""
        if len(self.problems) >= MAX_PROBLEMS:
            self.problems.append(Problem(self.file, None, "(file)",
                                         f"more than {MAX_PROBLEMS} problems; validation stopped here"))
            raise TooManyProblems
        probe = path
        while probe and probe not in self.lines:
            probe = probe[:-1]
        self.problems.append(Problem(self.file, self.lines.get(probe), field_name(path), message))

    def expect(self, value: Any, kind: type | tuple[type, ...], path: FieldPath, what: str) -> bool:
        """True when ``value`` is a ``kind`` (a bool is not an int); otherwise a problem."""
        if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return True
        self.problem(path, f"expected {what}, got {type(value).__name__}")
        return False

    def expect_name(self, value: Any, path: FieldPath, what: str) -> bool:
        """True for text; anything else (a number, a list) where a name belongs is a problem."""
        if isinstance(value, str):
            return True
        self.problem(path, f"expected {what} (text), got {type(value).__name__}")
        return False

    def unknown_keys(self, mapping: Mapping[Any, Any], allowed: set[str], path: FieldPath) -> None:
        """A problem for every key of ``mapping`` outside ``allowed``."""
        for key in mapping:
            if key not in allowed:
                self.problem(path + (key,), f"unknown field {show(key)}; {did_you_mean(str(key), allowed)}")

    def expression(self, source: Any, path: FieldPath, allowed: set[str] | None) -> Expression | None:
        """Compile ``source``; every free name must be a helper or in ``allowed`` (None: any name)."""
        if isinstance(source, (int, float, bool)) and not isinstance(source, str):
            source = repr(source)
        if not isinstance(source, str):
            self.problem(path, f"expected an expression string, got {type(source).__name__}")
            return None
        try:
            expression = compile_expression(source)
        except ExpressionError as exc:
            self.problem(path, f"invalid expression {show(source)}: {exc}")
            return None
        if allowed is None:
            return expression
        for name in sorted(expression.free_names - allowed - set(HELPERS)):
            kind = "function" if name in expression.called_names else "name"
            listed = set(HELPERS) if kind == "function" else allowed
            self.problem(path, f"unknown {kind} {name!r} in {show(source)}; "
                               f"{did_you_mean(name, allowed | set(HELPERS), listed)}")
        return expression
