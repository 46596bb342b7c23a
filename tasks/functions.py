"""Helper functions available inside task expressions.

These are the only callables a task file can use besides its tools. They are pure and
deterministic, and they tolerate missing inputs (``None``) the way a model would: by
producing a plausible but wrong answer rather than crashing the simulator.
"""

from __future__ import annotations

import datetime as _dt
import re
from typing import Any, Callable

UNKNOWN = "(unknown)"
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def fmt(template: str, **values: Any) -> str:
    """Fill ``{name}`` placeholders; a missing value renders as ``(unknown)``."""
    return template.format(**{k: (UNKNOWN if v is None else v) for k, v in values.items()})


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
    return max(sentences, key=lambda s: (len(words(s) & query_words), -sentences.index(s)))


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
    """True when ``text`` cites every fact id and states every fact."""
    return bool(facts) and all(f"[{f['id']}]" in str(text) and f["text"] in str(text) for f in facts)


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


HELPERS: dict[str, Callable[..., Any]] = {
    "fmt": fmt, "weekday": weekday, "shift_days": shift_days, "best_sentence": best_sentence,
    "reconcile": reconcile, "journal_entries": journal_entries,
    "entries_are_correct": entries_are_correct, "compose_brief": compose_brief,
    "cites_all": cites_all, "worst_service": worst_service, "transform": transform,
    "get": get, "len": len, "sum": sum, "min": min, "max": max, "sorted": sorted,
    "round": round, "abs": abs, "all": all, "any": any, "str": str, "int": int,
    "float": float, "list": list,
}
"""Every helper a task expression may call, by the name it calls it with."""
