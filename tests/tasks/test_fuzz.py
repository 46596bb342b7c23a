"""Fuzzing the two untrusted inputs of a task file: its YAML and its expressions.

(a) The loader, on random and mutated task files (the suite and ``minimal.yaml`` with lines
deleted, duplicated or swapped, values replaced by other types, aliases injected, random
bytes): every input ends in a Task or a :class:`TaskValidationError` whose problems all
name the file and a field, within a generous time bound, never another exception.
(b) The expression language, on random expression text and random syntax trees: compiling
gives an Expression or an :class:`ExpressionError`, and evaluating against the helpers,
with a secret planted in the environment, never returns or mentions the secret and only
raises :class:`ExpressionError`. Known sandbox escapes are checked by name.

Runs are derandomized (reproducible in CI) and sized to finish in about 20 seconds.
"""

from __future__ import annotations

import ast
import os
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from coordlab.tasks.expressions import ExpressionError, compile_expression
from coordlab.tasks.functions import HELPERS, get
from coordlab.tasks.loader import TaskValidationError, load_task, suite_paths
from coordlab.tasks.schema import Task
from coordlab.tasks.toolbox import builtin_tools
from coordlab.tasks.world import World

DATA = Path(__file__).parents[1] / "data"
SEED_TEXTS = [p.read_text() for p in [*suite_paths(), DATA / "minimal.yaml"]]
SECRET_VARIABLE = "COORDLAB_FUZZ_SECRET"
SECRET = "fuzz-secret-0d9c3e7a"
SECONDS_PER_INPUT = 10.0
"""Generous: a valid input takes milliseconds, a regression to a bomb takes minutes."""
FUZZ = settings(max_examples=1000, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

ODD_VALUES = [
    "[]", "{}", "[1, [2, [3]]]", "{a: 1, b: [x]}", "1", "-3", "1.5", "true", "null", "~", "''",
    '"${n}"', "${i}", "2026-13-45", "2026-11-20", "!!binary aGVsbG8=", "!!python/name:os.system ''",
    "!!set {a, b}", "*nowhere", "&anchor [1]", "1" * 5000, "'x' * 999999999999", "[0] * 999999999999",
    "fmt('{f.__globals__}', f=get)", "\"fmt('{x!r}', x=1)\"", "? [a]\n: b", "{<<: {a: 1}}", "\t", "'",
    "[" * 100 + "]" * 100, "0x1F", ".inf", ".nan", "100000000",
]


# -- (a) the loader ------------------------------------------------------------------------

def _value_position(line: str) -> int | None:
    """Where the value of a ``key: value`` line starts, if the line has one."""
    index = line.find(": ")
    return None if index < 0 else index + 2


def _delete(draw: st.DrawFn, lines: list[str], index: int, other: int) -> None:
    del lines[index]


def _duplicate(draw: st.DrawFn, lines: list[str], index: int, other: int) -> None:
    lines.insert(other, lines[index])


def _swap_values(draw: st.DrawFn, lines: list[str], index: int, other: int) -> None:
    first, second = _value_position(lines[index]), _value_position(lines[other])
    if first is not None and second is not None:
        lines[index], lines[other] = (lines[index][:first] + lines[other][second:],
                                      lines[other][:second] + lines[index][first:])


def _odd_value(draw: st.DrawFn, lines: list[str], index: int, other: int) -> None:
    start = _value_position(lines[index])
    if start is not None:
        lines[index] = lines[index][:start] + draw(st.sampled_from(ODD_VALUES))


def _alias(draw: st.DrawFn, lines: list[str], index: int, other: int) -> None:
    first, second = _value_position(lines[index]), _value_position(lines[other])
    if first is not None and second is not None:
        lines[index] = lines[index][:first] + "&fz " + lines[index][first:]
        lines[other] = lines[other][:second] + "*fz"


def _indent(draw: st.DrawFn, lines: list[str], index: int, other: int) -> None:
    lines[index] = draw(st.sampled_from(["", "  ", "    ", "\t", "- "])) + lines[index].lstrip()


def _bomb(draw: st.DrawFn, lines: list[str], index: int, other: int) -> None:
    lines += ["laughs:", "  l0: &l0 [a, a, a, a, a, a, a, a, a, a]"]
    lines += [f"  l{n}: &l{n} [" + ", ".join([f"*l{n - 1}"] * 10) + "]" for n in range(1, 8)]


def _text(draw: st.DrawFn, lines: list[str], index: int, other: int) -> None:
    lines[index] = draw(st.text(max_size=40))


# Mostly mutations that keep the YAML readable, so the checks past parsing are fuzzed too.
MUTATIONS = [_delete, _duplicate, _swap_values, _odd_value, _alias] * 3 + [_indent, _bomb, _text]


@st.composite
def mutated_lines(draw: st.DrawFn, lines: list[str]) -> list[str]:
    """One mutation of a task file's lines, at a drawn line (and a second one for swaps)."""
    lines = list(lines) or [""]
    index, other = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
    draw(st.sampled_from(MUTATIONS))(draw, lines, index, other)
    return lines


@st.composite
def task_file_bytes(draw: st.DrawFn) -> bytes:
    """A suite or minimal task file after a few mutations, sometimes with random bytes inside."""
    lines = draw(st.sampled_from(SEED_TEXTS)).splitlines()
    for _ in range(draw(st.integers(1, 4))):
        lines = draw(mutated_lines(lines))
    data = ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 4)) == 0:
        position = draw(st.integers(0, len(data)))
        data = data[:position] + draw(st.binary(min_size=1, max_size=6)) + data[position:]
    return data


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.floats(), st.text(max_size=12),
                    st.sampled_from(["${n}", "clerk", "lookup", "crm_lookup", "customer_id", "x[0]", "fmt('{x}')"]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(SCALARS, inner, max_size=3),
                      max_leaves=8)


