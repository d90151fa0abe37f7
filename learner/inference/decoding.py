"""From class probabilities to chosen values: temperatures, hierarchy-consistent decoding, auto-fill marks.

`ValueDecoder` is built once per bundle and applied to every batch of single-choice probabilities:
1. temperature scaling per group (`apply_temperature`: softmax(log p / T), which equals softmax(z / T) for
   p = softmax(z), so it works on probabilities from any backend);
2. when the taxonomy has a hierarchy, the most probable *consistent* path (e.g. master, sub, article): the
   path maximising the sum of the levels' log-probabilities over every path the hierarchy allows;
   other groups take their most probable value;
3. each chosen value is auto-filled when its (calibrated) probability reaches the group's auto-fill
   threshold and the group's confidence floor (the taxonomy's `confidence_floor`, default 0.5: a value the model
   itself gives less than even odds is never written as the model's); a group without a threshold is auto-filled
   above the floor (the behaviour of bundles made before selective prediction, less the floor);
4. when the bundle has a shift guard and the runner returned the shift score (`SCORE_KEY`), an image scoring above
   the guard's cut-off is unfamiliar: none of its values is auto-filled (`Decisions.unfamiliar`).

This is the one place the auto-fill decision is made: the mark travels as `ImageTags.auto_filled` and
`AttributeValue.auto_filled`, and the review policy (learner/review/policy.py) reads it instead of comparing
confidences with the thresholds again.

Pure numpy: no model, no I/O. The thresholds and temperatures are fitted by learner.evaluation.calibration.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from learner.model.hierarchy import Hierarchy
from learner.model.shift_guard import SCORE_KEY, ShiftGuard
from learner.model.taxonomy import Taxonomy

if TYPE_CHECKING:
    from learner.model.bundle import ModelBundle
    from learner.model.manifest import BundleInfo

_TINY = 1e-300  # log(0) guard in float64


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities (..., C) rescaled by a temperature: T > 1 softens, T < 1 sharpens, T == 1 changes nothing."""
    p = np.asarray(probs, dtype=np.float64)
    if temperature == 1.0:
        return p
    z = np.log(np.maximum(p, _TINY)) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def hierarchy_paths(hierarchy: Hierarchy, taxonomy: Taxonomy) -> np.ndarray:
    """Every path the hierarchy allows, as a (P, levels) array of value indices (top-down).

    A listed leaf value has exactly its declared path. A leaf value the table does not list claims nothing
    about the levels above: it may sit under any upper path that some listed leaf has.
    """
    groups = [taxonomy.group(name) for name in hierarchy.levels]
    rows: list[tuple[int, ...]] = []
    prefixes: dict[tuple[int, ...], None] = {}  # insertion-ordered set
    for leaf, upper in hierarchy.implies.items():
        prefix = tuple(g.index(v) for g, v in zip(groups[:-1], upper, strict=True))
        prefixes[prefix] = None
        rows.append((*prefix, groups[-1].index(leaf)))
    for j, leaf in enumerate(groups[-1].values):
        if leaf not in hierarchy.implies:
            rows.extend((*prefix, j) for prefix in prefixes)
    return np.asarray(rows, dtype=np.int64).reshape(-1, len(groups))


def decode_paths(level_probs: Sequence[np.ndarray], paths: np.ndarray) -> np.ndarray:
    """(N, levels) indices: for each row, the allowed path with the highest sum of log-probabilities."""
    scores = np.zeros((len(level_probs[0]), len(paths)))
    for k, p in enumerate(level_probs):
        scores += np.log(np.maximum(np.asarray(p, dtype=np.float64), _TINY))[:, paths[:, k]]
    return paths[scores.argmax(axis=1)]


