"""One decision per product and single-choice group, from all its photos and its title.

The photos' calibrated probabilities (`ImageTags.probs`, the decoder's) are averaged over the product's familiar
photos (a photo the shift guard found unfamiliar does not vote). With a title the title model reads
(`TitleModel.probabilities`, calibrated, a NaN row when the title has no signal), each group is decided on the
*fused* probabilities of the bundle's learned `Fusion` (`learner.evaluation.fusion` fits it on validation):

    fused = softmax(a_g * log p_photos + b_g * log p_title + bias_g)

then decoded as the engine decodes photos (the most probable path the hierarchy allows, `decode_paths`), and
auto-filled when the chosen value's fused probability reaches the group's fused auto-fill threshold (fitted by the
same rule as the photos', `learner.evaluation.selective`) and its confidence floor. Without a familiar photo the
title decides alone, judged by the title model's own thresholds (`decided_from` "title").

A conflict: the title gives its value at least `conflict_title` and the photos give that same value at most
`conflict_image` (both fitted on validation so that few clean products are flagged). Then nothing of that group is
auto-filled (`withheld_by` TITLE_PHOTO_CONFLICT), both readings are kept on the value (`AttributeValue.readings`),
and the review policy routes the product with that reason.

Without a title (or with one that has no signal, or a bundle without a title model or fusion) each group is
decided from the photos alone, by the same rule: the mean of the familiar photos, decoded along the hierarchy, the
photos' thresholds. For a product with one photo that is exactly the photo's own values, probabilities and marks
(`ImageTags`); with several, the groups no longer come from different photos (articleType from one,
subCategory from another). A product whose photos are all unfamiliar and which has no title keeps the photos'
values, none auto-filled (`withheld_by` "unfamiliar_photo"). Multi-label and detector groups are merged as before
(`merge_attributes`: the union, each value at its highest confidence); tags built without probabilities (by hand)
are merged that way in every group.

Pure numpy: no torch, no I/O (the onnxruntime serving path imports it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from connectors.records import TITLE_PHOTO_CONFLICT, Alternative, AttributeValue
from learner.inference.decoding import ValueDecoder, decode_paths
from learner.model.fusion import NEVER, Fusion, GroupFusion
from learner.model.shift_guard import UNFAMILIAR_PHOTO
from learner.model.taxonomy import Taxonomy
from learner.model.title_model import group_word_sets, named_groups

if TYPE_CHECKING:
    from learner.inference.engine import ImageTags

__all__ = [
    "FROM_BOTH",
    "FROM_PHOTOS",
    "FROM_TITLE",
    "Fusion",
    "GroupFusion",
    "ProductDecider",
    "ProductDecisions",
    "decide_products",
    "mean_photo_probs",
    "merge_attributes",
]

FROM_PHOTOS, FROM_TITLE, FROM_BOTH = "photos", "title", "photos+title"  # what a value was decided from


class TitleScorer(Protocol):
    """What the decision needs of the bundle's title model (learner.model.title_model.TitleModel)."""

    autofill_thresholds: dict[str, float]

    def probabilities(self, titles: Sequence[str | None]) -> dict[str, np.ndarray]: ...


@dataclass
class ProductDecisions:
    """Per single-choice group, over N products: the probabilities each value was chosen from (N, C), the chosen
    index, its confidence and auto-fill mark (N,), whether title and photos conflict (N,), and what each row was
    decided from (N,) (FROM_PHOTOS, FROM_TITLE, FROM_BOTH, or "" when there was nothing to decide from)."""

    probs: dict[str, np.ndarray]
    chosen: dict[str, np.ndarray]
    confidence: dict[str, np.ndarray]
    auto_filled: dict[str, np.ndarray]
    conflict: dict[str, np.ndarray]
    decided_from: dict[str, np.ndarray]


