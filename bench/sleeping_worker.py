"""``hssl <args>`` (e.g. ``worker --slots 1``) whose trials sleep instead of training.

    python bench/sleeping_worker.py SECONDS worker --slots 1

``bench/scaling.py`` starts its workers this way: the stand-in (``bench/sleeping_trial.py``) is
passed to ``search.run.use_trial_runner`` in this process, so the worker's searches run
through every real part (claims, shards, ask/tell, database writes) but sleep where a run
would train.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sleeping_trial import sleeping_runner

from search.run import use_trial_runner
from service.cli.main import main

if __name__ == "__main__":
    seconds, args = float(sys.argv[1]), sys.argv[2:]
    use_trial_runner(sleeping_runner(seconds))
    sys.argv = ["hssl", *args]
    main()
