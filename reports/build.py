"""Build a :class:`~coordlab.reports.model.Report` from a results store: provenance, tables, plots, notes.

This is the one entry point the CLI and the experiments call. Everything that can go
wrong for a user (no store, an empty one, one where nothing could be scored, a broken
price table) raises :class:`ReportError` with a sentence to act on; the renderers then
only write what this returns.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from coordlab.runners.faults import load_profile, profile_names
from coordlab.runners.store import EpisodeKey, StoreError, open_readonly

from .data import (UNFAITHFUL_PREFIX, EpisodeRecord, PriceTable, PriceTableError, ReportError, StoreData,
                   load_prices, load_store)
from .failure_modes import Diagnosis, diagnose_episodes
from .model import Figure, Finding, Link, Report, Table
from .verdict import Verdict, build_verdict, failure_mode_table, verdict_intro, verdict_lines, verdict_table
from .plots import cost_vs_reliability, gate_effect, success_vs_fault_rate, success_vs_length
from .tables import (compounding_note, compounding_table, coordination_table, fault_exposure_table, faults_table,
                     framework_sort_key, latency_table, overhead_table, paired_table, pass_k_table, resolve_max_k,
                     success_table, usage_table, variant_sort_key)
from .transport import transport_table

__all__ = ["PriceTableError", "ReportError", "build_report", "build_figures", "build_tables"]


def build_report(store_path: str | Path, *, per_task: bool = False, prices_path: str | Path | None = None,
                 max_k: int | None = None) -> Report:
    """The report of every scored episode in ``store_path``.

    pass^k always comes per task too (it is defined per task); ``per_task`` adds a per-task
    copy of every other table; ``prices_path`` replaces the built-in
    price table; ``max_k`` sets the K of pass^1..pass^K (default: the most seeds any task
    has, at most 8). The store is opened read-only and its traces are never read.
    """
    prices = load_prices(prices_path)
    data = load_store(store_path)
    if data.total_rows == 0:
        raise ReportError(f"store {data.path}: no episodes recorded yet: run `coordlab run` first")
    if not data.episodes:
        infra = sum(data.infra_errors.values())
        raise ReportError(f"store {data.path}: all {infra} recorded episode(s) ended in infra_error (the lab could "
                          f"not run them, so nothing can be scored); run the same `coordlab run` command again to "
                          f"retry them")
    try:
        k = resolve_max_k(data.episodes, max_k)
    except ValueError as exc:
        raise ReportError(str(exc)) from None
    diagnoses = diagnose_failures(data.path, [e.episode_id for e in data.episodes if not e.success])
    verdict = build_verdict(data.episodes, diagnoses)
    return Report(title="coordlab report", provenance=provenance(data, prices),
                  tables=build_tables(data, prices, verdict, per_task=per_task, max_k=k),
                  figures=build_figures(data, prices), notes=notes(data, prices),
                  verdict=findings(verdict, data.path), verdict_intro=verdict_intro(verdict))


def diagnose_failures(path: Path, episode_ids: list[int]) -> dict[int, Diagnosis]:
    """Each failed episode's failure modes, read from its trace in the store (opened read-only)."""
    if not episode_ids:
        return {}
    try:
        with open_readonly(path) as store:
            return diagnose_episodes(store, episode_ids)
    except StoreError as exc:
        raise ReportError(str(exc)) from None


def findings(verdict: Verdict, store: Path) -> list[Finding]:
    """The verdict's lines as the report shows them, each example linked to the episode viewer."""
    from coordlab.runners.viewer.links import episode_key_url

    return [Finding(line.heading, line.sentences, tuple(
        Link(example.label, episode_key_url(show_key(example.episode)),
             f"coordlab view --store {store}; or: coordlab show '{show_key(example.episode)}' --store {store}")
        for example in line.examples)) for line in verdict_lines(verdict)]


def show_key(episode: EpisodeRecord) -> str:
    """The key ``coordlab show`` takes for ``episode``: TASK/FRAMEWORK@VERSION/VARIANT/PROFILE/SEED[/tTRIAL]."""
    return str(EpisodeKey(episode.task, episode.framework, episode.framework_version, episode.variant, episode.profile,
                          episode.seed, episode.trial))


