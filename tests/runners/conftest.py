"""Fixtures of the runner tests: third-party adapters installed through the entry-point group."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import pytest

InstallPlugin = Callable[[str, str, Mapping[str, str]], Path]


@pytest.fixture
def install_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> InstallPlugin:
    """Install a module as a distribution with ``coordlab.adapters`` entry points; returns its folder.

    The folder is on this process's ``sys.path`` (spawned workers inherit it); a subprocess
    needs it in ``PYTHONPATH``.
    """
    def install(module: str, source: str, entry_points: Mapping[str, str], version: str = "1.0") -> Path:
        root = tmp_path / f"plugins-{module}"
        root.mkdir()
        (root / f"{module}.py").write_text(source)
        dist = root / f"{module}-{version}.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: {version}\n")
        lines = "".join(f"{name} = {module}:{factory}\n" for name, factory in entry_points.items())
        (dist / "entry_points.txt").write_text(f"[coordlab.adapters]\n{lines}")
        monkeypatch.syspath_prepend(str(root))
        return root

    return install
