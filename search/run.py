"""Run a whole search on one Optuna storage and write its outputs (the embedded default:
SQLite under one data directory, trials in child processes)."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from tqdm import tqdm

from search.claims import Claims, SoloClaims
from search.context import SearchContext
from search.dashboard import metric_names, publish
from search.evidence import card_lines, evidence_card
from search.objectives import metric_of
from search.plot import plot_search
from search.provenance import data_fingerprint, versions
from search.ranking import correlations, pareto_front, rank, ranking_json, ranking_table, summarize
from search.recommendation import build_recommendation, write_recommendation
from search.records import baseline_records, records
from search.sampling import pruner_settings, sampler_settings
from search.spec import SearchSpec, planned_trials
from search.storage import (
    close_study,
    directions,
    make_storage,
    reconcile_orphans,
    same_spec,
    sqlite_url,
    study_name,
)
from search.strategies.common import prescreen, run_baseline
from search.strategy import stage_line, strategy_of
from search.trial_process import run_trial_inline, run_trial_isolated
from training.data.datasets import resolve_source
from training.errors import HSSLError


@dataclass
class SearchOutcome:
    study: str
    storage: str
    status: str
    table: str
    ranking: dict[str, Any]
    files: dict[str, Path]
    reconciled: list[int]


def open_study(spec: SearchSpec, storage_url: str, *, resume: bool) -> optuna.Study:
    """Create the search's study, or load it to resume (refusing a different spec)."""
    storage = make_storage(storage_url)
    name = study_name(spec)
    exists = name in optuna.get_all_study_names(storage)
    if exists and not resume:
        raise HSSLError(
            f"search {name!r} already exists in {storage_url}; pass --resume to "
            "continue it, or give the spec another name"
        )
    study = optuna.create_study(
        storage=storage, study_name=name, directions=directions(spec), load_if_exists=True
    )
    if exists and not same_spec(study, spec):
        raise HSSLError(
            f"search {name!r} was started from a different spec; resume it with the "
            "same spec file, or give this spec another name"
        )
    if not exists:
        with warnings.catch_warnings():  # experimental in Optuna 4 and 5, stable in use
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(metric_names(spec))  # what optuna-dashboard's plots say
        study.set_user_attr("spec", spec.model_dump(mode="json"))
        study.set_user_attr("sampler", sampler_settings(spec))
        study.set_user_attr("pruner", pruner_settings(spec))
        study.set_user_attr("versions", versions())
        study.set_user_attr("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return study


def run_search(
    spec: SearchSpec,
    data_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    isolate: bool = True,
    storage_url: str | None = None,
    should_cancel: Callable[[], bool] | None = None,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
    data_root: str | Path | None = None,
    reconcile: bool = True,
    claims: Claims | None = None,
    fan_out: Callable[[int], None] | None = None,
    finish: bool = True,
    memory_limit_mb: int | None = None,
    artifact_dir: str | Path | None = None,
) -> SearchOutcome:
    """Run (or resume) the search ``spec`` and write ranking, recommendation and plot.

    ``on_event(kind, data)`` hears ``trial.started``, ``trial.reported`` (each epoch) and
    ``trial.finished`` (with the trial's values and user attributes) as they happen. With
    ``data_root`` (a service's), a folder ``spec.data`` outside it is refused (DataError)
    before the study is opened: the spec may not have come through the API's check, or the
    folder may have been swapped for a link since. ``reconcile=False`` joins a study another
    live process is running: its running trials are left alone instead of being failed as
    orphans.

    Shards (the service's fan-out): ``claims`` (``search.claims``) decide which runs this
    process executes; ``fan_out(n)`` is told, once the pre-screen is done, how many runs may
    go at once (``parallel_runs``), so the caller can start that many shards; with
    ``finish=False`` the ranking and files are not written (the last shard does that with
    ``finish_search``) and the outcome carries only the status. ``memory_limit_mb`` caps
    each trial (a worker slot's share), besides the spec's own cap. ``artifact_dir``: where
    optuna-dashboard's artifacts go (default ``<data_dir>/artifacts``).
    """
    if data_root is not None:
        resolve_source(spec.data, Path(data_root).resolve())
    url = storage_url or sqlite_url(data_dir)
    study = open_study(spec, url, resume=resume)
    reconciled = reconcile_orphans(study) if reconcile else []
    workdir = Path(data_dir) / "searches" / study.study_name
    bar = _progress_bar(spec, study, progress)
    emit = _emitter(bar, on_event)
    budget = spec.budget.wall_clock_s
    ctx = SearchContext(
        spec=spec,
        study=study,
        workdir=workdir,
        runner=runner_for(isolate),
        emit=emit,
        deadline=time.monotonic() + budget if budget else None,
        should_cancel=should_cancel,
        claims=claims or SoloClaims(),
        memory_limit_mb=memory_limit_mb,
        fan_out=fan_out,
    )
    for trial in study.get_trials(deepcopy=False):
        if trial.number in reconciled:  # announced, so a listener records why it ended
            ctx.finished(trial)
    study.set_user_attr("status", "running")
    try:
        run_strategy(ctx, fan_out)
    finally:
        bar.close()
    status = "cancelled" if ctx.cancelled() else "out_of_time" if ctx.out_of_time() else "completed"
    if not finish:
        close_study(study)
        return SearchOutcome(study.study_name, url, status, "", {}, {}, reconciled)
    outcome = finish_search(study, spec, url, workdir, status, artifact_dir)
    outcome.reconciled = reconciled
    return outcome


def _progress_bar(spec: SearchSpec, study: optuna.Study, progress: bool) -> tqdm:
    """The search's bar: planned trials, with those the study already finished counted."""
    bar = tqdm(
        total=planned_trials(spec), disable=not progress, desc=study.study_name, dynamic_ncols=True
    )
    bar.update(sum(1 for t in study.trials if t.state.is_finished()))
    return bar


def _emitter(
    bar: tqdm, on_event: Callable[[str, dict[str, Any]], None] | None
) -> Callable[[str, dict[str, Any]], None]:
    """Events to the bar (finished runs, progress inside runs) and to ``on_event``."""

    def emit(kind: str, data: dict[str, Any]) -> None:
        if kind == "trial.finished":
            bar.update(1)
            bar.set_postfix_str(f"{data['label']}: {data['state']}")
        elif kind == "trial.progress":
            bar.set_postfix_str(progress_text(data))
        elif kind == "search.stage":
            bar.write(stage_line(data))
        if on_event is not None:
            on_event(kind, data)

    return emit


_stand_in: Callable[..., Any] | None = None  # use_trial_runner's


def use_trial_runner(runner: Callable[..., Any] | None) -> None:
    """Run every trial of this process's searches with ``runner`` (``run_trial_isolated``'s
    signature) instead of training; ``None`` trains again. For benches and tests that measure
    what surrounds the runs (``bench/sleeping_worker.py``): the caller passes its stand-in in,
    nothing in production reads a switch for it."""
    global _stand_in
    _stand_in = runner


def runner_for(isolate: bool):
    """Child process per trial (``isolate``) or inline (or the stand-in a bench passed in)."""
    if _stand_in is not None:
        return _stand_in
    return run_trial_isolated if isolate else run_trial_inline


def progress_text(data: dict[str, Any]) -> str:
    """A running run's place: ``joint-s0 epoch 3/10 step 40/62 · 812 img/s``."""
    return (
        f"{data.get('run')} epoch {data.get('epoch')}/{data.get('epochs')} "
        f"step {data.get('step')}/{data.get('steps')} · {data.get('images_per_s', 0):.0f} img/s"
    )


def run_strategy(ctx: SearchContext, fan_out: Callable[[int], None] | None = None) -> None:
    """Pre-screen, baseline, then the strategy's runs (each claimed: see ``search.claims``)."""
    spec = ctx.spec
    strategy = strategy_of(spec)
    candidates = spec.space.candidates()
    if spec.budget.prescreen_keep and strategy.prescreen:
        candidates = prescreen(ctx, candidates, spec.budget.prescreen_keep)
    if fan_out is not None:
        fan_out(parallel_runs(spec))
    if spec.include_baseline and strategy.baseline:
        run_baseline(ctx)
    strategy.run(ctx, candidates)


def parallel_runs(spec: SearchSpec) -> int:
    """How many runs of the search may go at once, as its strategy plans them (at most
    ``budget.parallel``; baselines count as runs too)."""
    return strategy_of(spec).parallel_runs(spec)


def finish_search(
    study: optuna.Study | str,
    spec: SearchSpec,
    url: str,
    workdir: Path,
    status: str,
    artifact_dir: str | Path | None = None,
) -> SearchOutcome:
    """Write the ranking, plot and recommendation of a search whose runs are over (once,
    by the process that ran the last of them), and show them in optuna-dashboard (note and
    artifacts in ``artifact_dir``, default ``<data dir>/artifacts``); ``study`` may be its
    name."""
    if isinstance(study, str):
        study = optuna.load_study(study_name=study, storage=make_storage(url))
    study.set_user_attr("status", status)
    report = report_of(study, spec)
    files = strategy_of(spec).write_outputs(study, spec, report, url, workdir)
    publish(study, report, files, Path(artifact_dir or workdir.parent.parent / "artifacts"))
    close_study(study)
    return SearchOutcome(
        study.study_name, url, status, report["table"], report["ranking"], files, []
    )


def report_of(study: optuna.Study, spec: SearchSpec) -> dict[str, Any]:
    """The strategy's report of the study's trials (table + ranking JSON)."""
    return strategy_of(spec).report(study, spec)


def ranking_report(study: optuna.Study, spec: SearchSpec) -> dict[str, Any]:
    """Ranking by the objectives (table + JSON), Pareto front and correlations."""
    recs = records(study)
    baseline_runs = baseline_records(study)
    baseline = summarize(baseline_runs)[0] if baseline_runs else None
    ranked = rank(summarize(recs), spec.objectives)
    front = pareto_front(ranked, spec.objectives)
    corr = correlations(recs)
    ranked_by = [metric_of(o) for o in spec.objectives]
    first = ranked[0].label if ranked and ranked[0].n else None
    # the default pairs cover every label-free metric; a probe objective needs its own
    missing = [m for m in ranked_by if not any(pair.startswith(f"{m}~") for pair in corr)]
    own = {**corr, **(correlations(recs, missing) if missing else {})}
    card = evidence_card(ranked_by, own, first)
    ranking = ranking_json(ranked, spec.objectives, front, corr, baseline)
    table = ranking_table(ranked, spec.objectives, baseline)
    return {
        "ranked": ranked,
        "baseline": baseline,
        "table": "\n".join([table, *card_lines(card)]),
        "ranking": {**ranking, "evidence": card},
    }


def write_ranking_outputs(
    study: optuna.Study,
    spec: SearchSpec,
    report: dict[str, Any],
    url: str,
    out_dir: Path,
) -> dict[str, Path]:
    """Ranking JSON, ranking plot and the recommendation of the ranking's first head."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"ranking": out_dir / "ranking.json"}
    files["ranking"].write_text(json.dumps(report["ranking"], indent=2) + "\n")
    disc = next((o for o in spec.objectives if o.startswith("d_")), spec.objectives[0])
    confirmed = {
        h["label"]: (g["mean"], g["lo"], g["hi"])
        for h in report["ranking"]["heads"]
        if (g := h.get("paired_gain"))
    }
    files["plot"] = plot_search(
        report["ranked"],
        out_dir / "ranking.png",
        title=study.study_name,
        discrepancy=disc,
        baseline=report["baseline"],
        shared_base=strategy_of(spec).shared_base,
        gains=confirmed,
        caption=(report["ranking"].get("evidence") or {}).get("why", ""),
    )
    try:
        rec = build_recommendation(
            spec,
            report["ranking"],
            study=study.study_name,
            storage=url,
            data=data_fingerprint(spec.data, spec.base.img_size),
            versions=study.user_attrs.get("versions", versions()),
        )
    except HSSLError:
        return files  # nothing completed: no recommendation, the ranking says why
    files.update(write_recommendation(rec, out_dir))
    return files
