"""The per-episode world: the sandbox state that tools read and mutating tools change.

A world is built fresh from a task's fixtures for every episode, so no episode can see
another's side effects. Every mutating tool call is logged as a :class:`SideEffect`;
scoring compares that log with the side effects the oracle path produces, which is how a
duplicated email or a page to the wrong team is caught.
"""

from __future__ import annotations

import copy
import json
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .budget import charge_size

if TYPE_CHECKING:
    from .schema import Task
    from .tools import Tool


def canonical_json(value: Any) -> str:
    """A stable JSON text for comparing tool arguments and side effects."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def by_value(value: Any) -> Any:
    """``value`` with every whole float as an int: JSON has one number type, and a JavaScript client (n8n)
    sends 100.0 as 100, which is the same amount."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {key: by_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [by_value(item) for item in value]
    return value


def effect_signature(tool: str, arguments: Mapping[str, Any]) -> str:
    """Tool name plus canonical arguments, numbers compared by value: two equal signatures are the same change
    to the world."""
    return f"{tool}{canonical_json(by_value(dict(arguments)))}"


@dataclass(frozen=True)
class SideEffect:
    """One change a mutating tool made to the world."""

    tool: str
    arguments: Mapping[str, Any]
    result: Any

    @property
    def signature(self) -> str:
        """Tool name plus canonical arguments: two equal signatures are one duplicated effect."""
        return effect_signature(self.tool, self.arguments)


@dataclass
class World:
    """Mutable episode state built from fixtures; thread-safe for frameworks that call tools concurrently."""

    state: dict[str, Any]
    side_effects: list[SideEffect] = field(default_factory=list)
    final_output: dict[str, Any] = field(default_factory=dict)
    tools: Mapping[str, Tool] = field(default_factory=dict, repr=False)
    """The tools that act on this world (its task's), by name: what a model's tool call can reach."""
    idempotency_keys: bool = False
    """The outside system honours an idempotency key on every mutating call (the ``idempotency_keys``
    knob): a call repeating an earlier one's tool and arguments gets the earlier result and changes nothing."""
    effect_listeners: list[Callable[["World"], None]] = field(default_factory=list, repr=False)
    """Called (under the lock) after every side effect is logged: how a durable copy of the world is kept."""
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _counters: dict[str, int] = field(default_factory=dict, repr=False)
    _failing_after_effect: list[str] = field(default_factory=list, repr=False)

    @classmethod
    def from_fixtures(cls, fixtures: Mapping[str, Any], tools: Mapping[str, Tool] | None = None) -> "World":
        """A fresh world whose state is a deep copy of ``fixtures``."""
        return cls(state=copy.deepcopy(dict(fixtures)), tools=dict(tools or {}))

    @classmethod
    def for_task(cls, task: Task) -> "World":
        """A fresh world for one episode of ``task``: its fixtures, acted on by its tools."""
        return cls.from_fixtures(task.fixtures, task.tools)

    def section(self, name: str) -> Any:
        """One fixture section (``calendar``, ``crm``...); a clear error when the task lacks it.

        A tool reads its whole section, so inside an expression the section's size is charged.
        """
        try:
            section = self.state[name]
        except KeyError:
            raise KeyError(f"this task's world has no {name!r} fixtures") from None
        charge_size(section)
        return section

    def next_id(self, prefix: str) -> str:
        """A deterministic identifier (``msg-1``, ``msg-2``...) for a created record."""
        with self._lock:
            self._counters[prefix] = self._counters.get(prefix, 0) + 1
            return f"{prefix}-{self._counters[prefix]}"

    def record_side_effect(self, tool: str, arguments: Mapping[str, Any], result: Any) -> None:
        """Log a mutating tool call; scoring reads this log."""
        with self._lock:
            self.side_effects.append(SideEffect(tool, copy.deepcopy(dict(arguments)), copy.deepcopy(result)))
            for listener in self.effect_listeners:
                listener(self)

    def made_before(self, tool: str, arguments: Mapping[str, Any]) -> bool:
        """With :attr:`idempotency_keys`, whether a call with this tool and these arguments (the key is derived
        from them) already changed the world; always False when keys are off."""
        if not self.idempotency_keys:
            return False
        signature = effect_signature(tool, arguments)
        with self._lock:
            return any(effect.signature == signature for effect in self.side_effects)

    def earlier_result(self, tool: str, arguments: Mapping[str, Any]) -> Any:
        """The result the first such call returned (:meth:`made_before` must be true)."""
        signature = effect_signature(tool, arguments)
        with self._lock:
            return copy.deepcopy(next(e.result for e in self.side_effects if e.signature == signature))

    def counters(self) -> dict[str, int]:
        """The identifier counters (:meth:`next_id`), for a durable copy of the world."""
        with self._lock:
            return dict(self._counters)

    def restore_counters(self, counters: Mapping[str, int]) -> None:
        """Continue numbering where a durable copy of the world left off."""
        with self._lock:
            self._counters = dict(counters)

    def fail_after_effect(self, tool: str, arguments: Mapping[str, Any]) -> None:
        """Arm a fault of the outside system: the next such call applies its change, then its response is lost."""
        with self._lock:
            self._failing_after_effect.append(effect_signature(tool, arguments))

    def response_lost(self, tool: str, arguments: Mapping[str, Any]) -> bool:
        """Whether the call just applied is one whose response is lost (disarming it: it acts once)."""
        signature = effect_signature(tool, arguments)
        with self._lock:
            if signature in self._failing_after_effect:
                self._failing_after_effect.remove(signature)
                return True
            return False

    @property
    def lock(self) -> threading.RLock:
        """The lock tools hold while they read and write the state."""
        return self._lock
