"""Native tools against MCP: each framework against its own ``+mcp`` twin, on identical episodes.

A run that lists ``langgraph`` and ``langgraph+mcp`` gives every episode twice, once with
the framework's native tools and once through its own MCP client against the lab's MCP
server (the same tool schemas and bodies). Pairing them isolates the transport: what the
framework's MCP client does with the schemas, the errors and each call's round trip.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

from coordlab.adapters.registry import MCP_SUFFIX

from .data import EpisodeRecord
from .model import Table
from .pairing import PairedCounts, PairKey, pair_key
from .stats import holm_adjust, mcnemar_exact, median
from .tables import count, framework_sort_key, group, millis, number, p_value, points, rate, text


def transport_table(episodes: Sequence[EpisodeRecord]) -> Table:
    """One row per framework, variant and fault profile whose native and ``+mcp`` episodes pair up."""
    rows, tests = [], []
    for (variant, profile), grouped in group(episodes, ["variant", "profile"]):
        by_system: dict[str, dict[PairKey, EpisodeRecord]] = defaultdict(dict)
        for episode in grouped:
            by_system[episode.system][pair_key(episode)] = episode
        for native in sorted(by_system, key=framework_sort_key):
            twin = by_system.get(native.replace("@", f"{MCP_SUFFIX}@", 1) if "@" in native else native + MCP_SUFFIX)
            shared = sorted(by_system[native].keys() & twin.keys()) if twin and MCP_SUFFIX not in native else []
            if not shared:
                continue
            pairs = [(by_system[native][key], twin[key]) for key in shared]
            counts = PairedCounts.of(pairs)
            tests += [mcnemar_exact(counts.only_a, counts.only_b), mcnemar_exact(counts.harm_a, counts.harm_b)]
            per_call = [(m.execution_ms - n.execution_ms) / m.tool_calls for n, m in pairs if m.tool_calls]
            rows.append([text(native), text(variant), text(profile), count(counts.pairs),
                         rate(counts.success_rates[0]), rate(counts.success_rates[1]), points(counts.success_rates[1] - counts.success_rates[0]),
                         p_value(tests[-2]), count(counts.harm_a), count(counts.harm_b), p_value(tests[-1]),
                         number(sum(n.tool_calls for n, _ in pairs) / len(pairs)),
                         number(sum(m.tool_calls for _, m in pairs) / len(pairs)),
                         number(sum(n.tool_errors for n, _ in pairs) / len(pairs)),
                         number(sum(m.tool_errors for _, m in pairs) / len(pairs)),
                         millis(median(per_call) if per_call else None)])
    adjusted = holm_adjust(tests)
    for index, row in enumerate(rows):
        row.insert(8, p_value(adjusted[2 * index]))
        row.insert(12, p_value(adjusted[2 * index + 1]))
    return Table("transport", "Native tools against MCP, each framework against its +mcp twin",
                 ["framework", "variant", "profile", "pairs", "native success", "MCP success", "MCP minus native",
                  "McNemar p", "Holm p", "only native harmful", "only MCP harmful", "harm McNemar p", "harm Holm p",
                  "tool calls / episode (native)", "tool calls / episode (MCP)", "tool errors / episode (native)",
                  "tool errors / episode (MCP)", "extra ms / tool call (MCP)"], rows,
                 note="Both sides ran the same episodes (task, variant, fault profile, seed) with the same tool "
                      "schemas and bodies; only how the framework reached the tools differs. Extra ms per tool call "
                      "is the median over pairs of the MCP episode's execution time minus the native one's, per MCP "
                      "tool call: sessions, listing and each call's round trip. Holm adjusts this table's success and "
                      "harm p-values as one family.")
