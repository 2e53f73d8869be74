"""The evidence card on every ranking (issue 22): which metric ranked the heads, how well that
metric predicted the primary probes in the reference study (read from the committed study
results, through ``search/reference_evidence.json``), whether this search's own runs agree, and
one sentence on why the first head is there.

``search/reference_evidence.json`` is derived from a study's ``results.json`` by
:func:`reference_from_results` (``python bench/evidence.py docs/study/<name>/results.json``);
``tests/test_evidence.py`` re-derives it from the committed file and fails if they differ.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.metrics import display, primary_probes

REFERENCE = Path(__file__).with_name("reference_evidence.json")
PRIMARY = primary_probes()
MIN_OWN_RUNS = 5  # a search's own ρ is shown from this many runs with both values


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def reference_from_results(results: dict[str, Any], source: str) -> dict[str, Any]:
    """The reference evidence of a study's ``results.json`` (study v1's layout: correlations
    per head mean; study v2's: the registered panel family with Holm-corrected p-values)."""
    plan = results.get("plan") or (results.get("specs") or {}).get("panel") or {}
    links: dict[str, dict[str, Any]] = {}
    if "panel" in results:  # study v2
        for e in results["panel"]["correlations"]["primary"]:
            links[f"{e['metric']}~{e['probe']}"] = {
                "rho": e["rho"],
                "lo": e["lo"],
                "hi": e["hi"],
                "n": e["n"],
                "p_holm": e.get("p_holm"),
                "survives": e.get("reject"),
            }
        heads = max((e["n"] for e in results["panel"]["correlations"]["primary"]), default=0)
    else:  # study v1
        for pair, c in results["correlations"]["per_head"].items():
            lo, hi = c["ci"]
            links[pair] = {
                "rho": c["rho"],
                "lo": lo,
                "hi": hi,
                "n": c["n"],
                "p_holm": None,
                "survives": None,
            }
        heads = max((c["n"] for c in results["correlations"]["per_head"].values()), default=0)
    base, budget = plan.get("base", {}), plan.get("budget", {})
    overrides = plan.get("trial_overrides", {})
    recipe = "projector BN + KoLeo (proxy)" if plan.get("recipe") == "proxy" else "faithful"
    if plan.get("recipe") != "proxy" and overrides.get("proj_bn"):
        recipe = "projector BN without KoLeo"
    return {
        "source": source,
        "study": str(Path(source).parent),
        "heads": heads,
        "scale": (
            f"{base.get('name')} (img {base.get('img_size')}, patch {base.get('patch_size')}, "
            f"depth {base.get('depth')}, width {base.get('width')}) on {plan.get('data')}, "
            f"{budget.get('epochs')} epochs"
        ),
        "recipe": recipe,
        "over": "head means",
        "links": links,
    }


def load_reference(path: Path = REFERENCE) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _rho_text(link: dict[str, Any] | None) -> str:
    if not link or not _finite(link.get("rho")):
        return "not measured"
    text = f"ρ {link['rho']:+.2f}"
    if _finite(link.get("lo")) and _finite(link.get("hi")):
        text += f" [{link['lo']:+.2f}, {link['hi']:+.2f}]"
    text += f" over {link['n']} heads"
    if link.get("survives") is None:
        text += " (not corrected for the pairs tested)"
    else:
        text += ", survives Holm" if link["survives"] else ", does not survive Holm"
    return text


def evidence_card(
    ranked_by: Sequence[str],
    own: dict[str, dict[str, Any]],
    first: str | None,
    decision_line: str | None = None,
    reference: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The card: ``ranked_by`` metric keys, ``own`` this search's correlations (``"m~probe"``:
    ``{rho, ci, n}``), ``first`` the first head's label, ``decision_line`` a staged search's
    decision (its own measured evidence)."""
    reference = (reference if reference is not None else load_reference()) or None
    ref_links = (reference or {}).get("links", {})
    predicted = {f"{m}~{p}": ref_links.get(f"{m}~{p}") for m in ranked_by for p in PRIMARY}
    mine = {
        pair: c
        for pair, c in own.items()
        if pair.split("~")[0] in ranked_by
        and c.get("n", 0) >= MIN_OWN_RUNS
        and _finite(c.get("rho"))
    }
    if decision_line:
        why = decision_line
    elif first is None:
        why = "no head completed a run: nothing ranked"
    else:
        lead = ranked_by[0]
        why = f"{first}: rank 1 on {', '.join(display(m) for m in ranked_by)}"
        if reference:
            why += (
                f"; in {reference['study']} {display(lead)} predicted linear at "
                f"{_rho_text(predicted.get(f'{lead}~linear'))}"
            )
    return {
        "ranked_by": list(ranked_by),
        "reference": None
        if reference is None
        else {k: reference[k] for k in ("study", "source", "heads", "scale", "recipe", "over")},
        "predicted": predicted,
        "this_search": mine,
        "why": why,
    }


def card_lines(card: dict[str, Any]) -> list[str]:
    """The card as text (the CLI table's and the dashboard note's)."""
    ref = card.get("reference")
    lines = [f"evidence: ranked by {', '.join(display(m) for m in card['ranked_by'])}"]
    if ref:
        lines.append(
            f"  in {ref['study']} ({ref['heads']} heads; {ref['scale']}; {ref['recipe']}; "
            f"{ref['over']}):"
        )
        for pair, link in card["predicted"].items():
            metric, probe = pair.split("~")
            lines.append(f"    {display(metric)} vs {display(probe)}: {_rho_text(link)}")
    else:
        lines.append(
            "  no reference study is installed: how well this metric predicts quality is unknown"
        )
    if card["this_search"]:
        own = "; ".join(
            f"{display(p.split('~')[0])} vs {display(p.split('~')[1])} ρ {c['rho']:+.2f} over "
            f"{c['n']} runs"
            for p, c in card["this_search"].items()
        )
        lines.append(f"  this search's own runs: {own}")
    else:
        lines.append(f"  this search's own runs: fewer than {MIN_OWN_RUNS} with a probe: no check")
    lines.append(f"  why: {card['why']}")
    return lines
