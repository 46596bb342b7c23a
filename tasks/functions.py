"""Helper functions available inside task expressions.

These are the only callables a task file can use besides its tools. They are pure and
deterministic, and they tolerate missing inputs (``None``) the way a model would: by
producing a plausible but wrong answer rather than crashing the simulator.
"""

from __future__ import annotations

import datetime as _dt
import re
from typing import Any, Callable, Iterable

from .budget import charge, size_of

UNKNOWN = "(unknown)"
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MAX_FMT_CHARS = 1_000_000
"""Longest text ``fmt`` returns: one template field can be repeated many times."""
MAX_ROUND_DIGITS = 100
"""``round(5, -10**9)`` computes ``10**(10**9)``; no task rounds to more digits than this."""

_FMT_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_FMT_FIELD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::(.*))?", re.DOTALL)
# The format mini-language without nested fields, with width and precision of at most 3 digits.
_FMT_SPEC = re.compile(r"(?:.?[<>=^])?[-+ ]?z?#?0?[0-9]{0,3}[,_]?(?:\.[0-9]{1,3})?[bcdeEfFgGnosxX%]?", re.DOTALL)


class FormatError(ValueError):
    """A ``fmt`` template uses something beyond ``{name}``, ``{name:spec}``, ``{{`` and ``}}``."""


def _parse_field(field: str) -> tuple[str, str]:
    """The name and spec of one ``{field}``; only a plain name, so a field can never walk attributes or indexes."""
    parsed = _FMT_FIELD.fullmatch(field)
    if parsed is None:
        raise FormatError(f"fmt: {{{field}}} is not a plain name; fields are {{name}} or {{name:spec}}")
    name, spec = parsed.group(1), parsed.group(2) or ""
    if not _FMT_SPEC.fullmatch(spec):
        raise FormatError(f"fmt: unsupported format spec {spec!r} in {{{field}}}")
    return name, spec


def _render_field(field: str, values: dict[str, Any]) -> str:
    """One ``{field}`` filled from ``values``."""
    name, spec = _parse_field(field)
    if name not in values:
        raise FormatError(f"fmt: no value for {{{name}}}; pass it as {name}=...")
    value = values[name]
    return format(UNKNOWN if value is None else value, spec)


def template_fields(template: str) -> frozenset[str]:
    """The names a ``fmt`` template fills; :class:`FormatError` for anything ``fmt`` would refuse.

    Lets the loader reject a task file's constant template where it is written, instead of
    the template failing at run time inside an episode.
    """
    names = set()
    for token in _FMT_TOKEN.finditer(template):
        if token.group(1) is not None:
            names.add(_parse_field(token.group(1))[0])
        elif token.group(0) not in ("{{", "}}"):
            raise FormatError(f"fmt: single {token.group(0)!r} in the template; "
                              f"write {token.group(0) * 2!r} for a literal brace")
    return frozenset(names)


def fmt(template: str, **values: Any) -> str:
    """Fill ``{name}`` placeholders; a missing value renders as ``(unknown)``.

    Unlike ``str.format``, a field is a plain name (with an optional simple spec such as
    ``{x:.2f}``): ``{f.__globals__}`` or ``{x[0]}`` would let a task file read the
    process's internals, so anything else raises :class:`FormatError`.
    """
    if not isinstance(template, str):
        raise FormatError(f"fmt: the template must be text, got {type(template).__name__}")
    rendered: dict[str, str] = {}
    parts: list[str] = []
    length, copied = 0, 0
    for token in _FMT_TOKEN.finditer(template):
        text = token.group(0)
        if text in ("{{", "}}"):
            piece = text[0]
        elif token.group(1) is not None:
            if text not in rendered:
                rendered[text] = _render_field(token.group(1), values)
            piece = rendered[text]
        else:
            raise FormatError(f"fmt: single {text!r} in the template; write {text * 2!r} for a literal brace")
        parts += [template[copied:token.start()], piece]
        length += token.start() - copied + len(piece)
        copied = token.end()
        if length > MAX_FMT_CHARS:
            raise FormatError(f"fmt: the text would be longer than {MAX_FMT_CHARS:,} characters")
    parts.append(template[copied:])
    return "".join(parts)


def weekday(iso_datetime: str) -> str:
    """The lower-case weekday name of an ISO date or datetime."""
    return WEEKDAYS[_dt.datetime.fromisoformat(str(iso_datetime)).weekday()]


def shift_days(iso_datetime: str, days: int) -> str:
    """The same ISO datetime moved by ``days`` days (a plausible off-by-one slot)."""
    moved = _dt.datetime.fromisoformat(str(iso_datetime)) + _dt.timedelta(days=days)
    return moved.isoformat(timespec="minutes")


def words(text: str) -> set[str]:
    """Lower-case word set used by the deterministic retrieval and grounding helpers."""
    return set(re.findall(r"[a-z0-9]+", str(text or "").lower()))


def best_sentence(text: str, query: str) -> str:
    """The sentence of ``text`` sharing most words with ``query`` (first wins ties)."""
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", str(text or "")) if s.strip()]
    if not sentences:
        return ""
    query_words = words(query)
    # Indexes come from enumerate: ``sentences.index`` in the key made long texts quadratic.
    best = max(enumerate(sentences), key=lambda pair: (len(words(pair[1]) & query_words), -pair[0]))
    return best[1]


def best_match(items: list[dict], query: str, fields: list[str]) -> dict | None:
    """The item whose ``fields`` share most words with ``query`` (keyword retrieval; first wins ties)."""
    items, query_words = list(items or ()), words(query)
    charge(len(items) * max(1, len(fields or ())))
    if not items:
        return None
    # Indexes come from enumerate: ``items.index`` in the key would make a long list quadratic.
    best = max(enumerate(items), key=lambda pair: (
        len(words(" ".join(str(pair[1].get(f, "")) for f in fields)) & query_words), -pair[0]))
    return best[1]


