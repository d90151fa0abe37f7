"""The routing policy: which products go to annotators, and in which order.

`ReviewPolicy.decide` runs pluggable `RoutingStrategy`s in order (`UnfamiliarPhoto`: a photo the shift guard found
unlike the training photos, reason `unfamiliar_photo`; `TitlePhotoConflict`: the product's title and photos
confidently disagree on a group, reason `title_photo_conflict`; `BelowThreshold`: a value kept as a suggestion or
under its threshold, see "Low values" below; `AuditSample`: a seeded random
sample of the products the model would have accepted, so the accuracy of unreviewed output stays measured;
`RandomSample`: a seeded random sample of every product, ranked in random order, the baseline that shows what
uncertainty routing gains at the same labelling budget; `ClassBalanced` and `ClusterMargin` in
`learner/review/diversity.py`: what `BelowThreshold` selects, ranked so the queue cycles over predicted classes or
prediction-space clusters), then `ReviewCaps` (per hour and per day, sliding windows).
Each routed product carries an uncertainty score from a pluggable `UncertaintyMeasure` (`learner/review/
uncertainty.py`) and a priority: its uncertainty, or a random rank when `RandomSample` chose it; the outbox sends
the highest priority first.

Low values, one rule per group, first match wins:
1. the group's policy sets a `threshold` (`review.groups.<group>.threshold`): an operator's explicit review rule,
   every shown value under it is low, whatever the auto-fill mark says;
2. the bundle has an auto-fill threshold for the (single-choice) group: the value is low when the decoder kept it as
   a suggestion (`AttributeValue.auto_filled` False). The auto-fill decision is made once, in
   `learner/inference/decoding.py`; this module reads its mark and never compares confidences with that threshold.
   A value the decoder auto-filled but a suspension of its group's auto-fill withheld (`withheld_by` 'suspended') is
   not low: the audit sample takes such products at its raised `suspended_rate` instead;
3. otherwise (bundles made before calibration, multi-label and detector groups): every shown value under the
   bundle's calibrated per-value threshold, or `default_threshold`, is low.

One place for each fact: groups and values come from the `Taxonomy`; thresholds from the model bundle; the auto-fill
decision from the decoder. This module knows nothing of databases, HTTP, Label Studio or configuration files (the
daemon reads configuration and passes values in).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from connectors.records import SUSPENDED, TITLE_PHOTO_CONFLICT, AttributeValue
from learner.model.shift_guard import UNFAMILIAR_PHOTO
from learner.model.taxonomy import Taxonomy
from learner.review.caps import ReviewCaps
from learner.review.uncertainty import UncertaintyMeasure, uncertainty_measure


@dataclass(frozen=True)
class GroupPolicy:
    """How one attribute group takes part in routing. `review=False`: never a reason to route (its values are
    still shown to annotators). `threshold`: overrides the bundle's calibrated threshold for every value."""

    review: bool = True
    threshold: float | None = None


@dataclass(frozen=True)
class LowValue:
    """A value under its threshold."""

    group: str
    value: str
    confidence: float
    threshold: float


@dataclass(frozen=True)
class Assessment:
    """What the policy sees in one product: the values under their threshold and how uncertain the model is."""

    low_values: tuple[LowValue, ...]
    uncertainty: float  # the most uncertain reviewed group's score, in [0, 1]
    group_uncertainty: Mapping[str, float]
    unfamiliar: bool = False  # a photo of the product is above the shift guard's cut-off (learner.model.shift_guard)
    # groups whose value its threshold chose but a suspension of the group's auto-fill kept as a suggestion
    suspended: tuple[str, ...] = ()
    # groups whose title and photos confidently disagree (withheld_by TITLE_PHOTO_CONFLICT, the product decision)
    conflicts: tuple[str, ...] = ()
    # per group the model gave a value for (reviewed or not): its candidates best first, (value, confidence), and
    # the value it predicts (single-choice: the decoder's choice): what the diversity strategies read
    # (learner/review/diversity.py: the predicted class, the position in prediction space)
    candidates: Mapping[str, tuple[tuple[str, float], ...]] = field(default_factory=dict)
    predicted: Mapping[str, str] = field(default_factory=dict)

    @property
    def low_groups(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(v.group for v in self.low_values))


@dataclass(frozen=True)
class Decision:
    """`routed`: send the product to annotators. `reason`: the strategy that chose it ('low_confidence',
    'audit', 'random'), 'capped:<strategy>' when a cap stopped it, or None when the model's output is accepted.
    `priority`: the outbox order of a routed product, higher first (its uncertainty, or a random rank)."""

    routed: bool
    reason: str | None
    assessment: Assessment
    priority: float = 0.0


class RoutingStrategy(Protocol):
    """One reason to send a product to annotators. Strategies run in order; the first that selects wins.

    A strategy may also define `rank(assessment) -> float`, the outbox priority of the products it selects (higher
    first); without it the priority is the product's uncertainty."""

    name: str

    def select(self, assessment: Assessment) -> bool: ...


