"""Keep secrets out of everything the lab stores or prints.

A live endpoint may echo the API key in an error body, and a framework may put it in an
exception message; either would then land in the store, an export or the terminal. The
worker knows the key it was given and the caller's secret-looking environment variables,
so it scrubs every string of an episode's row and trace before the row leaves the process.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

REDACTED = "[REDACTED]"
_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH)", re.IGNORECASE)
_SHORTEST_SECRET = 8
"""Shorter values ("true", "1", a port) are not secrets and would scrub ordinary text."""


@dataclass(frozen=True)
class Redactor:
    """Replaces each known secret value with :data:`REDACTED`, in strings nested anywhere."""

    secrets: tuple[str, ...]

    @classmethod
    def from_environment(cls, extra: Iterable[str] = (), environ: Mapping[str, str] | None = None) -> "Redactor":
        """Secrets: ``extra`` (e.g. the live API key) and every secret-named environment variable's value."""
        environ = os.environ if environ is None else environ
        found = {value for name, value in environ.items() if _SECRET_NAME.search(name)}
        found |= {value for value in extra if value}
        # Longest first, so a secret that contains another is replaced whole.
        kept = sorted((s for s in found if len(s) >= _SHORTEST_SECRET), key=len, reverse=True)
        return cls(tuple(kept))

    def text(self, value: str) -> str:
        """``value`` with every secret replaced."""
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value

    def __call__(self, value: Any) -> Any:
        """A copy of ``value`` (str, list, tuple, dict, nested) with every secret replaced."""
        if not self.secrets:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self(k): self(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self(v) for v in value)
        return value