def build_tables(data: StoreData, prices: PriceTable, verdict: Verdict, *, per_task: bool, max_k: int) -> list[Table]:
    """Every table with rows: success and the verdict's tests first, pass^k by task, then the other per-task copies
    when asked for. A table without rows (a paired comparison of a single framework) is left out."""
    episodes = data.episodes
    tables = [success_table(episodes), verdict_table(verdict), failure_mode_table(episodes, verdict.diagnoses),
              pass_k_table(episodes, max_k), coordination_table(episodes), faults_table(episodes),
              fault_exposure_table(episodes, data.faults), usage_table(episodes, prices), latency_table(episodes),
              overhead_table(episodes), paired_table(episodes), transport_table(episodes), compounding_table(episodes),
              pass_k_table(episodes, max_k, by_task=True)]
    if per_task:
        tables += [success_table(episodes, True), coordination_table(episodes, True), faults_table(episodes, True),
                   usage_table(episodes, prices, True), latency_table(episodes, True),
                   overhead_table(episodes, True), paired_table(episodes, True)]
    return [t for t in tables if t.rows]


def build_figures(data: StoreData, prices: PriceTable) -> list[Figure]:
    """Every plot whose data the store holds (a plot without data is left out, not drawn empty)."""
    episodes = data.episodes
    figures = [success_vs_fault_rate(episodes), success_vs_length(episodes), gate_effect(episodes),
               cost_vs_reliability(episodes, prices)]
    return [f for f in figures if f is not None]


def provenance(data: StoreData, prices: PriceTable) -> dict[str, Any]:
    """Where the numbers come from: the store, its runs with their versions, commit and knobs, the prices.

    Package versions, git commit, knobs, machine and runtime are shown once when every run
    agrees on them (the usual case) and per run id when they differ, which a reader must see.
    """
    versions: dict[str, list[str]] = {}
    for framework, version in sorted({(e.framework, e.framework_version) for e in data.episodes}):
        versions.setdefault(framework, []).append(version)
    runs = []
    for run in data.runs:
        sweep = {k: run.spec[k] for k in ("tasks", "frameworks", "variants", "profiles") if k in run.spec}
        runs.append({
            "run_id": run.run_id, "status": run.status,
            "created_at": _dt.datetime.fromtimestamp(run.created_at, _dt.timezone.utc).isoformat(timespec="seconds"),
            "model": run.model, **sweep, "seeds": seed_ranges(run.spec.get("seeds", [])),
            **({"trials": run.spec["trials"]} if run.spec.get("trials", 1) != 1 else {}),
        })
    result: dict[str, Any] = {
        "store": str(data.path),
        "episodes": {"recorded": data.total_rows, "scored": len(data.episodes),
                     "infra_errors": sum(data.infra_errors.values()), "superseded": data.superseded,
                     "deterministic_replicates": data.replicates},
        "runs": runs,
    }
    for field in ("git_commit", "packages", "knobs", "machine", "runtime"):
        by_run = {run.run_id: run.metadata.get(field) for run in data.runs}
        distinct = {json.dumps(value, sort_keys=True) for value in by_run.values()}
        result[field] = next(iter(by_run.values())) if len(distinct) == 1 else by_run
    result["fault_profiles"] = {key: profile_settings(key) for key in sorted({e.profile for e in data.episodes})}
    result["framework_versions"] = versions
    result["prices"] = {"source": prices.source, "currency": prices.currency, "note": prices.note}
    result["adapter_notes"] = {f"{system}/{variant}": sorted(counter)
                               for (system, variant), counter in sorted(data.notes.items(), key=lambda item: (
                                   framework_sort_key(item[0][0]), variant_sort_key(item[0][1])))}
    return result


def profile_settings(key: str) -> str:
    """A profile's settings as one line, printed beside the results that depend on them.

    A built-in profile is read back by its name; a user's profile file (keyed ``name@digest``)
    was not stored with the results, so only its key can be shown.
    """
    name, _, forced = key.partition("+force(")
    if name not in profile_names():
        return "a profile file of your own: its settings are those of the file whose contents digest to this key"
    profile = load_profile(name)
    parts = [f"rate {profile.rate:g}"]
    if profile.weights:
        parts.append("faults " + ", ".join(f"{fault.value} {weight:g}" for fault, weight in sorted(profile.weights.items())))
    if profile.burst != 1:
        parts.append(f"transport faults in bursts of {profile.burst}")
    for mechanism, knobs in profile.mechanisms.to_dict().items():
        parts.append(f"{mechanism} " + ", ".join(f"{k} {v}" for k, v in knobs.items()))
    if forced:
        parts.append(f"forced: {forced.rstrip(')')}")
    return "; ".join(parts)


