"""The review loop's decisions and formats, as pure functions and small objects (no I/O, no clock, no network).

- Routing policy: which products go to annotators. `ReviewPolicy.decide` runs pluggable `RoutingStrategy`s in
  order (`BelowThreshold`: a value under its group's threshold, from the bundle's calibration unless the group's
  policy overrides it; `AuditSample`: a seeded random sample of the products the model would have accepted, so
  the accuracy of unreviewed output stays measured; `RandomSample`: a seeded random sample of every product,
  ranked in random order, the baseline that shows what uncertainty routing gains at the same labelling budget),
  then `ReviewCaps` (per hour and per day, sliding windows). Each routed product carries an uncertainty score from
  a pluggable `UncertaintyMeasure` (least confidence, margin, entropy) and a priority: its uncertainty, or a
  random rank when `RandomSample` chose it; the outbox sends the highest priority first.
- `ReviewRouting`: the daemon's `ReviewRouter` hook: a `ProductResult` and its `ImageTags` in, the outbox payload
  out (or None).
- Label Studio formats: `label_config(taxonomy)` (one Choices block per classifier group, single or multiple
  choice; one RectangleLabels block per detector group), `prediction_result(...)` (the model's guess as
  pre-annotations with per-region scores), `answer_result(...)` (an annotator's choices, for scripted
  annotators), `parse_annotation(...)` (an annotation's result back into attribute
  values and boxes, with a clear outcome for everything: applied, skipped, unknown_label, unknown_group,
  not_answered, invalid).

One place for each fact: groups and values come from the `Taxonomy`; thresholds from the model bundle. This module
knows nothing of databases, HTTP or configuration files (the daemon reads configuration and passes values in).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import random
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from connectors.db.types import AttributeValue, ProductResult
from learner.inference.engine import ImageTags
from learner.model.taxonomy import AttributeGroup, Taxonomy

IMAGE_NAME = "image"  # the Image object tag of the labelling configuration, and the task data key of the image
SKIPPED_ATTRIBUTE = "*"  # the attribute name of an outcome that concerns the whole annotation (a skipped task)

Outcome = Literal["applied", "skipped", "unknown_label", "unknown_group", "not_answered", "invalid"]

# ------------------------------------------------------------------------------------------------------------
# uncertainty measures: probabilities of one group's candidates (best first) -> uncertainty in [0, 1]
# ------------------------------------------------------------------------------------------------------------

UncertaintyMeasure = Callable[[Sequence[float], bool, int], float]
"""(confidences best first, multi_label, number of values in the group) -> uncertainty in [0, 1], higher is more
uncertain. For a single-choice group the confidences are the model's top-k softmax probabilities; for a
multi-label group each confidence is an independent yes/no probability and the group is as uncertain as its most
uncertain value."""


def _binary(p: float) -> tuple[float, float]:
    p = min(max(p, 0.0), 1.0)
    return max(p, 1.0 - p), min(p, 1.0 - p)


def least_confidence(confidences: Sequence[float], multi_label: bool, n_values: int) -> float:
    """1 - p(best), scaled so a uniform guess over the group's values scores 1."""
    if not confidences:
        return 1.0
    if multi_label:
        return max(2.0 * (1.0 - _binary(c)[0]) for c in confidences)
    floor = 1.0 / max(n_values, 2)
    return min(1.0, max(0.0, (1.0 - confidences[0]) / (1.0 - floor)))


def margin(confidences: Sequence[float], multi_label: bool, n_values: int) -> float:
    """1 - (p(best) - p(second)): two values nearly tied score near 1."""
    if not confidences:
        return 1.0
    if multi_label:
        return max(1.0 - (_binary(c)[0] - _binary(c)[1]) for c in confidences)
    second = confidences[1] if len(confidences) > 1 else max(0.0, 1.0 - confidences[0])
    return min(1.0, max(0.0, 1.0 - (confidences[0] - second)))