@dataclass
class Decisions:
    """Per single-choice group: calibrated probabilities (N, C), chosen value index (N,), its confidence (N,)
    and whether it is auto-filled (N,). `disagreed` (N,) marks rows whose raw per-group argmaxes formed a
    path the hierarchy does not allow (None without a hierarchy). `shift_score` (N,) is the shift guard's score
    (None when the runner gave none) and `unfamiliar` (N,) the rows above the guard's cut-off (None without a
    guard), whose values are never auto-filled."""

    probs: dict[str, np.ndarray]
    chosen: dict[str, np.ndarray]
    confidence: dict[str, np.ndarray]
    auto_filled: dict[str, np.ndarray]
    disagreed: np.ndarray | None = None
    shift_score: np.ndarray | None = None
    unfamiliar: np.ndarray | None = None

    def ranked(self, group: str, row: int, values: Sequence[str], k: int) -> list[tuple[str, float]]:
        """The chosen value first, then the other values by probability: k (value, confidence) pairs in all."""
        p = self.probs[group][row]
        first = int(self.chosen[group][row])
        order = [first, *(int(j) for j in np.argsort(-p, kind="stable") if j != first)]
        return [(values[j], float(p[j])) for j in order[:k]]


class ValueDecoder:
    """Temperatures, hierarchy and auto-fill thresholds of one bundle, applied to batches of probabilities."""

    def __init__(
        self,
        taxonomy: Taxonomy,
        temperatures: Mapping[str, float] | None = None,
        autofill_thresholds: Mapping[str, float] | None = None,
        hierarchy: Hierarchy | None = None,
        shift_guard: ShiftGuard | None = None,
    ) -> None:
        self.taxonomy = taxonomy
        self.groups = tuple(g for g in taxonomy.classifier_groups if not g.multi_label)
        self.temperatures = dict(temperatures or {})
        self.autofill_thresholds = dict(autofill_thresholds or {})
        self.confidence_floors = {g.name: g.auto_fill_confidence_floor for g in self.groups}
        self.shift_guard = shift_guard
        self.hierarchy = hierarchy if hierarchy is not None else taxonomy.hierarchy
        self.paths = None if self.hierarchy is None else hierarchy_paths(self.hierarchy, taxonomy)

    @classmethod
    def for_bundle(cls, bundle: ModelBundle | BundleInfo) -> ValueDecoder:
        """The decoder of a bundle: its taxonomy's hierarchy, its temperatures, auto-fill thresholds and shift guard."""
        return cls(bundle.taxonomy, bundle.temperatures, bundle.autofill_thresholds, shift_guard=bundle.shift_guard)

    def __call__(self, probs: Mapping[str, np.ndarray]) -> Decisions:
        """`probs`: group -> (N, C) probabilities of (at least) every single-choice classifier group, and the shift
        score under `SCORE_KEY` when the runner computes it."""
        calibrated = {g.name: apply_temperature(probs[g.name], self.temperatures.get(g.name, 1.0)) for g in self.groups}
        chosen = {name: p.argmax(axis=1) for name, p in calibrated.items()}
        disagreed = None
        if self.hierarchy is not None and self.paths is not None and len(self.paths):
            levels = self.hierarchy.levels
            decoded = decode_paths([calibrated[name] for name in levels], self.paths)
            raw = np.stack([chosen[name] for name in levels], axis=1)
            disagreed = (decoded != raw).any(axis=1)
            for k, name in enumerate(levels):
                chosen[name] = decoded[:, k]
        confidence = {name: calibrated[name][np.arange(len(c)), c] for name, c in chosen.items()}
        auto = {
            name: conf >= max(self.autofill_thresholds.get(name, 0.0), self.confidence_floors[name])
            for name, conf in confidence.items()
        }
        score = probs.get(SCORE_KEY)
        unfamiliar = None
        if score is not None and self.shift_guard is not None:
            unfamiliar = self.shift_guard.unfamiliar(score)
            auto = {name: a & ~unfamiliar for name, a in auto.items()}
        return Decisions(calibrated, chosen, confidence, auto, disagreed, score, unfamiliar)