def overlap(text: str, other: str) -> int:
    """How many words ``text`` and ``other`` share (case-insensitive)."""
    return len(words(text) & words(other))


def lower(text: str) -> str:
    """``text`` in lower case."""
    return str(text).lower()


def join(items: Iterable[Any], separator: str = ", ") -> str:
    """The items as text, joined by ``separator`` (", " by default)."""
    items = [str(item) for item in items]
    charge(sum(len(item) for item in items))
    return str(separator).join(items)


def quoted(value: Any) -> str:
    """``value`` as a quoted literal (``'C-1042'``), for an error message that must show it exactly."""
    charge(size_of(value))
    return repr(value)


def keys(mapping: Any) -> list[Any] | None:
    """The sorted keys of a mapping, or None for anything else (how a body checks an object's shape)."""
    if not isinstance(mapping, dict):
        return None
    return sorted(mapping, key=str)


def reconcile(invoices: list[dict], payments: list[dict]) -> dict[str, list[dict]]:
    """Match payments to invoices by reference; list the invoices paid the wrong amount."""
    paid: dict[str, float] = {}
    for payment in payments or []:
        paid[payment["invoice"]] = round(paid.get(payment["invoice"], 0.0) + payment["amount"], 2)
    matches, mismatches = [], []
    for invoice in invoices or []:
        received = paid.get(invoice["id"], 0.0)
        if round(received - invoice["amount"], 2) == 0:
            matches.append({"invoice": invoice["id"], "amount": invoice["amount"]})
        else:
            mismatches.append({
                "invoice": invoice["id"],
                "expected": invoice["amount"],
                "paid": received,
                "difference": round(invoice["amount"] - received, 2),
            })
    return {"matches": matches, "mismatches": mismatches}


def journal_entries(mismatches: list[dict]) -> list[dict]:
    """One receivable-adjustment entry per mismatch, for the open difference."""
    return [
        {"account": "accounts-receivable-adjustment", "invoice": m["invoice"], "amount": m["difference"]}
        for m in mismatches or []
    ]


def entries_are_correct(entries: list[dict], invoices: list[dict], payments: list[dict]) -> bool:
    """True when ``entries`` are exactly the adjustments the ledgers call for."""
    return entries == journal_entries(reconcile(invoices, payments)["mismatches"])


def compose_brief(topic: str, facts: list[dict]) -> str:
    """A brief on ``topic`` that cites every fact by its id."""
    cited = " ".join(f"{f['text']} [{f['id']}]" for f in facts or [])
    return fmt("Brief: {topic}. {body}", topic=topic, body=cited or UNKNOWN)


def cites_all(text: str, facts: list[dict]) -> bool:
    """True when ``text`` cites every fact id and states every fact.

    Each fact is a search of the whole text, so the work (facts times text) is charged.
    """
    text, facts = str(text), list(facts or ())
    charge(len(facts) * size_of(text))
    return bool(facts) and all(f"[{f['id']}]" in text and f["text"] in text for f in facts)


def worst_service(signals: dict[str, dict]) -> str | None:
    """The service whose signals look worst: highest error rate, then latency, then a deploy."""
    if not signals:
        return None
    return max(
        sorted(signals),
        key=lambda s: (signals[s]["error_rate"], signals[s]["p99_latency_ms"], signals[s]["recent_deploy"]),
    )


def transform(value: int, step: int) -> int:
    """One stage of the synthetic ``chain`` pipeline: an affine map modulo a prime."""
    return (int(value) * 31 + 7 * int(step)) % 10007


def get(mapping: Any, key: Any, default: Any = None) -> Any:
    """``mapping[key]`` or ``default`` when the mapping or key is missing."""
    try:
        return mapping[key]
    except (KeyError, IndexError, TypeError):
        return default


def sum_numbers(values: Iterable[Any], start: int | float = 0) -> int | float:
    """``sum`` for numbers: adding up lists copies them quadratically, so a start must be a number."""
    if isinstance(start, bool) or not isinstance(start, (int, float)):
        raise TypeError(f"sum() adds numbers; start must be a number, not {type(start).__name__}")
    return sum(values, start)


def round_number(number: Any, ndigits: int | None = None) -> Any:
    """``round`` with at most :data:`MAX_ROUND_DIGITS` digits either way (an integer power of ten is built)."""
    if ndigits is not None and isinstance(ndigits, int) and abs(ndigits) > MAX_ROUND_DIGITS:
        raise ValueError(f"round() to {ndigits} digits; at most {MAX_ROUND_DIGITS} either way")
    return round(number, ndigits)


HELPERS: dict[str, Callable[..., Any]] = {
    "fmt": fmt, "weekday": weekday, "shift_days": shift_days, "best_sentence": best_sentence,
    "reconcile": reconcile, "journal_entries": journal_entries,
    "entries_are_correct": entries_are_correct, "compose_brief": compose_brief,
    "cites_all": cites_all, "worst_service": worst_service, "transform": transform,
    "get": get, "len": len, "sum": sum_numbers, "min": min, "max": max, "sorted": sorted,
    "round": round_number, "abs": abs, "all": all, "any": any, "str": str, "int": int,
    "float": float, "list": list,
    "best_match": best_match, "overlap": overlap, "lower": lower, "join": join, "quoted": quoted, "keys": keys,
}
"""Every helper a task expression may call, by the name it calls it with."""
