"""Where the viewer serves each episode: links a static report can hold without importing the viewer itself."""

from __future__ import annotations

import urllib.parse

HOST = "127.0.0.1"
"""The viewer serves on loopback only: it shows everything in the store."""
VIEWER_PORT = 8470
"""The port ``coordlab view`` serves on unless told otherwise; static reports link episodes to it."""


def episode_url(episode_id: int, port: int = VIEWER_PORT) -> str:
    """The viewer's page for episode ``episode_id``, e.g. ``http://127.0.0.1:8470/episodes/123``.

    Stable while the store is; ids change when a store is rebuilt (see :func:`episode_key_url`).
    """
    return f"http://{HOST}:{port}/episodes/{int(episode_id)}"


def episode_key_url(key: object, port: int = VIEWER_PORT, run_id: str | None = None) -> str:
    """The viewer's page for the episode with natural key ``key`` (``str(EpisodeKey)``); survives a rerun.

    Without ``run_id`` it opens the newest episode with that key.
    """
    query = {"key": str(key), **({"run": run_id} if run_id else {})}
    return f"http://{HOST}:{port}/episodes/by-key?{urllib.parse.urlencode(query)}"
