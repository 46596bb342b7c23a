"""The lab: simulated model and faults, episode harness, sweeps, workers, results store, export and the CLI."""
