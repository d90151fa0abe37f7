"""The shift guard's score, its stored form and the drift figure: pure functions on numbers."""

from __future__ import annotations

import numpy as np
import pytest

from learner.model.shift_guard import ShiftGuard, free_energy, population_stability_index


def test_free_energy_is_low_when_some_head_is_sure_and_high_when_every_head_is_flat() -> None:
    sure = {"a": np.array([[12.0, 0.0, 0.0]]), "b": np.array([[9.0, 0.0]])}
    flat = {"a": np.array([[0.1, 0.0, 0.05]]), "b": np.array([[0.0, 0.1]])}

    assert free_energy(sure, ["a", "b"])[0] < free_energy(flat, ["a", "b"])[0]
    expected = -(np.log(np.exp([0.1, 0.0, 0.05]).sum()) + np.log(np.exp([0.0, 0.1]).sum()))
    assert free_energy(flat, ["a", "b"])[0] == pytest.approx(expected)


def test_free_energy_stays_finite_for_huge_logits() -> None:
    big = {"a": np.array([[1000.0, -1000.0]])}
    assert free_energy(big, ["a"])[0] == pytest.approx(-1000.0)


def test_a_guard_round_trips_through_the_manifest_and_an_unknown_score_kind_is_ignored() -> None:
    guard = ShiftGuard(-14.6, tuple(np.linspace(-30, -10, 11)), 0.02, 0.019, ("gender", "usage"), fitted_on={"n": 9})

    again = ShiftGuard.from_dict(guard.to_dict())

    assert again == guard
    assert ShiftGuard.from_dict({**guard.to_dict(), "score": "mahalanobis"}) is None
    assert ShiftGuard.from_dict(None) is None
    assert list(again.unfamiliar(np.array([-20.0, -14.6, -14.0]))) == [False, False, True]


def test_the_drift_figure_is_near_zero_for_the_reference_itself_and_large_for_a_shifted_stream() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(0.0, 1.0, 5000)
    edges = np.quantile(reference, np.linspace(0, 1, 11))

    same = population_stability_index(edges, rng.normal(0.0, 1.0, 500))
    shifted = population_stability_index(edges, rng.normal(1.5, 1.0, 500))

    assert same < 0.05
    assert shifted > 0.25
    assert population_stability_index(edges, np.array([])) == 0.0
