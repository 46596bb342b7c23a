"""Reading the YAML files the lab takes from users: task files, fault profiles, sweeps, price tables.

Each of them is untrusted input (task files are shared between teams and run next to live
API keys), so one reader bounds everything that could take unbounded time or memory
before a single Python object is built: the file's size, its nesting depth, and its node
count with aliases expanded (a 1 KB "billion laughs" file otherwise expands to gigabytes).
Composing the node graph is linear in the text; the expanded count is computed on the
graph with memoization. Every refusal is a :class:`YamlFileError` naming the file and,
where there is one, the line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

MAX_YAML_BYTES = 1 << 20
"""Largest YAML file read (1 MiB); the built-in task files are about 4 KB."""
MAX_YAML_NODES = 100_000
"""Most values a file may hold once its aliases are expanded; the built-in tasks hold about 300."""
MAX_YAML_DEPTH = 64
"""Deepest nesting of lists and mappings, aliases followed; the built-in tasks nest 6 deep."""

FieldPath = tuple[Any, ...]
_MAP_TAG, _SEQ_TAG = "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"


class YamlFileError(ValueError):
    """A YAML file cannot be read or is refused; ``file``, ``line``, ``field`` and ``message`` say where and why."""

    def __init__(self, file: str, message: str, line: int | None = None, field: str = "(yaml)"):
        self.file, self.message, self.line, self.field = file, message, line, field
        super().__init__(f"{file}:{line}: {message}" if line else f"{file}: {message}")


@dataclass(frozen=True)
class YamlDocument:
    """A parsed YAML file: its data and the 1-based line of every value by path."""

    data: Any
    lines: dict[FieldPath, int] = field(default_factory=dict)
    """A value reached through an alias keeps the line of its first path only."""


class _Refused(Exception):
    """A limit was hit while composing or building; carries the mark of the node at fault."""

    def __init__(self, message: str, mark: yaml.Mark | None):
        super().__init__(message)
        self.message, self.mark = message, mark


class _BoundedLoader(yaml.SafeLoader):
    """A SafeLoader whose composer stops at :data:`MAX_YAML_DEPTH` instead of recursing on."""

    def __init__(self, text: str):
        super().__init__(text)
        self.depth = 0

    def compose_sequence_node(self, anchor: str | None) -> yaml.Node:
        return self._nested(super().compose_sequence_node, anchor)

    def compose_mapping_node(self, anchor: str | None) -> yaml.Node:
        return self._nested(super().compose_mapping_node, anchor)

    def _nested(self, compose: Callable[[str | None], yaml.Node], anchor: str | None) -> yaml.Node:
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                raise _Refused(_too_deep(), self.peek_event().start_mark)
            return compose(anchor)
        finally:
            self.depth -= 1


def _too_deep() -> str:
    return f"lists and mappings nest more than {MAX_YAML_DEPTH} levels deep (the limit)"


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _check_graph(root: yaml.Node) -> None:
    """Refuse recursive aliases, too many values with aliases expanded, and too deep nesting.

    A post-order walk with an explicit stack: each node's expanded count and depth are
    computed once from its children's, so shared (aliased) nodes cost nothing extra.
    """
    measured: dict[int, tuple[int, int]] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            on_path.discard(id(node))
            children = [measured[id(child)] for child in _children(node)]
            count = 1 + sum(c for c, _ in children)
            depth = 0 if isinstance(node, yaml.ScalarNode) else 1 + max((d for _, d in children), default=0)
            if count > MAX_YAML_NODES:
                raise _Refused(f"this value expands to more than {MAX_YAML_NODES:,} values with its aliases "
                               "repeated (the limit keeps a small file from filling memory)", node.start_mark)
            if depth > MAX_YAML_DEPTH:
                raise _Refused(_too_deep(), node.start_mark)
            measured[id(node)] = (count, depth)
        elif id(node) in on_path:
            raise _Refused("an alias refers to a list or mapping that contains it (a recursive alias)",
                           node.start_mark)
        elif id(node) not in measured:
            on_path.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node) if id(child) not in measured)


class _ValueBuilder:
    """Builds Python values from a checked node graph, recording each value's line by path."""

    def __init__(self, loader: _BoundedLoader):
        self.loader = loader
        self.lines: dict[FieldPath, int] = {}
        self.built: dict[int, Any] = {}

    def value(self, node: yaml.Node, path: FieldPath) -> Any:
        if id(node) in self.built:
            return self.built[id(node)]  # an alias: its path keeps the line of the key that holds it
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node)
        if node.tag not in (_MAP_TAG, _SEQ_TAG):
            raise _Refused(f"unsupported tag {node.tag!r} (plain lists and mappings only)", node.start_mark)
        if isinstance(node, yaml.SequenceNode):
            items: list[Any] = []
            self.built[id(node)] = items
            items.extend(self.value(item, path + (index,)) for index, item in enumerate(node.value))
            return items
        return self.mapping(node, path)

    def mapping(self, node: yaml.MappingNode, path: FieldPath) -> dict[Any, Any]:
        self.loader.flatten_mapping(node)  # merge keys (<<: *defaults); their size was counted above
        result: dict[Any, Any] = {}
        self.built[id(node)] = result
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise _Refused("a mapping key must be a single value such as a name, not a list or mapping",
                               key_node.start_mark)
            key = self.scalar(key_node)
            result[key] = self.value(value_node, path + (key,))
            self.lines[path + (key,)] = key_node.start_mark.line + 1  # a field is located at its key
        return result

    def scalar(self, node: yaml.ScalarNode) -> Any:
        try:
            value = self.loader.construct_object(node)
        except (ValueError, OverflowError, TypeError) as exc:
            raise _Refused(f"invalid value {_clip(node.value)}: {exc}", node.start_mark) from None
        self.built[id(node)] = value
        return value


