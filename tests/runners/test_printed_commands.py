"""Every command the README, the CLI's help epilog or a report prints works as printed.

The commands are read from README.md (its code blocks and inline code), from
``runners/cli.py``'s EPILOG and from the "Regenerate with" line of the reports the commands
write. Each one (a) parses with ``build_parser()`` exactly as printed, and (b) runs through
``main()`` in a fresh working directory under ``tmp_path``, holding the files it names, with
the cheapest overrides appended to the expensive ones (argparse's last value wins). A
``make`` command is checked with ``make -n TARGET`` in the repository instead of running it.
The tables below say, for each command that is not simply run as printed, what is done and
why; a test keeps each table to the commands it is about, so none of them goes stale.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from coordlab.runners import cli
from coordlab.runners.experiments import EXPERIMENTS
from coordlab.tasks.loader import SUITE_DIR
from coordlab.tasks.schema import split_task_key
from coordlab.tasks.skeleton import write_skeleton

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MAKEFILE = ROOT / "Makefile"

# -- what is done instead of running a command as printed ------------------------------------------

PLACEHOLDERS: dict[str, tuple[str | None, str]] = {
    "...": (None, "\"the flags of any run\": left out"),
    "TASK": ("appointment_rebooking", "a suite task with the draft step the example forces a fault on"),
    "CONTROL": ("control_drop_field", "one of the positive controls the sentence is about"),
    "V": ("linear", "the variant of the first control's sweep"),
    "P": ("answers_20pct", "the profile of the first control's sweep"),
    "N": ("1", "a number of seeds"),
    "NAME": ("compounding", "an experiment's name"),
}
"""Placeholder words of the printed text (whole words only) -> what stands for them, and what they mean."""

COMPLETIONS: dict[str, tuple[list[str], str]] = {
    "coordlab tasks validate": (["tasks/suite"], "the prose names the subcommand; its paths follow in the text"),
}
"""Commands the prose names without their required arguments -> the arguments appended to parse and run them."""

OVERRIDES: dict[str, tuple[list[str], str]] = {
    "coordlab run": (["--seeds", "1", "--tasks", "chain", "--frameworks", "plain"],
                     "the default suite: 6 tasks x 4 frameworks x 3 variants x 24 seeds"),
    "coordlab run --frameworks plain control_repeat_step control_sticky_state --variants linear gated delegated "
    "--faults realistic_3pct mixed_5pct --seeds 24": (["--seeds", "1", "--tasks", "chain"],
                                                       "6 tasks x 3 adapters x 3 variants x 24 seeds"),
    "coordlab run --tasks chain:n=8 incident_triage --frameworks plain langgraph --variants linear gated delegated "
    "--faults semantic_10pct mixed_5pct --seeds 20": (["--seeds", "1", "--frameworks", "plain"],
                                                      "LangGraph and 20 seeds"),
    "coordlab run --tasks chain:n=8 --frameworks plain langgraph --variants linear --faults semantic_10pct "
    "--seeds 20": (["--seeds", "1", "--frameworks", "plain"], "LangGraph and 20 seeds"),
    "coordlab run --tasks appointment_rebooking --faults none --seeds 5 --force send:repeated_side_effect": (
        ["--seeds", "1", "--frameworks", "plain"], "four frameworks (the forced fault needs this task)"),
    "coordlab run --store out/realistic.sqlite --fresh --variants linear gated delegated --faults realistic_3pct "
    "--seeds 20": (["--seeds", "1", "--tasks", "chain", "--frameworks", "plain"],
                   "6 tasks x 4 frameworks x 3 variants x 20 seeds"),
    "coordlab run --tasks my_refunds.yaml --variants linear gated delegated --faults none --seeds 1 "
    "--store out/my_refunds.sqlite": (["--frameworks", "plain"], "four frameworks"),
    "coordlab run --tasks my_refunds.yaml --variants linear gated --faults none --seeds 1 "
    "--store out/my_refunds.sqlite --force decide:wrong_value": (["--frameworks", "plain"], "four frameworks"),
    "coordlab run --frameworks plain control_drop_field --variants linear --faults answers_20pct --seeds 1": (
        ["--tasks", "chain"], "six tasks"),
    "coordlab run --frameworks langgraph langgraph+mcp --tasks appointment_rebooking --faults mixed_5pct --seeds 4": (
        ["--seeds", "1", "--frameworks", "plain", "plain+mcp", "--variants", "linear"], "LangGraph, 4 seeds"),
    "coordlab run --tool-transport mcp --store out/mcp.sqlite": (
        ["--seeds", "1", "--tasks", "chain", "--frameworks", "plain"], "the default suite over MCP"),
    "coordlab demo": (["--seeds", "1", "--frameworks", "plain"], "the default suite, then its report"),
    "coordlab experiment compounding": (["--seeds", "1", "--frameworks", "plain"], "4,800 episodes"),
    "coordlab experiment compounding --frameworks plain": (["--seeds", "1"], "1,200 episodes"),
    "coordlab experiment gate": (["--seeds", "1", "--frameworks", "plain"], "3,200 episodes"),
    "coordlab experiment context": (["--seeds", "1", "--frameworks", "plain"],
                                    "5,580 episodes (one seed of plain: 245 episodes, the slowest command here)"),
    "coordlab experiment durability": (["--seeds", "1", "--frameworks", "plain"],
                                       "1,600 durable episodes in four frameworks (one seed of plain: 40)"),
    "coordlab simulate serve": (["--seconds", "0.2"], "serves until Ctrl-C"),
    "coordlab simulate serve --port 8800": (["--seconds", "0.2", "--port", "0"],
                                            "serves until Ctrl-C; port 8800 may be taken on a test machine"),
}
"""Printed commands (placeholders filled) -> what is appended to them to run them cheaply, and what it avoids."""

EXPENSIVE = ("run", "demo", "experiment")
"""Subcommands that each need an entry in OVERRIDES (a sweep), unless they run a small sweep file of the test's."""

