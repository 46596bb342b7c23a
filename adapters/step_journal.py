"""The plain reference's durability: a small step journal, written the way a careful engineer would.

Without a framework there is no checkpointer, so the orchestrator appends one JSON line
per finished step (its index, id and answer) and fsyncs it before going on. A restarted
process replays the journal to get back the values handed on and continues after the
last step it finished. A step that was cut short (the process died inside it, after its
tool changed the world) has no line, so it runs again: exactly what such a journal gives.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JOURNAL_NAME = "plain-steps.jsonl"


@dataclass(frozen=True)
class JournalEntry:
    """One finished step."""

    index: int
    step: str
    outputs: dict[str, Any]


class StepJournal:
    """An append-only, fsynced JSON-lines file of finished steps."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / JOURNAL_NAME

    def append(self, index: int, step: str, outputs: dict[str, Any]) -> None:
        """Record that step ``index`` finished with ``outputs``; on disk before this returns."""
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"index": index, "step": step, "outputs": outputs}, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def entries(self) -> list[JournalEntry]:
        """Every finished step, in order; a torn last line (the process died mid-write) is ignored."""
        if not self.path.is_file():
            return []
        entries = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                data = json.loads(line)
            except ValueError:
                break
            entries.append(JournalEntry(int(data["index"]), str(data["step"]), dict(data["outputs"])))
        return entries
