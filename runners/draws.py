"""Common random numbers: one stable uniform draw per named decision of an episode.

Every random decision the simulator takes (does a fault meet this step attempt, does a
mechanism act on this field) is a hash of the decision's name and coordinates: seed, task
release, step, attempt, and what is decided. The framework is never a coordinate, so two
frameworks meet the same draws and can differ only by what they sent.
"""

from __future__ import annotations

import hashlib
from typing import Any


def uniform(*parts: Any) -> float:
    """A uniform number in [0, 1) derived from ``parts`` by a stable hash."""
    digest = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64
