"""Broken task files: each yields its located error (file, line, field) and all problems come at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordlab.tasks.loader import TaskValidationError, load_task, validate_files

# file stem -> (line, field, fragment of the message) expected among its problems
EXPECTED = {
    "yaml_syntax": (10, "(yaml)", "expected ',' or ']'"),
    "unknown_tool": (29, "steps[1].tools[0].call", "unknown tool 'send_emial'; did you mean 'send_email'?"),
    "unknown_role": (25, "steps[1].role", "unknown role 'mailr'; did you mean 'mailer'?"),
    "read_not_yet_produced": (18, "steps[0].reads[1]", "'message_id' is neither a task input nor produced by an earlier step"),
    "method_call": (23, "steps[0].produces.email", "only helper functions may be called, not methods"),
    "unknown_name": (21, "steps[0].tools[0].args.customer_id", "unknown name 'customer_idd'"),
    "ungated_mutation": (24, "steps[1]", "mutating step 'notify' has no gate"),
    "wrong_types": (3, "version", "expected an integer, got str"),
    "unknown_field": (40, "fixture", "unknown field 'fixture'; did you mean 'fixtures'?"),
    "tool_arguments": (30, "steps[1].tools[0].args.subjet", "has no argument 'subjet'; did you mean 'subject'?"),
    "gate_on_reader": (34, "gates[0].before", "step 'lookup' changes nothing"),
    "not_utf8": (4, "(file)", "not UTF-8 text: byte 0xe9 at line 4, column 85"),
    "repeat_too_long": (20, "steps[0].repeat.count", "must be 1 to 12 (a task has at most 12 steps), got 13"),
}


def broken(data_dir: Path, stem: str) -> Path:
    return data_dir / "broken" / f"{stem}.yaml"


def test_minimal_task_is_valid(data_dir: Path) -> None:
    task = load_task(data_dir / "minimal.yaml")
    assert task.release == "minimal@1" and [s.id for s in task.steps] == ["lookup", "notify"]


def test_every_broken_file_has_an_expected_error(data_dir: Path) -> None:
    stems = {p.stem for p in (data_dir / "broken").glob("*.yaml")} - {"several_problems"}
    assert stems == set(EXPECTED)


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_broken_file_yields_its_located_error(data_dir: Path, stem: str) -> None:
    line, field, fragment = EXPECTED[stem]
    path = broken(data_dir, stem)
    with pytest.raises(TaskValidationError) as caught:
        load_task(path)
    located = [(p.line, p.field) for p in caught.value.problems if fragment in p.message]
    assert (line, field) in located, [str(p) for p in caught.value.problems]
    assert all(p.file == str(path) for p in caught.value.problems)
    assert f"{path}:{line}: {field}: " in str(caught.value)


def test_all_problems_are_reported_together(data_dir: Path) -> None:
    problems = validate_files([broken(data_dir, "several_problems")])
    fields = {p.field for p in problems}
    assert {"steps[1].role", "steps[1].tools[0].call", "checks[0].expr"} <= fields
    assert any("did you mean 'outbox'" in p.message for p in problems)


def test_unreadable_file_is_a_located_error(tmp_path: Path) -> None:
    problems = validate_files([tmp_path / "absent.yaml"])
    assert len(problems) == 1 and "cannot read" in problems[0].message


def test_empty_and_non_mapping_files(tmp_path: Path) -> None:
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "empty.yaml").write_text("")
    for name in ("list.yaml", "empty.yaml"):
        problems = validate_files([tmp_path / name])
        assert problems and "mapping at the top level" in problems[0].message
