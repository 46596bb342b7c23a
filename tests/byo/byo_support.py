"""Helpers of the bring-your-own-workflow tests: the task defined here, its plug-in, task-file scratch work."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from coordlab.tasks.loader import TaskValidationError, load_task

HERE = Path(__file__).parent
TASK_FILE = HERE / "purchase_order_approval.yaml"
PLUGIN_MODULE = HERE / "coordlab_test_tools.py"
PLUGIN_VERSION = "1.0"


def install_tool_plugin(root: Path, entry_points: dict[str, str], module: Path = PLUGIN_MODULE) -> Path:
    """Install ``module`` under ``root`` as a distribution whose ``coordlab.tools`` entry points are ``entry_points``."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(module, root / module.name)
    dist = root / f"coordlab_test_tools-{PLUGIN_VERSION}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: coordlab-test-tools\nVersion: {PLUGIN_VERSION}\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (dist / "entry_points.txt").write_text(f"[coordlab.tools]\n{lines}")
    return root


def write_task(tmp_path: Path, text: str, name: str = "t.yaml") -> Path:
    """``text`` written as a task file in ``tmp_path``."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    """Every problem loading ``path`` reports, as ``file:line: field: message`` lines."""
    with pytest.raises(TaskValidationError) as caught:
        load_task(path)
    return [str(p) for p in caught.value.problems]


def line_of(text: str, fragment: str) -> int:
    """The 1-based number of the first line containing ``fragment``."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if fragment in line)
