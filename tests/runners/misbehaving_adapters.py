"""Third-party adapters that misbehave on purpose, installed by the runner tests through the
public entry-point group (never imported by the tests directly): what a hung, crashing,
spinning, slow or nosy framework looks like to the runner."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from coordlab.adapters.base import AdapterOutcome, EpisodeSpec
from coordlab.adapters.plain import PlainAdapter


class Hang(PlainAdapter):
    """Deadlocks on the refund task."""

    name = "hang"

    def run(self, spec: EpisodeSpec) -> AdapterOutcome:
        if spec.task.name == "refund_policy_answer":
            time.sleep(3600)
        return super().run(spec)


class Crash(PlainAdapter):
    """Raises inside the framework: an error outcome, not the lab's fault."""

    name = "crash"

    def run(self, spec: EpisodeSpec) -> AdapterOutcome:
        raise RuntimeError("the framework fell over")


class Spin(PlainAdapter):
    """Spins the CPU on the refund task, after leaving a marker file so a test knows it is busy."""

    name = "spin"

    def run(self, spec: EpisodeSpec) -> AdapterOutcome:
        if spec.task.name == "refund_policy_answer":
            Path(os.environ["COORDLAB_TEST_MARKER"]).write_text(str(os.getpid()))
            while True:
                pass
        return super().run(spec)


class SlowFirst(PlainAdapter):
    """Its first episode in a process is slow, as a framework's lazy imports and client warm-up are."""

    name = "slowfirst"
    warmed = False

    def run(self, spec: EpisodeSpec) -> AdapterOutcome:
        if not SlowFirst.warmed:
            SlowFirst.warmed = True
            time.sleep(4)
        return super().run(spec)


class Renamed(PlainAdapter):
    """Reports a version other than its distribution's."""

    name = "renamed"

    def version(self) -> str:
        return "7.7.7-custom"


class Reach(PlainAdapter):
    """Asks to leave the machine and says what tracing switch it was given.

    The request goes through the audit event a real connect raises, so the network guard is
    exercised without a packet ever being sent anywhere.
    """

    name = "reach"

    def run(self, spec: EpisodeSpec) -> AdapterOutcome:
        try:
            with socket.socket() as sock:
                sys.audit("socket.connect", sock, ("192.0.2.1", 9))
            outcome = "let through"
        except Exception as exc:  # noqa: BLE001 - the refusal is what the test reads
            outcome = repr(exc)
        raise RuntimeError(f"tracing={os.environ.get('LANGSMITH_TRACING')} connect={outcome}")


def slowstart() -> Any:
    """A hanging adapter whose framework takes 10 s to import."""
    time.sleep(10)
    adapter = Hang()
    adapter.name = "slowstart"
    return adapter


FACTORIES = {"hang": Hang, "crash": Crash, "spin": Spin, "slowfirst": SlowFirst, "renamed": Renamed,
             "reach": Reach}
"""Entry-point name -> class; ``slowstart`` is a factory function of its own."""
