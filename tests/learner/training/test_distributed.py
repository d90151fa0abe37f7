"""Data-parallel fine-tuning (learner/training/distributed.py): two CPU processes with the gloo backend, started by
torchrun, train the same model as one process does, within floating-point tolerance.

Tiny on purpose: 16 CC0 photos at 64 px, a randomly initialised ResNet-18 with every backbone stage frozen (all its
batch-norm layers sit in stages, so they run in eval mode and nothing depends on the per-rank batch), no dropout,
unweighted loss, one thread each.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from learner.datasets.labelled import Sample, load_labelled_set
from learner.model.bundle import ModelBundle, load_bundle
from learner.model.classifier import AttributeClassifier
from learner.model.taxonomy import load_taxonomy
from learner.training.finetune import fine_tune
from learner.training.launch import TrainingPlan, sample_to_dict, torchrun_command
from learner.training.recipe import TrainConfig

ROOT = Path(__file__).resolve().parents[3]
TAXONOMY = ROOT / "learner" / "taxonomies" / "clothing-cc0.yaml"


def _recipe(freeze: int) -> TrainConfig:
    return TrainConfig(
        epochs=2,
        batch_size=8,
        lr=5e-3,
        warmup_epochs=0.5,
        freeze_stages=freeze,
        ema_decay=0.0,
        patience=0,
        class_weight_power=0.0,
        device="cpu",
        threads=1,
        progress=False,
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, cc0_dir: Path) -> tuple[Path, list[Sample], list[Sample]]:
    taxonomy = load_taxonomy(TAXONOMY)
    torch.manual_seed(0)
    model = AttributeClassifier(taxonomy, "resnet18", pretrained=False, dropout=0.0)
    model.preprocessing = dataclasses.replace(model.preprocessing, input_size=64)
    path = tmp_path_factory.mktemp("ddp") / "champion.safetensors"
    ModelBundle("ddp-champion", taxonomy, model).save(path)
    with (cc0_dir / "labels.csv").open() as f:
        wanted = {r["image"] for r in list(csv.DictReader(f))[::10][:24]}
    samples = [s for s in load_labelled_set(cc0_dir, taxonomy).samples if s.sample_id in wanted]
    assert len(samples) == 24
    return path, samples[:16], samples[16:]


def test_two_gloo_processes_train_the_same_weights_as_one_process(
    setup: tuple[Path, list[Sample], list[Sample]], tmp_path: Path
) -> None:
    champion_path, train, val = setup
    champion = load_bundle(champion_path)
    recipe = _recipe(freeze=champion.classifier.num_stages)
    single = fine_tune(champion, train, val, recipe)
    assert single.bundle is not None and single.failure is None

    plan = TrainingPlan(
        champion=str(champion_path),
        out=str(tmp_path / "ddp.safetensors"),
        failure_file=str(tmp_path / "failure.txt"),
        train=[sample_to_dict(s) for s in train],
        val=[sample_to_dict(s) for s in val],
        recipe=recipe.to_dict(),
        lineage={},
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        torchrun_command(plan.write(tmp_path / "plan.json"), 2),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = load_bundle(plan.out)
    assert ddp.lineage["world_size"] == 2 and single.bundle.lineage["world_size"] == 1

    start = champion.classifier.state_dict()
    ours, theirs = single.bundle.classifier.state_dict(), ddp.classifier.state_dict()
    moved = [k for k in ours if not torch.equal(ours[k], start[k])]
    assert moved and all(k.startswith("heads.") for k in moved)  # training did something, only where allowed
    for k in ours:
        torch.testing.assert_close(theirs[k], ours[k], rtol=1e-4, atol=1e-5, msg=f"{k} differs")
    assert [h["loss"] for h in ddp.lineage["history"]] == pytest.approx(
        [h["loss"] for h in single.bundle.lineage["history"]], rel=1e-4
    )


def test_torchrun_worker_reports_a_failure_instead_of_a_model(
    setup: tuple[Path, list[Sample], list[Sample]], tmp_path: Path
) -> None:
    champion_path, train, val = setup
    recipe = _recipe(freeze=0)
    recipe.lr = float("inf")  # the first step makes every weight non-finite
    plan = TrainingPlan(
        champion=str(champion_path),
        out=str(tmp_path / "out.safetensors"),
        failure_file=str(tmp_path / "failure.txt"),
        train=[sample_to_dict(s) for s in train[:8]],
        val=[sample_to_dict(s) for s in val[:4]],
        recipe={**recipe.to_dict(), "epochs": 1},
        lineage={},
    )
    done = subprocess.run(
        [sys.executable, "-m", "learner.training.launch", str(plan.write(tmp_path / "plan.json"))],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert not Path(plan.out).exists()
    assert "not finite" in Path(plan.failure_file).read_text()
