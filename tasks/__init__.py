"""The shared task suite: schema, loader and validation, tools, per-episode worlds, oracle and scoring."""
