"""Optuna orchestration of head searches. Importing the package registers every strategy
(:mod:`search.strategy`, one module each in :mod:`search.strategies`) before any of its modules
runs, so ``search.spec`` can build its ``strategy`` literal from the registry."""

import search.strategies  # noqa: F401
