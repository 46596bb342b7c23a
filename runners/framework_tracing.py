"""Opt-in: a framework's own tracing, sent to the OTLP/HTTP receiver that gets coordlab's spans.

A worker forces every framework's telemetry off (:func:`~.offline.neutralise_telemetry`). A
user who wants the frameworks' own view of an episode next to coordlab's asks for it, and
the worker then calls :func:`enable_framework_tracing` after neutralising and before the
framework is imported. Each framework is switched on through its own mechanism, as read in
the installed sources (named at each entry below), and only towards the given receiver:
nothing goes to a vendor's servers. Framework spans are live (they carry their own trace
ids and clocks); they meet coordlab's replayed spans under the same project and service
prefix, not in one trace.
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version
from typing import Callable, Mapping, MutableMapping

from .otel import PROJECT_ATTRIBUTE, traces_url

FRAMEWORK_DISTRIBUTIONS: Mapping[str, str] = {"autogen": "autogen-agentchat", "langgraph": "langgraph"}
"""Frameworks with native OpenTelemetry tracing coordlab can aim at a receiver, and the distribution
whose version the spans' ``service.version`` carries."""


def _service_name(framework: str) -> str:
    return f"coordlab-{framework}"


def _distribution_version(distribution: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


def _install_tracer_provider(framework: str, url: str, project: str) -> None:
    """Make an SDK tracer provider exporting to ``url`` the process-wide one (``trace.get_tracer_provider()``).

    Batched, so an episode never waits for the receiver (nor for the exporter's retries when
    the receiver is down); the provider flushes at interpreter exit (its own atexit hook).
    """
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({SERVICE_NAME: _service_name(framework),
                                SERVICE_VERSION: _distribution_version(FRAMEWORK_DISTRIBUTIONS[framework]),
                                PROJECT_ATTRIBUTE: project})
    provider = TracerProvider(resource=resource)  # reads OTEL_SDK_DISABLED from os.environ, now "false"
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
    trace.set_tracer_provider(provider)
    if trace.get_tracer_provider() is not provider:
        provider.shutdown()
        raise RuntimeError("a global OpenTelemetry tracer provider was already installed in this process; "
                           "enable framework tracing before anything else sets one (once per worker)")


def _autogen(environ: MutableMapping[str, str], url: str, project: str) -> str:
    # autogen_core/_telemetry/_tracing.py TraceHelper.__init__: runtime spans use the runtime's
    # tracer_provider argument or else trace.get_tracer_provider(), unless
    # AUTOGEN_DISABLE_RUNTIME_TRACING == "true"; autogen_core/_telemetry/_genai.py (trace_create_agent_span,
    # trace_invoke_agent_span, trace_tool_span, used by autogen_agentchat's BaseChatAgent, ChatAgentContainer
    # and autogen_core.tools.BaseTool) take trace.get_tracer("autogen-core") from the global provider.
    # The SDK's TracerProvider.__init__ records nothing when OTEL_SDK_DISABLED is "true".
    environ.update(OTEL_SDK_DISABLED="false", AUTOGEN_DISABLE_RUNTIME_TRACING="false")
    return (f"AutoGen's own OpenTelemetry spans (agentchat create_agent / invoke_agent / execute_tool and the "
            f"runtime's 'autogen ...' messaging spans) go to {url} as service {_service_name('autogen')}, "
            f"project {project}")


def _langgraph(environ: MutableMapping[str, str], url: str, project: str) -> str:
    # langsmith/client.py Client.__init__ with _resolve_tracing_mode: LANGSMITH_TRACING_MODE=otel exports runs
    # as OpenTelemetry spans only (never to LangSmith's API: Client.info skips its GET /info in that mode),
    # through the already-installed global provider, else through
    # langsmith/_internal/otel/_otel_client.py get_otlp_tracer_provider, whose endpoint is
    # OTEL_EXPORTER_OTLP_TRACES_ENDPOINT. LangChain's callback manager (langchain_core/callbacks/manager.py
    # _configure) adds its LangChainTracer when langsmith.utils.tracing_is_enabled(), which reads
    # *_TRACING_V2 before *_TRACING; neutralise_telemetry set both to "false". LANGCHAIN_TRACING (the
    # retired v1 tracer) stays "false". LANGSMITH_PROJECT names the spans' langsmith.trace.session_name.
    # The legacy LANGSMITH_OTEL_ENABLED / LANGSMITH_OTEL_ONLY pair is not set: the installed langsmith (0.14)
    # reads LANGSMITH_TRACING_MODE first and warns when both are given.
    environ.update(OTEL_SDK_DISABLED="false", LANGSMITH_TRACING="true", LANGSMITH_TRACING_V2="true",
                   LANGCHAIN_TRACING_V2="true", LANGSMITH_TRACING_MODE="otel", LANGSMITH_PROJECT=project,
                   OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=url)
    return (f"LangGraph's own runs, traced by LangSmith in OpenTelemetry-only mode (LANGSMITH_TRACING_MODE=otel, "
            f"nothing sent to LangSmith), go to {url} as service {_service_name('langgraph')}, project {project}")


def _crewai(environ: MutableMapping[str, str], url: str, project: str) -> str:
    # crewai/execution.py _start_tracing: CREWAI_TRACING_ENABLED (or Crew(tracing=True)) either buffers spans
    # locally and asks to upload them to CrewAI AMP (crewai/telemetry/tracing/ephemeral.py) or uploads with an
    # AMP grant (crewai/telemetry/tracing/grants.py); neither takes an OTLP endpoint. The anonymous telemetry
    # (crewai/telemetry/telemetry.py) has its own provider fixed to CREWAI_TELEMETRY_BASE_URL and ignores the
    # global one. Only a host that wraps each kickoff in crewai.telemetry.tracing.telemetry_session(...,
    # exporters=[...]) chooses the destination; its handlers live on the event bus, so that wrapping belongs
    # inside the adapter's scoped_handlers() block, not in a switch set before the import.
    return ("CrewAI's own tracing is left off: its switch (CREWAI_TRACING_ENABLED) uploads only to CrewAI's "
            "platform and takes no OTLP endpoint, so only coordlab's spans describe its episodes")


_SWITCHES: Mapping[str, Callable[[MutableMapping[str, str], str, str], str]] = {
    "autogen": _autogen, "langgraph": _langgraph, "crewai": _crewai}


def enable_framework_tracing(framework: str, endpoint: str, project: str,
                             environ: MutableMapping[str, str] | None = None) -> str:
    """Point ``framework``'s own tracing at the OTLP/HTTP receiver at ``endpoint`` (URL like http://127.0.0.1:6006).

    Returns one sentence saying what was switched on, or why nothing was (plain and plug-in
    adapters have no native tracing; CrewAI's only goes to CrewAI's platform). Call it after
    ``neutralise_telemetry()`` and before the framework is imported. The tracer provider it
    installs is process-wide and reads ``os.environ``, so it is installed only when
    ``environ`` is ``os.environ`` (the default); another mapping just receives the switches.
    ValueError when ``endpoint`` is not an http(s) URL.
    """
    url = traces_url(endpoint)
    environ = os.environ if environ is None else environ
    switch = _SWITCHES.get(framework)
    if switch is None:
        return (f"{framework} has no native OpenTelemetry tracing coordlab can enable; only coordlab's spans "
                "describe its episodes.")
    sentence = switch(environ, url, project)
    if framework in FRAMEWORK_DISTRIBUTIONS and environ is os.environ:
        _install_tracer_provider(framework, url, project)
    return sentence + "."
