"""The promotion gate: does a challenger model beat the champion on the holdout, convincingly, without making any
attribute group significantly worse?

Pure functions over numbers (numpy only; no torch, no files, no database), so every rule can be checked by hand. The
statistics (`ProductScores`, `paired_comparison`, ...) live in learner.evaluation.bootstrap and are re-exported here.

`decide` promotes only when
1. the challenger trained and evaluated cleanly (finite loss, evaluation done);
2. it wins: the lower end of the paired-bootstrap `confidence` interval (over holdout products) of challenger minus
   champion on the primary metric (mean top-1) is above zero;
3. no group regressed significantly beyond the margin: per single-choice group, the same resamples give an interval
   of the group's top-1 difference and of its macro-F1 difference (macro-F1 over the classes with at least
   `GateConfig.min_class_support` labelled holdout images; rarer classes are counted, not averaged), and a figure
   vetoes only when its interval's upper bound is below -`GateConfig.max_group_regression`. A figure that cannot be
   resampled (no per-image predictions, e.g. multi-label groups; no class with enough support) is reported with its
   point estimate and does not veto;
4. when both models have a detection mAP on the holdout (annotators boxed objects there), the challenger's
   mAP@[.5:.95] does not drop by more than `GateConfig.max_detection_regression` (a point estimate: mAP is not
   resampled per product).

The `GateDecision` holds every figure used, for the record: its reasons name the test, the interval and the support.
`vetoes_of`, `vetoed_win` and `vetoed_win_streak` read recorded decisions (also those recorded before the group
test was a bootstrap) for the learner's metrics and `shelfsight models gate-report`.

What it must not do: look at anything but the figures it is given, or promote anything itself (the registry does).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from learner.evaluation.bootstrap import (
    GROUP_FIGURES,
    BootstrapResult,
    GroupComparison,
    ImagePredictions,
    ProductScores,
    paired_bootstrap,
    paired_comparison,
    primary_metric,
    scores_from_rows,
)

# key of compute_metrics()["summary"] the gate compares; training's early stopping and model selection use it too
# (learner.training.fit, train and finetune import it from here)
PRIMARY_METRIC = "mean_top1"
# why a challenger was not promoted (`GateDecision.vetoes`, the learner's vetoes metric label)
VETO_REASONS = (
    "not_significant",
    "group_regression",
    "detection_regression",
    "training_failed",
    "evaluation_failed",
    "evaluation_missing",
    "other",  # e.g. the champion changed during the run
)


@dataclass(frozen=True)
class GateConfig:
    """Rules of the gate. `bootstrap_samples` resamples of the holdout products; the challenger must win with the
    lower bound of the two-sided `confidence` interval above zero; a group's top-1 or macro-F1 vetoes when the upper
    bound of its interval (same resamples) is below -`max_group_regression` (absolute, e.g. 0.02 = 2 points);
    macro-F1 averages the classes with at least `min_class_support` labelled holdout images;
    `max_detection_regression` is the largest tolerated drop of the detector's holdout mAP@[.5:.95]."""

    bootstrap_samples: int = 2000
    confidence: float = 0.95
    max_group_regression: float = 0.02
    max_detection_regression: float = 0.02
    min_class_support: int = 5
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
        if self.min_class_support < 1:
            raise ValueError(f"min_class_support must be at least 1, not {self.min_class_support}")


