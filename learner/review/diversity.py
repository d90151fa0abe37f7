"""Routing strategies that mix uncertainty with diversity: what `BelowThreshold` selects, ranked so the review queue
cycles over kinds of products instead of serving annotators a run of near-identical unsure photos.

Pure uncertainty ranking sends the most uncertain products first, and those tend to come in runs (fifty photos of
the same unsure kind of sandal teach the next model about as much as five). Both strategies here select exactly
what `BelowThreshold` selects (same reason, `low_confidence`) and only change the outbox priority:

- `ClassBalanced`: the kind of a product is its predicted class in one group (default: the taxonomy's most
  specific single-choice group: its hierarchy's leaf, else the classifier group with the most values, e.g.
  articleType);
- `ClusterMargin` (after Citovsky et al. 2021, "Batch Active Learning at Scale": margin candidates, clustered,
  round-robin over the clusters): the kind of a product is its cluster in prediction space, see below.

Ranking (`PriorityTiers`): the outbox sends the highest priority first and a product's priority is fixed when it is
routed, so the round-robin is written into the priority. A routed product's tier is the number of products of its
kind routed recently that were at least as uncertain as it is (a decaying count: each earlier route weighs
`0.5 ** (routes since / half_life)`, rounded to a whole tier); its priority lies in the band of its tier, by its
uncertainty within the band: tier t covers [1/(t+2), 1/(t+1)], so tier 0 is [0.5, 1] and every priority stays in
(0, 1] like an uncertainty. The queue then serves the most uncertain product of each kind first, then the second
of each kind, and so on. In a stream the order of arrival matters: a product that arrived before a more uncertain
one of its kind keeps its (better) tier, so a kind can hold a few products per tier; it never holds a run.

Representation of `ClusterMargin`: the engine does not expose its backbone embeddings to the review policy (the
ONNX export gives per-group probabilities only; `ImageTags.probs` holds them per photo, the product decision then
combines photos and title), so products are clustered in prediction space: the concatenation, over the taxonomy's
single-choice classifier groups, of each group's probability vector as the product's values carry it (its
candidates, the engine's top-k, placed at their values' indices, the remaining mass spread evenly over the other
values; a group without a value: uniform), each group scaled by 1/sqrt(groups) so distances lie in [0, sqrt(2)].
Two products are close when the model says the same about them, including where it hesitates ("Tshirts or Tops,
probably blue"): clusters of the model's confusions, not of looks. It costs nothing at inference and needs no change
to the export; its limit is that photos the model confuses in the same way are one kind even when they look
different. Clustering is online, leader style: a product farther than `radius` from every centroid starts a cluster
(up to `max_clusters`, then it joins the nearest), otherwise it joins the nearest, whose centroid moves to the
running mean of its members.

Across replicas: each daemon replica (and each strategy instance) keeps its own counts and clusters, so N replicas
interleave their own streams; the shared review caps (`ReviewCaps`, synced through the outbox) already bound the
total they route. The counts are not persisted: a restart starts them afresh. Thread-safe (a lock per instance).

Pure: no I/O, no clock (decay counts routes, not time).
"""

from __future__ import annotations

import math
import threading
from collections import deque

import numpy as np

from learner.model.taxonomy import Taxonomy
from learner.review.policy import Assessment, BelowThreshold

DEFAULT_HALF_LIFE = 1000.0  # routes: about two hours of the default cap of 500 routed products per hour


def class_group(taxonomy: Taxonomy) -> str:
    """The taxonomy's most specific single-choice group: its hierarchy's leaf, else the single-choice classifier
    group with the most values (ties: the first listed)."""
    if taxonomy.hierarchy is not None:
        return taxonomy.hierarchy.leaf
    single = [g for g in taxonomy.classifier_groups if not g.multi_label]
    if not single:
        raise ValueError(f"taxonomy {taxonomy.name!r} has no single-choice classifier group to balance classes of")
    return max(single, key=lambda g: len(g.values)).name


def tier_band(tier: int, uncertainty: float) -> float:
    """The priority of a product of `tier` (0 best) and `uncertainty` in [0, 1]: within [1/(t+2), 1/(t+1)]."""
    low, high = 1.0 / (tier + 2), 1.0 / (tier + 1)
    return low + min(max(uncertainty, 0.0), 1.0) * (high - low)


class PriorityTiers:
    """Per kind, the recent routes (route index, uncertainty); a new route's tier is the decayed count of its kind's
    recent routes at least as uncertain as it is. `half_life`: in routes, None: no decay (every route counts 1).
    Routes weighing under 1/64 are forgotten."""

    def __init__(self, half_life: float | None = DEFAULT_HALF_LIFE) -> None:
        if half_life is not None and half_life <= 0:
            raise ValueError(f"half_life must be positive, got {half_life}")
        self.half_life = half_life
        self.routes = 0
        self._recent: dict[str, deque[tuple[int, float]]] = {}

    def _weight(self, index: int) -> float:
        return 1.0 if self.half_life is None else 0.5 ** ((self.routes - 1 - index) / self.half_life)

    def count(self, kind: str) -> float:
        """The decayed number of recent routes of `kind`."""
        return sum(self._weight(i) for i, _ in self._recent.get(kind, ()))

    def route(self, kind: str, uncertainty: float) -> float:
        """Record a route of `kind` and return its priority (see `tier_band`)."""
        recent = self._recent.setdefault(kind, deque())
        if self.half_life is not None:
            horizon = 6 * self.half_life  # weight 1/64
            while recent and self.routes - recent[0][0] > horizon:
                recent.popleft()
        ahead = sum(self._weight(i) for i, u in recent if u >= uncertainty)
        recent.append((self.routes, uncertainty))
        self.routes += 1
        return tier_band(int(ahead + 0.5), uncertainty)


