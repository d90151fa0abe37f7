"""The learning-rate schedules (one cosine, cosine cycles with warm restarts) and the recipe's optimisation."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from learner.training.errors import TrainingError
from learner.training.optim import lr_factor, make_scheduler


def test_restarts_warm_up_then_run_cosine_cycles_that_restart_at_the_peak() -> None:
    factors = [lr_factor(s, warmup_steps=2, total_steps=30, min_lr_ratio=0.1, cycle_steps=4) for s in range(14)]

    assert factors[:2] == pytest.approx([0.5, 1.0])  # warm-up kept
    cycles = [factors[2:6], factors[6:10], factors[10:14]]
    for cycle in cycles:
        assert cycle == pytest.approx(cycles[0])
        assert cycle[0] == pytest.approx(1.0) and cycle[2] == pytest.approx(0.1 + 0.9 * 0.5)
        assert all(a > b for a, b in itertools.pairwise(cycle)) and cycle[-1] > 0.1


def test_restart_cycles_grow_by_the_multiplier() -> None:
    factors = [lr_factor(s, 1, 100, 0.0, cycle_steps=3, cycle_mult=2.0) for s in range(1 + 3 + 6 + 12 + 1)]

    restarts = [s for s, f in enumerate(factors) if f == pytest.approx(1.0)]
    assert restarts == [0, 1, 4, 10, 22]  # end of warm-up, then cycles of 3, 6 and 12 steps
    assert factors[10 - 1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 6)))  # last step of the 6-step cycle


def test_one_cosine_without_cycles_decays_over_all_steps_after_warm_up() -> None:
    factors = [lr_factor(s, 2, 12, 0.1) for s in range(12)]

    assert factors[2] == pytest.approx(1.0) and factors[7] == pytest.approx(0.55)
    assert all(a > b for a, b in itertools.pairwise(factors[2:]))


def test_a_shrinking_restart_cycle_is_refused() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(TrainingError, match="cycle multiplier must be at least 1"):
        make_scheduler(opt, 1, 10, 0.1, cycle_steps=3, cycle_mult=0.5)


def test_the_recipe_schedules_restarts_per_step_from_restart_epochs() -> None:
    from learner.training.optim import Optimization
    from learner.training.recipe import TrainConfig

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(2, 2))

        def parameter_groups(self, lr: float, decay: float) -> list[dict[str, object]]:
            return [{"params": [self.w], "lr": lr, "name": "heads"}]

    config = TrainConfig(epochs=6, lr=1.0, warmup_epochs=1, schedule="restarts", restart_epochs=2, ema_decay=0)
    opt = Optimization.build(Tiny(), config, steps_per_epoch=5, device=torch.device("cpu"))  # type: ignore[arg-type]
    lrs = []
    for _ in range(30):
        lrs.append(opt.optimizer.param_groups[0]["lr"])
        opt.optimizer.step()
        opt.scheduler.step()

    assert [s for s, lr in enumerate(lrs) if lr == pytest.approx(1.0)] == [4, 5, 15, 25]
    with pytest.raises(TrainingError, match="schedule must be one of cosine, restarts"):
        Optimization.build(Tiny(), TrainConfig(schedule="linear"), 5, torch.device("cpu"))  # type: ignore[arg-type]
