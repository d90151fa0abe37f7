"""The epoch loop: one optimiser step per batch, stopping at the first non-finite loss when asked (the detector's),
and downscaling a batch for progressive resizing."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from learner.training.engine import downscale, train_one_epoch
from learner.training.optim import Optimization, make_scheduler


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


def _one_weight() -> tuple[torch.nn.Linear, Optimization]:
    model = torch.nn.Linear(1, 1, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, Optimization(optimizer, make_scheduler(optimizer, 1, 10, 1.0), None, None)


def test_one_epoch_steps_once_per_batch_and_averages_the_loss_over_images() -> None:
    model, optimization = _one_weight()
    batches = [torch.ones(2, 1), torch.ones(3, 1)]

    stats = train_one_epoch(
        model, batches, lambda x: (model(x).sum() * 0 + len(x), len(x)), optimization, desc="test", progress=False
    )

    assert stats.images == 5 and stats.not_finite is None
    assert stats.loss == pytest.approx((2 * 2 + 3 * 3) / 5)
    assert optimization.scheduler.last_epoch == 2  # one schedule step per batch


def test_an_epoch_asked_to_stop_at_a_non_finite_loss_stops_there_without_stepping() -> None:
    model, optimization = _one_weight()
    before = model.weight.detach().clone()
    losses = iter([float("nan"), 1.0])

    stats = train_one_epoch(
        model,
        [torch.ones(1, 1), torch.ones(1, 1)],
        lambda x: (model(x).sum() * 0 + next(losses), 1),
        optimization,
        desc="test",
        progress=False,
        stop_when_not_finite=True,
    )

    assert stats.not_finite is not None and stats.images == 0
    assert torch.equal(model.weight, before) and optimization.scheduler.last_epoch == 0