@dataclass
class GateDecision:
    """What the gate concluded and every figure it looked at."""

    promote: bool
    reasons: list[str]
    bootstrap: BootstrapResult | None = None
    group_deltas: dict[str, dict[str, float]] = field(default_factory=dict)  # group -> figure -> challenger - champ
    regressions: list[str] = field(default_factory=list)  # the figures that vetoed, with interval and support
    config: GateConfig = field(default_factory=GateConfig)
    detection: dict[str, float] | None = None  # champion / challenger mAP@[.5:.95], difference (when both have one)
    group_tests: list[GroupComparison] = field(default_factory=list)  # every group figure, tested or not
    failure: str | None = None  # training_failed | evaluation_failed | evaluation_missing (no comparison made)

    @property
    def outcome(self) -> str:
        return "promoted" if self.promote else "rejected"

    @property
    def significant_win(self) -> bool:
        return self.bootstrap is not None and self.bootstrap.low > 0

    @property
    def vetoes(self) -> list[str]:
        """Why it was not promoted (values of `VETO_REASONS`; empty when promoted)."""
        if self.promote:
            return []
        out: list[str] = []
        if self.failure is not None:
            out.append(self.failure)
        elif not self.significant_win:
            out.append("not_significant")
        if any(t.regressed_beyond(self.config.max_group_regression) for t in self.group_tests):
            out.append("group_regression")
        if self.detection is not None and self.detection["difference"] < -self.config.max_detection_regression - 1e-12:
            out.append("detection_regression")
        return out or ["other"]

    def summary(self) -> str:
        head = "promote" if self.promote else "reject"
        return f"{head}: {'; '.join(self.reasons)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "promote": self.promote,
            "outcome": self.outcome,
            "reasons": list(self.reasons),
            "vetoes": self.vetoes,
            "significant_win": self.significant_win,
            "bootstrap": self.bootstrap.to_dict() if self.bootstrap is not None else None,
            "group_deltas": {g: {k: round(v, 6) for k, v in d.items()} for g, d in self.group_deltas.items()},
            "group_tests": [t.to_dict() for t in self.group_tests],
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


def _point_only(
    tests: list[GroupComparison], champion: Mapping[str, Any], challenger: Mapping[str, Any]
) -> list[GroupComparison]:
    """Group figures of the metrics that the bootstrap did not cover (multi-label groups, say): reported with their
    point estimate, never vetoing."""
    covered = {(t.group, t.figure) for t in tests}
    out = []
    for name, base in champion.get("groups", {}).items():
        cand = challenger.get("groups", {}).get(name, {})
        for figure in GROUP_FIGURES:
            a, b = base.get(figure), cand.get(figure)
            if a is None or b is None or (name, figure) in covered:
                continue
            images = int(cand.get("n") or 0)
            note = "no per-product scores to resample (point estimate only)"
            out.append(GroupComparison(name, figure, float(a), float(b), images=images, note=note))
    return out


