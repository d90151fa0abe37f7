"""Metrics of the shift guard, on the enrichment daemon's registry: how many photos it found unfamiliar, and a drift
figure, the population stability index (PSI) of the recent photos' shift scores against the validation photos'
(the deciles the bundle stores, `learner.model.shift_guard`).

`PhotoShiftMonitor.observe` is called by the pipeline's writer for every tagged photo (through `PipelineMetrics`);
it keeps the last `window` scores per model version and recomputes the PSI every `every` photos, so the hot path
adds a deque append. A bundle without a guard (made before it) is counted but has no drift figure.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from learner.inference.engine import ImageTags
from learner.model.shift_guard import ShiftGuard, population_stability_index

DRIFT_WINDOW = 200  # photos the drift figure is computed over
DRIFT_MIN_PHOTOS = 50  # fewer scored photos than this since a model came into service: no figure yet
DRIFT_EVERY = 10  # photos between two recomputations


class PhotoShiftMonitor:
    def __init__(
        self,
        registry: CollectorRegistry,
        window: int = DRIFT_WINDOW,
        min_photos: int = DRIFT_MIN_PHOTOS,
        every: int = DRIFT_EVERY,
    ) -> None:
        self.window, self.min_photos, self.every = window, min_photos, every
        self.photos = Counter(
            "shelfsight_photos_scored_total",
            "Photos the shift guard scored, by verdict (familiar, unfamiliar: none of its values auto-filled).",
            ["verdict"],
            registry=registry,
        )
        self.psi = Gauge(
            "shelfsight_photo_shift_psi",
            "Population stability index of the last photos' shift scores against the validation photos' (0: alike; "
            "above 0.25: the photos arriving are not like the ones the model was validated on).",
            ["model_version"],
            registry=registry,
        )
        self.recent_unfamiliar = Gauge(
            "shelfsight_photo_unfamiliar_share",
            "Share of the last photos that the shift guard found unfamiliar.",
            ["model_version"],
            registry=registry,
        )
        for verdict in ("familiar", "unfamiliar"):
            self.photos.labels(verdict)
        self._scores: dict[str, deque[float]] = {}
        self._flags: dict[str, deque[bool]] = {}
        self._since: dict[str, int] = {}
        self._lock = threading.Lock()

    def observe(self, tags: Iterable[ImageTags], guard: ShiftGuard | None) -> None:
        """Photos of one product, tagged by a model whose guard is `guard` (None: a bundle without one)."""
        for t in tags:
            self.photos.labels("unfamiliar" if t.unfamiliar else "familiar").inc()
            if t.shift_score is None or guard is None:
                continue
            with self._lock:
                version = t.model_version
                scores = self._scores.setdefault(version, deque(maxlen=self.window))
                flags = self._flags.setdefault(version, deque(maxlen=self.window))
                scores.append(t.shift_score)
                flags.append(t.unfamiliar)
                self._since[version] = self._since.get(version, 0) + 1
                if len(scores) < self.min_photos or self._since[version] < self.every:
                    continue
                self._since[version] = 0
                psi = population_stability_index(guard.reference, np.fromiter(scores, dtype=np.float64))
                share = sum(flags) / len(flags)
            self.psi.labels(version).set(round(psi, 4))
            self.recent_unfamiliar.labels(version).set(round(share, 4))
