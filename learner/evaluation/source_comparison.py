"""Photos, title and both, side by side: what each signal of a product gives on a labelled set with titles.

`compare_sources` takes a bundle's raw photo predictions (`learner.evaluation.evaluate.predict`, one row per
product) and the products' titles in the same order, and decides every product as the daemon does
(`learner.inference.product_decision.decide_products`) from:
- `photos`: the photos alone (the bundle's temperatures, hierarchy, auto-fill thresholds and shift guard);
- `title`: the title alone (the title model's temperatures and thresholds); a title without a signal is an error
  and auto-fills nothing;
- `fused`: both, by the bundle's learned fusion (an unfamiliar photo does not vote; without a title, the photos);
- `title_masked` and `fused_masked`: the same with the attribute words taken out of the titles
  (`mask_attribute_words`: "Puma Men Black Running Shoes" -> "Puma Running"), what a title gives beyond naming the
  attributes outright.
Per group: top-1 on the products whose label is known, auto-fill coverage and precision at the bundle's thresholds,
and the coverage an oracle threshold on this very split would reach at precision 0.99 (`coverage_at_99`, the
height of the precision-coverage curve, for comparing sources, not a promise), and how often title and photos
conflicted (`conflicts`, fused sources only).

`swaps`: per group whose labelled value the titles name often enough (SWAP_MIN), the conflict check measured: the
titles that name their product's value get that word swapped for another value (`value_word_swaps`: "Men" ->
"Women", "Blue" -> "Red"); `flagged` is the share of those products the fused decision flags as a title/photo
conflict, `clean_flagged` the share of all titled products flagged with their titles as written.

Pure numpy over given probabilities: no model run, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from learner.datasets.labelled import IGNORE_INDEX
from learner.evaluation.fusion import value_word_swaps
from learner.inference.decoding import ValueDecoder
from learner.inference.product_decision import ProductDecisions, decide_products
from learner.model.shift_guard import SCORE_KEY
from learner.model.title_model import attribute_words, mask_attribute_words, named_groups

SOURCES = ("photos", "title", "fused", "title_masked", "fused_masked")
ORACLE_PRECISION = 0.99
SWAP_MIN = 50  # titles naming their value a group needs before its swaps are measured


def coverage_at_precision(confidence: np.ndarray, correct: np.ndarray, precision: float = ORACLE_PRECISION) -> float:
    """The largest share of values that can be auto-filled, most confident first, with the auto-filled ones at least
    `precision` right (0 when not even the most confident value reaches it)."""
    if not len(confidence):
        return 0.0
    order = np.argsort(-np.asarray(confidence, dtype=np.float64), kind="stable")
    right = np.asarray(correct, dtype=bool)[order]
    cumulative = np.cumsum(right) / np.arange(1, len(right) + 1)
    reached = np.nonzero(cumulative >= precision)[0]
    return float((reached[-1] + 1) / len(right)) if len(reached) else 0.0


def group_figures(d: ProductDecisions, group: str, targets: np.ndarray) -> dict[str, Any]:
    """Top-1, auto-fill coverage and precision, oracle coverage at 0.99 and conflicts of one group's decisions, over
    the rows whose label is known."""
    known = targets != IGNORE_INDEX
    n = int(known.sum())
    if not n:
        return {"n": 0}
    right = (d.chosen[group] == targets)[known] & (d.decided_from[group][known] != "")
    auto = d.auto_filled[group][known]
    conf = np.where(d.decided_from[group][known] != "", d.confidence[group][known], -1.0)
    return {
        "n": n,
        "top1": float(right.mean()),
        "coverage": float(auto.mean()),
        "precision": float(right[auto].mean()) if auto.any() else None,
        "coverage_at_99": coverage_at_precision(conf, right),
        "conflicts": int(d.conflict[group][known].sum()),
    }


def compare_sources(
    bundle: Any, predictions: Mapping[str, Any], titles: Sequence[str | None], *, masked: bool = True
) -> dict[str, Any]:
    """Per source (SOURCES; the masked ones only with `masked`) and single-choice group, the figures of
    `group_figures`, for a bundle with a title model and a fusion (ValueError otherwise). `predictions`: group ->
    an object with raw `probs` (N, C) and `targets` (N,), optionally `shift_scores` (N,) on the mapping."""
    title_model, fusion = getattr(bundle, "title_model", None), getattr(bundle, "fusion", None)
    if title_model is None or fusion is None:
        raise ValueError("the bundle reads no titles (no title model or no fusion): nothing to compare")
    decoder = ValueDecoder.for_bundle(bundle)
    raw = {g.name: np.asarray(predictions[g.name].probs) for g in decoder.groups}
    scores = getattr(predictions, "shift_scores", None)
    photos = decoder({**raw, SCORE_KEY: scores} if scores is not None and len(scores) else raw)
    unfamiliar = photos.unfamiliar if photos.unfamiliar is not None else np.zeros(len(titles), dtype=bool)
    targets = {g.name: np.asarray(predictions[g.name].targets) for g in decoder.groups}
    title_thresholds = title_model.autofill_thresholds
    nothing = {name: np.full_like(p, np.nan) for name, p in photos.probs.items()}

    def decide(title_texts: Sequence[str | None] | None, with_photos: bool) -> ProductDecisions:
        title_probs = None if title_texts is None else title_model.probabilities(list(title_texts))
        named = None if title_texts is None else named_groups(title_texts, bundle.taxonomy)
        if not with_photos:
            return decide_products(nothing, title_probs, decoder, fusion, title_thresholds, named)
        # as served: an unfamiliar photo does not vote when the title can decide; alone, it decides unfilled
        signal = np.zeros(len(unfamiliar), dtype=bool)
        if title_probs is not None:
            signal = ~np.isnan(next(iter(title_probs.values()))).any(axis=1)
        left_out = unfamiliar & signal
        image = {name: np.where(left_out[:, None], np.nan, p) for name, p in photos.probs.items()}
        d = decide_products(image, title_probs, decoder, fusion, title_thresholds, named)
        for name in d.auto_filled:
            d.auto_filled[name] &= ~(unfamiliar & ~signal)
        return d

    words = attribute_words(bundle.taxonomy)
    masked_titles = [mask_attribute_words(t or "", bundle.taxonomy, words) for t in titles]
    runs: dict[str, ProductDecisions] = {
        "photos": decide(None, True),
        "title": decide(titles, False),
        "fused": decide(titles, True),
    }
    if masked:
        runs["title_masked"] = decide(masked_titles, False)
        runs["fused_masked"] = decide(masked_titles, True)
    titled = np.array([bool(t and t.strip()) for t in titles])
    swaps: dict[str, Any] = {}
    for g in decoder.groups:
        rows, swapped = value_word_swaps(titles, g, targets[g.name])
        if len(rows) < SWAP_MIN:
            continue
        as_swapped = list(titles)
        for i, text in zip(rows, swapped, strict=True):
            as_swapped[int(i)] = text
        flagged = decide(as_swapped, True).conflict[g.name][rows]
        clean = runs["fused"].conflict[g.name][titled]
        swaps[g.name] = {
            "swapped": len(rows),
            "flagged": float(flagged.mean()),
            "clean": int(titled.sum()),
            "clean_flagged": float(clean.mean()) if len(clean) else None,
        }
    return {
        "products": len(titles),
        "titled": int(sum(1 for t in titles if t and t.strip())),
        "title_signal": float(np.mean([title_model.has_signal(t) for t in titles])) if len(titles) else None,
        "sources": {
            source: {g.name: group_figures(d, g.name, targets[g.name]) for g in decoder.groups}
            for source, d in runs.items()
        },
        "swaps": swaps,
    }


def comparison_lines(comparison: Mapping[str, Any]) -> list[str]:
    """The comparison as a plain-text table: a row per group, top-1 then coverage at the bundle's thresholds
    (precision) per source."""
    sources = list(comparison["sources"])
    groups = list(next(iter(comparison["sources"].values())))
    head = f"{'group':<15}" + "".join(f"{s:>24}" for s in sources)
    lines = [head, f"{'':<15}" + "".join(f"{'top-1  auto (prec)':>24}" for _ in sources)]
    for g in groups:
        cells = []
        for s in sources:
            f = comparison["sources"][s][g]
            if not f.get("n"):
                cells.append(f"{'-':>24}")
                continue
            prec = "-" if f["precision"] is None else f"{f['precision']:.3f}"
            cells.append(f"{f['top1']:.3f}  {f['coverage']:.0%} ({prec})".rjust(24))
        lines.append(f"{g:<15}" + "".join(cells))
    for g, f in comparison.get("swaps", {}).items():
        lines.append(
            f"conflict check, {g}: {f['flagged']:.1%} of {f['swapped']} titles with the value word swapped flagged, "
            f"{f['clean_flagged']:.1%} of {f['clean']} titles as written"
        )
    return lines