def seed_ranges(seeds: Any) -> str:
    """Seeds as compact text: ``[0, 1, 2, 3, 7]`` -> ``"0-3, 7"`` (a sweep of 100 seeds stays one short line)."""
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
        return str(seeds)
    parts: list[str] = []
    ordered = sorted(set(seeds))
    start = 0
    for index in range(1, len(ordered) + 1):
        if index == len(ordered) or ordered[index] != ordered[index - 1] + 1:
            low, high = ordered[start], ordered[index - 1]
            parts.append(str(low) if low == high else f"{low}-{high}")
            start = index
    return ", ".join(parts)


def notes(data: StoreData, prices: PriceTable) -> list[str]:
    """The caveats every reader should see next to the numbers."""
    result = []
    infra = sum(data.infra_errors.values())
    scoring = "Timeouts and errors count as failures."
    if infra:
        where = ", ".join(f"{system}/{variant} {n}" for (system, variant), n in sorted(
            data.infra_errors.items(), key=lambda item: (framework_sort_key(item[0][0]), variant_sort_key(item[0][1]))))
        scoring += (f" {infra} episode(s) ended in infra_error (the lab, not the framework, failed) and are excluded "
                    f"from every score ({where}); `coordlab run` with the same arguments retries them.")
    else:
        scoring += " No episode ended in infra_error."
    result.append(scoring)
    if data.superseded:
        result.append(f"{data.superseded} recorded episode(s) were superseded by a newer episode of the same key "
                      f"(same task, framework version, variant, profile and seed, e.g. from a run with --fresh); "
                      f"only the newest of each key is scored.")
    if data.replicates:
        result.append(f"{data.replicates} recorded episode(s) were further seeds of a deterministic profile (one that "
                      f"injects nothing, so the simulated model answers every seed alike) and are not counted: each "
                      f"such cell is one observation, its lowest seed.")
    for (system, variant), counter in sorted(data.notes.items(), key=lambda item: (
            framework_sort_key(item[0][0]), variant_sort_key(item[0][1]))):
        for note, count in sorted(counter.items()):
            if note.startswith(UNFAITHFUL_PREFIX):
                result.append(f"{system}/{variant}: {note} ({count} episode(s)).")
    multi = sorted({e.framework for e in data.episodes if e.system != e.framework})
    if multi:
        result.append(f"The store holds more than one version of {', '.join(multi)}; their rows are labelled "
                      f"name@version and never pooled.")
    if data.unmeasured:
        result.append(f"{data.unmeasured} episode(s) were recorded before coordlab measured recovered faults and "
                      f"handoffs per cause (store schema 1): for them those counters are unknown, left out of the "
                      f"recovered and handoff columns rather than counted as zero. Their old \"caught\" and "
                      f"per-request handoff counts meant something else and are kept in the store as legacy_* "
                      f"columns, not reported.")
    live_runs = [run for run in data.runs if run.live]
    if live_runs:
        result.append("Run(s) " + ", ".join(f"{r.run_id} ({r.model})" for r in live_runs) + " used a live endpoint "
                      "behind the fault proxy: its model calls, faults and retries are counted from the proxy's "
                      "request log, and its tokens are the endpoint's own counts; a real model has no oracle, so its "
                      "handoffs cannot be judged lost or wrong (left out of the handoff columns), and only the end "
                      "state scores its episodes.")
    if any(not e.live for e in data.episodes):
        result.append("Token counts are the simulator's estimate at 4 characters a token (no tokenizer is "
                      f"downloaded), and costs apply the {prices.currency} prices of {prices.source}"
                      + (f": {prices.note}" if prices.note else "."))
    systems = {e.system.partition("@")[0] for e in data.episodes}
    if "plain" not in systems:
        result.append("No episode of the plain reference adapter is recorded, so overhead ratios to plain are empty.")
    if compounding := compounding_note(data.episodes):
        result.append(compounding)
    return result

