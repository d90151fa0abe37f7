"""The learning-rate schedules (one cosine, cosine cycles with warm restarts) and the recipe's optimisation."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from learner.training.errors import TrainingError
from learner.training.optim import lr_factor, make_scheduler, steps_in_epochs


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


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2, 2))

    def parameter_groups(self, lr: float, decay: float) -> list[dict[str, object]]:
        return [{"params": [self.w], "lr": lr, "name": "heads"}]


def test_the_recipe_schedules_restarts_per_step_from_restart_epochs() -> None:
    from learner.training.optim import Optimization
    from learner.training.recipe import TrainConfig

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


def test_epochs_of_different_lengths_warm_up_over_the_first_and_decay_to_the_floor_at_the_last_step() -> None:
    from learner.training.optim import Optimization
    from learner.training.recipe import TrainConfig

    config = TrainConfig(epochs=3, lr=1.0, warmup_epochs=1, min_lr_ratio=0.1, ema_decay=0)
    opt = Optimization.build(Tiny(), config, [6, 6, 3], torch.device("cpu"))  # type: ignore[arg-type]
    lrs = []
    for _ in range(16):
        lrs.append(opt.optimizer.param_groups[0]["lr"])
        opt.optimizer.step()
        opt.scheduler.step()

    assert lrs.index(max(lrs)) == 5  # warm-up: the first epoch's 6 steps
    assert lrs[14] > 0.1 and lrs[15] == pytest.approx(0.1)  # the cosine spans all 15 steps, not 3 x 6
    with pytest.raises(TrainingError, match="2 epochs' step counts for a recipe of 3 epochs"):
        Optimization.build(Tiny(), config, [6, 3], torch.device("cpu"))  # type: ignore[arg-type]


def test_a_fractional_warm_up_counts_part_of_the_next_epochs_steps() -> None:
    assert steps_in_epochs([10, 4, 4], 1.5) == 12
    assert steps_in_epochs([10, 4], 3) == 18  # past the last epoch its count goes on
    assert steps_in_epochs([10], 0) == 0
