"""Read episodes back out of a store: one episode shown readably, CSV/JSONL, OpenTelemetry GenAI spans.

The span export (``otel``) is OTLP JSON Lines built by :mod:`coordlab.runners.otel` with
the OpenTelemetry SDK: the file format an OpenTelemetry Collector's ``otlpjsonfile``
receiver reads. To send spans to a receiver (Phoenix, Langfuse, a Collector) over
OTLP/HTTP instead, see :func:`coordlab.runners.otel.send_stored`.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

from tabulate import tabulate

from coordlab.tasks.schema import split_task_key

from .store import EpisodeKey, Store, StoreError, parse_trial_segment

EXPORT_FORMATS = ("csv", "jsonl", "otel")


class ExportError(OSError):
    """An output file (an export, or a report's) cannot be written; the message names the path and the way out.

    Still an ``OSError``, so code that already catches one keeps working; the CLI prints the
    message instead of a traceback.
    """

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.errno = code


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_atomically(path: Path, content: str | bytes) -> None:
    """Write to a temp file beside ``path``, flush it to disk and rename it into place.

    A failure (no permission, a full disk, a folder or a file in the way) leaves no temp file
    and whatever was at ``path`` before untouched, and raises :class:`ExportError` saying so.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _write_failure(path, exc) from None
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(content.encode("utf-8") if isinstance(content, str) else content)
            stream.flush()
            os.fsync(stream.fileno())  # a full disk shows here, not after the rename; and a crash cannot leave 0 bytes
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; a report is for sharing
        os.replace(temporary, path)
    except BaseException as exc:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, ExportError):
            raise _write_failure(path, exc) from None
        raise


def _write_failure(path: Path, exc: OSError) -> ExportError:
    """An :class:`ExportError` for ``exc``, raised while writing ``path``: the cause in words, then what to do."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        cause, remedy = f"the disk is full ({exc.strerror})", "free some space or choose another --out"
    elif exc.errno == errno.EISDIR or path.is_dir():
        cause, remedy = "it is a folder", "give a file name, not a folder, as --out"
    elif (blocker := _file_in_the_way(path)) is not None:
        cause, remedy = f"{blocker} is a file, not a folder", "choose another --out"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        cause, remedy = f"{exc.strerror} in {path.parent}", "choose a writable --out"
    else:
        cause, remedy = f"{exc.strerror or exc}", "choose another --out"
    return ExportError(f"cannot write {path}: {cause}; nothing was written there and any earlier file is "
                       f"unchanged: {remedy}", exc.errno)


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` when it is not a folder (so no folder can be made below it)."""
    for ancestor in path.parents:
        if ancestor.exists():
            return None if ancestor.is_dir() else ancestor
    return None


def find_episode(store: Store, text: str) -> sqlite3.Row:
    """The newest episode matching ``TASK/FRAMEWORK[@VERSION]/VARIANT/PROFILE/SEED[/tTRIAL]`` (no trial: trial 0)."""
    parts = text.split("/")
    trial = parse_trial_segment(parts[5]) if len(parts) == 6 else 0
    if len(parts) not in (5, 6) or not parts[4].lstrip("-").isdigit() or trial is None:
        raise StoreError(f"episode key {text!r}: expected TASK/FRAMEWORK[@VERSION]/VARIANT/PROFILE/SEED[/tTRIAL], "
                         "e.g. chain@1[n=6]/plain/linear/none/0, or .../none/0/t2 for the third trial of seed 0")
    framework, _, version = parts[1].partition("@")
    query = "SELECT * FROM episodes WHERE framework = ? AND variant = ? AND profile = ? AND seed = ?"
    params: list[Any] = [framework, parts[2], parts[3], int(parts[4])]
    if "trial" in store.episode_columns():
        query += " AND trial = ?"
        params.append(trial)
    elif trial:  # a store before schema 4, read as it is, holds trial 0 only
        raise StoreError(f"no episode {text} in {store.path} (its schema predates repeated trials)")
    if version:
        query += " AND framework_version = ?"
        params.append(version)
    # The task may be named with its content hash or without (``chain@1[n=6]``): a store
    # holds one content per task version, so the version alone is unambiguous.
    for row in store.query(query + " ORDER BY episode_id DESC", params):
        if parts[0] in (row["task"], split_task_key(row["task"])[0]):
            return row
    raise StoreError(f"no episode {text} in {store.path}")


def stored_json(store: Store, text: str, what: str) -> Any:
    """Parse JSON the store holds (``what`` names it); unreadable JSON means a damaged store, a StoreError rather than a traceback."""
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        raise StoreError(f"store {store.path}: {what} is not readable JSON (is the file damaged? `sqlite3 "
                         f"{store.path} 'PRAGMA integrity_check'` tells)") from None


def episode_key(row: sqlite3.Row) -> EpisodeKey:
    """The natural key of a stored episode (trial 0 for a row of a store before schema 4, which had no trials)."""
    return EpisodeKey(row["task"], row["framework"], row["framework_version"], row["variant"], row["profile"],
                      row["seed"], _column(row, "trial") or 0)