class UnfamiliarPhoto:
    """Route when a photo of the product is unlike the training photos (the shift guard withheld its values): the
    model cannot keep its promise there, and a person should both fill the values and see what kind of photo
    arrived (a user's snapshot, a street scene sent by mistake)."""

    name = UNFAMILIAR_PHOTO

    def select(self, assessment: Assessment) -> bool:
        return assessment.unfamiliar


class TitlePhotoConflict:
    """Route when the product's title and its photos confidently disagree on a group (the product decision withheld
    that group, learner/inference/product_decision.py): either the title or the photo is wrong, and the catalog team
    wants to know which."""

    name = TITLE_PHOTO_CONFLICT

    def select(self, assessment: Assessment) -> bool:
        return bool(assessment.conflicts)


class BelowThreshold:
    """Route when any reviewed group has a value under its threshold."""

    name = "low_confidence"

    def select(self, assessment: Assessment) -> bool:
        return bool(assessment.low_values)


class AuditSample:
    """Route a random fraction of the products that reached this strategy (with the default order: those the
    model would have accepted), from a seeded generator so a run can be reproduced. A product with a value withheld
    by a suspension of its group's auto-fill is sampled at `suspended_rate` instead (default: `rate`), so the
    suspended group's precision keeps being measured, faster."""

    name = "audit"

    def __init__(self, rate: float, seed: int | None = None, suspended_rate: float | None = None) -> None:
        for what, value in (("rate", rate), ("suspended rate", suspended_rate)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{self.name} {what} must be within [0, 1], got {value}")
        self.rate = rate
        self.suspended_rate = rate if suspended_rate is None else suspended_rate
        self._rng = random.Random(seed)

    def select(self, assessment: Assessment) -> bool:
        rate = max(self.rate, self.suspended_rate) if assessment.suspended else self.rate
        return rate > 0 and self._rng.random() < rate


class RandomSample(AuditSample):
    """Route a uniform random fraction `rate` of all products, whatever the model's confidence, and rank them in a
    random order, so annotators who take the first N of the queue label a uniform random sample of N products.
    The `random` routing (`review.routing`): the baseline an active-learning benchmark compares uncertainty
    routing with at the same labelling budget (tests/benchmarks/bench_active_learning.py). Seeded: reproducible."""

    name = "random"

    def __init__(self, rate: float = 1.0, seed: int | None = None) -> None:
        super().__init__(rate, seed)

    def rank(self, assessment: Assessment) -> float:
        """A routed product's priority: uniform in [0, 1), independent of the model's output."""
        return self._rng.random()


class ReviewPolicy:
    """Decides, product by product, whether a human should look at the model's output.

    `thresholds`: the bundle's calibrated thresholds, `thresholds[group][value]`; a value without one uses
    `default_threshold`. `autofill_thresholds`: the bundle's per-group auto-fill thresholds (on calibrated
    confidence): in a group that has one, the decoder's mark decides (a value kept as a suggestion, not auto-filled,
    makes the product eligible for review) and the threshold is what the outbox payload reports. `groups`: per-group
    `GroupPolicy` (groups not named take the default). `uncertainty`: a name from `UNCERTAINTY_MEASURES` or a
    function. `strategies`: default `[BelowThreshold(), AuditSample(...)]`.
    """

    def __init__(
        self,
        taxonomy: Taxonomy,
        thresholds: Mapping[str, Mapping[str, float]] | None = None,
        *,
        groups: Mapping[str, GroupPolicy] | None = None,
        default_threshold: float = 0.5,
        uncertainty: str | UncertaintyMeasure = "margin",
        audit_rate: float = 0.0,
        audit_seed: int | None = None,
        strategies: Sequence[RoutingStrategy] | None = None,
        caps: ReviewCaps | None = None,
        autofill_thresholds: Mapping[str, float] | None = None,
    ) -> None:
        unknown = set(groups or {}) - {g.name for g in taxonomy.groups}
        if unknown:
            raise ValueError(
                f"review policy names groups {sorted(unknown)} that taxonomy {taxonomy.name!r} does not have "
                f"(it has {[g.name for g in taxonomy.groups]})"
            )
        self.taxonomy = taxonomy
        self.thresholds = thresholds or {}
        self.autofill_thresholds = dict(autofill_thresholds or {})
        self.groups = dict(groups or {})
        self.default_threshold = default_threshold
        self.uncertainty_name = uncertainty if isinstance(uncertainty, str) else getattr(uncertainty, "__name__", "")
        self.measure = uncertainty_measure(uncertainty)
        self.strategies: list[RoutingStrategy] = (
            list(strategies)
            if strategies is not None
            else [UnfamiliarPhoto(), TitlePhotoConflict(), BelowThreshold(), AuditSample(audit_rate, audit_seed)]
        )
        self.caps = caps or ReviewCaps()
        self._lock = threading.Lock()  # the daemon calls the router from its inference thread; tests from many

    def group_policy(self, group: str) -> GroupPolicy:
        return self.groups.get(group, GroupPolicy())

    def threshold(self, group: str, value: str) -> float:
        """The threshold a value of `group` is reported against: the group policy's override, else the group's
        auto-fill threshold, else the bundle's calibrated per-value threshold or the default."""
        override = self.group_policy(group).threshold
        if override is not None:
            return override
        if group in self.autofill_thresholds:
            return float(self.autofill_thresholds[group])
        return float(self.thresholds.get(group, {}).get(value, self.default_threshold))

    def reads_autofill_mark(self, group: str) -> bool:
        """Whether the decoder's auto-fill mark decides which values of `group` are low (rule 2 of the module
        docstring): a single-choice group with an auto-fill threshold and no threshold override."""
        return (
            self.group_policy(group).threshold is None
            and group in self.autofill_thresholds
            and not self.taxonomy.group(group).multi_label
        )

    def assess(self, attributes: Sequence[AttributeValue], unfamiliar: bool = False) -> Assessment:
        """Values kept as suggestions or under their threshold, and the uncertainty of every reviewed group (pure).
        `unfamiliar`: a photo of the product was above the shift guard's cut-off."""
        low: list[LowValue] = []
        scores: dict[str, float] = {}
        suspended: list[str] = []
        conflicts: list[str] = []
        seen: dict[str, tuple[tuple[str, float], ...]] = {}
        predicted: dict[str, str] = {}
        by_group = {a.attribute: a for a in attributes}
        for group in self.taxonomy.groups:
            attr = by_group.get(group.name)
            if attr is None:
                continue
            candidates = _candidates(attr)
            seen[group.name] = tuple(candidates)
            if not group.multi_label:
                predicted[group.name] = _decoded(attr, candidates)[0]
            if not self.group_policy(group.name).review:
                continue
            if attr.withheld_by == SUSPENDED:
                suspended.append(group.name)
            if attr.withheld_by == TITLE_PHOTO_CONFLICT:
                conflicts.append(group.name)
            if self.reads_autofill_mark(group.name):
                if not attr.auto_filled and attr.withheld_by != SUSPENDED:
                    value, confidence = _decoded(attr, candidates)
                    low.append(LowValue(group.name, value, confidence, self.threshold(group.name, value)))
            else:
                shown = candidates if group.multi_label else candidates[:1]
                for value, confidence in shown:
                    limit = self.threshold(group.name, value)
                    if confidence < limit:
                        low.append(LowValue(group.name, value, confidence, limit))
            scores[group.name] = self.measure([c for _, c in candidates], group.multi_label, len(group.values))
        return Assessment(
            tuple(low),
            max(scores.values(), default=0.0),
            scores,
            unfamiliar,
            tuple(suspended),
            tuple(conflicts),
            seen,
            predicted,
        )

    def decide(self, attributes: Sequence[AttributeValue], now: datetime, unfamiliar: bool = False) -> Decision:
        assessment = self.assess(attributes, unfamiliar)
        with self._lock:
            for strategy in self.strategies:
                if not strategy.select(assessment):
                    continue
                if not self.caps.try_record(now):
                    return Decision(False, f"capped:{strategy.name}", assessment)
                rank = getattr(strategy, "rank", None)
                priority = float(rank(assessment)) if rank is not None else assessment.uncertainty
                return Decision(True, strategy.name, assessment, priority)
        return Decision(False, None, assessment)


def _candidates(attr: AttributeValue) -> list[tuple[str, float]]:
    """The model's candidates for one attribute, best first: its alternatives, else the value itself."""
    if attr.alternatives:
        return sorted(((a.value, float(a.confidence)) for a in attr.alternatives), key=lambda vc: -vc[1])
    values = attr.value if isinstance(attr.value, list) else [attr.value]
    return [(v, float(attr.confidence)) for v in values]


def _decoded(attr: AttributeValue, candidates: Sequence[tuple[str, float]]) -> tuple[str, float]:
    """The value the decoder chose for a single-choice attribute, with the confidence annotators are shown for it
    (its alternative's, else the attribute's). With a hierarchy it need not be the most probable candidate."""
    value = attr.value[0] if isinstance(attr.value, list) else attr.value
    return value, next((c for v, c in candidates if v == value), float(attr.confidence))


def rank_for_review(items: Sequence[tuple[str, float]]) -> list[str]:
    """Order routed products (id, uncertainty) for annotators: most uncertain first, ties in arrival order. The
    outbox applies the same order (`ORDER BY priority DESC, id`); this is its specification."""
    order = sorted(range(len(items)), key=lambda i: (-items[i][1], i))
    return [items[i][0] for i in order]
