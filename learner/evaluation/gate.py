"""The promotion gate: does a challenger model beat the champion on the holdout, convincingly?

Pure functions over numbers (numpy only; no torch, no files, no database), so every rule can be checked by hand:

- `ProductScores`: per holdout product and classifier group, how many of its images a model got right (`correct`)
  out of how many carry a human label for that group (`known`). Products are the resampling unit because the
  holdout is chosen by product id and photos of one product are not independent.
- `primary_metric`: the mean over groups of top-1 accuracy, each group's accuracy being sum(correct) / sum(known)
  over the products. On the same images this equals learner.evaluation.evaluate's
  `compute_metrics(...)["summary"]["mean_top1"]`
  (`learner.training.train.PRIMARY_METRIC`).
- `paired_bootstrap`: resamples holdout products with replacement (the same resample for both models: the pairing)
  and returns the percentile confidence interval of challenger minus champion on the primary metric.
- `decide`: promote only when (1) the challenger trained and evaluated cleanly (finite loss, evaluation done),
  (2) the lower end of that interval is above zero, and (3) no attribute group's figure (top-1 and macro-F1)
  drops by more than `GateConfig.max_group_regression`, and (4) when both models have a detection mAP on the
  holdout (annotators boxed objects there), the challenger's mAP@[.5:.95] does not drop by more than
  `GateConfig.max_detection_regression`. The `GateDecision` holds every figure used, for the record.

What it must not do: look at anything but the figures it is given, or promote anything itself (the registry does).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

PRIMARY_METRIC = "mean_top1"  # learner.training.train.PRIMARY_METRIC (kept import-free: this module is pure)
GROUP_FIGURES = ("top1", "macro_f1")  # per attribute group, what must not regress beyond the margin


@dataclass(frozen=True)
class GateConfig:
    """Rules of the gate. `bootstrap_samples` resamples of the holdout products; the challenger must win with the
    lower bound of the two-sided `confidence` interval above zero; `max_group_regression` is the largest drop
    (absolute, e.g. 0.02 = 2 points) of any group's top-1 or macro-F1 that is tolerated, `max_detection_regression`
    the largest drop of the detector's holdout mAP@[.5:.95]."""

    bootstrap_samples: int = 2000
    confidence: float = 0.95
    max_group_regression: float = 0.02
    max_detection_regression: float = 0.02
    seed: int = 0

    def __post_init__(self) -> None:
        if self.bootstrap_samples < 100:
            raise ValueError(f"bootstrap_samples must be at least 100, not {self.bootstrap_samples}")
        if not 0.5 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0.5, 1), not {self.confidence}")
        if self.max_group_regression < 0:
            raise ValueError(f"max_group_regression must be >= 0, not {self.max_group_regression}")
        if self.max_detection_regression < 0:
            raise ValueError(f"max_detection_regression must be >= 0, not {self.max_detection_regression}")


@dataclass(frozen=True)
class ProductScores:
    """One model's results on the holdout: rows are products, columns classifier groups (single-choice)."""

    products: tuple[str, ...]
    groups: tuple[str, ...]
    correct: NDArray[np.float64]  # (P, G) images right
    known: NDArray[np.float64]  # (P, G) images with a human label for that group

    def __post_init__(self) -> None:
        shape = (len(self.products), len(self.groups))
        if self.correct.shape != shape or self.known.shape != shape:
            raise ValueError(f"correct {self.correct.shape} and known {self.known.shape} must both be {shape}")
        if (self.correct > self.known).any() or (self.correct < 0).any():
            raise ValueError("correct counts must lie between 0 and the known counts")

    def aligned_to(self, other: ProductScores) -> ProductScores:
        """The same scores with rows and columns in `other`'s order (both models must cover the same products)."""
        if set(self.products) != set(other.products) or set(self.groups) != set(other.groups):
            raise ValueError("champion and challenger were scored on different holdout products or groups")
        rows = [self.products.index(p) for p in other.products]
        cols = [self.groups.index(g) for g in other.groups]
        return ProductScores(
            other.products, other.groups, self.correct[np.ix_(rows, cols)], self.known[np.ix_(rows, cols)]
        )


def primary_metric(correct: NDArray[np.float64], known: NDArray[np.float64]) -> float:
    """Mean over groups of sum(correct) / sum(known); groups without any label are left out (NaN if none has)."""
    return float(_primary_from_sums(correct.sum(axis=0, keepdims=True), known.sum(axis=0, keepdims=True))[0])


