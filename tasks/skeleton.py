"""``coordlab tasks new``: a commented task file to start from, valid and solvable as written."""

from __future__ import annotations

import re
from pathlib import Path

TEMPLATE = Path(__file__).parent / "templates" / "new_task.yaml"
"""The skeleton: every part of a task file, explained in comments (the README's tutorial follows it)."""
_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


class SkeletonError(ValueError):
    """The skeleton cannot be written: a bad name, or the file exists."""


def skeleton(name: str) -> str:
    """The skeleton's text for a task called ``name``."""
    if not _NAME.fullmatch(name):
        raise SkeletonError(f"task name {name!r}: use a lower-case identifier such as purchase_orders")
    return TEMPLATE.read_text(encoding="utf-8").replace("__NAME__", name)


def write_skeleton(name: str, path: Path) -> None:
    """Write the skeleton for ``name`` to ``path``; an existing file is never overwritten."""
    text = skeleton(name)
    try:
        with path.open("x", encoding="utf-8") as file:
            file.write(text)
    except FileExistsError:
        raise SkeletonError(f"{path} exists; choose another --out (a task file is never overwritten)") from None
    except OSError as exc:
        raise SkeletonError(f"cannot write {path}: {exc.strerror or exc}") from None
