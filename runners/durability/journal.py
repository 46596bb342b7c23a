"""The world outlives the agent: a durable copy of an episode's world, rewritten at every change.

The world stands for the outside system (the mail server, the CRM). When the lab kills an
agent process, what that system already did stays done, so every side effect is written
to disk before the tool call returns, under the world's lock: the journal never holds a
change the world did not make, and never misses one it made. A resumed process, and the
scoring after it, read the world back from here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from coordlab.tasks.schema import Task
from coordlab.tasks.world import SideEffect, World

from ..export import write_atomically

JOURNAL_NAME = "world.json"
"""The journal's file name in an episode's folder."""


class WorldJournal:
    """The world of one durable episode, kept in ``folder/world.json``."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / JOURNAL_NAME

    def exists(self) -> bool:
        """Whether a world was saved here."""
        return self.path.is_file()

    def save(self, world: World) -> None:
        """Write the world atomically (a temporary file, fsync, rename): a kill leaves the old or the new copy."""
        data = {"state": world.state, "counters": world.counters(),
                "side_effects": [{"tool": e.tool, "arguments": dict(e.arguments), "result": e.result}
                                 for e in world.side_effects]}
        write_atomically(self.path, json.dumps(data, default=str))

    def load(self, task: Task) -> World:
        """The saved world, acted on by ``task``'s tools (a fresh one when nothing was saved)."""
        world = World.for_task(task)
        if not self.exists():
            return world
        data: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
        world.state = data["state"]
        world.restore_counters(data["counters"])
        world.side_effects = [SideEffect(e["tool"], e["arguments"], e["result"]) for e in data["side_effects"]]
        return world

    def keep(self, world: World) -> World:
        """Save ``world`` now and after every change it makes from here on; return it."""
        self.save(world)
        world.effect_listeners.append(self.save)
        return world
