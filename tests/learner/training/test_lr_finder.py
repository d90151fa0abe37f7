"""The learning-rate range test: a PNG, a suggestion inside the sweep, the model's weights untouched, no bundle."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from daemon.cli import app
from learner.datasets.images import ImageDataset
from learner.datasets.labelled import load_labelled_set
from learner.model.taxonomy import load_taxonomy
from learner.training.loss import AttributeLoss
from learner.training.lr_finder import lr_range_test, suggest_lr
from learner.training.recipe import TrainConfig
from learner.training.run import build_classifier, prepare_model
from tests.learner.training.tiny_cc0 import CC0_TAXONOMY, tiny_recipe


def test_suggestion_is_where_the_smoothed_loss_falls_fastest_before_its_minimum() -> None:
    lrs = list(np.logspace(-6, 0, 61))
    x = np.log10(lrs)
    loss = 2.0 - 1.0 / (1 + np.exp(-3 * (x + 3)))  # falls fastest at lr 1e-3
    loss[x > -1] += 5 * (x[x > -1] + 1)  # and diverges above 1e-1

    assert suggest_lr(lrs, list(loss)) == pytest.approx(1e-3, rel=0.3)
    assert suggest_lr(lrs, list(np.linspace(1, 2, 61))) is None  # never falls


def test_range_test_leaves_the_models_weights_untouched(tiny_set: Path) -> None:
    taxonomy = load_taxonomy(CC0_TAXONOMY)
    labelled = load_labelled_set(tiny_set, taxonomy)
    config = tiny_recipe(input_size=64, batch_size=4)
    model = prepare_model(build_classifier(config, taxonomy, torch.device("cpu")), 3, torch.device("cpu"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = torch.utils.data.DataLoader(ImageDataset(labelled.samples, taxonomy, model.preprocessing), batch_size=4)
    loss_fn = AttributeLoss(taxonomy, labelled.samples, 0.1, 0.5, {})

    sweep = lr_range_test(model, loader, loss_fn, config, torch.device("cpu"), 1e-5, 1.0, steps=12, progress=False)

    assert len(sweep.lrs) <= 12 and sweep.lrs[0] == pytest.approx(1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_find_lr_command_writes_the_chart_prints_a_suggestion_in_the_sweep_and_no_bundle(
    tiny_set: Path,
    tmp_path: Path,
) -> None:
    out = tmp_path / "b.safetensors"
    args = ["train", "--data", str(tiny_set), "--taxonomy", str(CC0_TAXONOMY), "--out", str(out), "--find-lr"]
    recipe = ["--input-size", "64", "--batch-size", "4", "--device", "cpu", "--no-progress", "--split-salt", "tiny"]
    recipe += ["--lr-steps", "25"]  # the default 100 is the lead's; 25 keep the test short on 2 busy cores

    result = CliRunner().invoke(app, [*args, *recipe, "--report-dir", str(tmp_path / "reports")])

    assert result.exit_code == 0, result.output
    assert (tmp_path / "reports" / "lr_finder.png").stat().st_size > 0
    assert not out.exists()
    suggested = re.search(r"suggested --lr ([0-9.e+-]+)", result.output)
    assert suggested is not None, result.output
    assert 1e-6 <= float(suggested.group(1)) <= 1.0
    assert TrainConfig().lr == 1e-3  # the recipe is not changed by the finder