def entropy(confidences: Sequence[float], multi_label: bool, n_values: int) -> float:
    """Shannon entropy normalised by its maximum. Only the top-k probabilities are known: the remaining mass is
    spread evenly over the other values (a good approximation when k is small against the group)."""
    if not confidences:
        return 1.0
    if multi_label:
        return max(_binary_entropy(c) for c in confidences)
    n = max(n_values, len(confidences), 2)
    probs = [min(max(c, 0.0), 1.0) for c in confidences]
    rest = max(0.0, 1.0 - sum(probs))
    others = n - len(probs)
    if others > 0 and rest > 0:
        probs.extend([rest / others] * others)
    h = -sum(p * math.log(p) for p in probs if p > 0)
    return min(1.0, max(0.0, h / math.log(n)))


def _binary_entropy(p: float) -> float:
    p = min(max(p, 0.0), 1.0)
    if p in (0.0, 1.0):
        return 0.0
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


UNCERTAINTY_MEASURES: dict[str, UncertaintyMeasure] = {
    "least_confidence": least_confidence,
    "margin": margin,
    "entropy": entropy,
}


def uncertainty_measure(name_or_fn: str | UncertaintyMeasure) -> UncertaintyMeasure:
    if callable(name_or_fn):
        return name_or_fn
    try:
        return UNCERTAINTY_MEASURES[name_or_fn]
    except KeyError:
        raise ValueError(
            f"unknown uncertainty measure {name_or_fn!r}; choose one of {sorted(UNCERTAINTY_MEASURES)}"
        ) from None


# ------------------------------------------------------------------------------------------------------------
# routing policy
# ------------------------------------------------------------------------------------------------------------


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


class BelowThreshold:
    """Route when any reviewed group has a value under its threshold."""

    name = "low_confidence"

    def select(self, assessment: Assessment) -> bool:
        return bool(assessment.low_values)


class AuditSample:
    """Route a random fraction of the products that reached this strategy (with the default order: those the
    model would have accepted), from a seeded generator so a run can be reproduced."""

    name = "audit"

    def __init__(self, rate: float, seed: int | None = None) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{self.name} rate must be within [0, 1], got {rate}")
        self.rate = rate
        self._rng = random.Random(seed)

    def select(self, assessment: Assessment) -> bool:
        return self.rate > 0 and self._rng.random() < self.rate


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


class ReviewCaps:
    """At most `per_hour` routed products in any 60 minutes and `per_day` in any 24 hours (None: no cap).

    Thread-safe. A process counts the routes it records; `sync` replaces that count with the routes every replica
    has committed to the outbox, so replicas share one budget (and a restart does not reset it). This process's
    own routes since the previous sync are kept on top, because they may not be committed yet: a route both
    committed and that recent is counted twice until the next sync, so the caps err on the side of fewer products.
    """

    def __init__(self, per_hour: int | None = None, per_day: int | None = None) -> None:
        for name, cap in (("per_hour", per_hour), ("per_day", per_day)):
            if cap is not None and cap < 0:
                raise ValueError(f"{name} cap must be >= 0, got {cap}")
        self.per_hour = per_hour
        self.per_day = per_day
        self._times: list[datetime] = []  # sorted: the outbox's routes at the last sync, plus own routes since
        self._own_since_sync: list[datetime] = []
        self._lock = threading.Lock()

    def sync(self, committed: Sequence[datetime]) -> None:
        """The routes every replica has committed (the outbox, the last day), including this process's."""
        with self._lock:
            self._times = sorted([*committed, *self._own_since_sync])
            self._own_since_sync = []

    def try_record(self, now: datetime) -> bool:
        """Count one more route at `now` if the caps allow it; False (nothing counted) if they do not."""
        with self._lock:
            hour, day = self._counts(now)
            if (self.per_day is not None and day >= self.per_day) or (
                self.per_hour is not None and hour >= self.per_hour
            ):
                return False
            bisect.insort(self._times, now)
            self._own_since_sync.append(now)
            return True

    def counts(self, now: datetime) -> tuple[int, int]:
        """(routed in the last hour, routed in the last day)."""
        with self._lock:
            return self._counts(now)

    def _counts(self, now: datetime) -> tuple[int, int]:
        del self._times[: bisect.bisect_right(self._times, now - timedelta(days=1))]
        return len(self._times) - bisect.bisect_right(self._times, now - timedelta(hours=1)), len(self._times)


