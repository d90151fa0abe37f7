"""The statistics of the promotion gate: one model's holdout results per product, and the paired bootstrap that
compares two models on them.

Pure functions over numbers (numpy only; no torch, no files, no database), so every figure can be checked by hand:

- `ProductScores`: per holdout product and classifier group, how many of its images a model got right (`correct`)
  out of how many carry a human label for that group (`known`), and optionally (`predictions`) each labelled
  image's true and predicted class index, which macro-F1 needs. Products are the resampling unit because the
  holdout is chosen by product id and photos of one product are not independent.
- `primary_metric`: the mean over groups of top-1 accuracy, each group's accuracy being sum(correct) / sum(known)
  over the products. On the same images this equals learner.evaluation.evaluate's
  `compute_metrics(...)["summary"]["mean_top1"]` (`learner.evaluation.gate.PRIMARY_METRIC`).
- `paired_comparison`: resamples holdout products with replacement (the same resample for both models: the
  pairing) and returns, from the SAME resamples, the percentile confidence interval of challenger minus champion
  on the primary metric and, per group, on top-1 and on macro-F1. Macro-F1 is the mean per-class F1 over the
  classes with at least `min_class_support` labelled holdout images (as in learner.evaluation.evaluate, over the
  classes present in the resample); rarer classes are left out of it and counted.

What it must not do: decide anything (learner.evaluation.gate applies the rules), or read anything but its inputs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

GROUP_FIGURES = ("top1", "macro_f1")  # per attribute group, the figures compared
# (P, C) per product and class: images of that true class, images predicted as it, images both (hits)
ClassCounts = tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]


@dataclass(frozen=True)
class ImagePredictions:
    """One model's labelled holdout images of one classifier group: for each image, the row in
    `ProductScores.products` of its product, its true class index and the predicted (top-1) class index."""

    product: NDArray[np.int64]
    true: NDArray[np.int64]
    predicted: NDArray[np.int64]

    def __post_init__(self) -> None:
        if not len(self.product) == len(self.true) == len(self.predicted):
            raise ValueError("product, true and predicted must have one entry per image")
        if len(self.true) and (min(self.true.min(), self.predicted.min(), self.product.min()) < 0):
            raise ValueError("product rows and class indices must not be negative")

    @property
    def classes(self) -> int:
        return int(max(self.true.max(initial=-1), self.predicted.max(initial=-1)) + 1)

    def class_counts(self, products: int, classes: int) -> ClassCounts:
        """(P, C) per product and class: images of that true class, images predicted as it, images both (hits)."""
        true, predicted, hits = (np.zeros((products, classes)) for _ in range(3))
        np.add.at(true, (self.product, self.true), 1.0)
        np.add.at(predicted, (self.product, self.predicted), 1.0)
        right = self.true == self.predicted
        np.add.at(hits, (self.product[right], self.true[right]), 1.0)
        return true, predicted, hits


@dataclass(frozen=True)
class ProductScores:
    """One model's results on the holdout: rows are products, columns classifier groups (single-choice).
    `predictions` (group -> images), where given, must agree with `correct` and `known`."""

    products: tuple[str, ...]
    groups: tuple[str, ...]
    correct: NDArray[np.float64]  # (P, G) images right
    known: NDArray[np.float64]  # (P, G) images with a human label for that group
    predictions: Mapping[str, ImagePredictions] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = (len(self.products), len(self.groups))
        if self.correct.shape != shape or self.known.shape != shape:
            raise ValueError(f"correct {self.correct.shape} and known {self.known.shape} must both be {shape}")
        if (self.correct > self.known).any() or (self.correct < 0).any():
            raise ValueError("correct counts must lie between 0 and the known counts")
        for name, images in self.predictions.items():
            if name not in self.groups:
                raise ValueError(f"predictions for {name!r}, which is not one of the groups {self.groups}")
            g = self.groups.index(name)
            if len(images.product) and images.product.max() >= len(self.products):
                raise ValueError(f"{name}: an image refers to a product row beyond the {len(self.products)} products")
            right = (images.true == images.predicted).astype(np.float64)
            per_product = np.bincount(images.product, minlength=len(self.products))
            hits = np.bincount(images.product, weights=right, minlength=len(self.products))
            if not (np.array_equal(per_product, self.known[:, g]) and np.array_equal(hits, self.correct[:, g])):
                raise ValueError(f"{name}: the per-image predictions disagree with the correct / known counts")

    def aligned_to(self, other: ProductScores) -> ProductScores:
        """The same scores with rows and columns in `other`'s order (both models must cover the same products)."""
        if set(self.products) != set(other.products) or set(self.groups) != set(other.groups):
            raise ValueError("champion and challenger were scored on different holdout products or groups")
        rows = np.array([self.products.index(p) for p in other.products], dtype=np.int64)
        cols = np.array([self.groups.index(g) for g in other.groups], dtype=np.int64)
        new_row = np.empty(len(rows), dtype=np.int64)
        new_row[rows] = np.arange(len(rows))
        predictions = {
            name: ImagePredictions(new_row[images.product], images.true, images.predicted)
            for name, images in self.predictions.items()
        }
        return ProductScores(
            other.products,
            other.groups,
            self.correct[np.ix_(rows, cols)],
            self.known[np.ix_(rows, cols)],
            predictions,
        )