def _primary_from_sums(correct: NDArray[np.float64], known: NDArray[np.float64]) -> NDArray[np.float64]:
    """Row-wise primary metric of (B, G) summed counts."""
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.where(known > 0, correct / np.where(known > 0, known, 1), np.nan)
    labelled = ~np.isnan(acc)
    totals = np.where(labelled, acc, 0.0).sum(axis=1)
    n = labelled.sum(axis=1)
    return np.where(n > 0, totals / np.maximum(n, 1), np.nan)


@dataclass(frozen=True)
class BootstrapResult:
    """Challenger minus champion on the primary metric: the observed difference and its percentile interval."""

    difference: float
    low: float
    high: float
    confidence: float
    samples: int
    products: int
    champion: float
    challenger: float

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def paired_bootstrap(
    champion: ProductScores,
    challenger: ProductScores,
    samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    chunk: int = 256,
) -> BootstrapResult:
    """Percentile interval of (challenger - champion) on the primary metric over `samples` resamples of the
    holdout products with replacement; each resample is applied to both models (paired)."""
    champion = champion.aligned_to(challenger)
    n = len(challenger.products)
    if n == 0:
        raise ValueError("the holdout has no products: nothing to compare")
    base = primary_metric(champion.correct, champion.known)
    cand = primary_metric(challenger.correct, challenger.known)
    rng = np.random.default_rng(seed)
    diffs = np.empty(samples)
    matrices = [m.astype(np.float64) for m in (champion.correct, champion.known, challenger.correct, challenger.known)]
    for start in range(0, samples, chunk):
        size = min(chunk, samples - start)
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=size).astype(np.float64)  # (size, P)
        c_cor, c_known, x_cor, x_known = (weights @ m for m in matrices)
        diffs[start : start + size] = _primary_from_sums(x_cor, x_known) - _primary_from_sums(c_cor, c_known)
    diffs = diffs[~np.isnan(diffs)]
    if len(diffs) == 0:
        raise ValueError("no bootstrap resample had a labelled group")
    alpha = 1.0 - confidence
    low, high = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    return BootstrapResult(
        difference=cand - base,
        low=float(low),
        high=float(high),
        confidence=confidence,
        samples=samples,
        products=n,
        champion=base,
        challenger=cand,
    )


@dataclass
class GateDecision:
    """What the gate concluded and every figure it looked at."""

    promote: bool
    reasons: list[str]
    bootstrap: BootstrapResult | None = None
    group_deltas: dict[str, dict[str, float]] = field(default_factory=dict)  # group -> figure -> challenger - champ
    regressions: list[str] = field(default_factory=list)  # "group/figure: -0.0400 (margin 0.0200)"
    config: GateConfig = field(default_factory=GateConfig)
    detection: dict[str, float] | None = None  # champion / challenger mAP@[.5:.95], difference (when both have one)

    @property
    def outcome(self) -> str:
        return "promoted" if self.promote else "rejected"

    def summary(self) -> str:
        head = "promote" if self.promote else "reject"
        return f"{head}: {'; '.join(self.reasons)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "promote": self.promote,
            "outcome": self.outcome,
            "reasons": list(self.reasons),
            "bootstrap": self.bootstrap.to_dict() if self.bootstrap is not None else None,
            "group_deltas": {g: {k: round(v, 6) for k, v in d.items()} for g, d in self.group_deltas.items()},
            "regressions": list(self.regressions),
            "detection": None if self.detection is None else {k: round(v, 6) for k, v in self.detection.items()},
            "config": asdict(self.config),
        }