class ReviewPolicy:
    """Decides, product by product, whether a human should look at the model's output.

    `thresholds`: the bundle's calibrated thresholds, `thresholds[group][value]`; a value without one uses
    `default_threshold`. `groups`: per-group `GroupPolicy` (groups not named take the default). `uncertainty`: a
    name from `UNCERTAINTY_MEASURES` or a function. `strategies`: default `[BelowThreshold(), AuditSample(...)]`.
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
    ) -> None:
        unknown = set(groups or {}) - {g.name for g in taxonomy.groups}
        if unknown:
            raise ValueError(
                f"review policy names groups {sorted(unknown)} that taxonomy {taxonomy.name!r} does not have "
                f"(it has {[g.name for g in taxonomy.groups]})"
            )
        self.taxonomy = taxonomy
        self.thresholds = thresholds or {}
        self.groups = dict(groups or {})
        self.default_threshold = default_threshold
        self.uncertainty_name = uncertainty if isinstance(uncertainty, str) else getattr(uncertainty, "__name__", "")
        self.measure = uncertainty_measure(uncertainty)
        self.strategies: list[RoutingStrategy] = (
            list(strategies) if strategies is not None else [BelowThreshold(), AuditSample(audit_rate, audit_seed)]
        )
        self.caps = caps or ReviewCaps()
        self._lock = threading.Lock()  # the daemon calls the router from its inference thread; tests from many

    def group_policy(self, group: str) -> GroupPolicy:
        return self.groups.get(group, GroupPolicy())

    def threshold(self, group: str, value: str) -> float:
        override = self.group_policy(group).threshold
        if override is not None:
            return override
        return float(self.thresholds.get(group, {}).get(value, self.default_threshold))

    def assess(self, attributes: Sequence[AttributeValue]) -> Assessment:
        """Values under their threshold, and the uncertainty of every reviewed group (pure)."""
        low: list[LowValue] = []
        scores: dict[str, float] = {}
        by_group = {a.attribute: a for a in attributes}
        for group in self.taxonomy.groups:
            if not self.group_policy(group.name).review:
                continue
            attr = by_group.get(group.name)
            if attr is None:
                continue
            candidates = _candidates(attr)
            shown = candidates if group.multi_label else candidates[:1]
            for value, confidence in shown:
                limit = self.threshold(group.name, value)
                if confidence < limit:
                    low.append(LowValue(group.name, value, confidence, limit))
            scores[group.name] = self.measure([c for _, c in candidates], group.multi_label, len(group.values))
        return Assessment(tuple(low), max(scores.values(), default=0.0), scores)

    def decide(self, attributes: Sequence[AttributeValue], now: datetime) -> Decision:
        assessment = self.assess(attributes)
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


def rank_for_review(items: Sequence[tuple[str, float]]) -> list[str]:
    """Order routed products (id, uncertainty) for annotators: most uncertain first, ties in arrival order. The
    outbox applies the same order (`ORDER BY priority DESC, id`); this is its specification."""
    order = sorted(range(len(items)), key=lambda i: (-items[i][1], i))
    return [items[i][0] for i in order]


# ------------------------------------------------------------------------------------------------------------
# Label Studio formats
# ------------------------------------------------------------------------------------------------------------


def label_config(taxonomy: Taxonomy) -> str:
    """The labelling configuration for a taxonomy: the image, the product's title and id, then one block per
    attribute group in taxonomy order: Choices (single or multiple) for classifier groups, RectangleLabels for
    detector groups. Control names are the group names, choice values the taxonomy's values."""
    view = ET.Element("View")
    ET.SubElement(view, "Header", value="$title")
    ET.SubElement(view, "Header", value="$product_id", size="6")
    ET.SubElement(view, "Image", name=IMAGE_NAME, value=f"${IMAGE_NAME}", zoom="true", zoomControl="true")
    for group in taxonomy.groups:
        ET.SubElement(view, "Header", value=group.name, size="5")
        if group.source == "detector":
            block = ET.SubElement(view, "RectangleLabels", name=group.name, toName=IMAGE_NAME)
            for value in group.values:
                ET.SubElement(block, "Label", value=value)
        else:
            block = ET.SubElement(
                view,
                "Choices",
                name=group.name,
                toName=IMAGE_NAME,
                choice="multiple" if group.multi_label else "single",
                showInline="true",
            )
            for value in group.values:
                ET.SubElement(block, "Choice", value=value)
    ET.indent(view)
    return ET.tostring(view, encoding="unicode")


