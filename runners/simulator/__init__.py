"""The simulated model: an OpenAI-compatible server that answers from a task's oracle and injects faults."""

from .episode import FINISH, ROUTER_ROLE, EpisodeState
from .log import HandoffIssue, RequestRecord
from .server import MODEL_NAME, Simulator, SimulatorError

__all__ = ["FINISH", "MODEL_NAME", "ROUTER_ROLE", "EpisodeState", "HandoffIssue", "RequestRecord",
           "Simulator", "SimulatorError"]
