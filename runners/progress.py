"""A live progress line: episodes done, ETA, and running success counts per framework."""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from typing import TextIO


class Progress:
    """Redraws one line on a terminal; prints a line every few seconds when output is not a terminal."""

    def __init__(self, total: int, already_done: int = 0, stream: TextIO | None = None, width: int = 24):
        self.total, self.done, self.ran = total, already_done, 0
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.started = time.monotonic()
        self.success: dict[str, int] = defaultdict(int)
        self.finished: dict[str, int] = defaultdict(int)
        self._last_plain_line = 0.0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, framework: str, status: str) -> None:
        """Count one finished episode and redraw."""
        self.done += 1
        self.ran += 1
        self.finished[framework] += 1
        self.success[framework] += status == "success"
        self.draw()

    def line(self) -> str:
        """The progress line as text."""
        fraction = self.done / self.total if self.total else 1.0
        filled = int(self.width * fraction)
        elapsed = time.monotonic() - self.started
        remaining = self.total - self.done
        eta = "--" if not self.ran else _duration(elapsed / self.ran * remaining)
        counts = "  ".join(f"{fw} {self.success[fw]}/{self.finished[fw]}" for fw in sorted(self.finished))
        return (f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} "
                f"{fraction:5.1%} ETA {eta}  ok: {counts}")

    def draw(self, force: bool = False) -> None:
        """Redraw (terminal) or print a line at most every 5 s (logs)."""
        if self._tty:
            self.stream.write("\r" + self.line() + "\x1b[K")
            self.stream.flush()
        elif force or time.monotonic() - self._last_plain_line >= 5 or self.done == self.total:
            self._last_plain_line = time.monotonic()
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def close(self) -> None:
        """End the line."""
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"