def decide_products(
    image_probs: Mapping[str, np.ndarray],
    title_probs: Mapping[str, np.ndarray] | None,
    decoder: ValueDecoder,
    fusion: Fusion | None,
    title_thresholds: Mapping[str, float] | None = None,
    title_named: Mapping[str, np.ndarray] | None = None,
) -> ProductDecisions:
    """One decision per product (row) and single-choice group of `decoder`.

    `image_probs`: group -> (N, C) calibrated photo probabilities (the mean over a product's familiar photos), a NaN
    row for a product without one; `title_probs`: the same from the title model, a NaN row for a title without
    signal (None: no titles). Rows with both are fused (`fusion`; without it, photos only), rows with one signal use
    it alone with its own thresholds (`decoder.autofill_thresholds` for photos, `title_thresholds` for the title).
    `title_named`: group -> (N,) whether each title names one of the group's values (`named_groups`); a row whose
    title names none is fused by the group's `unnamed` fusion when it has one (None: every title counts as naming).
    Hierarchy groups are decoded together (`decode_paths`), every row on its own probabilities."""
    titles = dict(title_probs or {})
    title_thresholds = dict(title_thresholds or {})
    probs: dict[str, np.ndarray] = {}
    source: dict[str, np.ndarray] = {}
    conflict: dict[str, np.ndarray] = {}
    thresholds: dict[str, np.ndarray] = {}
    for g in decoder.groups:
        image = np.asarray(image_probs[g.name], dtype=np.float64)
        title = np.asarray(titles.get(g.name, np.full_like(image, np.nan)), dtype=np.float64)
        has_image, has_title = _present(image), _present(title)
        if fusion is None or g.name not in fusion.groups:
            has_title = has_title & ~has_image  # no fusion learned: photos decide when there are any
        both, only_title = has_image & has_title, has_title & ~has_image
        chosen_from = np.nan_to_num(image, nan=1.0 / max(1, image.shape[1]))
        chosen_from[only_title] = title[only_title]
        threshold = np.full(len(image), max(decoder.autofill_thresholds.get(g.name, 0.0), 0.0))
        threshold[only_title] = title_thresholds.get(g.name, NEVER)
        conflict[g.name] = np.zeros(len(image), dtype=bool)
        if both.any() and fusion is not None:
            named = np.ones(len(image), dtype=bool) if title_named is None else np.asarray(title_named[g.name], bool)
            for says in (True, False):
                rows = both & (named == says)
                if rows.any():
                    gf = fusion.groups[g.name].for_titles(says)
                    chosen_from[rows] = gf.fuse(image[rows], title[rows])
                    threshold[rows] = gf.threshold
                    conflict[g.name][rows] = gf.conflicts(image[rows], title[rows])
        probs[g.name], thresholds[g.name] = chosen_from, threshold
        source[g.name] = np.select(
            [both, only_title, has_image], [FROM_BOTH, FROM_TITLE, FROM_PHOTOS], default=""
        ).astype(object)
    chosen = {name: p.argmax(axis=1) for name, p in probs.items()}
    if decoder.hierarchy is not None and decoder.paths is not None and len(decoder.paths):
        levels = decoder.hierarchy.levels
        decoded = decode_paths([probs[name] for name in levels], decoder.paths)
        for k, name in enumerate(levels):
            chosen[name] = decoded[:, k]
    confidence = {name: p[np.arange(len(p)), chosen[name]] for name, p in probs.items()}
    auto = {
        name: (conf >= np.maximum(thresholds[name], decoder.confidence_floors[name]))
        & ~conflict[name]
        & (source[name] != "")
        for name, conf in confidence.items()
    }
    return ProductDecisions(probs, chosen, confidence, auto, conflict, source)


def mean_photo_probs(tags: Sequence[ImageTags], groups: Sequence[str]) -> dict[str, np.ndarray] | None:
    """Group -> (1, C) mean of the calibrated probabilities of the familiar photos among `tags`; None when no photo
    is familiar or carries probabilities (it does not vote)."""
    voting = [t.probs for t in tags if not t.unfamiliar and t.probs is not None]
    if not voting:
        return None
    return {g: np.mean([np.asarray(p[g], dtype=np.float64) for p in voting], axis=0)[None, :] for g in groups}


