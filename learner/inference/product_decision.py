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
from collections.abc import Collection, Mapping, Sequence
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
    if len(voting) == 1:  # the mean of one photo is that photo (exactly: what np.mean gives)
        return {g: np.asarray(voting[0][g], dtype=np.float64)[None, :] for g in groups}
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
        return self.decide_many([(tags, title)])[0]

    def decide_many(self, products: Sequence[tuple[Sequence[ImageTags], str | None]]) -> list[list[AttributeValue]]:
        """`decide` of every (tags, title) product, in order, as one batch: the titles read and the groups decided
        in one vectorised call each (`decide_products`); each product's values are those `decide` gives it alone."""
        engine_made = [i for i, (tags, _) in enumerate(products) if all(t.probs is not None for t in tags)]
        # the groups the decision does not decide are merged (`merge_attributes`); the others only where it did not
        undecided = {g.name for g in self.taxonomy.groups} - {g.name for g in self.decoder.groups}
        merged_only = {i: undecided for i in engine_made}
        out = [merge_attributes(list(tags), self.taxonomy, merged_only.get(i)) for i, (tags, _) in enumerate(products)]
        signal = self.title_probabilities([products[i][1] for i in engine_made])
        names = [g.name for g in self.decoder.groups]
        rows: list[int] = []  # the products decided, and per product its photo probabilities (None: title alone)
        photos: list[dict[str, np.ndarray] | None] = []
        unfamiliar: list[bool] = []
        titled: list[int] = []  # per decided product, its row of `signal` (-1: no title signal)
        for k, i in enumerate(engine_made):
            tags, has_title = products[i][0], signal is not None and bool(signal[1][k])
            if not tags and not has_title:  # no photo that could be read, no title signal: nothing to decide
                continue
            mean = mean_photo_probs(tags, names)
            if mean is None and not has_title:  # nothing but unfamiliar photos: their values, none auto-filled
                mean = mean_photo_probs([dataclasses.replace(t, unfamiliar=False) for t in tags], names)
            rows.append(i)
            photos.append(mean)
            unfamiliar.append(all(t.unfamiliar for t in tags))  # no familiar photo voted
            titled.append(k if has_title else -1)
        if not rows:  # (a product left undecided has no photo: nothing merged either)
            return out
        image = {
            g.name: np.stack(
                [p[g.name][0] if p is not None else np.full(len(g.values), np.nan) for p in photos]
            ).astype(np.float64, copy=False)
            for g in self.decoder.groups
        }
        title_probs = named = None
        if any(t >= 0 for t in titled):
            assert signal is not None
            pick = np.asarray(titled)
            title_probs = {n: np.where((pick >= 0)[:, None], signal[0][n][np.maximum(pick, 0)], np.nan) for n in names}
            named = named_groups(
                [products[i][1] if t >= 0 else None for i, t in zip(rows, titled, strict=True)],
                self.taxonomy,
                self.group_words,
            )
        thresholds = self.title_model.autofill_thresholds if self.title_model is not None else {}
        d = decide_products(image, title_probs, self.decoder, self.fusion, thresholds, named)
        values = {
            g.name: self._values(g.name, g.values, d, image[g.name], title_probs, titled, unfamiliar)
            for g in self.decoder.groups
        }
        for r, i in enumerate(rows):
            if any(decided[r] is None for decided in values.values()):
                out[i] = merge_attributes(list(products[i][0]), self.taxonomy)
            by_group = {a.attribute: a for a in out[i]}
            for name, decided in values.items():
                if (value := decided[r]) is not None:
                    by_group[name] = value
            out[i] = [by_group[g.name] for g in self.taxonomy.groups if g.name in by_group]
        return out

    def title_probabilities(self, titles: Sequence[str | None]) -> tuple[dict[str, np.ndarray], np.ndarray] | None:
        """Group -> (N, C) calibrated probabilities of the titles, and (N,) whether each title says anything (a
        title that says nothing is not read); None when titles are not read or none of them says anything."""
        if not self.reads_titles:
            return None
        read = [i for i, t in enumerate(titles) if t and t.strip()]
        if not read:
            return None
        assert self.title_model is not None
        raw = self.title_model.probabilities([titles[i] for i in read])
        probs = {g.name: np.full((len(titles), len(g.values)), np.nan) for g in self.decoder.groups}
        for g in self.decoder.groups:
            if g.name in raw:
                probs[g.name][read] = np.asarray(raw[g.name], dtype=np.float64)
        says = np.zeros(len(titles), dtype=bool)
        for p in probs.values():
            says |= _present(p)
        return (probs, says) if says.any() else None

    def _values(
        self,
        group: str,
        values: Sequence[str],
        d: ProductDecisions,
        image: np.ndarray,
        title: Mapping[str, np.ndarray] | None,
        titled: Sequence[int],
        unfamiliar: Sequence[bool],
    ) -> list[AttributeValue | None]:
        """Per decided product, its value of `group` (None: nothing decided it)."""
        p, chosen = d.probs[group], d.chosen[group]
        k = min(self.top_k, len(values))
        ranked = np.argsort(-p, axis=1, kind="stable")[:, :k].tolist()
        firsts = chosen.tolist()
        orders = [[first, *(j for j in ranked[r] if j != first)][:k] for r, first in enumerate(firsts)]
        alternatives = np.take_along_axis(p, np.asarray(orders, dtype=np.intp).reshape(len(p), k), 1).tolist()
        confidence = p[np.arange(len(p)), chosen].tolist()
        sources, conflicts, autos = (x[group].tolist() for x in (d.decided_from, d.conflict, d.auto_filled))
        readings: list[dict[str, Any] | None] = [None] * len(p)  # what the title changed: none without one
        if title is not None:
            said, seen = _readings(values, title[group]), _readings(values, image)
            for r, t in enumerate(titled):
                if t >= 0 and sources[r]:
                    readings[r] = {"decided_from": sources[r], "title": said[r], "photos": seen[r]}
        out: list[AttributeValue | None] = []
        for r, first in enumerate(firsts):
            if not sources[r]:
                out.append(None)
                continue
            withheld_by = TITLE_PHOTO_CONFLICT if conflicts[r] else None
            auto = autos[r]
            if unfamiliar[r] and sources[r] == FROM_PHOTOS:
                auto, withheld_by = False, UNFAMILIAR_PHOTO
            out.append(
                AttributeValue(
                    attribute=group,
                    value=values[first],
                    confidence=confidence[r],
                    alternatives=[
                        Alternative(values[j], round(c, 4)) for j, c in zip(orders[r], alternatives[r], strict=True)
                    ],
                    auto_filled=auto,
                    withheld_by=withheld_by,
                    readings=readings[r],
                )
            )
        return out


