"""Fixtures of the runner tests: misbehaving third-party adapters, installed through the entry-point group."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

MODULE = Path(__file__).with_name("misbehaving_adapters.py")
ENTRY_POINTS = {"hang": "Hang", "crash": "Crash", "spin": "Spin", "slowfirst": "SlowFirst", "renamed": "Renamed",
                "reach": "Reach", "slowstart": "slowstart"}
PLUGIN_VERSION = "1.0"


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``misbehaving_adapters`` installed as a distribution; returns its folder.

    The folder is on this process's ``sys.path`` (spawned workers inherit it); a subprocess
    needs it in ``PYTHONPATH``.
    """
    root = tmp_path / "plugins"
    root.mkdir()
    shutil.copy(MODULE, root / "coordlab_misbehaving_adapters.py")
    dist = root / f"coordlab_misbehaving_adapters-{PLUGIN_VERSION}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: coordlab-misbehaving-adapters\nVersion: {PLUGIN_VERSION}\n")
    lines = "".join(f"{name} = coordlab_misbehaving_adapters:{target}\n" for name, target in ENTRY_POINTS.items())
    (dist / "entry_points.txt").write_text(f"[coordlab.adapters]\n{lines}")
    monkeypatch.syspath_prepend(str(root))
    return root
