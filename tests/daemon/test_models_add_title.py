"""`shelfsight models add-title` prints the title model's validation figures and writes the bundle."""

from __future__ import annotations

from typer.testing import CliRunner

from daemon.cli import app
from learner.model.manifest import BundleInfo
from tests.learner.training.test_title_bundle import titled_set


def test_the_command_prints_the_validation_figures_and_writes_the_bundle(untrained_bundle_path, tmp_path):
    data = titled_set(tmp_path / "data", column="title")
    out = tmp_path / "titled.safetensors"
    args = ["models", "add-title", str(untrained_bundle_path), "--data", str(data), "--out", str(out)]
    options = ["--title-column", "title", "--epochs", "8", "--dim", "16", "--no-fusion"]
    result = CliRunner().invoke(app, [*args, *options])
    assert result.exit_code == 0, result.output
    assert "garment: top-1" in result.output and "title-only auto-fill" in result.output
    assert "weights stored as float32" in result.output
    assert BundleInfo.read(out).title_model is not None


def test_every_data_set_and_the_lighter_low_resolution_titles_reach_the_title_model(untrained_bundle_path, tmp_path):
    data = titled_set(tmp_path / "data", column="title")
    more = titled_set(tmp_path / "more", n=200, column="title", prefix="m")
    thumbs = titled_set(tmp_path / "thumbs", n=300, column="title", prefix="t")
    out = tmp_path / "titled.safetensors"
    args = ["models", "add-title", str(untrained_bundle_path), "--data", str(data), "--data", str(more)]
    options = ["--low-res-data", str(thumbs), "--low-res-title-weight", "0.3", "--out", str(out)]
    recipe = ["--title-column", "title", "--epochs", "2", "--dim", "8", "--no-fusion"]
    result = CliRunner().invoke(app, [*args, *options, *recipe])
    assert result.exit_code == 0, result.output
    info = BundleInfo.read(out).title_model
    assert info is not None
    assert [d["source"] for d in info.config["data"]["more"]] == [str(more / "labels.csv")]
    assert info.config["data"]["low_res"][0]["weight"] == 0.3 and info.config["weighted"]["lighter"] > 0