class ProductDecider:
    """The decision of one bundle: its photo decoder, title model (None: none) and fusion (None: none)."""

    def __init__(
        self,
        taxonomy: Taxonomy,
        decoder: ValueDecoder,
        title_model: TitleScorer | None = None,
        fusion: Fusion | None = None,
        top_k: int = 3,
    ) -> None:
        self.taxonomy = taxonomy
        self.decoder = decoder
        self.title_model = title_model
        self.fusion = fusion
        self.top_k = top_k
        self.group_words = group_word_sets(taxonomy)  # which words name a value of each group, once

    @classmethod
    def for_bundle(cls, bundle: Any, decoder: ValueDecoder | None = None, top_k: int = 3) -> ProductDecider:
        """A bundle's decider (`ModelBundle` or `BundleInfo`): titles are read when it has a title model and a
        fusion, else never."""
        return cls(
            bundle.taxonomy,
            decoder or ValueDecoder.for_bundle(bundle),
            getattr(bundle, "title_model", None),
            getattr(bundle, "fusion", None),
            top_k,
        )

    @property
    def reads_titles(self) -> bool:
        return self.title_model is not None and self.fusion is not None

    def decide(self, tags: Sequence[ImageTags], title: str | None = None) -> list[AttributeValue]:
        """The product's values: one per group (see the module docstring). No tags (every photo failed) and a
        title: the title's values alone. Tags without probabilities (made by hand, not by an engine) are merged as
        before photos were averaged (`merge_attributes`)."""
        merged = merge_attributes(list(tags), self.taxonomy)
        if any(t.probs is None for t in tags):
            return merged
        names = [g.name for g in self.decoder.groups]
        title_probs = self.title_probabilities(title)
        if not tags and title_probs is None:  # no photo that could be read, no title signal: nothing to decide
            return merged
        photos = mean_photo_probs(tags, names)
        all_unfamiliar = photos is None
        if all_unfamiliar and title_probs is None:  # nothing but unfamiliar photos: their values, none auto-filled
            photos = mean_photo_probs([dataclasses.replace(t, unfamiliar=False) for t in tags], names)
        if photos is None:  # no familiar photo, a title: the title decides alone
            assert title_probs is not None
            photos = {n: np.full_like(title_probs[n], np.nan) for n in names}
        image = photos
        thresholds = self.title_model.autofill_thresholds if self.title_model is not None else {}
        named = named_groups([title], self.taxonomy, self.group_words) if title_probs is not None else None
        d = decide_products(image, title_probs, self.decoder, self.fusion, thresholds, named)
        by_group = {a.attribute: a for a in merged}
        for g in self.decoder.groups:
            if d.decided_from[g.name][0] == "":
                continue
            title_row = title_probs[g.name][0] if title_probs is not None else None
            by_group[g.name] = self._value(g.name, g.values, d, image[g.name][0], title_row, all_unfamiliar)
        return [by_group[g.name] for g in self.taxonomy.groups if g.name in by_group]

    def title_probabilities(self, title: str | None) -> dict[str, np.ndarray] | None:
        """Group -> (1, C) calibrated title probabilities, or None when titles are not read or this one says
        nothing."""
        if not self.reads_titles or not title or not title.strip():
            return None
        assert self.title_model is not None
        probs = self.title_model.probabilities([title])
        if not any(_present(np.asarray(p, dtype=np.float64)).any() for p in probs.values()):
            return None
        return {g.name: np.asarray(probs[g.name], dtype=np.float64) for g in self.decoder.groups}

    def _value(
        self,
        group: str,
        values: Sequence[str],
        d: ProductDecisions,
        image: np.ndarray,
        title: np.ndarray | None,
        unfamiliar: bool,
    ) -> AttributeValue:
        p = d.probs[group][0]
        first = int(d.chosen[group][0])
        order = [first, *(int(j) for j in np.argsort(-p, kind="stable") if j != first)][: min(self.top_k, len(values))]
        decided_from = str(d.decided_from[group][0])
        withheld_by = TITLE_PHOTO_CONFLICT if d.conflict[group][0] else None
        auto = bool(d.auto_filled[group][0])
        if unfamiliar and decided_from == FROM_PHOTOS:
            auto, withheld_by = False, UNFAMILIAR_PHOTO
        return AttributeValue(
            attribute=group,
            value=values[first],
            confidence=float(p[first]),
            alternatives=[Alternative(values[j], round(float(p[j]), 4)) for j in order],
            auto_filled=auto,
            withheld_by=withheld_by,
            # what the title changed: none without one (the photos-only value is exactly the photos' decision)
            readings=None
            if title is None
            else {"decided_from": decided_from, "title": _reading(values, title), "photos": _reading(values, image)},
        )


