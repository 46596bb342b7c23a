"""A work budget for evaluating one task expression.

Task expressions come from untrusted files and run inside the simulator and scoring, so
their cost must be bounded by more than the length of their text: ``[0] * 10**11``, a list
of a million references to one large value, or a comprehension comparing a big fixture on
every item are all short. Each evaluation gets a :class:`Budget`; the evaluator charges it
for every value an operation consumes or creates (by its size with shared references
counted each time, as ``str`` or ``==`` would walk it) and for every comprehension item,
and refuses before allocating when a repetition would overrun it. Helpers and tools whose
work is not linear in their arguments charge the active budget themselves (:func:`charge`).
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Any, Iterable, Iterator

MAX_EVALUATION_COST = 1_000_000
"""Work units one evaluation may spend: roughly list items, comprehension steps or 8 characters."""
CHARACTERS_PER_UNIT = 8
"""Text is cheap per character (one ``memcpy``), so eight characters cost one unit."""
INT_BITS_PER_UNIT = 64
"""A machine word of an integer costs one unit (division of big integers is quadratic)."""
MAX_INT_BITS = 16_384
"""The largest integer product an expression may compute (about 4,900 digits)."""

_ACTIVE: ContextVar["Budget | None"] = ContextVar("coordlab_expression_budget", default=None)
_CONTAINERS = (list, tuple, set, frozenset, dict)


class BudgetExceeded(Exception):
    """An expression needs more work or memory than one evaluation may spend."""


def _children(value: Any) -> Iterable[Any]:
    if isinstance(value, dict):
        return [*value.keys(), *value.values()]
    return value if isinstance(value, _CONTAINERS) else ()


def _width(value: Any) -> int:
    """How many references ``value`` holds directly (known without walking it)."""
    if isinstance(value, dict):
        return 2 * len(value)
    return len(value) if isinstance(value, _CONTAINERS) else 0


def _own_size(value: Any) -> int:
    if isinstance(value, (str, bytes, bytearray)):
        return 1 + len(value) // CHARACTERS_PER_UNIT
    if isinstance(value, int) and not isinstance(value, bool):
        return 1 + value.bit_length() // INT_BITS_PER_UNIT
    return 1


class Budget:
    """The work left for one evaluation, and the sizes of the values it has already measured."""

    def __init__(self, limit: int = MAX_EVALUATION_COST):
        self.limit = limit
        self.spent = 0
        self._sizes: dict[int, tuple[Any, int]] = {}
        """Size by ``id``; the value is kept so its id cannot be reused while this budget lives."""

    def charge(self, units: int) -> None:
        """Spend ``units``; refuse once the evaluation has spent more than its limit."""
        self.spent += units
        if self.spent > self.limit:
            raise BudgetExceeded(f"needs more than {self.limit:,} units of work; task expressions must stay small")

    def size(self, value: Any) -> int:
        """Units in ``value`` with shared references counted each time (the work of walking it).

        Sizes are remembered by identity, so a value walked once costs nothing to measure
        again; a walk that already shows more than twice the remaining budget stops early.
        """
        sizes = self._sizes
        if id(value) in sizes:
            return sizes[id(value)][1]
        allowance, walked, unfinished = 2 * (self.limit - self.spent), 0, set()
        stack: list[tuple[Any, bool]] = [(value, False)]
        while stack:
            item, children_done = stack.pop()
            if children_done:
                sizes[id(item)] = (item, _own_size(item) + sum(sizes[id(c)][1] for c in _children(item)))
                unfinished.discard(id(item))
            elif id(item) not in sizes:
                walked += _own_size(item) + _width(item)
                if walked > allowance:
                    for key in unfinished:
                        del sizes[key]
                    self.charge(self.limit + 1)
                # A provisional size first: a value that contains itself is then counted once, not forever.
                sizes[id(item)] = (item, _own_size(item))
                unfinished.add(id(item))
                stack.append((item, True))
                stack.extend((c, False) for c in _children(item) if id(c) not in sizes)
        return sizes[id(value)][1]

    def spend_on(self, value: Any) -> Any:
        """Charge the size of ``value`` and hand it back (wraps operands and results)."""
        self.charge(self.size(value))
        return value

    def iterate(self, iterable: Iterable[Any]) -> Iterator[Any]:
        """Yield the items of a comprehension's iterable, one unit each."""
        for item in iterable:
            self.charge(1)
            yield item

    def repeated_size(self, left: Any, right: Any) -> int:
        """Units ``left * right`` would produce, known before it is computed; 0 for arithmetic."""
        if isinstance(left, int) and not isinstance(right, int):
            left, right = right, left
        if not isinstance(right, int) or not isinstance(left, (str, bytes, bytearray, list, tuple)):
            return 0
        times = max(right, 0)
        if isinstance(left, (str, bytes, bytearray)):
            return 1 + len(left) * times // CHARACTERS_PER_UNIT
        return 1 + (self.size(left) - 1) * times

    @contextlib.contextmanager
    def active(self) -> Iterator["Budget"]:
        """Make this the budget that :func:`charge` and :func:`charge_size` spend from."""
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)


def check_product_size(left: Any, right: Any) -> None:
    """Refuse an integer product too large to compute quickly (no ``**``, but ``x*x`` nests)."""
    if isinstance(left, int) and isinstance(right, int):
        if left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise BudgetExceeded(f"the product would have more than {MAX_INT_BITS:,} bits")


def charge(units: int) -> None:
    """Charge the evaluation in progress, if any (helpers call this for work beyond their inputs)."""
    budget = _ACTIVE.get()
    if budget is not None:
        budget.charge(units)


def charge_size(value: Any) -> None:
    """Charge the evaluation in progress for walking ``value`` (a tool reading a world section)."""
    budget = _ACTIVE.get()
    if budget is not None:
        budget.spend_on(value)


def size_of(value: Any) -> int:
    """The size of ``value`` in work units, measured against the evaluation in progress if any."""
    budget = _ACTIVE.get()
    return (budget or Budget()).size(value)
