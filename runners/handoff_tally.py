"""Failed handoffs, each counted once and put down to its cause: lost by the framework, or the model's error.

A handoff is one field reaching one attempt of the step that reads it. The simulator
checks the field on every request of that attempt, so a step that loops through three tool
calls without a value it needs shows the same gap three times; counting requests would
charge a tool-heavy step three failures for one lost value. Here a handoff (consuming step,
attempt, field) fails when any request of the attempt showed an issue for the field, and
its cause is the one the last such request gave (the latest view of the same handoff).

A misrouted step (``wrong_handoff_target``) that was not recovered is a failed handoff too:
the work never reached the role that owns it. Its cause is the model's: the routing model
named the wrong role and the framework delivered what it was told. A misroute the
framework made good is a recovered fault, not a failed handoff.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .simulator import RequestRecord

LOST = "lost"
"""The producing model emitted the value right; the framework did not deliver it intact."""
MODEL_ERROR = "model_error"
"""The producing model emitted the value wrong, or left it out."""


@dataclass(frozen=True)
class HandoffTally:
    """Failed handoffs of one episode by cause."""

    lost: int
    model_errors: int

    @property
    def failed(self) -> int:
        """Every failed handoff, whatever its cause."""
        return self.lost + self.model_errors


def tally_handoffs(records: Iterable[RequestRecord], unrecovered_misroutes: int = 0) -> HandoffTally:
    """Count failed handoffs in ``records`` (in arrival order) once each; see the module docstring.

    A cause other than the two known ones is counted as lost: the framework is the party the
    simulator cannot clear.
    """
    causes: dict[tuple[str | None, int | None, str], str] = {}
    for record in records:
        for issue in record.handoff_issues:
            causes[(record.step, record.attempt, issue.field)] = issue.cause
    model_errors = sum(1 for cause in causes.values() if cause == MODEL_ERROR)
    return HandoffTally(lost=len(causes) - model_errors, model_errors=model_errors + unrecovered_misroutes)
