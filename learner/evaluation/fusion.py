"""Fitting the product decision's fusion of photos and title (`learner.inference.product_decision.Fusion`) on a
labelled split, normally validation, one row per product.

Per single-choice group with labelled rows that have both signals:
1. weights: fused logit = a * log p_photos + b * log p_title (+ a per-value bias), softmax; a, b (and the bias) by
   minimising the negative log-likelihood with L-BFGS. The bias is kept only when it lowers the NLL on held-out
   rows of a two-fold cross-fit (it can learn a value's base rate the two models share; with few rows it overfits),
   and the better single source is used alone (a or b set to 0) when, on those held-out rows, it is right more
   often than the fused values (gender on the starter: the photos only add noise to an almost perfect title);
2. the fused auto-fill threshold: the fused probabilities decoded as served (hierarchy included,
   `learner.inference.product_decision.decide_products`), the threshold chosen by the photos' rule
   (`learner.evaluation.selective.choose_autofill_threshold`: the group's target precision, band and confidence
   floors);
3. the conflict cut-offs: flagged when the title gives its value at least `conflict_title` and the photos give that
   value at most `conflict_image` (below even odds). The pair flags at most `max_flagged` of the group's clean
   products (their real titles) and, among such pairs, the most of the swapped ones: the products whose title names
   their own value, with that word replaced by another value of the group (`value_word_swaps`: "Blue" -> "Red",
   "Men" -> "Women"), read by the title model (what a title that contradicts the photos looks like to the models).
   A group whose values titles rarely name (season, masterCategory) gets no cut-offs: the title cannot contradict
   the photos there, the two only guess differently. Without titles to swap (`swaps` None), swaps are simulated by
   pairing each product's photos with the title reading of another product whose label differs.

The probabilities given are calibrated (the photos' by the bundle's temperatures, the title model's by its own).
Figures are in-sample (measured on the split fitted on); measure on the test split for out-of-sample ones.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from learner.datasets.labelled import IGNORE_INDEX
from learner.evaluation.selective import (
    DEFAULT_CONFIDENCE_LEVEL,
    DEFAULT_MIN_ACCEPTED,
    DEFAULT_TARGET_PRECISION,
    ThresholdChoice,
    choose_autofill_threshold,
)
from learner.evaluation.title_swaps import swap_value_word
from learner.inference.decoding import ValueDecoder
from learner.inference.product_decision import Fusion, GroupFusion, decide_products
from learner.model.fusion import NEVER
from learner.model.shift_guard import SCORE_KEY
from learner.model.taxonomy import AttributeGroup, Taxonomy
from learner.model.title_model import attribute_words, mask_attribute_words, named_groups

DEFAULT_MAX_FLAGGED = 0.015  # share of a group's clean products a conflict cut-off may flag
MIN_UNNAMED = 300  # rows of each kind (titles naming a group's value, naming none) before each gets its own weights:
# fewer (usage: 188 of 2,180 validation titles name it) and the weights of the small kind run away (8 and 10 on a
# separable subset, every value auto-filled at 1.0)
BIAS_L2 = 1e-2  # ridge on the per-value bias (per row of the NLL)
_TINY = 1e-12


def fit_weights(
    image: np.ndarray, title: np.ndarray, targets: np.ndarray, *, bias: bool = False, l2: float = BIAS_L2
) -> tuple[float, float, tuple[float, ...]]:
    """(a, b, bias) minimising the NLL of `targets` (N,) under softmax(a log `image` + b log `title` + bias)."""
    if len(targets) == 0:
        return 1.0, 1.0, ()
    li = torch.from_numpy(np.log(np.maximum(np.asarray(image, dtype=np.float64), _TINY)))
    lt = torch.from_numpy(np.log(np.maximum(np.asarray(title, dtype=np.float64), _TINY)))
    y = torch.from_numpy(np.asarray(targets, dtype=np.int64))
    weights = torch.ones(2, dtype=torch.float64, requires_grad=True)
    offset = torch.zeros(li.shape[1], dtype=torch.float64, requires_grad=bias)
    params = [weights, offset] if bias else [weights]
    optimiser = torch.optim.LBFGS(params, lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(weights[0] * li + weights[1] * lt + offset, y)
        if bias:
            loss = loss + l2 * (offset**2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    a, b = (float(v) for v in weights.detach())
    if not (math.isfinite(a) and math.isfinite(b)):
        return 1.0, 1.0, ()
    return a, b, tuple(float(v) for v in offset.detach()) if bias else ()


def nll(probs: np.ndarray, targets: np.ndarray) -> float:
    """Mean negative log-likelihood of `targets` under `probs` (N, C)."""
    if len(targets) == 0:
        return float("nan")
    return float(-np.log(np.maximum(probs[np.arange(len(targets)), targets], _TINY)).mean())


def choose_fusion(
    image: np.ndarray, title: np.ndarray, targets: np.ndarray, seed: int = 0
) -> tuple[str, dict[str, Any]]:
    """Which fusion a two-fold cross-fit prefers: "fused" (weights only) or "fused+bias" by held-out NLL, unless
    the better single source alone ("title" or "photos") is right more often on the held-out rows; then that
    source alone. Fewer than 100 rows: "fused". Returns the choice and the held-out figures."""
    if len(targets) < 100:
        return "fused", {}
    fold = np.random.default_rng(seed).permutation(len(targets)) % 2 == 0
    loss = {"fused": 0.0, "fused+bias": 0.0}
    right = {"fused": 0, "fused+bias": 0}
    for train in (fold, ~fold):
        test = ~train
        for name, use_bias in (("fused", False), ("fused+bias", True)):
            a, b, off = fit_weights(image[train], title[train], targets[train], bias=use_bias)
            fused = GroupFusion(a, b, off).fuse(image[test], title[test])
            loss[name] += nll(fused, targets[test]) * test.sum() / len(targets)
            right[name] += int((fused.argmax(axis=1) == targets[test]).sum())
    best = min(loss, key=lambda k: loss[k])
    alone = {s: int((p.argmax(axis=1) == targets).sum()) for s, p in (("title", title), ("photos", image))}
    single = max(alone, key=lambda k: alone[k])
    figures = {"held_out_nll": loss, "held_out_right": {**right, **alone}, "rows": len(targets)}
    return (single if alone[single] > right[best] else best), figures


def fit_conflict_cutoffs(
    image: np.ndarray,
    title: np.ndarray,
    targets: np.ndarray,
    max_flagged: float = DEFAULT_MAX_FLAGGED,
    seed: int = 0,
    swaps: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[float, float, dict[str, Any]]:
    """(conflict_title, conflict_image, figures) for one group: see the module docstring. `image`, `title` (N, C)
    are the clean rows (both signals); `targets` (N,) their labels (IGNORE_INDEX: unknown). `swaps`: (photos, title)
    probabilities (M, C) of products whose title names another value (`value_word_swaps`); None: simulated by
    pairing each product's photos with the title reading of a product whose label differs."""
    rows = np.arange(len(title))
    said = title.argmax(axis=1)
    title_conf, image_of_said = title[rows, said], image[rows, said]
    if swaps is not None:
        swapped_image, swapped_title = swaps
        swapped_said = swapped_title.argmax(axis=1)
        picked = np.arange(len(swapped_title))
        swapped_conf, swapped_image = swapped_title[picked, swapped_said], swapped_image[picked, swapped_said]
    else:
        swapped_conf, swapped_image = _simulated_swaps(image, title, targets, seed)
    allowed = math.floor(max_flagged * len(title))
    best = (NEVER, -1.0, 0.0, 0)  # (title cut, image cut, detection, flagged)
    levels = np.linspace(0, 1, 41)
    candidates = np.unique(np.r_[np.quantile(np.r_[title_conf, swapped_conf], levels) if len(title) else []])
    for alpha in candidates[::-1]:  # from the most demanding title cut down: ties keep the more demanding one
        eligible = np.sort(image_of_said[title_conf >= alpha])
        counts = np.searchsorted(eligible, eligible, side="right")
        ok = eligible[(counts <= allowed) & (eligible < 0.5)]
        if len(ok) == 0:
            continue
        beta = float(ok.max())
        detected = float(((swapped_conf >= alpha) & (swapped_image <= beta)).mean()) if len(swapped_conf) else 0.0
        if detected > best[2]:
            best = (float(alpha), beta, detected, int((eligible <= beta).sum()))
    alpha, beta, detected, flagged = best
    figures = {
        "clean": len(title),
        "clean_flagged": flagged,
        "clean_flagged_share": flagged / len(title) if len(title) else None,
        "swaps": "title words" if swaps is not None else "simulated",
        "swapped": len(swapped_conf),
        "swapped_flagged_share": detected if len(swapped_conf) else None,
    }
    return alpha, beta, figures