def primary_metric(correct: NDArray[np.float64], known: NDArray[np.float64]) -> float:
    """Mean over groups of sum(correct) / sum(known); groups without any label are left out (NaN if none has)."""
    return float(_primary_from_sums(correct.sum(axis=0, keepdims=True), known.sum(axis=0, keepdims=True))[0])


def _ratio(num: NDArray[np.float64], den: NDArray[np.float64]) -> NDArray[np.float64]:
    """num / den, NaN where den is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _primary_from_sums(correct: NDArray[np.float64], known: NDArray[np.float64]) -> NDArray[np.float64]:
    """Row-wise primary metric of (B, G) summed counts."""
    acc = _ratio(correct, known)
    labelled = ~np.isnan(acc)
    totals = np.where(labelled, acc, 0.0).sum(axis=1)
    n = labelled.sum(axis=1)
    return np.where(n > 0, totals / np.maximum(n, 1), np.nan)


def _macro_f1(
    true: NDArray[np.float64], predicted: NDArray[np.float64], hits: NDArray[np.float64], eligible: NDArray[np.bool_]
) -> NDArray[np.float64]:
    """Row-wise macro-F1 of (B, C) summed counts over the eligible classes present in the row (NaN if none is).
    F1 = 2 TP / (2 TP + FP + FN) = 2 hits / (true + predicted)."""
    present = (true > 0) & eligible
    f1 = np.where(present, 2 * hits / np.where(present, true + predicted, 1), 0.0)
    n = present.sum(axis=1)
    return np.where(n > 0, f1.sum(axis=1) / np.maximum(n, 1), np.nan)


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


@dataclass(frozen=True)
class GroupComparison:
    """One group's figure (top1 or macro_f1), challenger minus champion, with its paired-bootstrap interval and the
    holdout support behind it. `low`/`high` are None where it could not be tested (`note` says why); for macro-F1,
    `classes` were averaged (at least `min_class_support` images each) and `excluded_classes` had labels but fewer."""

    group: str
    figure: str
    champion: float | None
    challenger: float | None
    low: float | None = None
    high: float | None = None
    products: int = 0  # holdout products with a label in the group
    images: int = 0  # labelled images in the group
    classes: int | None = None
    excluded_classes: int | None = None
    note: str = ""

    @property
    def difference(self) -> float | None:
        if self.champion is None or self.challenger is None:
            return None
        return self.challenger - self.champion

    @property
    def tested(self) -> bool:
        return self.low is not None and self.high is not None

    def regressed_beyond(self, margin: float) -> bool:
        """A significant regression beyond the margin: the interval's upper bound is below -margin."""
        return self.high is not None and self.high < -margin - 1e-12

    def support(self) -> str:
        text = f"{self.images} images, {self.products} products"
        if self.figure == "macro_f1" and self.classes is not None:
            text = f"{self.classes} classes averaged, {self.excluded_classes} below the minimum support; " + text
        return text

    def describe(self, confidence: float) -> str:
        """e.g. "kids/top1 -0.0500, 95% CI [-0.0900, -0.0100] (400 images, 200 products)"."""
        name = f"{self.group}/{self.figure}"
        d = self.difference
        head = f"{name} {d:+.4f}" if d is not None else name
        if not self.tested:
            return f"{head} not tested: {self.note}" if self.note else f"{head} not tested"
        return f"{head}, {round(confidence * 100)}% CI [{self.low:+.4f}, {self.high:+.4f}] ({self.support()})"

    def to_dict(self) -> dict[str, Any]:
        out = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}
        out["difference"] = None if self.difference is None else round(self.difference, 6)
        return out