def group_deltas(champion: Mapping[str, Any], challenger: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Per group and figure (top-1, macro-F1) present for both models: challenger minus champion.

    Both arguments are metrics as learner.evaluation.evaluate's `compute_metrics` or `headline` return them
    (`{"groups": ...}`).
    """
    out: dict[str, dict[str, float]] = {}
    for name, base in champion.get("groups", {}).items():
        cand = challenger.get("groups", {}).get(name, {})
        deltas = {}
        for figure in GROUP_FIGURES:
            a, b = base.get(figure), cand.get(figure)
            if a is not None and b is not None:
                deltas[figure] = float(b) - float(a)
        if deltas:
            out[name] = deltas
    return out


def decide(
    champion_metrics: Mapping[str, Any] | None,
    challenger_metrics: Mapping[str, Any] | None,
    champion_scores: ProductScores | None,
    challenger_scores: ProductScores | None,
    config: GateConfig,
    failure: str | None = None,
    champion_detection: Mapping[str, Any] | None = None,
    challenger_detection: Mapping[str, Any] | None = None,
) -> GateDecision:
    """Apply the gate. `failure` (a non-finite training loss, an evaluation that raised, ...) means rejection, as
    does anything missing; otherwise see the module docstring. `*_detection`: each model's holdout detection
    figures (`{"map": mAP@[.5:.95], ...}`, learner.lifecycle.retrain.detection_map), None where there are none."""
    if failure is not None:
        return GateDecision(False, [f"challenger failed: {failure}"], config=config)
    if champion_metrics is None or challenger_metrics is None or champion_scores is None or challenger_scores is None:
        return GateDecision(False, ["evaluation on the holdout is missing"], config=config)
    try:
        boot = paired_bootstrap(
            champion_scores, challenger_scores, config.bootstrap_samples, config.confidence, config.seed
        )
    except ValueError as exc:
        return GateDecision(False, [f"evaluation failed: {exc}"], config=config)
    if not all(math.isfinite(v) for v in (boot.champion, boot.challenger, boot.low, boot.high)):
        return GateDecision(False, ["a holdout figure is not finite"], bootstrap=boot, config=config)

    reasons: list[str] = []
    pct = round(config.confidence * 100)
    interval = f"{PRIMARY_METRIC} {boot.challenger:.4f} vs {boot.champion:.4f}, difference {boot.difference:+.4f}, "
    interval += f"{pct}% CI [{boot.low:+.4f}, {boot.high:+.4f}] over {boot.products} products"
    wins = boot.low > 0
    reasons.append(("wins: " if wins else "no significant win: ") + interval)

    deltas = group_deltas(champion_metrics, challenger_metrics)
    regressions = [
        f"{g}/{figure}: {d:+.4f} (margin {config.max_group_regression:.4f})"
        for g, figures in deltas.items()
        for figure, d in figures.items()
        if d < -config.max_group_regression - 1e-12
    ]
    if regressions:
        reasons.append("group regression beyond the margin: " + ", ".join(regressions))

    detection = detection_delta(champion_detection, challenger_detection)
    if detection is not None and detection["difference"] < -config.max_detection_regression - 1e-12:
        regressions.append(
            f"detection/map: {detection['difference']:+.4f} (margin {config.max_detection_regression:.4f})"
        )
        reasons.append(
            f"detection regression beyond the margin: mAP@[.5:.95] {detection['challenger']:.4f} vs "
            f"{detection['champion']:.4f}, difference {detection['difference']:+.4f} "
            f"(margin {config.max_detection_regression:.4f})"
        )
    return GateDecision(
        promote=wins and not regressions,
        reasons=reasons,
        bootstrap=boot,
        group_deltas=deltas,
        regressions=regressions,
        config=config,
        detection=detection,
    )


def detection_delta(
    champion: Mapping[str, Any] | None, challenger: Mapping[str, Any] | None
) -> dict[str, float] | None:
    """Champion and challenger mAP@[.5:.95] and their difference, when both have a finite one (else None)."""
    if not champion or not challenger:
        return None
    a, b = champion.get("map"), challenger.get("map")
    if a is None or b is None or not (math.isfinite(float(a)) and math.isfinite(float(b))):
        return None
    return {"champion": float(a), "challenger": float(b), "difference": float(b) - float(a)}


def scores_from_rows(rows: Sequence[tuple[str, str, bool]], groups: Sequence[str] | None = None) -> ProductScores:
    """Build `ProductScores` from (product_id, group, correct) rows, one per labelled image and group."""
    products = sorted({p for p, _, _ in rows})
    group_names = list(groups) if groups is not None else sorted({g for _, g, _ in rows})
    p_index = {p: i for i, p in enumerate(products)}
    g_index = {g: i for i, g in enumerate(group_names)}
    correct = np.zeros((len(products), len(group_names)))
    known = np.zeros_like(correct)
    for p, g, ok in rows:
        known[p_index[p], g_index[g]] += 1
        correct[p_index[p], g_index[g]] += float(ok)
    return ProductScores(tuple(products), tuple(group_names), correct, known)
