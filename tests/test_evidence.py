"""The evidence card reads the committed study results: the installed reference equals what
bench/evidence.py derives from its source results.json, and the card quotes those numbers."""

from __future__ import annotations

import json
from pathlib import Path

from search.dashboard import note_markdown
from search.evidence import (
    MIN_OWN_RUNS,
    REFERENCE,
    card_lines,
    evidence_card,
    load_reference,
    reference_from_results,
)

ROOT = Path(__file__).resolve().parents[1]


def test_the_reference_is_derived_from_a_committed_study() -> None:
    reference = load_reference()
    assert reference is not None and REFERENCE.is_file()
    results = json.loads((ROOT / reference["source"]).read_text())
    assert reference_from_results(results, reference["source"]) == reference
    assert reference["links"]["d_kl~linear"]["n"] == reference["heads"] >= 8


def test_the_card_quotes_the_reference_and_checks_this_search() -> None:
    reference = load_reference()
    link = reference["links"]["d_kl~linear"]
    few = {"d_kl~linear": {"rho": 0.9, "ci": [0.1, 1.0], "n": MIN_OWN_RUNS - 1}}
    card = evidence_card(["d_kl"], few, "mlp-d2-nores")
    assert card["predicted"]["d_kl~linear"] == link and card["this_search"] == {}
    text = "\n".join(card_lines(card))
    assert f"D_kl vs linear: ρ {link['rho']:+.2f} [{link['lo']:+.2f}, {link['hi']:+.2f}]" in text
    assert "fewer than 5 with a probe: no check" in text
    assert card["why"].startswith("mlp-d2-nores: rank 1 on D_kl; in ")
    enough = {
        "d_kl~linear": {"rho": -0.3, "ci": [-0.9, 0.5], "n": 6},
        "d_cka~linear": few["d_kl~linear"],
    }
    assert list(evidence_card(["d_kl"], enough, "x")["this_search"]) == ["d_kl~linear"]
    staged = evidence_card(["d_kl"], {}, None, "keep the baseline (no head beat it: ...)")
    assert staged["why"].startswith("keep the baseline")
    bare = evidence_card(["rankme"], {}, "x", reference={})
    assert bare["reference"] is None and bare["why"] == "x: rank 1 on RankMe"
    assert "no reference study is installed" in "\n".join(card_lines(bare))


def test_the_dashboard_note_shows_the_card() -> None:
    card = evidence_card(["d_kl"], {}, "mlp-d2-nores")
    note = note_markdown("s", {"table": "t", "ranking": {"heads": [], "evidence": card}})
    assert "## Evidence" in note and "why: mlp-d2-nores: rank 1 on D_kl" in note
