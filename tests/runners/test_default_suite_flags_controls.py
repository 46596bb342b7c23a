"""Rule 4 on the default suite: its verdict flags the positive controls whose bug acts under its conditions.

The controls run beside ``plain`` on the default suite's headline condition (``realistic_3pct``,
the default seed count, every suite task) in the variants where their bug acts, and the
report's own verdict (paired exact tests, Holm over the whole family) must call each one
significantly worse. Two controls are not in this test because the default suite cannot see
them, which the closing note of issue #11 records with numbers: ``control_repeat_step`` and
``control_sticky_state`` act only after an unusable answer or a gate rejection, a few
episodes in a thousand at 3-5% faults; their own sweeps (test_positive_controls.py) flag them.
"""

from __future__ import annotations

from pathlib import Path

from coordlab.reports.build import build_report
from coordlab.runners.runner import run_sweep
from coordlab.runners.sweep import DEFAULT_SEEDS, Sweep

SEEN = ("control_drop_field", "control_truncate", "control_last_pending")


def test_the_default_suite_verdict_flags_the_controls(tmp_path: Path) -> None:
    store = tmp_path / "controls.sqlite"
    for frameworks, variant in ((["plain", "control_drop_field", "control_truncate"], "linear"),
                                (["plain", "control_last_pending"], "delegated")):
        run_sweep(Sweep.build(frameworks=frameworks, variants=[variant], profiles=["realistic_3pct"],
                              seeds=DEFAULT_SEEDS), store, workers=2)
    report = build_report(store)
    verdict = {(row["framework"], row["variant"], row["outcome"]): row
               for row in next(t for t in report.tables if t.key == "verdict").values()}
    for control, variant in (("control_drop_field", "linear"), ("control_truncate", "linear"),
                             ("control_last_pending", "delegated")):
        success = verdict[(control, variant, "success")]
        assert success["significant"] and success["difference"] < 0, f"{control} not flagged: {success}"
    flagged = " ".join(sentence for finding in report.verdict for sentence in finding.sentences)
    for control in SEEN:
        assert f"{control} **worse** on success" in flagged
    # Each finding says how the control failed, from its traces.
    assert "loss of conversation history (FM-1.4)" in flagged