def merge_attributes(
    tags: list[ImageTags], taxonomy: Taxonomy, groups: Collection[str] | None = None
) -> list[AttributeValue]:
    """One value per attribute group for a product with one or more images, from its photos alone.

    Single-choice groups take the image whose best value is most confident (with that image's
    alternatives); multi-label groups take the union of values (stored as a list), each at its
    highest confidence, with the box (and mask) of the strongest detection when the values come from the detector.
    A single-choice value below its group's auto-fill threshold, or from an unfamiliar photo (the shift guard), is
    stored as a suggestion (auto_filled False); so is a multi-label value when any photo that gave its group values
    was unfamiliar. `groups`: only these groups (None: every group).
    """
    out: list[AttributeValue] = []
    for g in taxonomy.groups:
        if groups is not None and g.name not in groups:
            continue
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


def _readings(values: Sequence[str], probs: np.ndarray) -> list[dict[str, Any] | None]:
    """Per row of (N, C) `probs`, one signal's own reading of a group: its most probable value and that probability
    (None: no signal, a NaN row)."""
    present = _present(probs).tolist()
    best = np.nan_to_num(probs, nan=-1.0).argmax(axis=1)
    confidence = probs[np.arange(len(probs)), best].tolist()
    return [
        {"value": values[j], "confidence": round(c, 4)} if ok else None
        for j, c, ok in zip(best.tolist(), confidence, present, strict=True)
    ]


def _present(probs: np.ndarray) -> np.ndarray:
    """(N,) rows that carry a signal (no NaN)."""
    return (
        np.asarray(~np.isnan(probs).any(axis=1)) if probs.ndim == 2 and probs.shape[1] else np.zeros(len(probs), bool)
    )
