"""The durability experiment: crash an episode's process mid-run, resume it the framework's way, score it.

See :mod:`.crash` (where the lab kills), :mod:`.journal` (the world outlives the agent),
:mod:`.attempt` (the fresh process) and :mod:`.episode` (one crash and resume, scored).
"""

from .crash import CrashPoint, crash_point
from .episode import DurableResult, run_durable_episode

__all__ = ["CrashPoint", "DurableResult", "crash_point", "run_durable_episode"]