def prediction_result(
    taxonomy: Taxonomy,
    attributes: Sequence[AttributeValue],
    tags: ImageTags | None,
) -> list[dict[str, Any]]:
    """The model's guess as Label Studio result JSON (pre-annotations): one `choices` region per classifier group
    with its score, one `rectanglelabels` region per detection of the shown image (`tags`) whose class maps to a
    detector group value, with the detection's score; boxes in percent of the original image."""
    out: list[dict[str, Any]] = []
    by_group = {a.attribute: a for a in attributes}
    for group in taxonomy.groups:
        if group.source == "detector":
            continue
        attr = by_group.get(group.name)
        if attr is None:
            continue
        values = [v for v in (attr.value if isinstance(attr.value, list) else [attr.value]) if v in group.values]
        if not values:
            continue
        scores = {a.value: float(a.confidence) for a in attr.alternatives}
        score = min(scores.get(v, float(attr.confidence)) for v in values)
        out.append(
            {
                "id": f"{group.name}",
                "from_name": group.name,
                "to_name": IMAGE_NAME,
                "type": "choices",
                "value": {"choices": values},
                "score": round(score, 4),
            }
        )
    if tags is not None and tags.width > 0 and tags.height > 0:
        detector_groups = [g for g in taxonomy.groups if g.source == "detector"]
        for i, det in enumerate(tags.detections):
            for group in detector_groups:
                value = det.attributes.get(group.name)
                if value is None or value not in group.values:
                    continue
                out.append(
                    {
                        "id": f"{group.name}-{i}",
                        "from_name": group.name,
                        "to_name": IMAGE_NAME,
                        "type": "rectanglelabels",
                        "original_width": tags.width,
                        "original_height": tags.height,
                        "image_rotation": 0,
                        "value": {**box_to_percent(det.box, tags.width, tags.height), "rectanglelabels": [value]},
                        "score": round(float(det.score), 4),
                    }
                )
    return out


def answer_result(taxonomy: Taxonomy, values: Mapping[str, str | Sequence[str]]) -> list[dict[str, Any]]:
    """An annotator's answer as Label Studio result JSON: one `choices` region per classifier group named in
    `values` (a label, or labels for a multi-label group), in taxonomy order; what `parse_annotation` reads back.
    Scripted annotators (tests, tests/benchmarks/bench_active_learning.py) submit it through the SDK. A group the
    taxonomy lacks, or a value it does not list, raises ValueError (an annotator cannot pick it)."""
    groups = {g.name: g for g in taxonomy.groups if g.source == "classifier"}
    unknown = set(values) - set(groups)
    if unknown:
        raise ValueError(f"{sorted(unknown)} are not classifier groups of taxonomy {taxonomy.name!r}")
    out: list[dict[str, Any]] = []
    for name, group in groups.items():
        if name not in values:
            continue
        given = values[name]
        chosen = [given] if isinstance(given, str) else list(given)
        missing = [v for v in chosen if v not in group.values]
        if missing:
            raise ValueError(f"{missing} are not values of group {name!r}")
        out.append(
            {"from_name": name, "to_name": IMAGE_NAME, "type": "choices", "value": {"choices": chosen}, "id": name}
        )
    return out


def box_to_percent(box: Sequence[float], width: int, height: int) -> dict[str, float]:
    """[x1, y1, x2, y2] in pixels -> Label Studio's x, y, width, height in percent of the image, clipped to it."""
    x1, y1, x2, y2 = (float(v) for v in box)
    x1, x2 = sorted((min(max(x1, 0.0), width), min(max(x2, 0.0), width)))
    y1, y2 = sorted((min(max(y1, 0.0), height), min(max(y2, 0.0), height)))
    return {
        "x": round(100.0 * x1 / width, 4),
        "y": round(100.0 * y1 / height, 4),
        "width": round(100.0 * (x2 - x1) / width, 4),
        "height": round(100.0 * (y2 - y1) / height, 4),
        "rotation": 0,
    }


