"""Batches that mix two resolutions without mixing them in one batch (`MixedResolutionBatches`): the serving-resolution
photos every epoch, plus a fresh draw of low-resolution photos (the 60x80 thumbnails, at their own small side) in the
early epochs only, so the serving resolution is all the model sees in its last epochs.

The loader reads a `ConcatDataset` of the serving-resolution dataset followed by the low-resolution one: indices below
`n_serving` are serving photos, the rest low-resolution ones. Every batch holds photos of one dataset, so one batch is
one tensor of one side. The number of batches is the same in every epoch (the learning-rate schedule counts steps):
in the serving-only epochs the low-resolution batches' places go to a second draw of serving photos.

Must not: decode images or know about models (learner/datasets/images.py and learner/training/ do).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from torch.utils.data import Sampler


class MixedResolutionBatches(Sampler[list[int]]):
    """Batch indices over [serving photos | low-resolution photos]; see the module docstring.

    Each epoch: the serving photos shuffled into full batches (an incomplete last batch is dropped, as the
    single-resolution loader does, unless it is the only one), and `low_res_batches` batches of low-resolution
    photos drawn without replacement (`low_res_fraction` of them, at least one batch when there are any) while
    `epoch <= low_res_epochs`; the batches of the two kinds are then shuffled together. Deterministic from `seed` and
    the epoch (`set_epoch`)."""

    def __init__(
        self,
        n_serving: int,
        n_low_res: int,
        batch_size: int,
        low_res_fraction: float,
        low_res_epochs: int,
        seed: int = 0,
    ) -> None:
        if n_serving <= 0 or batch_size <= 0:
            raise ValueError(f"need serving photos and a positive batch size, not {n_serving} and {batch_size}")
        if not 0.0 < low_res_fraction <= 1.0:
            raise ValueError(f"the low-resolution fraction must be in (0, 1], not {low_res_fraction}")
        self.n_serving, self.n_low_res, self.batch_size = n_serving, n_low_res, batch_size
        self.low_res_epochs, self.seed = low_res_epochs, seed
        self.serving_batches = max(1, n_serving // batch_size)
        low = min(n_low_res, round(low_res_fraction * n_low_res))
        self.low_res_batches = max(1, low // batch_size) if n_low_res >= batch_size else (1 if n_low_res else 0)
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def uses_low_res(self, epoch: int) -> bool:
        return self.low_res_batches > 0 and epoch <= self.low_res_epochs

    def __len__(self) -> int:
        return self.serving_batches + self.low_res_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(f"mixed-resolution:{self.seed}:{self.epoch}")
        batches = self._serving(rng, self.serving_batches)
        if self.uses_low_res(self.epoch):
            size = min(self.batch_size, self.n_low_res)
            drawn = rng.sample(range(self.n_low_res), min(self.n_low_res, self.low_res_batches * size))
            batches += [
                [self.n_serving + i for i in drawn[b * size : (b + 1) * size]] for b in range(self.low_res_batches)
            ]
        else:
            batches += self._serving(rng, self.low_res_batches)
        rng.shuffle(batches)
        return iter(batches)

    def _serving(self, rng: random.Random, n_batches: int) -> list[list[int]]:
        """`n_batches` batches of serving photos, each photo at most once per pass over them."""
        size = min(self.batch_size, self.n_serving)
        out: list[list[int]] = []
        while len(out) < n_batches:
            order = list(range(self.n_serving))
            rng.shuffle(order)
            full = len(order) // size
            out += [order[b * size : (b + 1) * size] for b in range(min(full, n_batches - len(out)))]
        return out
