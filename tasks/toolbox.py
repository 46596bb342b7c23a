"""Where a task's tools come from: the built-in library, plug-ins, and the task file itself.

A task calls a tool by name. The name is looked up, in this order, among the tools the
task file declares itself, the built-in library (declarations in ``builtin_tools/*.yaml``,
the same syntax a task file uses) and Python plug-ins registered under the entry-point
group ``coordlab.tools`` (each entry point names a :class:`~coordlab.tasks.tools.Tool`
made with :func:`~coordlab.tasks.tools.python_tool`). A name may be defined only once:
a task tool or a plug-in with a built-in's name is refused rather than silently shadowed.
Plug-ins are imported only when a task names them.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from .declared_tools import ToolDeclarations
from .problems import Problem, ProblemCollector, TaskValidationError, TooManyProblems
from .tools import Tool
from .yaml_files import YamlFileError, read_yaml_document

BUILTIN_DIR = Path(__file__).parent / "builtin_tools"
"""The built-in tool library: YAML declarations, one file per domain."""
ENTRY_POINT_GROUP = "coordlab.tools"
"""The entry-point group through which a distribution adds Python tools."""
LIBRARY_SCHEMA_VERSION = 1


class ToolLookupError(LookupError):
    """A tool name cannot be resolved to exactly one working tool; the message says why."""


def read_library(path: Path, origin: str) -> dict[str, Tool]:
    """The tools declared in one library file (``schema_version`` and ``tools``); every problem raised at once."""
    try:
        document = read_yaml_document(path)
    except YamlFileError as exc:
        raise TaskValidationError([Problem(exc.file, exc.line, exc.field, exc.message)]) from None
    collector = ProblemCollector(str(path), document.lines)
    tools: dict[str, Tool] = {}
    try:
        data = document.data
        if not collector.expect(data, dict, (), "a mapping with schema_version and tools"):
            raise TaskValidationError(collector.problems)
        collector.unknown_keys(data, {"schema_version", "tools"}, ())
        if data.get("schema_version") != LIBRARY_SCHEMA_VERSION:
            collector.problem(("schema_version",), f"this coordlab reads tool libraries of schema_version "
                                                   f"{LIBRARY_SCHEMA_VERSION}")
        tools = ToolDeclarations(collector, origin).parse(data.get("tools"), ("tools",))
    except TooManyProblems:
        pass
    if collector.problems:
        raise TaskValidationError(collector.problems)
    return tools


@functools.cache
def builtin_tools() -> dict[str, Tool]:
    """Every tool of the built-in library, by name (read once per process)."""
    tools: dict[str, Tool] = {}
    for path in sorted(BUILTIN_DIR.glob("*.yaml")):
        for name, tool in read_library(path, "built-in").items():
            if name in tools:
                raise ToolLookupError(f"{path}: tool {name!r} is declared twice in the built-in library")
            tools[name] = tool
    return tools


def _plugin_entry_points() -> dict[str, EntryPoint]:
    """The installed tool plug-ins by name (listed once per import path: a scan costs milliseconds)."""
    return _entry_points_on(tuple(sys.path))


@functools.lru_cache(maxsize=8)
def _entry_points_on(path: tuple[str, ...]) -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def tool_names() -> set[str]:
    """Every tool name a task can call without declaring it: built-ins and installed plug-ins."""
    return set(builtin_tools()) | set(_plugin_entry_points())


def find_tool(name: str) -> Tool | None:
    """A built-in or plug-in tool by name; None when there is none; :class:`ToolLookupError` for a broken plug-in."""
    plugins = _plugin_entry_points()
    if name in builtin_tools():
        if name in plugins:
            raise ToolLookupError(f"tool {name!r} is a built-in and also the plug-in {plugins[name].value!r}; "
                                  "rename the plug-in's tool")
        return builtin_tools()[name]
    entry_point = plugins.get(name)
    return None if entry_point is None else _load_plugin(entry_point)


@functools.cache
def _load_plugin(entry_point: EntryPoint) -> Tool:
    """The :class:`Tool` an entry point names, checked; its origin names the distribution and version."""
    where = f"tool plug-in {entry_point.name!r} ({entry_point.value})"
    try:
        tool = entry_point.load()
    except Exception as exc:  # noqa: BLE001 - any import failure of third-party code is reported, not raised raw
        raise ToolLookupError(f"{where} cannot be loaded: {type(exc).__name__}: {exc}") from exc
    if not isinstance(tool, Tool):
        raise ToolLookupError(f"{where} is a {type(tool).__name__}, not a Tool; make it with "
                              "coordlab.tasks.tools.python_tool")
    if tool.name != entry_point.name:
        raise ToolLookupError(f"{where} defines a tool named {tool.name!r}; the entry point and the tool "
                              "must have the same name")
    dist = entry_point.dist
    release = f"{dist.name} {dist.version}" if dist is not None else "an unnamed distribution"
    return dataclasses.replace(tool, origin=f"plug-in {release}",
                               fingerprint=f"{tool.fingerprint}:{release}")