def box_from_percent(value: Mapping[str, Any], width: float, height: float) -> list[float]:
    """Label Studio's percent box -> [x1, y1, x2, y2] in pixels of the original image."""
    x = float(value.get("x", 0.0)) * width / 100.0
    y = float(value.get("y", 0.0)) * height / 100.0
    w = float(value.get("width", 0.0)) * width / 100.0
    h = float(value.get("height", 0.0)) * height / 100.0
    return [round(x, 2), round(y, 2), round(x + w, 2), round(y + h, 2)]


def model_values(taxonomy: Taxonomy, attributes: Sequence[AttributeValue]) -> dict[str, dict[str, Any]]:
    """What the model said per group, as stored in the outbox payload: value, confidence and box. Used to judge
    whether the annotator agreed, and to restore the model's value when a correction is withdrawn."""
    known = {g.name for g in taxonomy.groups}
    return {
        a.attribute: {"value": a.value, "confidence": float(a.confidence), "box": a.box}
        for a in attributes
        if a.attribute in known
    }


@dataclass(frozen=True)
class ParsedValue:
    """One attribute of one annotation. `value` is a label (single-choice group) or a list of labels (multi-label
    and detector groups); `boxes` [{"label", "box": [x1, y1, x2, y2]}] in pixels for detector groups.
    `model_was_right` is None unless the outcome is 'applied' and the model had a value for the group."""

    attribute: str
    outcome: Outcome
    value: str | list[str] | None = None
    boxes: list[dict[str, Any]] | None = None
    model_value: str | list[str] | None = None
    model_was_right: bool | None = None
    detail: str = ""