@dataclass(frozen=True)
class PairedComparison:
    primary: BootstrapResult
    groups: list[GroupComparison]


def _resamples(n: int, samples: int, seed: int, chunk: int) -> Iterator[NDArray[np.float64]]:
    """Bootstrap weights (how often each product is drawn), `chunk` resamples at a time: (size, n) each."""
    rng = np.random.default_rng(seed)
    for start in range(0, samples, chunk):
        size = min(chunk, samples - start)
        yield rng.multinomial(n, np.full(n, 1.0 / n), size=size).astype(np.float64)


def _interval(diffs: NDArray[np.float64], confidence: float) -> tuple[float, float] | None:
    diffs = diffs[~np.isnan(diffs)]
    if len(diffs) == 0:
        return None
    alpha = 1.0 - confidence
    low, high = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


@dataclass
class _MacroF1Plan:
    """What one group's macro-F1 comparison resamples: per product and class counts of both models."""

    group: str
    eligible: NDArray[np.bool_]
    champion: ClassCounts
    challenger: ClassCounts

    def figures(self, weights: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        return self._resampled_f1(weights, self.champion), self._resampled_f1(weights, self.challenger)

    def _resampled_f1(self, weights: NDArray[np.float64], counts: ClassCounts) -> NDArray[np.float64]:
        true, predicted, hits = counts
        return _macro_f1(weights @ true, weights @ predicted, weights @ hits, self.eligible)


def paired_comparison(
    champion: ProductScores,
    challenger: ProductScores,
    samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    min_class_support: int = 5,
    chunk: int = 256,
) -> PairedComparison:
    """Percentile intervals of (challenger - champion) over `samples` resamples of the holdout products with
    replacement, each resample applied to both models (paired) and to every figure: the primary metric, each
    group's top-1 and, where both models have per-image predictions, each group's macro-F1."""
    champion = champion.aligned_to(challenger)
    n, groups = len(challenger.products), challenger.groups
    if n == 0:
        raise ValueError("the holdout has no products: nothing to compare")
    matrices = [m.astype(np.float64) for m in (champion.correct, champion.known, challenger.correct, challenger.known)]
    plans: list[_MacroF1Plan] = []
    notes: dict[str, tuple[str, int, int]] = {}  # group -> (why macro-F1 is not tested, classes, excluded)
    for name in groups:
        a, b = champion.predictions.get(name), challenger.predictions.get(name)
        if a is None or b is None:
            notes[name] = ("no per-image predictions to resample", 0, 0)
            continue
        classes = max(a.classes, b.classes, 1)
        counts_a, counts_b = a.class_counts(n, classes), b.class_counts(n, classes)
        support = np.minimum(counts_a[0].sum(axis=0), counts_b[0].sum(axis=0))
        eligible = support >= min_class_support
        excluded = int(((support > 0) & ~eligible).sum())
        if not eligible.any():
            notes[name] = (f"no class has {min_class_support} or more labelled holdout images", 0, excluded)
            continue
        notes[name] = ("", int(eligible.sum()), excluded)
        plans.append(_MacroF1Plan(name, eligible, counts_a, counts_b))

    ones = np.ones((1, n))
    primary_diffs = np.empty(samples)
    top1_diffs = np.empty((samples, len(groups)))
    f1_diffs = {plan.group: np.empty(samples) for plan in plans}
    start = 0
    for weights in _resamples(n, samples, seed, chunk):
        stop = start + len(weights)
        c_cor, c_known, x_cor, x_known = (weights @ m for m in matrices)
        primary_diffs[start:stop] = _primary_from_sums(x_cor, x_known) - _primary_from_sums(c_cor, c_known)
        top1_diffs[start:stop] = _ratio(x_cor, x_known) - _ratio(c_cor, c_known)
        for plan in plans:
            c, x = plan.figures(weights)
            f1_diffs[plan.group][start:stop] = x - c
        start = stop

    base = primary_metric(champion.correct, champion.known)
    cand = primary_metric(challenger.correct, challenger.known)
    primary = _interval(primary_diffs, confidence)
    if primary is None:
        raise ValueError("no bootstrap resample had a labelled group")
    result = BootstrapResult(cand - base, primary[0], primary[1], confidence, samples, n, base, cand)

    comparisons: list[GroupComparison] = []
    c_acc = _ratio(champion.correct.sum(axis=0), champion.known.sum(axis=0))
    x_acc = _ratio(challenger.correct.sum(axis=0), challenger.known.sum(axis=0))
    by_group = {plan.group: plan for plan in plans}
    for g, name in enumerate(groups):
        labelled = np.maximum(champion.known[:, g], challenger.known[:, g])
        products, images = int((labelled > 0).sum()), int(challenger.known[:, g].sum())
        if math.isnan(c_acc[g]) or math.isnan(x_acc[g]):
            comparisons.append(
                GroupComparison(name, "top1", None, None, products=products, images=images, note="no labelled images")
            )
            continue
        low, high = _interval(top1_diffs[:, g], confidence) or (None, None)
        comparisons.append(GroupComparison(name, "top1", float(c_acc[g]), float(x_acc[g]), low, high, products, images))
        note, classes, excluded = notes[name]
        group_plan = by_group.get(name)
        if group_plan is None:
            comparisons.append(
                GroupComparison(
                    name,
                    "macro_f1",
                    None,
                    None,
                    products=products,
                    images=images,
                    classes=classes,
                    excluded_classes=excluded,
                    note=note,
                )
            )
            continue
        c_f1, x_f1 = group_plan.figures(ones)
        low, high = _interval(f1_diffs[name], confidence) or (None, None)
        comparisons.append(
            GroupComparison(
                name,
                "macro_f1",
                float(c_f1[0]),
                float(x_f1[0]),
                low,
                high,
                products=products,
                images=images,
                classes=classes,
                excluded_classes=excluded,
            )
        )
    return PairedComparison(result, comparisons)


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
    return paired_comparison(champion, challenger, samples, confidence, seed, chunk=chunk).primary


Row = tuple[str, str, bool] | tuple[str, str, int, int]


def scores_from_rows(rows: Sequence[Row], groups: Sequence[str] | None = None) -> ProductScores:
    """Build `ProductScores` from one row per labelled image and group: (product_id, group, correct), or
    (product_id, group, true class index, predicted class index), which also keeps the per-image predictions
    macro-F1 needs (for the groups all of whose rows have them)."""
    products = sorted({r[0] for r in rows})
    group_names = list(groups) if groups is not None else sorted({r[1] for r in rows})
    p_index = {p: i for i, p in enumerate(products)}
    g_index = {g: i for i, g in enumerate(group_names)}
    correct = np.zeros((len(products), len(group_names)))
    known = np.zeros_like(correct)
    images: dict[str, list[tuple[int, int, int]]] = {g: [] for g in group_names}
    without: set[str] = set()
    for row in rows:
        p, g = p_index[row[0]], g_index[row[1]]
        if len(row) == 4:
            ok = row[2] == row[3]
            images[row[1]].append((p, int(row[2]), int(row[3])))
        else:
            ok = bool(row[2])
            without.add(row[1])
        known[p, g] += 1
        correct[p, g] += float(ok)
    predictions = {
        g: ImagePredictions(*(np.array(column, dtype=np.int64) for column in zip(*found, strict=True)))
        for g, found in images.items()
        if found and g not in without
    }
    return ProductScores(tuple(products), tuple(group_names), correct, known, predictions)