def _group_reason(tests: list[GroupComparison], config: GateConfig) -> tuple[list[str], str]:
    """The vetoing figures and the sentence explaining the group check."""
    margin, confidence = config.max_group_regression, config.confidence
    rule = (
        f"paired bootstrap over the same resamples, a figure vetoes when the upper bound of its "
        f"{round(confidence * 100)}% CI is below -{margin:.4f}; macro-F1 over classes with >= "
        f"{config.min_class_support} holdout images"
    )
    regressed = [t for t in tests if t.regressed_beyond(margin)]
    regressions = [f"{t.describe(confidence)}, below -{margin:.4f}" for t in regressed]
    untested = [t.describe(confidence) for t in tests if not t.tested]
    tested = [t for t in tests if t.tested]
    if regressed:
        text = f"significant group regression beyond the margin ({rule}): " + "; ".join(regressions)
    elif tested:
        closest = min(tested, key=lambda t: t.high if t.high is not None else math.inf)
        text = (
            f"no significant group regression beyond the margin ({rule}): {len(tested)} figures tested, "
            f"closest {closest.describe(confidence)}"
        )
    else:
        text = f"no group figure could be tested ({rule})"
    if untested:
        text += "; reported, not vetoing: " + "; ".join(untested)
    return regressions, text


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
    figures (`{"map": mAP@[.5:.95], ...}`, learner.evaluation.detection.detection_map), None where there are none."""
    if failure is not None:
        kind = "evaluation_failed" if failure.startswith("evaluation failed") else "training_failed"
        return GateDecision(False, [f"challenger failed: {failure}"], config=config, failure=kind)
    if champion_metrics is None or challenger_metrics is None or champion_scores is None or challenger_scores is None:
        return GateDecision(
            False, ["evaluation on the holdout is missing"], config=config, failure="evaluation_missing"
        )
    try:
        comparison = paired_comparison(
            champion_scores,
            challenger_scores,
            config.bootstrap_samples,
            config.confidence,
            config.seed,
            config.min_class_support,
        )
    except ValueError as exc:
        return GateDecision(False, [f"evaluation failed: {exc}"], config=config, failure="evaluation_failed")
    boot = comparison.primary
    if not all(math.isfinite(v) for v in (boot.champion, boot.challenger, boot.low, boot.high)):
        return GateDecision(
            False, ["a holdout figure is not finite"], bootstrap=boot, config=config, failure="evaluation_failed"
        )

    reasons: list[str] = []
    pct = round(config.confidence * 100)
    interval = f"{PRIMARY_METRIC} {boot.challenger:.4f} vs {boot.champion:.4f}, difference {boot.difference:+.4f}, "
    interval += f"{pct}% CI [{boot.low:+.4f}, {boot.high:+.4f}] over {boot.products} products "
    interval += f"(paired bootstrap, {boot.samples} resamples)"
    wins = boot.low > 0
    reasons.append(("wins: " if wins else "no significant win: ") + interval)

    tests = comparison.groups + _point_only(comparison.groups, champion_metrics, challenger_metrics)
    regressions, group_text = _group_reason(tests, config)
    reasons.append(group_text)

    detection = detection_delta(champion_detection, challenger_detection)
    if detection is not None and detection["difference"] < -config.max_detection_regression - 1e-12:
        regressions.append(
            f"detection/map: {detection['difference']:+.4f} (margin {config.max_detection_regression:.4f})"
        )
        reasons.append(
            f"detection regression beyond the margin: mAP@[.5:.95] {detection['challenger']:.4f} vs "
            f"{detection['champion']:.4f}, difference {detection['difference']:+.4f} "
            f"(margin {config.max_detection_regression:.4f}, point estimate)"
        )
    return GateDecision(
        promote=wins and not regressions,
        reasons=reasons,
        bootstrap=boot,
        group_deltas=group_deltas(champion_metrics, challenger_metrics),
        regressions=regressions,
        config=config,
        detection=detection,
        group_tests=tests,
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


# --- reading recorded decisions ---------------------------------------------------------------------


def vetoes_of(record: Mapping[str, Any]) -> list[str]:
    """Why a recorded decision (`GateDecision.to_dict()`, possibly with more keys) did not promote; decisions
    recorded before `vetoes` existed are classified from their reasons and regressions."""
    if record.get("promote"):
        return []
    if "vetoes" in record:
        return [str(v) for v in record["vetoes"]]
    reasons = " ".join(record.get("reasons") or [])
    boot = record.get("bootstrap") or {}
    out: list[str] = []
    if not boot:
        if reasons.startswith("challenger failed: evaluation failed") or reasons.startswith("evaluation failed"):
            return ["evaluation_failed"]
        if reasons.startswith("challenger failed"):
            return ["training_failed"]
        return ["evaluation_missing" if "missing" in reasons else "evaluation_failed"]
    if not boot.get("low", 0) > 0:
        out.append("not_significant")
    regressions = [str(r) for r in record.get("regressions") or []]
    if any(not r.startswith("detection/") for r in regressions):
        out.append("group_regression")
    if any(r.startswith("detection/") for r in regressions):
        out.append("detection_regression")
    return out or ["other"]


def vetoed_win(record: Mapping[str, Any]) -> bool | None:
    """True: the challenger won significantly and a regression veto rejected it; False: any other comparison
    (promoted, or no significant win); None: no comparison, or rejected for another reason (a failure, the champion
    changed during the run): such a decision leaves a streak as it is."""
    boot = record.get("bootstrap") or {}
    if not boot:
        return None
    if record.get("promote"):
        return False
    if not boot.get("low", 0) > 0:
        return False
    vetoes = vetoes_of(record)
    if "group_regression" in vetoes or "detection_regression" in vetoes:
        return True
    return None


def vetoed_win_streak(records: Iterable[Mapping[str, Any]], start: int = 0) -> int:
    """Consecutive significant winners vetoed, at the end of `records` (oldest first), counting on from `start`."""
    streak = start
    for record in records:
        vetoed = vetoed_win(record)
        if vetoed is not None:
            streak = streak + 1 if vetoed else 0
    return streak


__all__ = [
    "GROUP_FIGURES",
    "PRIMARY_METRIC",
    "VETO_REASONS",
    "BootstrapResult",
    "GateConfig",
    "GateDecision",
    "GroupComparison",
    "ImagePredictions",
    "ProductScores",
    "decide",
    "detection_delta",
    "group_deltas",
    "paired_bootstrap",
    "paired_comparison",
    "primary_metric",
    "scores_from_rows",
    "vetoed_win",
    "vetoed_win_streak",
    "vetoes_of",
]