def value_word_swaps(
    titles: Sequence[str | None],
    group: AttributeGroup,
    labels: np.ndarray,
    seed: int = 0,
    weights: Mapping[str, float] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """The rows whose title names the product's own value of `group` in whole words, and those titles with it
    replaced by another value of the group (`learner.evaluation.title_swaps.swap_value_word`: never one that
    contains it or is contained in it, Blue is not swapped for Navy Blue; drawn with `weights`, uniform when None):
    what a title that contradicts the product's photos looks like."""
    rng = np.random.default_rng(seed)
    rows: list[int] = []
    swapped: list[str] = []
    for i, (text, y) in enumerate(zip(titles, labels, strict=True)):
        if not text or y == IGNORE_INDEX:
            continue
        changed = swap_value_word(text, group.values[int(y)], group.values, rng, weights)
        if changed is not None:
            rows.append(i)
            swapped.append(changed[0])
    return np.asarray(rows, dtype=np.int64), swapped


def _simulated_swaps(
    image: np.ndarray, title: np.ndarray, targets: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each labelled product's photos with the title reading of another product whose label differs: the title's
    confidence in its value and the photos' probability of that value."""
    known = np.flatnonzero(targets != IGNORE_INDEX)
    if len(known) < 2:
        return np.zeros(0), np.zeros(0)
    other = np.random.default_rng(seed).permutation(known)
    differs = targets[known] != targets[other]
    mine, theirs = known[differs], other[differs]
    said = title[theirs].argmax(axis=1)
    return title[theirs, said], image[mine, said]


def fit_fusion(
    image_probs: Mapping[str, np.ndarray],
    title_probs: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    taxonomy: Taxonomy,
    *,
    image_thresholds: Mapping[str, float] | None = None,
    default_target: float = DEFAULT_TARGET_PRECISION,
    confidence_level: float = DEFAULT_CONFIDENCE_LEVEL,
    min_accepted: int = DEFAULT_MIN_ACCEPTED,
    max_flagged: float = DEFAULT_MAX_FLAGGED,
    seed: int = 0,
    fitted_on: Mapping[str, Any] | None = None,
    swaps: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    title_named: Mapping[str, np.ndarray] | None = None,
) -> Fusion:
    """The fusion of every single-choice classifier group with labelled rows carrying both signals (see the module
    docstring). `image_probs`, `title_probs`: group -> (N, C) calibrated probabilities, NaN rows for a missing
    signal; `labels`: group -> (N,) value indices, IGNORE_INDEX for unknown. `image_thresholds`: the photos'
    auto-fill thresholds (for rows without a title; they do not change the fit). `swaps`: group -> (rows, title
    probabilities of those rows' titles with their value word swapped, `value_word_swaps`) for the conflict
    cut-offs; given, a group with too few of them (its values are rarely named in titles) gets no conflict cut-offs;
    None: every group is fitted on simulated swaps. `title_named`: group -> (N,) whether each row's title names one
    of the group's values (`named_groups`); the rows whose title names none (e.g. the split's titles again with
    their attribute words masked) get weights and a threshold of their own (`GroupFusion.unnamed`) and no conflict
    check, when there are at least MIN_UNNAMED rows of each kind; None: every title counts as naming."""
    decoder = ValueDecoder(taxonomy, autofill_thresholds=image_thresholds)
    weights: dict[str, GroupFusion] = {}
    report: dict[str, Any] = {"groups": {}, **dict(fitted_on or {}), "max_flagged": max_flagged}
    named_of = {g.name: _named_rows(title_named, g.name, len(labels[g.name])) for g in decoder.groups}
    for g in decoder.groups:
        image, title = np.asarray(image_probs[g.name], float), np.asarray(title_probs[g.name], float)
        y = np.asarray(labels[g.name], dtype=np.int64)
        both = ~np.isnan(image).any(axis=1) & ~np.isnan(title).any(axis=1)
        fit = both & (y != IGNORE_INDEX)
        if fit.sum() == 0:
            continue
        named = named_of[g.name]
        if min((fit & named).sum(), (fit & ~named).sum()) < MIN_UNNAMED:  # too few of one kind: one fusion for all
            named = named_of[g.name] = np.ones(len(y), dtype=bool)
        weights[g.name], report["groups"][g.name] = _fit_group_weights(image, title, y, fit & named, seed)
        if not named.all():
            alone, figures = _fit_group_weights(image, title, y, fit & ~named, seed)
            weights[g.name] = dataclasses.replace(weights[g.name], unnamed=alone)
            report["groups"][g.name]["unnamed"] = figures
    untuned = Fusion(weights)
    decided = decide_products(image_probs, title_probs, decoder, untuned, title_named=named_of)
    groups: dict[str, GroupFusion] = {}
    for g in decoder.groups:
        if g.name not in weights:
            continue
        image, title = np.asarray(image_probs[g.name], float), np.asarray(title_probs[g.name], float)
        y = np.asarray(labels[g.name], dtype=np.int64)
        named = named_of[g.name]
        both = (decided.decided_from[g.name] == "photos+title") & named
        fit = both & (y != IGNORE_INDEX)
        correct = decided.chosen[g.name][fit] == y[fit]
        target = g.target_precision if g.target_precision is not None else default_target

        rules = (target, confidence_level, min_accepted)
        choice = _threshold(decided.confidence[g.name][fit], correct, g, *rules)
        unnamed = weights[g.name].unnamed
        if unnamed is not None:
            rows = (decided.decided_from[g.name] == "photos+title") & ~named & (y != IGNORE_INDEX)
            right = decided.chosen[g.name][rows] == y[rows]
            unnamed_choice = _threshold(decided.confidence[g.name][rows], right, g, *rules)
            unnamed = dataclasses.replace(unnamed, threshold=unnamed_choice.threshold)
            report["groups"][g.name]["unnamed"]["autofill"] = {
                k: _round(v) for k, v in unnamed_choice.to_dict().items()
            }
            report["groups"][g.name]["unnamed"]["accuracy"] = float(right.mean())
        swapped = _swapped_rows(image, both, (swaps or {}).get(g.name))
        if swaps is not None and swapped is None:  # titles do not name this group's values: no conflict to find
            alpha, beta, conflicts = NEVER, -1.0, {"swaps": "none: titles rarely name its values"}
        else:
            alpha, beta, conflicts = fit_conflict_cutoffs(image[both], title[both], y[both], max_flagged, seed, swapped)
        w = weights[g.name]
        groups[g.name] = GroupFusion(w.image_weight, w.title_weight, w.bias, choice.threshold, alpha, beta, unnamed)
        report["groups"][g.name].update(
            {
                "nll": {
                    "photos": nll(image[fit], y[fit]),
                    "title": nll(title[fit], y[fit]),
                    "fused": nll(decided.probs[g.name][fit], y[fit]),
                },
                "accuracy": {
                    "photos": float((image[fit].argmax(axis=1) == y[fit]).mean()),
                    "title": float((title[fit].argmax(axis=1) == y[fit]).mean()),
                    "fused": float(correct.mean()),
                },
                "autofill": {k: _round(v) for k, v in choice.to_dict().items()},
                "conflict": {"title_at_least": alpha, "photos_at_most": beta, **conflicts},
            }
        )
    return Fusion(groups, report)


def _threshold(
    confidence: np.ndarray, correct: np.ndarray, g: AttributeGroup, target: float, level: float, min_accepted: int
) -> ThresholdChoice:
    """The fused auto-fill threshold of one group's rows, by the photos' rule and the group's floors."""
    return choose_autofill_threshold(
        confidence,
        correct,
        target,
        level,
        min_accepted,
        band_floor=g.auto_fill_band_floor,
        confidence_floor=g.auto_fill_confidence_floor,
    )


def _named_rows(title_named: Mapping[str, np.ndarray] | None, group: str, n: int) -> np.ndarray:
    """(n,) whether each row's title names one of `group`'s values (every row, without `title_named`)."""
    if title_named is None or group not in title_named:
        return np.ones(n, dtype=bool)
    return np.asarray(title_named[group], dtype=bool)


def _fit_group_weights(
    image: np.ndarray, title: np.ndarray, y: np.ndarray, rows: np.ndarray, seed: int
) -> tuple[GroupFusion, dict[str, Any]]:
    """The weights of one group fitted on `rows` (`choose_fusion`, then `fit_weights`), and what the fit saw."""
    chosen, held_out = choose_fusion(image[rows], title[rows], y[rows], seed)
    off: tuple[float, ...] = ()
    if chosen in ("title", "photos"):  # the fused values were right less often than one source alone
        a, b = (0.0, 1.0) if chosen == "title" else (1.0, 0.0)
    else:
        a, b, off = fit_weights(image[rows], title[rows], y[rows], bias=chosen == "fused+bias")
    figures = {
        "rows": int(rows.sum()),
        "image_weight": a,
        "title_weight": b,
        "bias": bool(off),
        "chosen": chosen,
        "cross_fit": held_out,
    }
    return GroupFusion(a, b, off), figures


def _swapped_rows(
    image: np.ndarray, both: np.ndarray, swaps: tuple[np.ndarray, np.ndarray] | None, least: int = 20
) -> tuple[np.ndarray, np.ndarray] | None:
    """(photos, swapped title) probabilities of the swapped rows that have both signals; None under `least` rows."""
    if swaps is None:
        return None
    rows, title = swaps
    keep = both[rows] & ~np.isnan(title).any(axis=1)
    return (image[rows[keep]], title[keep]) if keep.sum() >= least else None


def _round(v: Any) -> Any:
    return round(v, 6) if isinstance(v, float) else v


def fit_bundle_fusion(
    bundle: Any,
    predictions: Mapping[str, Any],
    titles: Sequence[str | None],
    *,
    default_target: float = DEFAULT_TARGET_PRECISION,
    confidence_level: float = DEFAULT_CONFIDENCE_LEVEL,
    min_accepted: int = DEFAULT_MIN_ACCEPTED,
    fitted_on: Mapping[str, Any] | None = None,
) -> Fusion | None:
    """The fusion of a calibrated bundle that has a title model (None: it has none), fitted on its raw photo
    `predictions` (`learner.evaluation.evaluate.Predictions`, one row per image, with shift scores) and the products'
    `titles` in the same order, as served: the photos calibrated by the bundle's temperatures, a photo the bundle's
    shift guard finds unfamiliar left out (its row decided by the title alone). The titles are read twice: as written,
    and with their attribute words masked (`mask_attribute_words`), so that the weights for a title that names none
    of a group's values (`GroupFusion.unnamed`) are fitted on such titles; conflicts on the titles as written."""
    title_model = getattr(bundle, "title_model", None)
    if title_model is None or not any(titles):  # no title model, or a set without titles: nothing to fuse
        return None
    decoder = ValueDecoder.for_bundle(bundle)
    raw = {name: p.probs for name, p in predictions.items()}
    scores = getattr(predictions, "shift_scores", None)
    decided = decoder({**raw, SCORE_KEY: scores} if scores is not None and len(scores) else raw)
    unfamiliar = decided.unfamiliar if decided.unfamiliar is not None else np.zeros(len(titles), dtype=bool)
    image = {name: np.where(unfamiliar[:, None], np.nan, p) for name, p in decided.probs.items()}
    labels = {g.name: predictions[g.name].targets for g in decoder.groups}
    swaps = {}
    for g in decoder.groups:
        rows, swapped = value_word_swaps(titles, g, labels[g.name])
        if len(rows):
            swaps[g.name] = (rows, title_model.probabilities(swapped)[g.name])
    words = attribute_words(bundle.taxonomy)
    read = [*titles, *(mask_attribute_words(t or "", bundle.taxonomy, words) for t in titles)]
    title = title_model.probabilities(read)
    return fit_fusion(
        {name: np.concatenate([p, p]) for name, p in image.items()},
        {g.name: title[g.name] for g in decoder.groups},
        {name: np.concatenate([y, y]) for name, y in labels.items()},
        bundle.taxonomy,
        image_thresholds=bundle.autofill_thresholds,
        default_target=default_target,
        confidence_level=confidence_level,
        min_accepted=min_accepted,
        fitted_on={**dict(fitted_on or {}), "titles": int(sum(1 for t in titles if t))},
        swaps=swaps,
        title_named=named_groups(read, bundle.taxonomy),
    )
