"""Every metric a run reports, declared once (a leaf module: no torch, importable by the light
API). The search's objectives, the records a trial keeps, the ranking's columns and the
dashboard's metric names all derive from :data:`REGISTRY`; adding a metric is its function in
the evaluation plus one :func:`register` call here.

A metric is one of four kinds:

* ``probe``: an accuracy of the base's frozen features (needs labels), with a random-init floor
  and a binomial sampling SE stored beside it as ``<key>_se``;
* ``label_free``: a score computed without labels that may predict quality (the discrepancies,
  the head target's information, the estimators of the base's embeddings);
* ``diagnostic``: recorded and shown, never an objective;
* ``reference``: measured once at initialisation on something other than the network (raw
  pixels).

``scope`` says whose property it is: ``base`` (one value per run: a joint search's heads share
it, so it cannot rank them there) or ``head`` (one value per head; the baseline's is that of
its own [CLS] target).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["probe", "label_free", "diagnostic", "reference"]
Scope = Literal["base", "head"]
Direction = Literal["maximize", "minimize"]


@dataclass(frozen=True)
class Metric:
    key: str  # the key in a run's metrics (and in a trial's init/final attributes)
    display: str  # how tables and plots name it
    kind: Kind
    scope: Scope
    direction: Direction = "maximize"  # which way is better, when it is an objective
    objective: str | None = None  # the name a search spec uses for it (None: not an objective)
    at_init: bool = True  # measured at initialisation too (the floor of a probe)
    primary: bool = (
        False  # a primary probe: what quality means in the studies and the staged search
    )
    default: bool = False  # a default objective of a search spec (set from the studies)
    doc: str = ""

    @property
    def se_key(self) -> str | None:
        """Where an accuracy's sampling SE is stored (``None``: not an accuracy)."""
        return f"{self.key}_se" if self.kind in ("probe", "reference") else None


REGISTRY: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Declare ``metric`` (once: a second declaration of its key or objective name raises)."""
    if metric.key in REGISTRY:
        raise ValueError(f"metric {metric.key!r} is declared twice")
    if metric.objective and metric.objective in objective_names():
        raise ValueError(f"objective {metric.objective!r} is declared twice")
    if metric.objective and metric.kind not in ("probe", "label_free"):
        raise ValueError(f"{metric.key}: only probes and label-free metrics can be objectives")
    REGISTRY[metric.key] = metric
    return metric


def metrics(*, kind: Kind | None = None, scope: Scope | None = None) -> tuple[Metric, ...]:
    """The declared metrics of one kind and/or scope, in declaration order."""
    return tuple(
        m
        for m in REGISTRY.values()
        if (kind is None or m.kind == kind) and (scope is None or m.scope == scope)
    )


def keys(*, kind: Kind | None = None, scope: Scope | None = None) -> tuple[str, ...]:
    return tuple(m.key for m in metrics(kind=kind, scope=scope))


def objective_names() -> tuple[str, ...]:
    return tuple(m.objective for m in REGISTRY.values() if m.objective)


def by_objective(name: str) -> Metric:
    """The metric a spec's objective (``knn``) or a metric key (``knn_cls``) names."""
    for m in REGISTRY.values():
        if name in (m.objective, m.key) and m.objective:
            return m
    raise ValueError(f"unknown objective {name!r}; choose from {', '.join(objective_names())}")


def primary_probes() -> tuple[str, ...]:
    """The primary probes' metric keys (study v2's PLAN: linear and k-NN [CLS])."""
    return tuple(m.key for m in REGISTRY.values() if m.primary)


def default_objectives() -> tuple[str, ...]:
    """The objectives a search spec ranks by when it names none."""
    return tuple(m.objective for m in REGISTRY.values() if m.default and m.objective)


def display(key: str) -> str:
    metric = REGISTRY.get(key)
    return metric.display if metric else key


# --------------------------------------------------------------------------- the declarations

register(
    Metric(
        "knn_cls",
        "k-NN [CLS]",
        "probe",
        "base",
        objective="knn",
        primary=True,
        doc="weighted k-NN (k 20, T 0.07) on the teacher base's [CLS] (method §8)",
    )
)
register(
    Metric("knn_patch", "k-NN patch", "probe", "base", doc="weighted k-NN on the mean patch token")
)
register(
    Metric(
        "linear",
        "linear",
        "probe",
        "base",
        objective="linear",
        primary=True,
        doc="L-BFGS logistic regression on [CLS] + mean patch token",
    )
)
register(
    Metric(
        "finetune",
        "fine-tune",
        "probe",
        "base",
        objective="finetune",
        doc="top-1 after a short proxy fine-tune of the base (issue 15)",
    )
)
register(
    Metric(
        "d_kl",
        "D_kl",
        "label_free",
        "head",
        objective="d_kl",
        default=True,
        doc="D_loss − H(target): the head target's KL to the base prediction (method §4)",
    )
)
register(
    Metric(
        "d_cka",
        "D_cka",
        "label_free",
        "head",
        objective="d_cka",
        default=True,
        doc="1 − linear CKA of the base and head global features (method §4)",
    )
)
register(
    Metric(
        "d_loss",
        "D_loss",
        "label_free",
        "head",
        objective="d_loss",
        doc="held-out L_cls1: cross-entropy of the base prediction on the head target",
    )
)
register(
    Metric(
        "target_information",
        "target information",
        "label_free",
        "head",
        objective="target_information",
        doc="H(mean target) − mean H(target), nats: what the target says about the image",
    )
)
register(
    Metric(
        "rankme",
        "RankMe",
        "label_free",
        "base",
        objective="rankme",
        doc="effective rank of the base [CLS] embeddings (Garrido et al., ICML 2023)",
    )
)
register(
    Metric(
        "alpha_req",
        "α-ReQ",
        "label_free",
        "base",
        "minimize",
        objective="alpha_req",
        doc="power-law decay α of the embeddings' eigenspectrum (Agrawal et al., "
        "NeurIPS 2022); smaller = a flatter spectrum",
    )
)
register(
    Metric(
        "h_target",
        "H(target)",
        "diagnostic",
        "head",
        doc="mean entropy of the teacher target, nats",
    )
)
register(Metric("target_entropy", "target entropy", "diagnostic", "head"))
register(Metric("target_spread", "target spread", "diagnostic", "head"))
register(Metric("pixels_knn", "raw pixels k-NN", "reference", "base"))
register(Metric("pixels_linear", "raw pixels linear", "reference", "base"))