PARSE_ONLY: dict[str, str] = {
    "--otlp-endpoint": "sends traces to an OTLP receiver, which must be listening (test_otel.py runs one)",
    "view": "serves the viewer until Ctrl-C (the viewer's own tests run it)",
    "--base-url": "needs a live endpoint listening there (test_fault_proxy.py runs one)",
    "--local-model": "starts llama.cpp, an opt-in extra (make local; tests/live runs it with make test-live)",
}
"""A flag or subcommand -> why a command with it is parsed and not run."""

OUTCOME_EXITS: dict[str, tuple[set[int], str]] = {
    "coordlab simulate run": ({0, 1}, "exit 1 says the episode failed, as a forced or drawn fault can make it"),
}
"""Command prefixes whose exit code reports an outcome -> the codes that mean the command worked."""

TOOLS = ("coordlab", "make")
"""A printed command starts with one of these; the bare name alone names the tool ("need only ... `make`")."""

SWEEP_FILE = "tasks: [chain]\nframeworks: [plain]\nvariants: [linear]\nprofiles: [semantic_3pct]\nseeds: 1\n"
"""``my_sweep.yaml``: the smallest sweep."""


# -- reading the commands -------------------------------------------------------------------------

@dataclass(frozen=True)
class Printed:
    """One printed command: its text as printed, where it was printed, and its words with placeholders filled."""

    text: str
    where: str

    @property
    def filled(self) -> list[str]:
        """The command's words as a shell splits them (comments dropped), placeholders filled."""
        words = []
        for word in shlex.split(self.text, comments=True):
            stands_for = PLACEHOLDERS[word][0] if word in PLACEHOLDERS else word
            if stands_for is not None:
                words.append(stands_for)
        return words

    @property
    def words(self) -> list[str]:
        """The words that are parsed and run: :attr:`filled`, completed where the prose names only a subcommand."""
        return self.filled + COMPLETIONS.get(" ".join(self.filled), ([], ""))[0]

    @property
    def key(self) -> str:
        """The command as the tables name it."""
        return " ".join(self.words)


