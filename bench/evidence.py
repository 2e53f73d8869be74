"""Write ``search/reference_evidence.json`` (the evidence card's reference) from a committed
study's ``results.json``: which label-free metric predicted which probe, with its interval.

    .venv/bin/python bench/evidence.py docs/study/proxy-cpu/results.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from search.evidence import REFERENCE, reference_from_results

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise SystemExit("usage: bench/evidence.py docs/study/<name>/results.json")
    path = Path(argv[0]).resolve()
    source = str(path.relative_to(ROOT))
    reference = reference_from_results(json.loads(path.read_text()), source)
    REFERENCE.write_text(json.dumps(reference, indent=1, sort_keys=True) + "\n")
    print(
        json.dumps({"written": str(REFERENCE.relative_to(ROOT)), "links": len(reference["links"])})
    )


if __name__ == "__main__":
    main(sys.argv[1:])
