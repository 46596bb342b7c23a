"""Keep secrets out of everything the lab stores or prints.

A live endpoint may echo the API key in an error body, and a framework may put it in an
exception message; either would then land in the store, an export or the terminal. The
worker knows the key it was given and the caller's secret-looking environment variables,
so it scrubs every string of an episode's row and trace before the row leaves the process.
The model request and response bodies kept for the viewer get a stricter scrub (:meth:`Redactor.body`):
there a credential may also sit under a secret-named field or behind ``Bearer``, with a value
nobody told the worker about.
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
_SECRET_FIELD = re.compile(r"^(proxy-)?authorization$|^(x-)?api[-_]?key$|^(access|refresh|id|auth)[-_]?token$|"
                           r"^(client[-_]?)?secret$|^password$", re.IGNORECASE)
"""Field names whose value in a body is a credential, whoever put it there (not ``max_tokens``: names, not words)."""
_CREDENTIAL = re.compile(r"\b(Bearer)\s+(?=[A-Za-z0-9._~+/=-]*\d)[A-Za-z0-9._~+/=-]{16,}"
                         r"|\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}")
"""A credential in running text: a bearer token, or an API key of the ``sk-...`` shape (long, with a digit, so
that "Bearer instruments" stays prose)."""


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

    def body(self, value: Any) -> Any:
        """A copy of a model request or response body with every known secret, the text of every secret-named
        field (``Authorization``, ``api_key``...) and every credential-shaped string (``Bearer ...``, ``sk-...``)
        replaced."""
        if isinstance(value, str):
            return _CREDENTIAL.sub(lambda m: f"{m.group(1)} {REDACTED}" if m.group(1) else REDACTED,
                                   self.text(value))
        if isinstance(value, dict):
            # Only a text value is a credential: a tool schema's ``password`` property stays readable.
            return {key: REDACTED if isinstance(key, str) and isinstance(item, str) and _SECRET_FIELD.search(key)
                    else self.body(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.body(item) for item in value]
        return value
