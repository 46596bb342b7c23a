"""Task files are untrusted input: each finding of the hardening review, refused with a located error.

Calls that used to hang or fill memory run in a bounded child process (``bounded``), so a
regression fails here within a minute instead of stalling the run. Time bounds are
generous upper limits for a slow, loaded machine, never tight measurements.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest

from coordlab.tasks.expressions import ExpressionError, compile_expression
from coordlab.tasks.functions import HELPERS, fmt, get
from coordlab.tasks.loader import TaskValidationError, load_task, suite_paths, validate_files
from coordlab.tasks.toolbox import builtin_tools
from coordlab.tasks.world import World
from coordlab.tasks.yaml_files import read_yaml_file

SECRET_VARIABLE = "COORDLAB_HARDENING_SECRET"
SECRET = "s3cr3t-value-that-must-never-leak"
FMT_PAYLOAD = f"fmt('{{f.__globals__[re].enum.sys.modules[os].environ[{SECRET_VARIABLE}]}}', f=get)"
GENEROUS_SECONDS = 10.0
CHAIN = next(p for p in suite_paths() if p.stem == "chain")


class CallerError(Exception):
    """The error class a caller of ``read_yaml_file`` passes in."""


def problem_rows(path: Path) -> list[tuple[str, int | None, str, str]]:
    """``validate_files`` as plain tuples, so a bounded child can send them back."""
    return [(p.file, p.line, p.field, p.message) for p in validate_files([path])]


def read_with_caller_error(path: Path) -> str:
    """What ``read_yaml_file`` raises for ``path`` (it must be the caller's error class)."""
    try:
        read_yaml_file(path, CallerError)
    except CallerError as exc:
        return str(exc)
    return "no error"


def evaluate(source: str, namespace: dict[str, Any]) -> Any:
    """Compile and evaluate ``source`` against the helpers plus ``namespace``."""
    return compile_expression(source).evaluate({**HELPERS, **namespace})


def billion_laughs(levels: int = 9) -> str:
    """Nine anchors of nine aliases each: 9**9 values from a few hundred bytes."""
    text = "  lol0: &lol0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    for level in range(1, levels + 1):
        aliases = ", ".join([f"*lol{level - 1}"] * 9)
        text += f"  lol{level}: &lol{level} [{aliases}]\n"
    return text


def assert_returned_quickly(outcome: Any) -> Any:
    """The value a bounded call returned, after checking it returned well within the time bound."""
    assert outcome.kind == "returned", outcome
    assert outcome.seconds < GENEROUS_SECONDS, outcome
    return outcome.value


# -- 1. fmt() and the expression language cannot reach the process's internals ------------

def test_fmt_payload_cannot_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A template that reaches fmt at run time (from a field, not written in the file) is refused there."""
    monkeypatch.setenv(SECRET_VARIABLE, SECRET)
    template = f"{{f.__globals__[re].enum.sys.modules[os].environ[{SECRET_VARIABLE}]}}"
    with pytest.raises(ExpressionError, match="not a plain name") as caught:
        evaluate("fmt(template, f=get)", {"template": template})
    assert SECRET not in str(caught.value)
    assert "fmt(" in str(caught.value), "the error names the expression"


def test_a_written_fmt_payload_is_a_located_problem_of_the_task_file(tmp_path: Path, data_dir: Path) -> None:
    path = tmp_path / "payload.yaml"
    text = (data_dir / "minimal.yaml").read_text()
    path.write_text(text.replace("email: crm_lookup['email']", f'email: "{FMT_PAYLOAD}"', 1))
    assert path.read_text() != text
    problems = validate_files([path])
    assert len(problems) == 1 and problems[0].field.endswith("produces.email") and problems[0].line
    assert "not a plain name" in problems[0].message


@pytest.mark.parametrize("source, message", [
    ("fmt('{a}', b=1)", "fills a but no such value"),
    ("fmt('{a:%%}', a=1)", "unsupported format spec"),
    ("fmt('{a.real}', a=1)", "not a plain name"),
    ("fmt('a { b', a=1)", "single"),
])
def test_written_templates_are_checked_when_the_task_loads(source: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=message):
        compile_expression(source)


@pytest.mark.parametrize("template", [
    "{f.__globals__}", "{f.__globals__[re]}", "{x[0]}", "{x.real}", "{x!r}", "{x!s:>5}", "{x:{width}}",
    "{0}", "{}", "{ x }", "{", "}", "a { b", "{x:>999999999}", "{x:.9999f}", "{missing}",
])
def test_fmt_refuses_everything_but_plain_names(template: str) -> None:
    with pytest.raises(ValueError, match="^fmt: "):
        fmt(template, x=[1.5], width=3, f=get)


def test_fmt_fills_names_escapes_and_simple_specs() -> None:
    text = fmt("{{{name}}} {x:.2f}|{x:>6}|{n:,}|{nothing}", name="Ada", x=1.5, n=1234567, nothing=None)
    assert text == "{Ada} 1.50|   1.5|1,234,567|(unknown)"


def test_fmt_output_is_bounded() -> None:
    with pytest.raises(ValueError, match="longer than"):
        fmt("{x}" * 1000, x="y" * 10_000)


@pytest.mark.parametrize("source", [
    "f'{x}'", "f'{x!r:>{width}}'", "x.__class__", "getattr(x, '__class__')", "__import__('os')",
    "(lambda: 1)()", "(y := 1)", "[*x]", "{**x}.__class__", "__builtins__",
])
def test_foreign_syntax_and_builtins_are_refused(source: str) -> None:
    with pytest.raises(ExpressionError):
        evaluate(source, {"x": [1], "width": 3})


# -- 2. YAML bombs: aliases, size, depth, encoding, repeats --------------------------------

def test_alias_bomb_task_file_is_refused_quickly_with_a_located_error(data_dir: Path, tmp_path: Path,
                                                                      bounded: Callable[..., Any]) -> None:
    path = tmp_path / "laughs.yaml"
    text = (data_dir / "minimal.yaml").read_text().replace("  outbox: []\n", "  outbox: []\n" + billion_laughs())
    path.write_text(text)
    assert len(text.encode()) < 2048
    problems = assert_returned_quickly(bounded(problem_rows, path))
    assert len(problems) == 1, problems
    file, line, field, message = problems[0]
    first_refused_anchor = text.splitlines().index(next(s for s in text.splitlines() if s.startswith("  lol5:")))
    assert (file, line, field) == (str(path), first_refused_anchor + 1, "(yaml)")
    assert "expands to more than 100,000 values" in message


@pytest.mark.parametrize("caller", ["read_yaml_file", "fault profile", "sweep", "price table"])
def test_alias_bomb_through_read_yaml_file_raises_the_callers_error(tmp_path: Path, caller: str,
                                                                    bounded: Callable[..., Any]) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text("name: bomb\nlaughs:\n" + billion_laughs())
    message = assert_returned_quickly(bounded(_read_as, caller, path))
    assert message.startswith(("CallerError", "ProfileError", "SweepError", "PriceTableError")), message
    assert f"{path}:" in message and "expands to more than 100,000 values" in message


def _read_as(caller: str, path: Path) -> str:
    """Read ``path`` the way ``caller`` does; the name and text of the error it raises."""
    from coordlab.reports.data import load_prices
    from coordlab.runners.faults import load_profile
    from coordlab.runners.sweep import Sweep

    read: Callable[[Path], Any] = {"read_yaml_file": lambda p: read_yaml_file(p, CallerError),
                                   "fault profile": load_profile, "sweep": Sweep.from_file,
                                   "price table": load_prices}[caller]
    try:
        read(path)
    except Exception as exc:  # noqa: BLE001 - the test checks which class it was
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def test_oversized_file_is_refused_without_reading_it(data_dir: Path, tmp_path: Path,
                                                      bounded: Callable[..., Any]) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text((data_dir / "minimal.yaml").read_text())
    os.truncate(path, 64 << 20)  # sparse: 64 MiB on paper, nothing on disk
    problems = assert_returned_quickly(bounded(problem_rows, path))
    assert [(p[0], p[2]) for p in problems] == [(str(path), "(file)")]
    assert "larger than the 1 MiB limit" in problems[0][3]
    assert "1 MiB limit" in assert_returned_quickly(bounded(read_with_caller_error, path))


def test_a_file_just_under_the_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "padded.yaml"
    path.write_text("a: 1\n#" + "x" * ((1 << 20) - 10) + "\n")
    assert read_yaml_file(path, CallerError) == {"a": 1}


@pytest.mark.parametrize("text, line", [
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", 1),
    ("a:\n" + "".join("  " * level + f"k{level}:\n" for level in range(1, 200)), 65),
    ("a: &a " + "[" * 40 + "1" + "]" * 40 + "\nb: " + "[" * 40 + "*a" + "]" * 40 + "\n", 2),
])
def test_deep_nesting_is_a_located_problem(tmp_path: Path, text: str, line: int) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    problems = validate_files([path])
    assert [(p.file, p.line, p.field) for p in problems] == [(str(path), line, "(yaml)")]
    assert "nest more than 64 levels" in problems[0].message
    assert "64 levels" in read_with_caller_error(path)


def test_recursive_alias_is_a_located_problem(tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text("name: loop\nfixtures:\n  a: &a {b: [*a]}\n")
    assert [(p.line, p.field) for p in validate_files([path])] == [(3, "(yaml)")]


def test_non_utf8_file_is_located_and_the_other_files_are_still_checked(data_dir: Path, tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.yaml"
    text = (data_dir / "minimal.yaml").read_text().replace("Two roles;", "Zwei Rollen für;")
    latin1.write_bytes(text.encode("latin-1"))
    broken = data_dir / "broken" / "unknown_role.yaml"
    problems = validate_files([latin1, broken, data_dir / "minimal.yaml"])
    first = problems[0]
    assert (first.file, first.line, first.field) == (str(latin1), 4, "(file)")
    assert "not UTF-8 text: byte 0xfc at line 4, column 27" in first.message
    assert any(p.file == str(broken) and p.field == "steps[1].role" for p in problems)
    assert all(p.file in (str(latin1), str(broken)) for p in problems)


@pytest.mark.parametrize("count", ["100000000", "13", "0", "-1"])
def test_repeat_count_is_bounded_before_unrolling(tmp_path: Path, count: str,
                                                  bounded: Callable[..., Any]) -> None:
    path = tmp_path / "long_chain.yaml"
    text = CHAIN.read_text()
    path.write_text(text.replace('count: "${n}"', f"count: {count}"))
    problems = assert_returned_quickly(bounded(problem_rows, path))
    line = text.splitlines().index(next(s for s in text.splitlines() if "repeat:" in s)) + 1
    assert (str(path), line, "steps[0].repeat.count") in [p[:3] for p in problems], problems
    assert any("must be 1 to 12" in p[3] for p in problems)


def test_many_repeats_are_counted_not_unrolled(tmp_path: Path) -> None:
    path = tmp_path / "many.yaml"
    text = CHAIN.read_text()
    template = text[text.index("  - repeat:"):text.index("checks:")]
    path.write_text(text.replace(template, template * 2000))
    problems = validate_files([path])
    assert any(p.field == "steps" and "this one has 12000" in p.message for p in problems), problems[:3]


# -- odd YAML: every shape where another belongs is a located problem ----------------------

MINIMAL_EDITS: dict[str, tuple[str, str, str]] = {
    # name: (text to replace in minimal.yaml, replacement, field of the expected problem)
    "list as a key": ("  customer_id: C-1", "  ? [customer_id]\n  : C-1", "(yaml)"),
    "mapping as a key": ("  customer_id: C-1", "  ? {a: 1}\n  : C-1", "(yaml)"),
    "integer role name": ("  clerk:\n", "  7:\n", "roles[7]"),
    "roles as a list": ("roles:\n", "roles: [clerk, mailer]\nunused:\n", "roles"),
    "step items of wrong types": ("steps:\n", "steps:\n  - 1\n  - [a]\n  - null\n", "steps[0]"),
    "role as a list": ("    role: clerk\n", "    role: [clerk]\n", "steps[0].role"),
    "role as a mapping": ("    role: clerk\n", "    role: {clerk: 1}\n", "steps[0].role"),
    "read as a list": ("    reads: [customer_id]\n", "    reads: [[customer_id]]\n", "steps[0].reads[0]"),
    "call as a list": ("      - call: crm_lookup\n", "      - call: [crm_lookup]\n", "steps[0].tools[0].call"),
    "result name as a list": ("      - call: crm_lookup\n", "      - call: crm_lookup\n        as: [x]\n",
                              "steps[0].tools[0].as"),
    "integer output name": ("      email: crm_lookup", "      1: crm_lookup", "steps[0].produces[1]"),
    "null output name": ("      email: crm_lookup", "      ~: crm_lookup", "steps[0].produces.None"),
    "float and bool bounds": ("inputs:\n", "params: {n: {default: 1.5, min: true, max: 3}}\ninputs:\n",
                              "params.n.default"),
    "huge bound": ("inputs:\n", "params: {n: {default: 1, min: 1, max: 10000000000000}}\ninputs:\n", "params.n"),
    "integer parameter name": ("inputs:\n", "params: {3: {default: 1, min: 1, max: 3}}\ninputs:\n", "params[3]"),
    "gate before a mapping": ("  - before: notify", "  - before: {notify: 1}", "gates[0].before"),
    "retry as a list": ("    message: Email only", "    retry: [lookup]\n    message: Email only", "gates[0].retry"),
    "inputs as a list of lists": ("inputs:\n  customer_id: C-1\n", "inputs: [[1]]\n", "inputs"),
    "inputs as a number": ("inputs:\n  customer_id: C-1\n", "inputs: 5\n", "inputs"),
    "repeat as a list": ("  - id: notify\n", "  - repeat: [1, 2]\n    id: again\n  - id: notify\n",
                         "steps[1].repeat"),
    "repeat roles of lists": ("  - id: notify\n", "  - repeat: {count: 2, roles: [[a]]}\n    id: again\n"
                                                  "  - id: notify\n", "steps[1].repeat.roles[0]"),
    "too many digits": ("version: 1\n", "version: " + "1" * 5000 + "\n", "(yaml)"),
    "impossible date": ("version: 1\n", "version: 2026-13-45\n", "(yaml)"),
    "python tag": ("version: 1\n", "version: !!python/name:os.system ''\n", "(yaml)"),
    "set tag": ("version: 1\n", "version: !!set {a, b}\n", "(yaml)"),
    "integer role name among text ones": ("  clerk:\n", "  1: {goal: a, instructions: b}\n  clerk:\n", "roles[1]"),
    "unknown field as a number": ("version: 1\n", "version: 1\n5: extra\n", "[5]"),
}


@pytest.mark.parametrize("name", sorted(MINIMAL_EDITS))
def test_odd_yaml_gives_located_problems(data_dir: Path, tmp_path: Path, name: str) -> None:
    old, new, field = MINIMAL_EDITS[name]
    text = (data_dir / "minimal.yaml").read_text()
    assert old in text, name
    path = tmp_path / "odd.yaml"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(TaskValidationError) as caught:
        load_task(path)
    problems = caught.value.problems
    assert field in {p.field for p in problems}, [str(p) for p in problems]
    assert all(p.file == str(path) and p.line for p in problems), [str(p) for p in problems]


def test_an_instruction_that_inputs_would_blow_up_is_refused(data_dir: Path, tmp_path: Path) -> None:
    text = (data_dir / "minimal.yaml").read_text()
    text = text.replace("    instruction: Look up the customer.", "    instruction: " + "${customer_id}" * 2000)
    path = tmp_path / "long_instruction.yaml"
    path.write_text(text.replace("  customer_id: C-1", "  customer_id: " + "x" * 100))
    problems = validate_files([path])
    assert [(p.line, p.field) for p in problems] == [(17, "steps[0].instruction")]
    assert "longer than 20,000 characters" in problems[0].message


def test_merge_keys_are_read() -> None:
    text = "base: &base {goal: g, instructions: i}\nroles:\n  a: {<<: *base}\n  b: {<<: *base, goal: h}\n"
    from coordlab.tasks.yaml_files import parse_yaml_text

    data = parse_yaml_text(text, "merge.yaml").data
    assert data["roles"] == {"a": {"goal": "g", "instructions": "i"}, "b": {"goal": "h", "instructions": "i"}}


def test_a_file_with_thousands_of_problems_stops_at_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "noisy.yaml"
    path.write_text("".join(f"field{i}: {i}\n" for i in range(5000)))
    problems = validate_files([path])
    assert 100 <= len(problems) <= 102 and "validation stopped" in problems[-1].message


# -- 3. expression evaluation is bounded and fails with one error type ---------------------

BIG = {"L": list(range(100_000)), "text": "word " * 1000}

BOMBS = [
    "'x' * 999999999999",
    "[0] * 999999999999",
    "[0] * 100000000",
    "len(str([[[0] * 1000] * 1000] * 1000))",
    "[[x for x in L] for y in L]",
    "[1 for a in L for b in L]",
    "len([1 for a in L if L == list(L)])",
    "sum([[0] * 1000] * 100000, [])",
    "round(5, -1000000000)",
    "'%0999999999d' % 1",
    "len(fmt('{x}' * 300000, x=text))",
    "cites_all(text * 1000, [{'id': 'a', 'text': 'b'}] * 100000)",
    "9999999999 * 9999999999",  # a control: small products are fine
]


@pytest.mark.parametrize("source", BOMBS)
def test_expression_bombs_are_refused_quickly(source: str, bounded: Callable[..., Any]) -> None:
    outcome = bounded(_evaluate_or_error, source)
    result = assert_returned_quickly(outcome)
    if source.startswith("9999999999"):
        assert result == ("value", 99999999980000000001)
    else:
        assert result[0] == "ExpressionEvaluationError", result
        assert source[:20] in result[1], "the error names the expression"


def _evaluate_or_error(source: str) -> tuple[str, Any]:
    try:
        return "value", evaluate(source, BIG)
    except ExpressionError as exc:
        return type(exc).__name__, str(exc)


def test_read_only_tools_are_charged_for_the_world_they_read() -> None:
    world = World.from_fixtures({"kb": [{"id": f"F{i}", "topic": "heat pumps", "text": "x"} for i in range(20_000)]})
    namespace = {"kb_search": lambda **arguments: builtin_tools()["kb_search"](world, arguments), "L": [0] * 1000}
    with pytest.raises(ExpressionError, match="units of work"):
        evaluate("[len(kb_search(topic='solar')) for _ in L]", namespace)


@pytest.mark.parametrize("source, reason", [
    ("1 / 0", "ZeroDivisionError"),
    ("get(1)", "TypeError"),
    ("nobody + 1", "unknown name 'nobody'"),
    ("int('1' * 5000)", "ValueError"),
])
def test_evaluation_errors_are_expression_errors_naming_the_expression(source: str, reason: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        evaluate(source, {})
    assert repr(source) in str(caught.value) and reason in str(caught.value)


@pytest.mark.parametrize("source, message", [
    ("[a for a in x for b in x for c in x for d in x]", "4 'for' clauses"),
    ("[[[[a for a in x] for b in x] for c in x] for d in x]", "4 'for' clauses"),
    ("x+" * 3000 + "x", "nested"),
    ("-" * 60 + "x", "levels deep"),
    ("'" + "x" * 20_000 + "'", "characters long"),
])
def test_expression_shape_is_bounded_at_compile_time(source: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=message):
        compile_expression(source)


def test_three_nested_for_clauses_are_allowed() -> None:
    assert evaluate("[a + b + c for a in x for b in x for c in x]", {"x": [1]}) == [3]
