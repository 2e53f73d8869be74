"""What a search shows in optuna-dashboard: metric names on every plot, a note with the ranking
and its reading, and the recommendation and plot as downloadable artifacts.

The note (optuna-dashboard's note API) is markdown: the ranking table exactly as the CLI prints
it (floor, raw-pixel reference and the quality-signal line included), the recommended head and
the rank correlations between discrepancy and probe accuracy. Artifacts go to a folder beside
the storage (``<data dir>/artifacts`` embedded; ``HSSL_ARTIFACT_DIR`` in a cluster), which
``optuna-dashboard <storage> --artifact-dir <folder>`` serves. Written when the search is
finished (and again if it is finished again after a resume: the note is replaced, an artifact
already uploaded under the same file name is not uploaded twice).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact

from search.evidence import card_lines
from search.strategy import strategy_of

log = logging.getLogger(__name__)
ARTIFACTS = {"json": "application/json", "yaml": "application/yaml", "plot": "image/png"}


def metric_names(spec) -> list[str]:
    """The study's objective names, one per direction, as its strategy declares them."""
    return strategy_of(spec).metric_names(spec)


def note_markdown(study_name: str, report: dict[str, Any]) -> str:
    ranking = report.get("ranking") or {}
    heads = [h for h in ranking.get("heads", []) if h.get("n")]
    lines = [f"# {study_name}", ""]
    if heads:
        lines += [f"**Recommended head:** `{heads[0]['label']}`", ""]
    else:
        lines += ["**No recommendation:** no candidate completed a run.", ""]
    signal = (ranking.get("signal") or {}).get("line")
    if signal:  # the first thing to read: do the probes say anything beyond discrepancy?
        lines += [f"> {signal}", ""]
    card = ranking.get("evidence")
    if card:  # why this head, and how far the ranking metric can be trusted
        lines += ["## Evidence", "", "```", *card_lines(card), "```", ""]
    lines += ["## Ranking", "", "```", report.get("table", "").rstrip(), "```", ""]
    corr = ranking.get("correlations") or {}
    if corr:
        lines += ["## Does discrepancy track probe accuracy? (Spearman ρ over runs)", ""]
        lines += [f"- {pair.replace('~', ' vs ')}: {_rho(c)}" for pair, c in sorted(corr.items())]
        lines.append("")
    lines += [
        "Artifacts: the recommendation (YAML, JSON: head config and the exact pre-training "
        "command) and the ranking plot are attached to this study.",
    ]
    return "\n".join(lines)


def _rho(c: dict[str, Any]) -> str:
    rho, (lo, hi), n = c.get("rho"), c.get("ci") or (None, None), c.get("n", 0)
    if not isinstance(rho, float) or rho != rho:
        return f"no estimate ({n} runs; it needs 3 with both values, not all equal)"
    interval = f" [{lo:+.2f}, {hi:+.2f}]" if isinstance(lo, float) and lo == lo else ""
    return f"ρ {rho:+.2f}{interval} over {n} runs"


def publish(
    study: optuna.Study, report: dict[str, Any], files: dict[str, Path], artifact_dir: Path
) -> None:
    """The note and the artifacts of a finished search (best effort: a dashboard problem is
    logged, never fails the search)."""
    try:
        from optuna_dashboard import save_note

        save_note(study, note_markdown(study.study_name, report))
    except Exception as exc:  # the dashboard package is optional at run time
        log.warning("study %s: could not write its note: %s", study.study_name, exc)
    try:
        artifact_dir.mkdir(parents=True, exist_ok=True)
        store = FileSystemArtifactStore(str(artifact_dir))
        have = {m.filename for m in get_all_artifact_meta(study)}
        for key, mimetype in ARTIFACTS.items():
            path = files.get(key)
            if path is not None and Path(path).is_file() and Path(path).name not in have:
                upload_artifact(
                    artifact_store=store,
                    file_path=str(path),
                    study_or_trial=study,
                    mimetype=mimetype,
                )
    except Exception as exc:
        log.warning("study %s: could not upload its artifacts: %s", study.study_name, exc)
