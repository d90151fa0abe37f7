import math

import pytest

from learner.datasets.labelled import Sample, SplitRule
from tests.benchmarks.learning_curve import fit_power_law, fitted_points, images_needed, nested_subset


def _samples(n: int) -> list[Sample]:
    from pathlib import Path

    return [Sample(f"p{i}", Path(f"p{i}.jpg"), f"p{i}", {}) for i in range(n)]


def test_subsets_are_nested_and_never_change_validation_or_test() -> None:
    rule = SplitRule()
    samples = _samples(2000)
    held_out = {s.sample_id for s in samples if rule.split_of(s.split_key) != "train"}
    quarter = {s.sample_id for s in nested_subset(samples, rule, 0.25)}
    half = {s.sample_id for s in nested_subset(samples, rule, 0.5)}
    whole = {s.sample_id for s in nested_subset(samples, rule, 1.0)}
    assert held_out < quarter < half < whole == {s.sample_id for s in samples}
    n_train = len(whole - held_out)
    assert abs(len(quarter - held_out) - n_train / 4) < 0.1 * n_train


def test_a_fraction_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match="fraction"):
        nested_subset(_samples(10), SplitRule(), 0.0)


def test_the_power_law_fit_recovers_the_curve_it_was_sampled_from() -> None:
    n = [400.0, 800.0, 1600.0]
    a, b = fit_power_law(n, [1 - 3.0 * x**-0.4 for x in n])
    assert a == pytest.approx(3.0, rel=1e-6) and b == pytest.approx(0.4, rel=1e-6)
    assert images_needed(a, b, 1 - 3.0 * 5000**-0.4) == pytest.approx(5000, rel=1e-6)


def test_a_curve_that_does_not_improve_never_reaches_the_target() -> None:
    a, b = fit_power_law([100.0, 200.0], [0.7, 0.6])
    assert b < 0 and math.isinf(images_needed(a, b, 0.9))


def test_a_run_that_read_other_folders_is_shown_but_not_fitted() -> None:
    points = [
        {"train_images": 1000, "val_top1": {}},
        {"train_images": 2000, "val_top1": {}},
        {"train_images": 9000, "sources": "224 px + 300 px + thumbnails", "val_top1": {}},
    ]
    assert [p["train_images"] for p in fitted_points(points)] == [1000, 2000]