class ClassBalanced(BelowThreshold):
    """Select what `BelowThreshold` selects; rank so the queue cycles over the predicted classes of `group` (default:
    `class_group(taxonomy)`), most uncertain first within a class's tier (module docstring). A product without a
    value in the group is one more class ('')."""

    def __init__(self, taxonomy: Taxonomy, group: str | None = None, half_life: float | None = DEFAULT_HALF_LIFE):
        self.group = group or class_group(taxonomy)
        taxonomy.group(self.group)  # KeyError when the taxonomy lacks it
        self.tiers = PriorityTiers(half_life)
        self._lock = threading.Lock()

    def kind(self, assessment: Assessment) -> str:
        return assessment.predicted.get(self.group, "")

    def rank(self, assessment: Assessment) -> float:
        with self._lock:
            return self.tiers.route(self.kind(assessment), assessment.uncertainty)


def prediction_vector(taxonomy: Taxonomy, assessment: Assessment) -> np.ndarray:
    """The product's position in prediction space (module docstring): per single-choice classifier group, its
    probability vector from the candidates, concatenated, each scaled by 1/sqrt(groups)."""
    return _vector(_value_indices(taxonomy), assessment)


def _value_indices(taxonomy: Taxonomy) -> list[tuple[str, dict[str, int]]]:
    return [(g.name, {v: i for i, v in enumerate(g.values)}) for g in taxonomy.classifier_groups if not g.multi_label]


def _vector(groups: list[tuple[str, dict[str, int]]], assessment: Assessment) -> np.ndarray:
    parts: list[np.ndarray] = []
    for name, index in groups:
        vec = np.zeros(len(index), dtype=np.float64)
        known = {index[v]: min(max(c, 0.0), 1.0) for v, c in assessment.candidates.get(name, ()) if v in index}
        rest = max(0.0, 1.0 - sum(known.values()))
        if len(known) < len(index) and rest > 0:
            vec[:] = rest / (len(index) - len(known))
        for i, c in known.items():
            vec[i] = c
        parts.append(vec)
    out = np.concatenate(parts) if parts else np.zeros(0)
    return out / math.sqrt(max(len(groups), 1))


class LeaderClusters:
    """Online leader clustering: a point farther than `radius` from every centroid starts a cluster (while there are
    fewer than `max_clusters`), otherwise it joins the nearest; a centroid is the running mean of its members."""

    def __init__(self, radius: float, max_clusters: int) -> None:
        if radius <= 0 or max_clusters < 1:
            raise ValueError(f"radius must be positive and max_clusters at least 1, got {radius}, {max_clusters}")
        self.radius = radius
        self.max_clusters = max_clusters
        self.centroids: list[np.ndarray] = []
        self.sizes: list[int] = []

    def assign(self, point: np.ndarray) -> int:
        if self.centroids:
            distances = np.linalg.norm(np.stack(self.centroids) - point, axis=1)
            nearest = int(np.argmin(distances))
            if distances[nearest] <= self.radius or len(self.centroids) >= self.max_clusters:
                self.sizes[nearest] += 1
                self.centroids[nearest] += (point - self.centroids[nearest]) / self.sizes[nearest]
                return nearest
        self.centroids.append(point.astype(np.float64).copy())
        self.sizes.append(1)
        return len(self.centroids) - 1


class ClusterMargin(BelowThreshold):
    """Select what `BelowThreshold` selects; rank so the queue cycles over prediction-space clusters, most uncertain
    (margin, with the default measure) first within a cluster's tier (module docstring). Only routed products
    are clustered: the candidates are the low-confidence ones, as Citovsky et al. cluster the margin candidates."""

    def __init__(
        self,
        taxonomy: Taxonomy,
        radius: float = 0.5,
        max_clusters: int = 256,
        half_life: float | None = DEFAULT_HALF_LIFE,
    ) -> None:
        self.taxonomy = taxonomy
        self._groups = _value_indices(taxonomy)
        self.clusters = LeaderClusters(radius, max_clusters)
        self.tiers = PriorityTiers(half_life)
        self._lock = threading.Lock()

    def kind(self, assessment: Assessment) -> str:
        return str(self.clusters.assign(_vector(self._groups, assessment)))

    def rank(self, assessment: Assessment) -> float:
        with self._lock:
            return self.tiers.route(self.kind(assessment), assessment.uncertainty)