_FENCE = re.compile(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```", re.S | re.M)


def _command(text: str) -> str | None:
    """``text`` as one command when it is one (``.venv/bin/coordlab`` read as ``coordlab``), else None."""
    text = re.sub(r"^(\./)?\.venv/bin/coordlab\b", "coordlab", " ".join(text.split()))
    return text if text.split(" ")[0] in TOOLS and text not in TOOLS else None


def readme_commands() -> list[Printed]:
    """Each ``coordlab ...`` or ``make ...`` line of README.md's code blocks, then its inline code."""
    readme = README.read_text(encoding="utf-8")
    found = []
    for block in _FENCE.findall(readme):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            if (command := _command(line)) is not None:
                found.append(Printed(command, "README.md (code block)"))
    for span in re.findall(r"`([^`]+)`", _FENCE.sub("", readme)):
        if (command := _command(span)) is not None:
            found.append(Printed(command, "README.md (inline code)"))
    return found


def epilog_commands() -> list[Printed]:
    """The worked examples of ``coordlab --help``."""
    return [Printed(command, "coordlab --help (epilog)") for line in cli.EPILOG.splitlines()
            if (command := _command(line)) is not None]


def printed_commands() -> list[Printed]:
    """Every printed command once (the first place it is printed), by its words."""
    unique: dict[str, Printed] = {}
    for printed in readme_commands() + epilog_commands():
        unique.setdefault(printed.key, printed)
    return list(unique.values())


COMMANDS = printed_commands()


def regenerate_command(report_folder: Path) -> str:
    """The command a report prints under "Regenerate with"."""
    text = (report_folder / "REPORT.md").read_text(encoding="utf-8")
    match = re.search(r"Regenerate with:\s*```sh\n(.*?)\n```", text, re.S)
    assert match, f"{report_folder / 'REPORT.md'} prints no command under 'Regenerate with'"
    return match.group(1).strip()


# -- the working directory a command runs in -------------------------------------------------------

@pytest.fixture(scope="module")
def results_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding the episodes the printed ``show`` commands name (one crewai episode: about 5 s)."""
    store = tmp_path_factory.mktemp("store") / "results.sqlite"
    for argv in (["--tasks", "chain", "--frameworks", "plain", "--variants", "linear", "--faults", "none"],
                 ["--tasks", "incident_triage", "--frameworks", "crewai", "--variants", "gated", "--faults", "none"]):
        assert cli.main(["run", *argv, "--seeds", "1", "--store", str(store)]) == 0
    return store


def prepare(words: list[str], folder: Path, store: Path) -> None:
    """Put into ``folder`` what the command reads: its task, sweep and store files, and the suite's folder."""
    command = words[1:3]
    for word in words:
        if word.startswith("tasks/suite"):
            (folder / "tasks").mkdir(exist_ok=True)
            if not (folder / "tasks" / "suite").exists():
                (folder / "tasks" / "suite").symlink_to(SUITE_DIR, target_is_directory=True)
        elif word == "my_sweep.yaml":
            (folder / word).write_text(SWEEP_FILE)
        elif re.fullmatch(r"my_\w+\.yaml", word) and command != ["tasks", "new"]:
            write_skeleton(word.removesuffix(".yaml"), folder / word)
    if words[1] in ("show", "export", "report", "view"):
        named = words[words.index("--store") + 1] if "--store" in words else str(cli.DEFAULT_STORE)
        (folder / named).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(store, folder / named)


def expected_exits(printed: Printed) -> set[int]:
    """The exit codes that mean the command worked."""
    for prefix, (codes, _) in OUTCOME_EXITS.items():
        if printed.key.startswith(prefix):
            return codes
    return {0}


def parse_only_reason(printed: Printed) -> str | None:
    """Why the command is only parsed, or None when it is run."""
    for what, why in PARSE_ONLY.items():
        if what in printed.words[1:] if what.startswith("--") else printed.words[1] == what:
            return why
    return None


# -- the tables stay true ------------------------------------------------------------------------------

def test_the_printed_commands_are_found() -> None:
    """The reader finds commands in each place they are printed (a broken reader would test nothing)."""
    keys = {printed.key for printed in COMMANDS}
    assert {"make demo", "make test", "coordlab demo", "coordlab run", "coordlab faults list"} <= keys
    assert any(printed.where.startswith("coordlab --help") for printed in COMMANDS)
    assert any(printed.where == "README.md (inline code)" for printed in COMMANDS)


def test_every_table_entry_is_about_a_printed_command() -> None:
    """No table keeps an entry for a command, word or prefix that is no longer printed."""
    keys = {printed.key for printed in COMMANDS}
    every = readme_commands() + epilog_commands()  # placeholders may sit in a command printed twice
    printed_words = {word for printed in every for word in shlex.split(printed.text, comments=True)}
    assert set(OVERRIDES) <= keys, f"overrides for commands nobody prints: {set(OVERRIDES) - keys}"
    assert set(PLACEHOLDERS) <= printed_words, f"placeholders nobody prints: {set(PLACEHOLDERS) - printed_words}"
    named = {" ".join(printed.filled) for printed in every}
    assert set(COMPLETIONS) <= named, f"completions for commands nobody prints: {set(COMPLETIONS) - named}"
    assert all(any(key.startswith(prefix) for key in keys) for prefix in OUTCOME_EXITS)
    assert all(key.split(" ")[1] in (*EXPENSIVE, "simulate") for key in OVERRIDES), \
        "overrides are only for the commands that run sweeps or servers"


def test_every_expensive_command_has_an_override() -> None:
    """A newly printed sweep is refused here rather than run at full size by the test below."""
    missing = [printed.key for printed in COMMANDS
               if printed.words[0] == "coordlab" and printed.words[1] in EXPENSIVE and printed.key not in OVERRIDES
               and parse_only_reason(printed) is None and "--sweep" not in printed.words]
    assert not missing, f"add these to OVERRIDES (a cheaper run and why): {missing}"


def test_a_printed_show_key_names_an_episode_of_the_demo(tmp_path: Path) -> None:
    """After `make demo`, `coordlab show` reads the demo's store: every printed key must be one of its episodes."""
    demo = EXPERIMENTS["default"]
    episodes = {(task, job.key.framework, job.key.variant, job.key.profile, job.key.seed)
                for sweep in demo.sweeps(demo.default_seeds, tmp_path) for job in sweep.jobs()
                for task in (job.key.task, split_task_key(job.key.task)[0])}
    for printed in COMMANDS:
        if printed.words[:2] == ["coordlab", "show"]:
            task, framework, variant, profile, seed = printed.words[2].split("/")
            assert (task, framework, variant, profile, int(seed)) in episodes, \
                f"{printed.text} ({printed.where}) names no episode of the default suite that `make demo` runs"


# -- each command ----------------------------------------------------------------------------------

@pytest.mark.parametrize("printed", [p for p in COMMANDS if p.words[0] == "coordlab"], ids=lambda p: p.key)
def test_a_printed_command_parses_and_runs(printed: Printed, tmp_path: Path, results_store: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Parsed exactly as printed, then run in a folder holding what it reads; a report it writes regenerates."""
    cli.build_parser().parse_args(printed.words[1:])  # exactly as printed (placeholders filled): exits 2 if not
    if (why := parse_only_reason(printed)) is not None:
        pytest.skip(f"parsed only: {why}")
    monkeypatch.chdir(tmp_path)
    prepare(printed.words, tmp_path, results_store)
    argv = [*printed.words[1:], *OVERRIDES.get(printed.key, ([], ""))[0]]
    # A shell expands a glob (tasks/suite/*.yaml) before coordlab sees it.
    argv = [match for word in argv for match in (sorted(glob.glob(word)) or [word] if "*" in word else [word])]
    code = cli.main(argv)
    captured = capsys.readouterr()
    assert code in expected_exits(printed), f"{printed.text} ({printed.where}) exited {code}:\n{captured.err}"
    assert "Traceback" not in captured.err
    if printed.words[1] in ("demo", "experiment", "report"):
        check_regenerate(captured.out, capsys)


def check_regenerate(output: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The report just written prints a command that parses as printed and writes the same report again."""
    found = re.search(r"report written: (.*)", output)
    assert found, f"no report written:\n{output}"
    written = Path(found.group(1)).parent
    command = regenerate_command(written)
    words = shlex.split(command)
    assert words[0] == "coordlab"
    cli.build_parser().parse_args(words[1:])
    (written / "REPORT.md").unlink()
    code = cli.main(words[1:])  # as printed: it names the seeds and frameworks the report was made with
    captured = capsys.readouterr()
    assert code == 0, f"regenerating with {command!r} exited {code}:\n{captured.err}"
    assert f"report written: {written}" in captured.out and (written / "REPORT.md").exists()
    if words[1] != "report":
        assert re.search(r"\b0 run\)", captured.out), "regenerating resumes the run: nothing new to run"


@pytest.mark.parametrize("printed", [p for p in COMMANDS if p.words[0] == "make"], ids=lambda p: p.key)
def test_a_printed_make_target_exists(printed: Printed) -> None:
    """``make -n TARGET`` succeeds: the target exists (make targets are not run: they build the environment)."""
    make = shutil.which("make")
    targets = printed.words[1:]
    if make is None:  # .ci/run installs make; without it, the Makefile must still declare the targets
        declared = set(re.findall(r"^([\w-]+):", MAKEFILE.read_text(), re.M))
        assert set(targets) <= declared, f"{printed.text}: no such target in the Makefile"
        return
    result = subprocess.run([make, "-n", *targets], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "MAKEFLAGS": ""}, timeout=60)
    assert result.returncode == 0, f"{printed.text} ({printed.where}): {result.stderr}"