def _containers(data: Any) -> list[Any]:
    """Every list and mapping inside ``data``, the document itself first."""
    found, stack = [], [data]
    while stack:
        item = stack.pop()
        if isinstance(item, (list, dict)):
            found.append(item)
            stack.extend(item.values() if isinstance(item, dict) else item)
    return found


@st.composite
def restructured_task(draw: st.DrawFn) -> bytes:
    """A parsed suite or minimal task with values replaced by other types, or keys dropped or renamed."""
    data = yaml.safe_load(draw(st.sampled_from(SEED_TEXTS)))
    for _ in range(draw(st.integers(1, 3))):
        container = draw(st.sampled_from(_containers(data)))
        if not container:
            continue
        key = draw(st.sampled_from(list(container) if isinstance(container, dict) else range(len(container))))
        action = draw(st.sampled_from(["replace", "replace", "delete", "rename"]))
        value = container.pop(key) if action != "replace" else None
        if action == "replace":
            container[key] = draw(VALUES)
        elif action == "rename" and isinstance(container, dict):
            container[draw(SCALARS)] = value
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode()


def _expressions(task: Task) -> Iterator[Any]:
    for step in task.steps:
        for plan in step.tool_calls:
            yield from plan.arguments.values()
        for output in step.produces:
            yield from (e for e in (output.value, output.wrong) if e is not None)
    yield from (gate.predicate for gate in task.gates)
    yield from (check.predicate for check in task.checks)


