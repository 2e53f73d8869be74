"""The search strategies, one module each (method §5); importing this package (the ``search``
package does) registers them (:mod:`search.strategy`) in the order the spec lists them. Each
writes its trials into the search's Optuna study and resumes where it stopped. Shared parts
(the baseline, the pre-screen, which runs are done) are in ``common``."""

# isort: off
from search.strategies import joint, independent, sampled, calibrate, staged  # noqa: F401

# isort: on
from search.strategy import STRATEGIES

NAMES: tuple[str, ...] = tuple(STRATEGIES)
