"""`shelfsight models export BUNDLE --format onnx`: writes the file the onnxruntime backend looks for."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from daemon.cli import app
from learner.inference.onnx_model import onnx_path_for
from learner.model.manifest import file_sha256

runner = CliRunner()


@pytest.mark.slow
def test_export_writes_the_onnx_file_beside_the_bundle_with_its_parity_figures(
    untrained_bundle_path, cc0_images, tmp_path
):
    bundle = Path(shutil.copy(untrained_bundle_path, tmp_path / "model.safetensors"))
    photos = [arg for p in cc0_images[:3] for arg in ("--photo", str(p))]
    result = runner.invoke(app, ["models", "export", str(bundle), "--format", "onnx", *photos])
    assert result.exit_code == 0, result.output
    assert "parity on 3 photos" in result.stdout and "top-1 agreement" in result.stdout
    assert onnx_path_for(bundle, file_sha256(bundle)).is_file()


def test_an_unknown_export_format_is_refused_in_one_line(untrained_bundle_path):
    result = runner.invoke(app, ["models", "export", str(untrained_bundle_path), "--format", "tflite"])
    assert result.exit_code == 1
    assert "error: --format 'tflite' is not supported" in result.stderr