def _check_load(path: Path, data: bytes) -> str:
    """The loader's contract on one input: a Task, or located problems; nothing else, never slowly.

    Returns how the input ended, for hypothesis's statistics.
    """
    path.write_bytes(data)
    start = time.perf_counter()
    try:
        task = load_task(path)
    except TaskValidationError as exc:
        assert exc.problems
        outcome = "problems at " + ("(yaml)/(file)" if exc.problems[0].field in ("(file)", "(yaml)") else "fields")
        for problem in exc.problems:
            assert problem.file == str(path) and problem.field and problem.message, problem
            assert problem.line is not None or problem.field in ("(file)", "(yaml)"), problem
    else:
        outcome = "loaded a task"
        namespace = {**HELPERS, **task.inputs, **World.from_fixtures(task.fixtures).state}
        for expression in _expressions(task):
            try:
                expression.evaluate(namespace)
            except ExpressionError:
                pass
    assert time.perf_counter() - start < SECONDS_PER_INPUT
    return outcome


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the fuzzed files (hypothesis reuses a test's fixtures across examples)."""
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(data=task_file_bytes())
def test_mutated_task_files_end_in_a_task_or_located_problems(fuzz_dir: Path, data: bytes) -> None:
    event(_check_load(fuzz_dir / "mutated.yaml", data))


@settings(FUZZ, max_examples=300)
@given(data=restructured_task())
def test_restructured_task_files_end_in_a_task_or_located_problems(fuzz_dir: Path, data: bytes) -> None:
    event(_check_load(fuzz_dir / "restructured.yaml", data))


@settings(FUZZ, max_examples=200)
@given(data=st.binary(max_size=300) | st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_random_bytes_end_in_located_problems(fuzz_dir: Path, data: bytes) -> None:
    event(_check_load(fuzz_dir / "random.yaml", data))


# -- (b) the expression language -----------------------------------------------------------

ESCAPES = [
    f"fmt('{{f.__globals__[re].enum.sys.modules[os].environ[{SECRET_VARIABLE}]}}', f=get)",
    f"fmt('{{f.__globals__[os].environ[{SECRET_VARIABLE}]}}', f=fmt)",
    "fmt('{x.__class__.__mro__[1].__subclasses__}', x=1)",
    "fmt('{g.gi_frame.f_globals}', g=(v for v in L))",
    "fmt('{0.__class__}', 1)", "fmt('{x!r}', x=get)", "fmt('{x:{y}}', x=1, y=2)",
    "sorted(['{f.__globals__}'], key=fmt)", "max(['{f.__globals__[os]}'], key=fmt)",
    "().__class__.__bases__[0].__subclasses__()", "x.__class__", "get.__globals__",
    "getattr(get, '__globals__')", "get(get, '__globals__')", "get(get, 'environ')",
    "__import__('os').environ", "__builtins__", "__loader__", "_ _", "globals()", "vars()",
    "(lambda: 0).__globals__", "[v for v in ()].__class__", "(y := get)", "[*L]", "{**d}",
    "f'{get.__globals__}'", "f'{x!r}'", "eval('1')", "exec('1')", "open('/etc/passwd')",
    "str.format('{}', 1)", "'{0.__globals__}'.format(get)", "'%(a)s' % {'a': 1}", "'%s' % get",
    "\uff3f\uff3fimport\uff3f\uff3f('os')", "type(get)", "list(get)", "str(get)",
    "int('1' * 5000)", "round(5, -1000000000)", "'x' * 999999999999", "[0] * 999999999999",
    "str([[[0] * 1000] * 1000] * 1000)", "[[a for a in L] for b in L for c in L]",
    "sum([[0]] * 1000, [])", "kb_search(topic='x')", "kb_search(topic=str(get))",
]
NAMES = ["x", "s", "L", "d", "f", "kb_search", *HELPERS]


@pytest.fixture(scope="module")
def secret_namespace() -> Iterator[dict[str, Any]]:
    """The helpers and some data, with a secret in the environment for the module's tests."""
    world = World.from_fixtures({"kb": [{"id": "F1", "topic": "x", "text": "fact"}]})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SECRET_VARIABLE, SECRET)
        yield {**HELPERS, "x": 3, "s": "text", "L": list(range(50)), "d": {"a": 1, "b": [1, 2]}, "f": get,
               "kb_search": lambda **arguments: builtin_tools()["kb_search"](world, arguments)}


def _check_expression(source: str, namespace: dict[str, Any]) -> str:
    """The language's contract on one input: compile or ExpressionError, evaluate or ExpressionError, no secret.

    Returns how the input ended, for hypothesis's statistics.
    """
    assert os.environ[SECRET_VARIABLE] == SECRET
    start = time.perf_counter()
    try:
        expression = compile_expression(source)
    except ExpressionError as exc:
        assert SECRET not in str(exc)
        return "refused at compile time"
    try:
        result = expression.evaluate(namespace)
    except ExpressionError as exc:
        outcome = "failed when evaluated"
        assert SECRET not in str(exc) and SECRET not in repr(exc.__cause__)
    else:
        outcome = "evaluated"
        assert SECRET not in repr(result)
    assert time.perf_counter() - start < SECONDS_PER_INPUT
    return outcome


@pytest.mark.parametrize("source", ESCAPES)
def test_classic_sandbox_escapes_fail_without_the_secret(secret_namespace: dict[str, Any], source: str) -> None:
    _check_expression(source, secret_namespace)


def test_the_known_payload_is_refused_not_just_hidden(secret_namespace: dict[str, Any]) -> None:
    with pytest.raises(ExpressionError, match="not a plain name"):
        compile_expression(ESCAPES[0]).evaluate(secret_namespace)


TOKENS = [*NAMES, "__globals__", "__class__", "getattr", "__import__", "_", "v", "(", ")", "[", "]", "{", "}",
          ",", ":", ".", "+", "-", "*", "/", "//", "%", "**", "==", "<", " in ", " not ", " and ", " or ",
          " if ", " else ", " for v in ", " lambda ", ":=", "!", "0", "1", "-1", "999999999999", "'x'", "''",
          "'{f.__globals__}'", "'{x}'", "'{x!r}'", "'{x:>5}'", "'%s'", "f'{x}'", "key=", "f=", "x="]


@FUZZ
@given(source=st.lists(st.sampled_from(TOKENS), max_size=24).map("".join) | st.text(max_size=60))
def test_random_expression_text(secret_namespace: dict[str, Any], source: str) -> None:
    event(_check_expression(source, secret_namespace))


def _name(draw_from: st.SearchStrategy[str]) -> st.SearchStrategy[ast.expr]:
    return draw_from.map(lambda n: ast.Name(n, ast.Load()))


LEAVES: st.SearchStrategy[ast.expr] = st.one_of(
    _name(st.sampled_from([*NAMES, "getattr", "v"])),
    st.sampled_from([0, 1, -1, 2.5, 999999999999, "x", "{x}", "{f.__globals__}", "%s", True, None]).map(ast.Constant),
)
OPERATORS = [ast.Add(), ast.Sub(), ast.Mult(), ast.Div(), ast.FloorDiv(), ast.Mod()]
COMPARISONS = [ast.Eq(), ast.Lt(), ast.In(), ast.NotIn(), ast.Is()]


def _call_with_keyword(parts: tuple[str, ast.expr, ast.expr]) -> ast.Call:
    """``fmt(a, f=b)``, ``sorted(a, key=b)`` or ``max(a, key=b)``: helpers that call or format ``b``."""
    helper, argument, keyword = parts
    return ast.Call(ast.Name(helper, ast.Load()), [argument], [ast.keyword("f" if helper == "fmt" else "key", keyword)])


def _composite(children: st.SearchStrategy[ast.expr]) -> st.SearchStrategy[ast.expr]:
    pair = st.tuples(children, children)
    return st.one_of(
        st.tuples(children, st.sampled_from(OPERATORS), children).map(lambda t: ast.BinOp(t[0], t[1], t[2])),
        st.tuples(children, st.sampled_from(COMPARISONS), children).map(lambda t: ast.Compare(t[0], [t[1]], [t[2]])),
        st.tuples(st.sampled_from([*HELPERS, "getattr"]), st.lists(children, max_size=3)).map(
            lambda t: ast.Call(ast.Name(t[0], ast.Load()), t[1], [])),
        st.tuples(st.sampled_from(["fmt", "sorted", "max"]), children, children).map(_call_with_keyword),
        pair.map(lambda t: ast.Subscript(t[0], t[1], ast.Load())),
        pair.map(lambda t: ast.ListComp(t[0], [ast.comprehension(ast.Name("v", ast.Store()), t[1], [], 0)])),
        st.lists(children, max_size=3).map(lambda items: ast.List(items, ast.Load())),
        pair.map(lambda t: ast.Dict([t[0]], [t[1]])),
        st.tuples(children, children, children).map(lambda t: ast.IfExp(t[0], t[1], t[2])),
        children.map(lambda c: ast.UnaryOp(ast.Not(), c)),
    )


def _foreign(children: st.SearchStrategy[ast.expr]) -> st.SearchStrategy[ast.expr]:
    """Syntax outside the language around a tree (inside every tree, it would stop most at compile time)."""
    return st.one_of(
        st.tuples(children, st.sampled_from(["__globals__", "__class__", "real"])).map(
            lambda t: ast.Attribute(t[0], t[1], ast.Load())),
        st.tuples(children, st.sampled_from([ast.Pow(), ast.LShift()]), children).map(
            lambda t: ast.BinOp(t[0], t[1], t[2])),
        children.map(lambda c: ast.JoinedStr([ast.FormattedValue(c, -1, None)])),
        children.map(lambda c: ast.Lambda(ast.arguments([], [], None, [], [], None, []), c)),
        children.map(lambda c: ast.NamedExpr(ast.Name("w", ast.Store()), c)),
        children.map(lambda c: ast.List([ast.Starred(c, ast.Load())], ast.Load())),
    )


IN_LANGUAGE = st.recursive(LEAVES, _composite, max_leaves=12)
TREES = st.integers(0, 3).flatmap(lambda pick: _foreign(IN_LANGUAGE) if pick == 0 else IN_LANGUAGE)


@FUZZ
@given(tree=TREES)
def test_random_syntax_trees(secret_namespace: dict[str, Any], tree: ast.expr) -> None:
    source = ast.unparse(ast.fix_missing_locations(ast.Expression(tree)))
    event(_check_expression(source, secret_namespace))
