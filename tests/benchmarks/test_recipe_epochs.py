"""tests/benchmarks/recipe_epochs.py: a bundle's training history read back as time against validation accuracy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from learner.model.manifest import FORMAT, FORMAT_VERSION, MANIFEST_KEY
from tests.benchmarks.recipe_epochs import main, recipe_run


def bundle_with(path: Path, lineage: dict[str, Any]) -> Path:
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "lineage": lineage}
    save_file({"w": np.zeros(1, dtype=np.float32)}, str(path), metadata={MANIFEST_KEY: json.dumps(manifest)})
    return path


def epoch(n: int, seconds: float, top1: float) -> dict[str, Any]:
    return {"epoch": n, "seconds": seconds, "images_per_s": 20.0, "val_mean_top1": top1, "val_top1": {"g": top1}}


def test_epochs_add_up_to_the_training_time_and_the_selected_epoch_is_the_lineages_best(tmp_path: Path) -> None:
    lineage = {
        "recipe": {"epochs": 3, "serving_only_epochs": 1, "serving_only_keep_steps": False},
        "history": [epoch(1, 400.0, 0.80), epoch(2, 410.0, 0.86), epoch(3, 250.0, 0.85)],
        "best_epoch": 2,
        "elapsed_s": 1200,
    }

    run = recipe_run(bundle_with(tmp_path / "a.safetensors", lineage), "a")

    assert [e["cumulative_s"] for e in run["epochs"]] == [400.0, 810.0, 1060.0]
    assert run["training_s"] == 1060.0 and run["elapsed_s"] == 1200
    assert run["best_epoch"] == 2 and run["selected"]["val_mean_top1"] == 0.86
    assert run["recipe"]["serving_only_keep_steps"] is False


def test_a_recipe_written_before_one_pass_serving_epochs_is_shown_as_keeping_the_steps(tmp_path: Path) -> None:
    lineage = {"recipe": {"epochs": 12, "serving_only_epochs": 3}, "history": [epoch(1, 400.0, 0.8)]}

    run = recipe_run(bundle_with(tmp_path / "old.safetensors", lineage), "old")

    assert run["recipe"]["serving_only_keep_steps"] is True and run["recipe"]["epochs"] == 12


def test_a_bundle_without_a_training_history_is_refused_with_its_path(tmp_path: Path) -> None:
    path = bundle_with(tmp_path / "calibrated-only.safetensors", {"recipe": {"epochs": 3}})

    with pytest.raises(ValueError, match=r"calibrated-only\.safetensors: no per-epoch history"):
        recipe_run(path, "x")
    assert main([str(path), "--out", str(tmp_path / "out")]) == 2


def test_two_recipes_are_written_side_by_side_as_json_and_png(tmp_path: Path) -> None:
    a = bundle_with(tmp_path / "a.safetensors", {"history": [epoch(1, 100.0, 0.7), epoch(2, 100.0, 0.8)]})
    b = bundle_with(tmp_path / "b.safetensors", {"history": [epoch(1, 60.0, 0.72)]})

    assert main([f"{a}=long", f"{b}=short", "--out", str(tmp_path / "out")]) == 0

    written = json.loads((tmp_path / "out" / "recipe-epochs.json").read_text())
    assert [r["label"] for r in written] == ["long", "short"]
    assert written[0]["best_epoch"] == 2  # no best_epoch recorded: the last
    assert (tmp_path / "out" / "recipe-epochs.png").stat().st_size > 10_000
