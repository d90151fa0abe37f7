"""Batches mixing serving-resolution photos and low-resolution ones: never both in one batch, low-resolution photos
only before the serving-only epochs, a fresh draw of them each epoch; a serving-only epoch is one pass over the
serving photos, or (keep_steps) as many steps as a mixed one."""

from __future__ import annotations

import pytest

from learner.datasets.mixed_resolution import MixedResolutionBatches

N_SERVING, N_LOW = 100, 400


def epoch_batches(sampler: MixedResolutionBatches, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def low_res_indices(batches: list[list[int]]) -> set[int]:
    return {i for b in batches for i in b if i >= N_SERVING}


def test_no_batch_mixes_serving_and_low_resolution_photos() -> None:
    sampler = MixedResolutionBatches(N_SERVING, N_LOW, 8, 0.5, low_res_epochs=3, seed=1)

    for epoch in (1, 2, 3, 4):
        for batch in epoch_batches(sampler, epoch):
            kinds = {i >= N_SERVING for i in batch}
            assert len(kinds) == 1, batch
            assert all(0 <= i < N_SERVING + N_LOW for i in batch)


def test_a_serving_only_epoch_is_one_pass_over_the_serving_photos() -> None:
    sampler = MixedResolutionBatches(N_SERVING, N_LOW, 8, 0.25, low_res_epochs=2, seed=1)

    per_epoch = [epoch_batches(sampler, e) for e in (1, 2, 3, 4)]

    assert [len(b) for b in per_epoch] == [12 + 12, 12 + 12, 12, 12]  # 100 // 8 serving + 96 // 8 low-resolution
    assert [sampler.batches_in(e) for e in (1, 2, 3, 4)] == [len(b) for b in per_epoch]
    assert len(low_res_indices(per_epoch[0])) == len(low_res_indices(per_epoch[1])) == 96  # 25% of 400, whole batches
    assert low_res_indices(per_epoch[2]) == low_res_indices(per_epoch[3]) == set()
    serving = [i for b in per_epoch[2] for i in b]
    assert len(serving) == len(set(serving)) == 96  # each at most once; the incomplete last batch dropped
    assert sampler.uses_low_res(2) and not sampler.uses_low_res(3)
    sampler.set_epoch(3)
    assert len(sampler) == 12  # what the loader reports for the epoch being trained


def test_with_keep_steps_a_serving_only_epoch_is_as_long_as_a_mixed_one() -> None:
    sampler = MixedResolutionBatches(N_SERVING, N_LOW, 8, 0.25, low_res_epochs=2, seed=1, keep_steps=True)

    per_epoch = [epoch_batches(sampler, e) for e in (1, 2, 3, 4)]

    assert [len(b) for b in per_epoch] == [24] * 4
    assert low_res_indices(per_epoch[2]) == low_res_indices(per_epoch[3]) == set()


def test_every_serving_photo_is_trained_on_in_an_epoch_that_also_draws_low_resolution_ones() -> None:
    sampler = MixedResolutionBatches(N_SERVING, N_LOW, 10, 0.25, low_res_epochs=5, seed=0)

    serving = [i for b in epoch_batches(sampler, 1) for i in b if i < N_SERVING]

    assert sorted(serving) == list(range(N_SERVING))


def test_each_epoch_draws_other_low_resolution_photos_reproducibly() -> None:
    a = MixedResolutionBatches(N_SERVING, N_LOW, 8, 0.25, low_res_epochs=5, seed=3)
    b = MixedResolutionBatches(N_SERVING, N_LOW, 8, 0.25, low_res_epochs=5, seed=3)

    first, second = epoch_batches(a, 1), epoch_batches(a, 2)

    assert low_res_indices(first) != low_res_indices(second)
    assert epoch_batches(b, 1) == first


def test_fewer_low_resolution_photos_than_a_batch_still_make_one_batch() -> None:
    sampler = MixedResolutionBatches(20, 3, 8, 0.25, low_res_epochs=1, seed=0)

    batches = epoch_batches(sampler, 1)

    assert sorted(i for b in batches for i in b if i >= 20) == [20, 21, 22]


def test_an_impossible_fraction_is_refused() -> None:
    with pytest.raises(ValueError, match="fraction"):
        MixedResolutionBatches(N_SERVING, N_LOW, 8, 0.0, low_res_epochs=1)
