"""The frameworks' own log messages go to a file beside the store, not over the run's progress line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_framework_chatter_lands_in_the_log_file_not_on_the_terminal(tmp_path: Path) -> None:
    store = tmp_path / "r.sqlite"
    # AutoGen's structured answers make pydantic warn once per answer; CrewAI logs its failed calls.
    run = subprocess.run([sys.executable, "-m", "coordlab.runners.cli", "run", "--tasks", "chain:n=2",
                          "--frameworks", "autogen", "--variants", "linear", "--faults", "none", "--seeds", "1",
                          "--store", str(store)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    log = tmp_path / "r.sqlite.frameworks.log"
    assert "Pydantic serializer warnings" in log.read_text()
    assert "Pydantic serializer warnings" not in run.stderr and "UserWarning" not in run.stderr
    assert f"the frameworks' own log messages are in {log}" in run.stderr
    assert run.stdout.splitlines()[-1].startswith("run ") and len(run.stdout.splitlines()) == 1  # nothing printed over it