def merge_attributes(tags: list[ImageTags], taxonomy: Taxonomy) -> list[AttributeValue]:
    """One value per attribute group for a product with one or more images, from its photos alone.

    Single-choice groups take the image whose best value is most confident (with that image's
    alternatives); multi-label groups take the union of values (stored as a list), each at its
    highest confidence, with the box (and mask) of the strongest detection when the values come from the detector.
    A single-choice value below its group's auto-fill threshold, or from an unfamiliar photo (the shift guard), is
    stored as a suggestion (auto_filled False); so is a multi-label value when any photo that gave its group values
    was unfamiliar.
    """
    out: list[AttributeValue] = []
    for g in taxonomy.groups:
        if g.multi_label:
            best: dict[str, float] = {}
            for t in tags:
                for v, c in t.attributes.get(g.name, []):
                    best[v] = max(best.get(v, 0.0), c)
            if not best:
                continue
            values = sorted(best, key=lambda v: -best[v])
            unfamiliar = any(t.unfamiliar for t in tags if t.attributes.get(g.name))
            boxes = [d for t in tags for d in t.detections if d.attributes.get(g.name) in best]
            strongest_detection = max(boxes, key=lambda d: d.score) if boxes else None
            out.append(
                AttributeValue(
                    attribute=g.name,
                    value=values,
                    confidence=best[values[0]],
                    alternatives=[Alternative(v, round(best[v], 4)) for v in values],
                    box=list(strongest_detection.box) if strongest_detection is not None else None,
                    mask=strongest_detection.mask if strongest_detection is not None else None,
                    # a value seen on a photo the shift guard found unfamiliar is only a suggestion
                    auto_filled=not unfamiliar,
                    withheld_by=UNFAMILIAR_PHOTO if unfamiliar else None,
                )
            )
        else:
            candidates = [t for t in tags if t.attributes.get(g.name)]
            if not candidates:
                continue
            strongest = max(candidates, key=lambda t: t.attributes[g.name][0][1])
            chosen = strongest.attributes[g.name]
            out.append(
                AttributeValue(
                    attribute=g.name,
                    value=chosen[0][0],
                    confidence=chosen[0][1],
                    alternatives=[Alternative(v, round(c, 4)) for v, c in chosen],
                    auto_filled=strongest.is_auto_filled(g.name),
                    withheld_by=UNFAMILIAR_PHOTO if strongest.unfamiliar else None,
                )
            )
    return out


def _reading(values: Sequence[str], probs: np.ndarray) -> dict[str, Any] | None:
    """One signal's own reading of a group: its most probable value and that probability (None: no signal)."""
    if not _present(np.asarray(probs)[None, :])[0]:
        return None
    j = int(np.argmax(probs))
    return {"value": values[j], "confidence": round(float(probs[j]), 4)}


def _present(probs: np.ndarray) -> np.ndarray:
    """(N,) rows that carry a signal (no NaN)."""
    return (
        np.asarray(~np.isnan(probs).any(axis=1)) if probs.ndim == 2 and probs.shape[1] else np.zeros(len(probs), bool)
    )
