"""The episode viewer: ``coordlab view`` serves a store's runs, episodes and one timeline per episode on 127.0.0.1.

Each episode has a stable page (:func:`episode_url`, or :func:`episode_key_url` by natural
key, which survives a rerun) that a static report can link to; importing those links does
not load the server or its templates. Start a viewer in code with
``with Viewer(store_path, port=0) as viewer: ...`` (``viewer.url`` tells the port it took).
"""

from __future__ import annotations

from typing import Any

from .links import HOST, VIEWER_PORT, episode_key_url, episode_url

__all__ = ["HOST", "VIEWER_PORT", "Viewer", "ViewerError", "episode_key_url", "episode_url", "serve"]


def __getattr__(name: str) -> Any:
    """``Viewer``, ``ViewerError`` and ``serve`` load the HTTP server and jinja2 only when first asked for."""
    if name in ("Viewer", "ViewerError", "serve"):
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
