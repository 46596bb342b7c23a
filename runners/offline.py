"""The environment a worker runs frameworks in: telemetry and tracing off, whatever the caller set.

Workers inherit the caller's environment, and users of the frameworks commonly export
tracing switches (``LANGSMITH_TRACING=true`` for LangGraph, OTel exporters, CrewAI's
tracing). Against the simulator every such export is a connection beyond 127.0.0.1, so a
worker overrides them before any framework is imported; the network guard then refuses
whatever still tries.
"""

from __future__ import annotations

import os
from typing import Mapping, MutableMapping

OFFLINE_ENVIRONMENT: Mapping[str, str] = {
    # LangChain / LangGraph tracing to LangSmith (current and legacy switches)
    "LANGSMITH_TRACING": "false", "LANGSMITH_TRACING_V2": "false", "LANGCHAIN_TRACING_V2": "false",
    "LANGCHAIN_TRACING": "false",
    # OpenTelemetry SDK and its auto-configured exporters (CrewAI and AutoGen ship the SDK)
    "OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none",
    "OTEL_LOGS_EXPORTER": "none",
    # CrewAI's telemetry, tracing and version check
    "CREWAI_DISABLE_TELEMETRY": "true", "CREWAI_TRACING_ENABLED": "false", "CREWAI_DISABLE_VERSION_CHECK": "true",
    # Hubs and generic opt-outs honoured by libraries the frameworks pull in
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DO_NOT_TRACK": "1", "ANONYMIZED_TELEMETRY": "False",
}
"""Variables forced in every worker, overriding the caller's values."""

_LOOPBACK_NO_PROXY = "127.0.0.1,localhost,::1"


def neutralise_telemetry(environ: MutableMapping[str, str] | None = None) -> None:
    """Force :data:`OFFLINE_ENVIRONMENT` and keep loopback traffic away from any configured proxy."""
    environ = os.environ if environ is None else environ
    environ.update(OFFLINE_ENVIRONMENT)
    for name in ("NO_PROXY", "no_proxy"):
        current = environ.get(name, "")
        environ[name] = f"{current},{_LOOPBACK_NO_PROXY}" if current else _LOOPBACK_NO_PROXY
