"""Audited precision of auto-filled values, measured live from people's answers, and whether it calls for suspending
a group's auto-fill.

An auto-filled value is a promise ("right at least `target` of the time"). Every human answer on such a value (the
audit sample, or any other review that showed it) says whether the promise held. Per group and model version:
- `precision_interval`: the audited precision and its two-sided Wilson interval, from the one-sided
  `selective.wilson_lower_bound` (the lower bound of the right answers and, mirrored, of the wrong ones);
- `GroupAudit`: that interval beside the group's target and the label-free estimate (the mean calibrated confidence
  of what was auto-filled: what the model itself expects its precision to be), with a `state`;
- `due_for_suspension`: the interval's upper bound is below the target on at least `min_audited` answers, i.e. the
  precision is significantly below target: stop auto-filling the group until someone resumes it.
Which answers count is `model_fill`: values the model auto-filled, and values a suspension of their group's auto-fill
withheld (the rule the figures judge still chose them). Answers recorded before the last resume of a (group, model
version) do not count: a resume starts the measurement afresh.

Pure: numbers in, numbers out; the daemon reads the database (connectors/db/audit_store.py) and acts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from connectors.records import SUSPENDED, ModelValue
from learner.evaluation.selective import DEFAULT_TARGET_PRECISION, wilson_lower_bound
from learner.model.taxonomy import Taxonomy

__all__ = [
    "DEFAULT_INTERVAL_LEVEL",
    "DEFAULT_MIN_AUDITED",
    "AnswerCounts",
    "AuditState",
    "AutofillConfidence",
    "GroupAudit",
    "PrecisionInterval",
    "audit_groups",
    "autofill_targets",
    "due_for_suspension",
    "model_fill",
    "precision_interval",
]

DEFAULT_INTERVAL_LEVEL = 0.95  # two-sided
DEFAULT_MIN_AUDITED = 20  # fewer audited answers never suspend a group, however wrong they were

AuditState = Literal["suspended", "below_target", "too_few", "ok"]


def model_fill(model: ModelValue | None) -> str | None:
    """What the model had done with the value an annotator answered (review_annotations.model_fill): 'auto'
    (auto-filled), 'suspended' (its threshold chose it, a suspension of the group's auto-fill withheld it),
    'suggestion' (kept as a suggestion otherwise), None (no model value, or a payload too old to say)."""
    if model is None or model["value"] is None or "auto_filled" not in model:
        return None
    if model["auto_filled"]:
        return "auto"
    return SUSPENDED if model.get("withheld_by") == SUSPENDED else "suggestion"


@dataclass(frozen=True)
class PrecisionInterval:
    """`right` of `audited` answers agreed with the model; [lower, upper] the two-sided Wilson interval at `level`
    ([0, 1] without answers)."""

    right: int
    audited: int
    lower: float
    upper: float
    level: float

    @property
    def precision(self) -> float | None:
        return self.right / self.audited if self.audited else None


def precision_interval(right: int, audited: int, level: float = DEFAULT_INTERVAL_LEVEL) -> PrecisionInterval:
    """The audited precision's two-sided Wilson score interval at `level` (e.g. 0.95: 2.5% in each tail)."""
    if not 0 <= right <= audited:
        raise ValueError(f"right answers ({right}) must be within [0, audited ({audited})]")
    if not 0.5 < level < 1.0:
        raise ValueError(f"the interval's level must be within (0.5, 1), got {level}")
    one_sided = 1.0 - (1.0 - level) / 2
    n = np.array([audited])
    lower = float(wilson_lower_bound(np.array([right]), n, one_sided)[0])
    upper = 1.0 - float(wilson_lower_bound(np.array([audited - right]), n, one_sided)[0]) if audited else 1.0
    return PrecisionInterval(right, audited, lower, upper, level)


class AnswerCounts(Protocol):
    """Answers on auto-filled values of one group and model version, since its last resume (the store's record)."""

    @property
    def group(self) -> str: ...
    @property
    def model_version(self) -> str: ...
    @property
    def audited(self) -> int: ...
    @property
    def right(self) -> int: ...


class AutofillConfidence(Protocol):
    """The stored auto-filled values of one group and model version: how many, and their mean confidence."""

    @property
    def group(self) -> str: ...
    @property
    def model_version(self) -> str: ...
    @property
    def values(self) -> int: ...
    @property
    def mean_confidence(self) -> float: ...


@dataclass(frozen=True)
class GroupAudit:
    """One group of one model version: its audited precision, target, label-free estimate and state.

    `state`: 'suspended' (its auto-fill is suspended), 'below_target' (significantly below target on enough answers:
    due for suspension), 'too_few' (fewer than `min_audited` answers), 'ok' (the interval reaches the target)."""

    group: str
    model_version: str
    target: float
    audit: PrecisionInterval
    label_free: float | None  # mean calibrated confidence of the auto-filled values (None: none stored)
    label_free_values: int
    suspended: bool
    min_audited: int

    @property
    def state(self) -> AuditState:
        if self.suspended:
            return "suspended"
        if self.audit.audited < self.min_audited:
            return "too_few"
        return "below_target" if self.audit.upper < self.target else "ok"

    def figures(self) -> dict[str, Any]:
        """What a suspension records of the decision (autofill_suspensions.figures), JSON-ready."""
        a = self.audit
        return {
            "audited": a.audited,
            "right": a.right,
            "precision": None if a.precision is None else round(a.precision, 6),
            "interval": [round(a.lower, 6), round(a.upper, 6)],
            "level": a.level,
            "target": self.target,
            "label_free": None if self.label_free is None else round(self.label_free, 6),
            "min_audited": self.min_audited,
        }


def due_for_suspension(audit: GroupAudit) -> bool:
    """Whether the group's auto-fill should be suspended now: not suspended yet, at least `min_audited` answers,
    and the interval's upper bound below the target (precision significantly below it)."""
    return audit.state == "below_target"


def audit_groups(
    answers: Iterable[AnswerCounts],
    confidences: Iterable[AutofillConfidence],
    targets: Mapping[str, float],
    suspended: Iterable[tuple[str, str]] = (),
    *,
    baseline: Iterable[tuple[str, str]] = (),
    level: float = DEFAULT_INTERVAL_LEVEL,
    min_audited: int = DEFAULT_MIN_AUDITED,
    default_target: float = DEFAULT_TARGET_PRECISION,
) -> list[GroupAudit]:
    """One `GroupAudit` per (group, model version) that has answers, stored auto-filled values or a suspension, or
    is named in `baseline` (e.g. every group of the champion, measured before its first answer), sorted by group then
    model version. `targets`: per group (a group not named gets `default_target`); `suspended`: the (group, model
    version) pairs whose auto-fill is suspended now."""
    counts = {(a.group, a.model_version): (a.right, a.audited) for a in answers}
    means = {(c.group, c.model_version): (c.mean_confidence, c.values) for c in confidences}
    paused = set(suspended)
    out = []
    for group, version in sorted(set(counts) | set(means) | paused | set(baseline)):
        right, audited = counts.get((group, version), (0, 0))
        mean, values = means.get((group, version), (None, 0))
        out.append(
            GroupAudit(
                group=group,
                model_version=version,
                target=float(targets.get(group, default_target)),
                audit=precision_interval(right, audited, level),
                label_free=mean if values else None,
                label_free_values=values,
                suspended=(group, version) in paused,
                min_audited=min_audited,
            )
        )
    return out


def autofill_targets(
    taxonomy: Taxonomy, calibration: Mapping[str, Any] | None = None, default: float = DEFAULT_TARGET_PRECISION
) -> dict[str, float]:
    """The precision each group's auto-filled values promise: the target the bundle's thresholds were fitted for
    (its calibration report, `calibration["groups"][group]["target_precision"]`), else the taxonomy's
    `target_precision`, else `default`."""
    fitted = (calibration or {}).get("groups") or {}
    targets = {}
    for g in taxonomy.groups:
        recorded = (fitted.get(g.name) or {}).get("target_precision")
        if recorded is not None:
            targets[g.name] = float(recorded)
        else:
            targets[g.name] = g.target_precision if g.target_precision is not None else default
    return targets
