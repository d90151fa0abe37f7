"""The label-noise probe's paired interval: what a difference of per-image correctness amounts to."""

from __future__ import annotations

import numpy as np

from tests.benchmarks.label_noise_probe import paired_interval


def test_two_arms_right_on_the_same_images_differ_by_exactly_nothing() -> None:
    same = np.array([True, False, True, True])
    assert paired_interval(same, same) == (0.0, 0.0, 0.0)


def test_an_arm_right_on_one_more_image_in_ten_gains_ten_points_with_an_interval_around_it() -> None:
    a = np.array([True] * 5 + [False] * 5)
    b = a.copy()
    b[5] = True
    mean, low, high = paired_interval(a, b, samples=500)
    assert mean == 0.1 and low <= 0.1 <= high and low >= 0.0 and high <= 0.4