def render_episode(store: Store, row: sqlite3.Row) -> str:
    """One episode as text: its key, outcome, counters, and its trace as a table."""
    verdict = stored_json(store, row["verdict_json"] or "{}", f"the verdict of episode {row['episode_id']}")
    lines = [f"episode {episode_key(row)}  (run {row['run_id']})",
             f"status {row['status']}{' (harmful)' if row['harmful'] else ''}; termination {row['termination']}; "
             f"wall {row['wall_ms']:.0f} ms",
             f"model calls {row['model_calls']}, tool calls {row['tool_calls']}, handoffs {row['handoffs']}, "
             f"{_handoffs_failed(store, row)}, "
             f"gate rejections {row['gate_rejections']}, "
             f"retries {row['framework_retries']} framework / {row['transport_retries']} transport, "
             f"faults {_counter(row, 'faults_recovered')}/{row['faults_injected']} recovered, "
             f"tokens {row['prompt_tokens']} in / {row['completion_tokens']} out"]
    if row["error"]:
        lines.append(f"error: {row['error']}")
    events = list(store.events(row["episode_id"]))
    if row["status"] not in ("success", "infra_error"):
        from coordlab.reports.failure_modes import diagnose

        lines.append(f"how it failed: {diagnose(row, events).summary}")
    for reason in ("unexpected_side_effects", "missing_side_effects", "out_of_order", "failed_checks"):
        for item in verdict.get(reason, []):
            lines.append(f"{reason.replace('_', ' ')}: {item}")
    table = []
    for event in events:
        detail = stored_json(store, event["detail_json"], f"event {event['seq']} of episode {row['episode_id']}")
        table.append([f"{event['at_ms']:.1f}", event["kind"], event["role"] or "", event["step"] or "",
                      _summarise(event["kind"], detail)])
    lines += ["", tabulate(table, headers=["ms", "event", "role", "step", "detail"])]
    return "\n".join(lines)


def _column(row: sqlite3.Row, name: str) -> Any:
    """``row[name]``, or None when the row comes from a store whose schema lacks the column."""
    return row[name] if name in row.keys() else None


def _handoffs_failed(store: Store, row: sqlite3.Row) -> str:
    """The failed handoffs by cause, or why they were not judged (a live model: no oracle knows what it meant)."""
    spec = store.query("SELECT spec_json FROM runs WHERE run_id = ?", (row["run_id"],))
    if spec and (json.loads(spec[0]["spec_json"] or "{}") or {}).get("live"):
        return "handoffs failed: not judged (a live model has no oracle)"
    return f"handoffs failed {_counter(row, 'handoffs_lost')} lost / {_counter(row, 'handoff_model_errors')} model error"


def _counter(row: sqlite3.Row, name: str) -> str:
    """A counter as text; "unknown" for one the episode's coordlab did not measure (NULL, or no such column)."""
    value = _column(row, name)
    return "unknown" if value is None else str(value)


def fault_outcome(detail: Mapping[str, Any]) -> str:
    """How a fault event ended; an event stored before schema 2 says "caught", which meant only "worked on again"."""
    if "recovered" in detail:
        return "recovered" if detail["recovered"] else "not recovered"
    return "worked on again (old 'caught')" if detail.get("caught") else "not worked on again (old 'caught')"


def _summarise(kind: str, detail: dict[str, Any]) -> str:
    if kind == "model_call":
        calls = ",".join(detail.get("tool_calls") or [])
        issues = "; ".join(f"{i['field']} {i['kind']}" + (f" ({i['cause']})" if i.get("cause") else "")
                           for i in detail.get("handoff_issues") or [])
        text = f"{detail.get('kind')} attempt {detail.get('attempt')} tokens {detail.get('prompt_tokens')}/" \
               f"{detail.get('completion_tokens')}"
        return text + (f" calls {calls}" if calls else "") + (f" handoff failure: {issues}" if issues else "") + \
            (f" -> {detail['route_target']}" if detail.get("route_target") else "")
    if kind == "tool_call":
        return f"{detail['name']}{' (mutating)' if detail.get('mutating') else ''} " \
               f"{'ok' if detail.get('ok') else 'error: ' + str(detail.get('error'))}"
    if kind == "handoff":
        return f"{detail.get('source')} -> {detail.get('target')} via {detail.get('mechanism')}"
    if kind == "gate":
        return "pass" if detail.get("passed") else f"reject: {detail.get('reason')}"
    if kind == "fault":
        return f"{detail['fault']} ({fault_outcome(detail)})"
    if kind == "retry":
        return f"{detail.get('source')}: {detail.get('reason')}"
    return json.dumps(detail, default=str)[:120]


def _plain_rows(rows: Iterable[sqlite3.Row]) -> list[dict[str, Any]]:
    """Rows as dicts; every one has ``trial`` after ``seed`` (0 in a store before schema 4, read as it is)."""
    plain = []
    for row in rows:
        record: dict[str, Any] = {}
        for column in row.keys():
            record[column] = row[column]
            if column == "seed" and "trial" not in row.keys():
                record["trial"] = 0
        plain.append(record)
    return plain


def export_episodes(store: Store, out: Path, fmt: str, run_id: str | None = None,
                    project: str = "coordlab") -> int:
    """Write the episodes (CSV or JSONL) or their traces (``otel``: OTLP JSON Lines) to ``out``; the number of
    episodes. ``project`` names the project a trace receiver files the spans under.

    A damaged store raises :class:`StoreError` before anything is written (an export would
    otherwise pass on whatever the damaged pages happen to hold); an output that cannot be
    written raises :class:`ExportError` and leaves any earlier ``out`` as it was.
    """
    if fmt not in EXPORT_FORMATS:
        raise StoreError(f"export format {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}")
    store.check_integrity()
    rows = store.episodes(run_id)
    if fmt == "otel":
        from .otel import json_lines  # the OpenTelemetry SDK loads only when spans are asked for

        write_atomically(out, json_lines(store, rows, project))
        return len(rows)
    records = _plain_rows(rows)
    if fmt == "jsonl":
        write_atomically(out, "".join(json.dumps(r) + "\n" for r in records))
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(records[0]) if records else ["episode_id"])
        writer.writeheader()
        writer.writerows(records)
        write_atomically(out, buffer.getvalue())
    return len(records)