def _clip(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _syntax_message(exc: yaml.YAMLError) -> str:
    parts = (getattr(exc, "context", None), getattr(exc, "problem", None))
    detail = " ".join(str(part) for part in parts if part)
    return "invalid YAML: " + (detail or str(exc).splitlines()[0])


def parse_yaml_text(text: str, where: str) -> YamlDocument:
    """Parse one YAML document from ``text`` within the limits; ``where`` names it in errors."""
    loader: _BoundedLoader | None = None
    try:
        loader = _BoundedLoader(text)
        root = loader.get_single_node()
        if root is None:
            return YamlDocument(None)
        _check_graph(root)
        builder = _ValueBuilder(loader)
        data = builder.value(root, ())
        return YamlDocument(data, builder.lines)
    except _Refused as exc:
        raise YamlFileError(where, exc.message, exc.mark.line + 1 if exc.mark else None) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise YamlFileError(where, _syntax_message(exc), mark.line + 1 if mark else None) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise YamlFileError(where, f"invalid YAML: character #x{exc.character:04x} is not allowed", line) from None
    except yaml.YAMLError as exc:
        raise YamlFileError(where, _syntax_message(exc)) from None
    except RecursionError:
        raise YamlFileError(where, _too_deep()) from None
    finally:
        if loader is not None:
            loader.dispose()


def _read_bytes(path: Path, where: str) -> bytes:
    """At most :data:`MAX_YAML_BYTES` of ``path``: a huge file is refused without reading it all."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_YAML_BYTES + 1)
    except FileNotFoundError:
        raise YamlFileError(where, "cannot read: no such file", field="(file)") from None
    except OSError as exc:
        raise YamlFileError(where, f"cannot read: {exc.strerror or exc}", field="(file)") from None
    if len(raw) > MAX_YAML_BYTES:
        raise YamlFileError(where, f"the file is larger than the {MAX_YAML_BYTES >> 20} MiB limit for YAML files",
                            field="(file)")
    return raw


def _decode(raw: bytes, where: str) -> str:
    """UTF-8 text, or an error at the line and column of the first byte that is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise YamlFileError(where, f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at line {line}, column {column}",
                            line, field="(file)") from None


def read_yaml_document(path: str | Path, label: str | None = None) -> YamlDocument:
    """Read and parse ``path`` within the limits; errors name the file (or ``label``) and the line."""
    where = label or str(path)
    return parse_yaml_text(_decode(_read_bytes(Path(path), where), where), where)


def read_yaml_file(path: str | Path, error: type[Exception], label: str | None = None) -> Any:
    """Parse ``path``; an unreadable, refused or invalid file raises ``error`` naming the file (or ``label``)."""
    try:
        return read_yaml_document(path, label).data
    except YamlFileError as exc:
        raise error(str(exc)) from None
