"""Reading the small YAML files the lab takes from users (profiles, sweeps, price tables)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def read_yaml_file(path: str | Path, error: type[Exception], label: str | None = None) -> Any:
    """Parse ``path``; an unreadable file or bad YAML raises ``error`` naming the file (or ``label``)."""
    where = label or str(path)
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{where}: no such file") from None
    except OSError as exc:
        raise error(f"{where}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise error(f"{where}: invalid YAML: {str(exc).splitlines()[0]}") from None