def annotation_revision(result: Sequence[Mapping[str, Any]], was_cancelled: bool) -> str:
    """A digest of what an annotation says: equal for the same content however it arrived (webhook or poll,
    once or twice), different after an edit that changed anything."""
    canonical = json.dumps({"result": list(result), "was_cancelled": bool(was_cancelled)}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def parse_annotation(
    taxonomy: Taxonomy,
    result: Sequence[Mapping[str, Any]],
    *,
    was_cancelled: bool = False,
    model: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[ParsedValue]:
    """An annotation's result -> one `ParsedValue` per group it answers (plus groups the model predicted that it
    left unanswered). Rules, each with its outcome:

    - skipped task (`was_cancelled`): one 'skipped' value for attribute '*', nothing else;
    - a control that is not a taxonomy group, or of an unexpected type: 'unknown_group' (never applied);
    - a label that is not a value of its group: 'unknown_label' for the whole group (never applied; the rest of
      the annotation is);
    - a single-choice group with more or fewer than one choice: 'invalid';
    - a detector group: the set of box labels is the value; no boxes while the model had predicted some means the
      annotator removed them (value [], applied); no boxes and no model boxes: 'not_answered';
    - a classifier group the model predicted but the annotation leaves empty: 'not_answered'.
    """
    model = model or {}
    if was_cancelled:
        return [ParsedValue(SKIPPED_ATTRIBUTE, "skipped", detail="the annotator skipped the task")]
    groups = {g.name: g for g in taxonomy.groups}
    choices: dict[str, list[str]] = {}
    boxes: dict[str, list[dict[str, Any]]] = {}
    out: list[ParsedValue] = []
    foreign: dict[str, str] = {}
    for item in result:
        name = str(item.get("from_name", ""))
        kind = str(item.get("type", ""))
        value = item.get("value") or {}
        group = groups.get(name)
        if group is None:
            foreign.setdefault(name, f"control {name!r} ({kind}) is not a group of taxonomy {taxonomy.name!r}")
            continue
        if group.source == "detector" and kind == "rectanglelabels":
            width = float(item.get("original_width") or 0)
            height = float(item.get("original_height") or 0)
            for label in value.get("rectanglelabels", []):
                box = box_from_percent(value, width, height) if width and height else None
                boxes.setdefault(name, []).append({"label": str(label), "box": box})
        elif group.source == "classifier" and kind == "choices":
            choices.setdefault(name, []).extend(str(c) for c in value.get("choices", []))
        else:
            foreign.setdefault(name, f"control {name!r} has type {kind!r}, not what group {name!r} uses")
    for name, detail in foreign.items():
        out.append(ParsedValue(name, "unknown_group", detail=detail))
    for group in taxonomy.groups:
        predicted = model.get(group.name, {}).get("value")
        if group.source == "detector":
            regions = boxes.get(group.name)
            if regions is None:
                if predicted:
                    out.append(_judged(group, [], predicted, boxes=[]))
                elif predicted is not None:
                    out.append(ParsedValue(group.name, "not_answered", model_value=predicted))
                continue
            labels = [r["label"] for r in regions]
            unknown = sorted({v for v in labels if v not in group.values})
            if unknown:
                out.append(_unknown(group, unknown, labels, predicted))
                continue
            out.append(_judged(group, sorted(set(labels), key=group.values.index), predicted, boxes=regions))
            continue
        selected = choices.get(group.name)
        if not selected:
            if predicted is not None:
                out.append(ParsedValue(group.name, "not_answered", model_value=predicted))
            continue
        unknown = sorted({v for v in selected if v not in group.values})
        if unknown:
            out.append(_unknown(group, unknown, selected, predicted))
            continue
        if group.multi_label:
            out.append(_judged(group, sorted(set(selected), key=group.values.index), predicted))
        elif len(set(selected)) != 1:
            out.append(
                ParsedValue(
                    group.name,
                    "invalid",
                    value=selected,
                    model_value=predicted,
                    detail=f"single-choice group {group.name!r} got {len(set(selected))} choices",
                )
            )
        else:
            out.append(_judged(group, selected[0], predicted))
    return out


def _unknown(group: AttributeGroup, unknown: list[str], given: list[str], predicted: Any) -> ParsedValue:
    return ParsedValue(
        group.name,
        "unknown_label",
        value=given if group.multi_label or len(given) != 1 else given[0],
        model_value=predicted,
        detail=f"{unknown} not values of group {group.name!r}; the taxonomy or the project's labelling "
        "configuration is out of date",
    )


def _judged(
    group: AttributeGroup,
    value: str | list[str],
    predicted: Any,
    boxes: list[dict[str, Any]] | None = None,
) -> ParsedValue:
    right: bool | None = None
    if predicted is not None:
        if group.multi_label:
            given = set(predicted) if isinstance(predicted, list) else {predicted}
            right = set(value) == given
        else:
            right = value == predicted
    return ParsedValue(group.name, "applied", value=value, boxes=boxes, model_value=predicted, model_was_right=right)


# ------------------------------------------------------------------------------------------------------------
# the daemon's hook
# ------------------------------------------------------------------------------------------------------------


@dataclass
class ReviewRouting:
    """The daemon's `ReviewRouter`: decides with the policy and builds the outbox payload for routed products.

    The payload holds everything the review worker needs later, without the model: title, image URL and size,
    the prediction (Label Studio result JSON, model version, score), the model's values per group, and why the
    product was routed. `on_decision` (optional) is told every decision (metrics).
    """

    policy: ReviewPolicy
    clock: Callable[[], datetime]
    on_decision: Callable[[Decision], None] | None = None
    _taxonomy: Taxonomy = field(init=False)

    def __post_init__(self) -> None:
        self._taxonomy = self.policy.taxonomy

    def __call__(self, result: ProductResult, tags: list[ImageTags]) -> dict[str, Any] | None:
        decision = self.policy.decide(result.attributes, self.clock())
        if self.on_decision is not None:
            self.on_decision(decision)
        if not decision.routed:
            return None
        shown = tags[0] if tags else None
        regions = prediction_result(self._taxonomy, result.attributes, shown)
        scores = [float(r["score"]) for r in regions if r["type"] == "choices"]
        a = decision.assessment
        return {
            "reason": decision.reason,
            "priority": round(decision.priority, 6),
            "uncertainty": {
                "measure": self.policy.uncertainty_name,
                "score": round(a.uncertainty, 6),
                "groups": {g: round(u, 6) for g, u in a.group_uncertainty.items()},
            },
            "low_values": [
                {"group": v.group, "value": v.value, "confidence": round(v.confidence, 6), "threshold": v.threshold}
                for v in a.low_values
            ],
            "title": result.title,
            "image_url": result.image_url,
            "image_size": [shown.width, shown.height] if shown is not None else None,
            "prediction": {
                "model_version": result.model_version,
                "score": round(min(scores), 4) if scores else 0.0,
                "result": regions,
            },
            "model_values": model_values(self._taxonomy, result.attributes),
        }
