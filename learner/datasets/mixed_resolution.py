"""Batches that mix two resolutions without mixing them in one batch (`MixedResolutionBatches`): the serving-resolution
photos every epoch, plus a fresh draw of low-resolution photos (the 60x80 thumbnails, at their own small side) in the
early epochs only, so the serving resolution is all the model sees in its last epochs.

The loader reads a `ConcatDataset` of the serving-resolution dataset followed by the low-resolution one: indices below
`n_serving` are serving photos, the rest low-resolution ones. Every batch holds photos of one dataset, so one batch is
one tensor of one side. A serving-only epoch is one pass over the serving photos (`batches_in` says how many batches
each epoch has: the learning-rate schedule counts steps); `keep_steps` gives it as many batches as an epoch that draws
low-resolution photos, the low-resolution batches' places going to a second draw of serving photos (the recipe
before 2026-12-07: a serving-only epoch then cost 1.6 times a mixed one on CPU).

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
    `epoch <= low_res_epochs`; the batches of the two kinds are then shuffled together. Later epochs: the serving
    photos only, once (or, `keep_steps`, topped up to the mixed epochs' batch count). Deterministic from `seed` and
    the epoch (`set_epoch`); `len()` is the current epoch's batch count."""

    def __init__(
        self,
        n_serving: int,
        n_low_res: int,
        batch_size: int,
        low_res_fraction: float,
        low_res_epochs: int,
        seed: int = 0,
        keep_steps: bool = False,
    ) -> None:
        if n_serving <= 0 or batch_size <= 0:
            raise ValueError(f"need serving photos and a positive batch size, not {n_serving} and {batch_size}")
        if not 0.0 < low_res_fraction <= 1.0:
            raise ValueError(f"the low-resolution fraction must be in (0, 1], not {low_res_fraction}")
        self.n_serving, self.n_low_res, self.batch_size = n_serving, n_low_res, batch_size
        self.low_res_epochs, self.seed, self.keep_steps = low_res_epochs, seed, keep_steps
        self.serving_batches = max(1, n_serving // batch_size)
        low = min(n_low_res, round(low_res_fraction * n_low_res))
        self.low_res_batches = max(1, low // batch_size) if n_low_res >= batch_size else (1 if n_low_res else 0)
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def uses_low_res(self, epoch: int) -> bool:
        return self.low_res_batches > 0 and epoch <= self.low_res_epochs

    def batches_in(self, epoch: int) -> int:
        """How many batches epoch `epoch` (1-based) has."""
        if self.uses_low_res(epoch) or self.keep_steps:
            return self.serving_batches + self.low_res_batches
        return self.serving_batches

    def __len__(self) -> int:
        return self.batches_in(self.epoch)

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(f"mixed-resolution:{self.seed}:{self.epoch}")
        batches = self._serving(rng, self.serving_batches)
        if self.uses_low_res(self.epoch):
            size = min(self.batch_size, self.n_low_res)
            drawn = rng.sample(range(self.n_low_res), min(self.n_low_res, self.low_res_batches * size))
            batches += [
                [self.n_serving + i for i in drawn[b * size : (b + 1) * size]] for b in range(self.low_res_batches)
            ]
        elif self.keep_steps:
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
