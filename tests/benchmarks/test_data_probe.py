"""The data probe's training sets: nested, train split only, the catalog photos first and the thumbnails last."""

from __future__ import annotations

import itertools

import numpy as np

from tests.benchmarks.data_probe import training_points


def test_each_training_set_holds_the_one_before_and_only_train_rows() -> None:
    source = np.array(["data"] * 4 + ["more"] * 3 + ["thumbs"] * 4)
    split = np.array(["train", "train", "val", "train", "train", "val", "test", "train", "train", "val", "train"])
    half = np.array([True, False, True, False, True, True, True, True, False, True, False])
    kept = {0.5: half, 1.0: np.ones(len(source), dtype=bool)}

    points = training_points(source, split, kept, [0.5, 1.0], [0.1])

    assert [name for name, _, _ in points] == [
        "224px x0.5",
        "224px x1",
        "+300px",
        "+thumbs x0.5",
        "+thumbs x1",
        "+thumbs w0.1",
    ]
    assert [w for _, _, w in points] == [1.0] * 5 + [0.1]
    masks = [m for _, m, _ in points]
    assert np.flatnonzero(masks[0]).tolist() == [0]  # half the catalog's train rows
    assert np.flatnonzero(masks[1]).tolist() == [0, 1, 3]
    assert np.flatnonzero(masks[2]).tolist() == [0, 1, 3, 4]  # the 300 px train row, not its val or test ones
    assert np.flatnonzero(masks[3]).tolist() == [0, 1, 3, 4, 7]
    assert np.flatnonzero(masks[4]).tolist() == [0, 1, 3, 4, 7, 8, 10]
    assert (masks[5] == masks[4]).all()  # the same rows, the thumbnails lighter
    for smaller, larger in itertools.pairwise(masks):
        assert not (smaller & ~larger).any()
    assert not any((m & (split != "train")).any() for m in masks)
