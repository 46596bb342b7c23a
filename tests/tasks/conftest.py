"""Fixtures of the task tests: running a possibly explosive call in a bounded child process."""

from __future__ import annotations

import multiprocessing
import os
import resource
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Callable

import pytest

CHILD_MEMORY = 1 << 30
"""Address space a bounded child may add to what it inherits (1 GiB)."""


@dataclass(frozen=True)
class Outcome:
    """How a bounded call ended: ``returned`` (``value``), ``raised`` (``error``, ``message``) or ``timeout``."""

    kind: str
    seconds: float
    value: Any = None
    error: str = ""
    message: str = ""


def _address_space() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _child(connection: Connection, function: Callable[..., Any], args: tuple[Any, ...], memory: int) -> None:
    try:
        limit = _address_space() + memory
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
        connection.send(("returned", function(*args), "", ""))
    except BaseException as exc:  # noqa: BLE001 - the parent asserts on what happened
        connection.send(("raised", None, type(exc).__name__, str(exc)[:2000]))


def run_bounded(function: Callable[..., Any], *args: Any, seconds: float = 60.0,
                memory: int = CHILD_MEMORY) -> Outcome:
    """Call ``function(*args)`` in a forked child with a memory cap, killing it after ``seconds``.

    A regression that brings back a hang or a memory bomb then fails its test within a
    minute instead of stalling or exhausting the machine running the suite.
    """
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(sender, function, args, memory), daemon=True)
    start = time.monotonic()
    process.start()
    sender.close()
    try:
        if not receiver.poll(seconds):
            return Outcome("timeout", time.monotonic() - start)
        kind, value, error, message = receiver.recv()
        return Outcome(kind, time.monotonic() - start, value, error, message)
    except EOFError:
        return Outcome("raised", time.monotonic() - start, error="died", message=f"exit code {process.exitcode}")
    finally:
        process.kill()
        process.join()
        receiver.close()


@pytest.fixture
def bounded() -> Callable[..., Outcome]:
    """:func:`run_bounded`: a call that cannot hang the test run or fill the machine's memory."""
    return run_bounded
