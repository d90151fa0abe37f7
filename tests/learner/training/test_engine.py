"""The epoch loop's pure parts: downscaling a batch for progressive resizing, early stopping's patience."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from learner.training.engine import EarlyStopping, downscale


def test_downscale_resizes_a_normalised_batch_antialiased_and_channels_last() -> None:
    x = torch.rand(2, 3, 128, 128)

    small = downscale(x, 64)

    assert small.shape == (2, 3, 64, 64)
    assert small.is_contiguous(memory_format=torch.channels_last)
    # antialiased: a 4x downscale of lines lit every 4th pixel is their mean (plain bilinear would miss them)
    lines = (torch.arange(128) % 4 == 0).float().view(1, 1, 1, 128).expand(1, 3, 128, 128).contiguous()
    inner = downscale(lines, 32)[..., 1:-1, 1:-1]
    assert inner.min().item() == pytest.approx(0.25, abs=1e-4) and inner.max().item() == pytest.approx(0.25, abs=1e-4)
    assert torch.allclose(small, F.interpolate(x, size=(64, 64), mode="bilinear", antialias=True), atol=1e-6)


def test_downscale_leaves_a_batch_at_the_asked_size_untouched() -> None:
    x = torch.rand(1, 3, 32, 32)
    assert downscale(x, 32) is x


def test_patience_counts_from_the_last_phase_when_earlier_epochs_were_smaller() -> None:
    stopping = EarlyStopping(patience=2, ties_to_later=True, count_from=4)  # epochs 5.. are the last phase
    scores = {1: 0.5, 2: 0.4, 3: 0.4, 4: 0.4, 5: 0.4, 6: 0.4}

    stops = [stopping.update(epoch, score, None) for epoch, score in scores.items()]

    # without count_from it would stop at epoch 3; here after two non-improving epochs of the last phase
    assert stops == [False, False, False, False, False, True]
    assert stopping.best_epoch == 1
