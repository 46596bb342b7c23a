"""Fixtures of the bring-your-own-workflow tests: the task's Python tool plug-in, installed."""

from __future__ import annotations

from pathlib import Path

import pytest
from byo_support import install_tool_plugin


@pytest.fixture
def tool_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``coordlab_test_tools`` (the ``vendor_credit`` tool) installed as a distribution; returns its folder.

    The folder is on this process's ``sys.path``, which spawned workers inherit.
    """
    root = install_tool_plugin(tmp_path / "plugins", {"vendor_credit": "coordlab_test_tools:vendor_credit"})
    monkeypatch.syspath_prepend(str(root))
    return root
