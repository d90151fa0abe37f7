"""The shift guard's metrics (daemon/metrics/shift.py): verdict counts and the drift figure over recent photos."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry

from daemon.metrics import PhotoShiftMonitor
from learner.inference.engine import ImageTags
from learner.model.shift_guard import PSI_BINS, ShiftGuard


def photo(score: float, cutoff: float, version: str = "m1") -> ImageTags:
    return ImageTags({}, [], 10, 10, version, shift_score=score, unfamiliar=score > cutoff)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_the_drift_figure_stays_low_on_familiar_photos_and_crosses_its_alert_line_soon_after_a_switch() -> None:
    rng = np.random.default_rng(7)
    validation = rng.normal(-20.0, 2.0, 1000)
    cutoff = float(np.quantile(validation, 0.98))
    guard = ShiftGuard(cutoff, tuple(np.quantile(validation, np.linspace(0, 1, PSI_BINS + 1))), 0.02, 0.02, ("g",))
    registry = CollectorRegistry()
    monitor = PhotoShiftMonitor(registry)

    for score in rng.normal(-20.0, 2.0, 300):
        monitor.observe([photo(float(score), cutoff)], guard)
    calm = value(registry, "shelfsight_photo_shift_psi", model_version="m1")
    assert calm is not None and calm < 0.25

    crossed_after = None
    for i, score in enumerate(rng.normal(-12.0, 2.0, 200)):  # user photos: far less familiar
        monitor.observe([photo(float(score), cutoff)], guard)
        psi = value(registry, "shelfsight_photo_shift_psi", model_version="m1")
        if crossed_after is None and psi is not None and psi > 0.25:
            crossed_after = i + 1
    assert crossed_after is not None and crossed_after <= 200
    assert (value(registry, "shelfsight_photo_unfamiliar_share", model_version="m1") or 0) > 0.5
    assert value(registry, "shelfsight_photos_scored_total", verdict="unfamiliar") >= 150


def test_photos_of_a_model_without_a_guard_are_counted_but_have_no_drift_figure() -> None:
    registry = CollectorRegistry()
    monitor = PhotoShiftMonitor(registry)
    for _ in range(100):
        monitor.observe([ImageTags({}, [], 10, 10, "old", shift_score=-3.0)], None)
    assert value(registry, "shelfsight_photos_scored_total", verdict="familiar") == 100
    assert value(registry, "shelfsight_photo_shift_psi", model_version="old") is None
