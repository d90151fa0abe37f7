"""Distillation (learner/training/distillation.py): a teacher's answers are the student's soft targets; with the whole
weight on them the student follows the teacher, not the labels; a teacher of another taxonomy is refused; the
bundle records its teacher. Real short trainings on the CC0 demo photos at 64 px (tests/learner/training/tiny_cc0)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from daemon.cli import app
from learner.datasets.images import ImageDataset
from learner.datasets.labelled import load_labelled_set
from learner.evaluation.evaluate import predict
from learner.model.bundle import load_bundle
from learner.model.classifier import AttributeClassifier
from learner.model.taxonomy import load_taxonomy
from learner.training.distillation import Distillation, check_teacher
from learner.training.errors import TrainingError
from learner.training.run import FreshBackbone, new_classifier, run_training
from tests.learner.training.tiny_cc0 import CC0_TAXONOMY, tiny_recipe

FASHION = "fashion-products"


def opinionated_teacher(answer: str) -> AttributeClassifier:
    """A classifier of the CC0 taxonomy that answers `answer` for the garment of every photo, whatever it shows."""
    taxonomy = load_taxonomy(CC0_TAXONOMY)
    teacher = new_classifier(tiny_recipe(input_size=64, pretrained=False), taxonomy)
    values = list(taxonomy.group("garment").values)
    with torch.no_grad():
        head = teacher.heads["garment"]
        head.weight.zero_()
        head.bias.fill_(-5.0)
        head.bias[values.index(answer)] = 5.0
    return teacher


def distillation(weight: float = 0.5, temperature: float = 2.0) -> Distillation:
    return Distillation(opinionated_teacher("Hat"), weight, temperature, {"garment": 1.0}, frozenset())


def test_the_loss_is_zero_when_the_student_answers_as_the_teacher_and_grows_as_it_departs() -> None:
    d = distillation()
    teacher = {"garment": torch.randn(4, 17)}
    same = d({"garment": teacher["garment"].clone()}, teacher)
    apart = d({"garment": teacher["garment"] + torch.randn(4, 17)}, teacher)
    further = d({"garment": teacher["garment"] + 3 * torch.randn(4, 17)}, teacher)
    assert float(same) == pytest.approx(0.0, abs=1e-6)
    assert 0 < float(apart) < float(further)


def test_the_weight_shares_the_loss_between_labels_and_teacher() -> None:
    labels, taught = torch.tensor(2.0), torch.tensor(10.0)
    assert float(distillation(weight=0.25).combine(labels, taught)) == pytest.approx(0.75 * 2 + 0.25 * 10)
    assert float(distillation(weight=1.0).combine(labels, taught)) == pytest.approx(10.0)


@pytest.mark.parametrize(("weight", "temperature"), [(0.0, 2.0), (1.5, 2.0), (0.5, 0.0)])
def test_a_weight_or_temperature_out_of_range_is_refused(weight: float, temperature: float) -> None:
    with pytest.raises(TrainingError, match="distil"):
        distillation(weight, temperature)


def test_the_teacher_is_frozen_and_stays_in_eval_mode_while_the_student_trains() -> None:
    d = distillation()
    d.train()
    assert not d.teacher.training
    assert not any(p.requires_grad for p in d.teacher.parameters())


def test_a_teacher_of_another_taxonomy_is_refused() -> None:
    with pytest.raises(TrainingError, match="same taxonomy"):
        check_teacher(load_taxonomy(FASHION), load_taxonomy(CC0_TAXONOMY))


def test_a_student_taught_with_the_whole_weight_follows_its_teacher_not_the_labels(tiny_set: Path) -> None:
    taxonomy = load_taxonomy(CC0_TAXONOMY)
    data = load_labelled_set(tiny_set, taxonomy)
    values = list(taxonomy.group("garment").values)
    labels = {values[s.labels["garment"]] for s in data.samples}
    assert labels == {"Hat", "Pants", "Shoes"}  # a third of the photos are labelled Hat

    def trained(teacher: AttributeClassifier | None) -> list[str]:
        """The student's garment answer for every photo of the set (the ones it trained on too)."""
        config = tiny_recipe(input_size=64, epochs=10, batch_size=4, distil_weight=1.0)
        run = run_training(
            FreshBackbone(taxonomy),
            data.split(config.split, "train"),
            data.split(config.split, "val"),
            config,
            record=lambda r: {},
            say=print,
            teacher=teacher,
        )
        assert run.model is not None
        photos = DataLoader(ImageDataset(data.samples, taxonomy, run.model.preprocessing), batch_size=8)
        answers = predict(run.model, photos, torch.device("cpu"))["garment"].probs.argmax(1)
        return [values[int(i)] for i in answers]

    taught = trained(opinionated_teacher("Hat"))
    assert taught.count("Hat") == len(taught), taught  # the labels weighed nothing: every photo is the teacher's Hat
    alone = trained(None)
    assert alone.count("Hat") < len(alone), alone  # the same recipe without a teacher learns from the labels


def test_the_bundle_records_its_teacher(tiny_set: Path, tmp_path: Path) -> None:
    teacher_path, student_path = tmp_path / "teacher.safetensors", tmp_path / "student.safetensors"
    common = [
        "--data", str(tiny_set), "--taxonomy", str(CC0_TAXONOMY), "--input-size", "64", "--epochs", "1",
        "--batch-size", "4", "--patience", "0", "--ema-decay", "0", "--split-salt", "tiny",
        "--train-fraction", "0.6", "--val-fraction", "0.25", "--device", "cpu", "--no-progress", "--no-test",
    ]  # fmt: skip
    runner = CliRunner()
    made = runner.invoke(app, ["train", *common, "--out", str(teacher_path)])
    assert made.exit_code == 0, made.output

    taught = runner.invoke(
        app, ["train", *common, "--teacher", str(teacher_path), "--distil-weight", "0.7", "--out", str(student_path)]
    )

    assert taught.exit_code == 0, taught.output
    teacher = load_bundle(teacher_path)
    recorded = load_bundle(student_path).lineage["teacher"]
    assert recorded["model_version"] == teacher.model_version and recorded["weight"] == 0.7


def test_a_missing_teacher_file_is_a_clear_error(tiny_set: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "train", "--data", str(tiny_set), "--taxonomy", str(CC0_TAXONOMY), "--out", str(tmp_path / "s.safetensors"),
            "--teacher", str(tmp_path / "no-such-teacher.safetensors"), "--device", "cpu", "--no-progress",
        ],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "no-such-teacher" in result.output and "Traceback" not in result.output
