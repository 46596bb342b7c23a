"""The adapter registry: names, did-you-mean, missing frameworks, third-party entry points."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from coordlab.adapters import registry
from coordlab.adapters.base import Adapter
from coordlab.adapters.registry import AdapterUnavailable, adapter_names, get_adapter


def test_builtin_names() -> None:
    assert {"plain", "crewai", "autogen", "langgraph"} <= set(adapter_names())


def test_unknown_adapter_suggests_the_closest() -> None:
    with pytest.raises(AdapterUnavailable, match="did you mean 'langgraph'"):
        get_adapter("langraph")


def test_missing_framework_gives_an_install_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "needs_absent_framework.py").write_text("import framework_that_is_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry._BUILTIN_MODULES, "absent", ("needs_absent_framework", "absent-framework"))
    with pytest.raises(AdapterUnavailable, match=r"needs absent-framework.*pip install 'coordlab\[absent\]'"):
        get_adapter("absent")


def test_third_party_adapter_through_the_entry_point_group(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "thirdparty_adapter.py").write_text(
        "from coordlab.adapters.plain import PlainAdapter\n"
        "class Echo(PlainAdapter):\n    name = 'echo'\n"
        "def factory():\n    return Echo()\n")
    dist = tmp_path / "thirdparty_adapter-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-adapter\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[coordlab.adapters]\necho = thirdparty_adapter:factory\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(registry._FACTORIES, "echo", raising=False)
    assert "echo" in adapter_names()
    adapter = get_adapter("echo")
    assert isinstance(adapter, Adapter) and adapter.name == "echo"
    registry._FACTORIES.pop("echo", None)
    sys.modules.pop("thirdparty_adapter", None)


def test_importing_the_lab_imports_no_framework() -> None:
    import subprocess

    code = ("import sys, coordlab.tasks.loader, coordlab.runners.harness, coordlab.adapters.registry;"
            "print(sorted(m for m in ('crewai', 'autogen_agentchat', 'langgraph') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
