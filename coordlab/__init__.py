"""coordlab: measure the coordination gap of multi-agent frameworks on one shared, fault-injected suite.

The repository keeps the design card's top-level folders (``tasks/``, ``adapters/``,
``runners/``, ``reports/``); they install as ``coordlab.tasks``, ``coordlab.adapters``,
``coordlab.runners`` and ``coordlab.reports``.
"""

__version__ = "0.1.0"
