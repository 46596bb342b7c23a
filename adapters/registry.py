"""One way in for adapters: registered by name, imported only when asked for.

Built-in adapters live in modules of this package and register themselves with
:func:`register` when imported; third parties add theirs through the entry-point group
``coordlab.adapters`` (each entry point loads a zero-argument factory returning an
:class:`~coordlab.adapters.base.Adapter`). Importing the registry imports no framework.

``NAME+mcp`` names adapter NAME with its tools served over MCP (the
``tool_transport`` knob pinned for that one framework), so one run can set a
framework's native tools and its MCP client side by side, paired on the same episodes.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, entry_points
from importlib.metadata import version as distribution_version
from typing import Callable

from coordlab.tasks.loader import did_you_mean

from .base import Adapter, ToolTransport

ENTRY_POINT_GROUP = "coordlab.adapters"
AdapterFactory = Callable[[], Adapter]

_BUILTIN_MODULES: dict[str, tuple[str, str]] = {
    # name -> (module, the distribution that provides its framework)
    "plain": ("coordlab.adapters.plain", "openai"),
    "crewai": ("coordlab.adapters.crewai_adapter", "crewai"),
    "autogen": ("coordlab.adapters.autogen_adapter", "autogen-agentchat"),
    "langgraph": ("coordlab.adapters.langgraph_adapter", "langgraph"),
    "n8n": ("coordlab.adapters.n8n_adapter", "npm:n8n"),  # an npm package in n8n/node_modules (make n8n)
}
_FACTORIES: dict[str, AdapterFactory] = {}
MCP_SUFFIX = "+mcp"
"""Appended to an adapter's name: the same framework, reaching the tools through its MCP client."""


class AdapterUnavailable(LookupError):
    """An adapter is unknown, or its framework is not installed."""


def register(name: str) -> Callable[[AdapterFactory], AdapterFactory]:
    """Class or factory decorator: make an adapter available under ``name``."""
    def decorate(factory: AdapterFactory) -> AdapterFactory:
        _FACTORIES[name] = factory
        return factory
    return decorate


def _plugin_factories() -> dict[str, object]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def adapter_names() -> list[str]:
    """Every adapter name that can be asked for (built-in and plug-in); each may also take :data:`MCP_SUFFIX`."""
    return sorted({*_BUILTIN_MODULES, *_FACTORIES, *_plugin_factories()})


def is_adapter_name(name: str) -> bool:
    """Whether ``name`` (with or without :data:`MCP_SUFFIX`) names an adapter."""
    return name.removesuffix(MCP_SUFFIX) in adapter_names()


def adapter_module(name: str) -> str | None:
    """The module a built-in adapter lives in (None for a plug-in): what a process imports to have it ready."""
    name = name.removesuffix(MCP_SUFFIX)
    return _BUILTIN_MODULES[name][0] if name in _BUILTIN_MODULES else None


def get_adapter(name: str) -> Adapter:
    """A fresh adapter by name; a clear error for a typo or a missing framework.

    With :data:`MCP_SUFFIX` the adapter answers to the whole name and offers only the MCP transport.
    """
    if name.endswith(MCP_SUFFIX):
        adapter = get_adapter(name.removesuffix(MCP_SUFFIX))
        if ToolTransport.MCP not in getattr(adapter, "tool_transports", ()):
            raise AdapterUnavailable(f"adapter {adapter.name!r} has no MCP client, so there is no {name!r}")
        adapter.name = name
        adapter.tool_transports = frozenset({ToolTransport.MCP})  # type: ignore[attr-defined]
        return adapter
    if name not in _FACTORIES and name in _BUILTIN_MODULES:
        module, distribution = _BUILTIN_MODULES[name]
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            raise AdapterUnavailable(
                f"adapter {name!r} needs {distribution}, which is not installed ({exc.name} missing); "
                f"install it with: pip install 'coordlab[{name}]'") from None
    if name not in _FACTORIES:
        plugin = _plugin_factories().get(name)
        if plugin is None:
            raise AdapterUnavailable(f"no adapter {name!r}; {did_you_mean(name, adapter_names())}")
        _FACTORIES[name] = plugin.load()  # type: ignore[attr-defined]
    return _FACTORIES[name]()


def adapter_version(name: str) -> str:
    """The version of the framework behind adapter ``name``, read without importing the framework.

    The runner's parent process needs every episode key up front but must not import the
    frameworks (they are never mixed in one process), so versions come from package metadata.
    A ``NAME+mcp`` twin has NAME's version.
    """
    name = name.removesuffix(MCP_SUFFIX)
    if name in _BUILTIN_MODULES:
        distribution = _BUILTIN_MODULES[name][1]
        if distribution.startswith("npm:"):  # not a Python distribution: its package.json has the version
            from .n8n_runtime import N8nUnavailable, npm_version
            try:
                return npm_version(distribution.removeprefix("npm:"))
            except N8nUnavailable as exc:
                raise AdapterUnavailable(f"adapter {name!r}: {exc}") from None
        try:
            return distribution_version(distribution)
        except PackageNotFoundError:
            raise AdapterUnavailable(f"adapter {name!r} needs {distribution}, which is not installed; "
                                     f"install it with: pip install 'coordlab[{name}]'") from None
    plugin = _plugin_factories().get(name)
    if plugin is not None:
        dist = getattr(plugin, "dist", None)
        return dist.version if dist is not None else "unknown"
    if name in _FACTORIES:
        return _FACTORIES[name]().version()
    raise AdapterUnavailable(f"no adapter {name!r}; {did_you_mean(name, adapter_names())}")
