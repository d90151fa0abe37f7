"""Exporting a bundle to ONNX: parity with torch is checked before a file is written, the file is keyed by the
bundle's SHA-256, and an export that disagrees with torch is refused with the figures."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from learner.inference import onnx_export
from learner.inference.onnx_export import ParityError, export_onnx
from learner.inference.onnx_model import (
    META_BUNDLE_SHA256,
    META_MODEL_VERSION,
    OnnxClassifier,
    ensure_onnx,
    onnx_metadata,
    onnx_path_for,
)
from learner.model.manifest import BundleError, file_sha256

pytestmark = pytest.mark.slow


@pytest.fixture
def bundle_copy(untrained_bundle_path: Path, tmp_path: Path) -> Path:
    return Path(shutil.copy(untrained_bundle_path, tmp_path / "model.safetensors"))


def test_an_export_agrees_with_torch_on_photos_and_names_its_bundle(bundle_copy, cc0_images, tmp_path):
    photos = [p.read_bytes() for p in cc0_images[:6]]
    result = export_onnx(bundle_copy, tmp_path / "out.onnx", photos)
    assert result.parity.ok and result.parity.images == 6 and result.parity.source == "photos"
    for figures in result.parity.groups.values():
        assert figures.max_abs_diff <= 1e-3 and figures.top1_agreement == 1.0
    meta = onnx_metadata(result.path)
    assert meta[META_BUNDLE_SHA256] == file_sha256(bundle_copy)
    assert meta[META_MODEL_VERSION] == "cc0-untrained-test"
    runner = OnnxClassifier(result.path, ["garment", "kids"], device="cpu")
    batch = runner.probabilities([np.full((224, 224, 3), 255, np.uint8)] * 3)  # dynamic batch
    assert batch["garment"].shape[0] == 3
    assert np.allclose(batch["garment"].sum(axis=1), 1.0, atol=1e-5)


def test_micro_batches_give_the_probabilities_of_one_whole_batch_run(bundle_copy, cc0_images, tmp_path):
    from learner.inference.imaging import decode_image, letterbox, pil_to_uint8_array
    from learner.model.manifest import BundleInfo

    path = export_onnx(bundle_copy, tmp_path / "out.onnx", synthetic=4).path
    pre = BundleInfo.read(bundle_copy).preprocessing
    # 7 photos: the last micro-batch of 4 is short
    images = [pil_to_uint8_array(letterbox(decode_image(p.read_bytes()), pre)) for p in cc0_images[:7]]
    whole = OnnxClassifier(path, ["garment", "kids"], device="cpu", micro_batch=0).probabilities(images)
    one_thread = OnnxClassifier(path, ["garment", "kids"], device="cpu", threads=1)
    two_threads = OnnxClassifier(path, ["garment", "kids"], device="cpu", threads=2)
    assert (one_thread.micro_batch, two_threads.micro_batch) == (1, 4)  # each at its fastest on CPU
    for runner in (one_thread, two_threads):
        for group, probs in runner.probabilities(images).items():
            assert probs.shape == whole[group].shape == (7, whole[group].shape[1])
            assert np.allclose(probs, whole[group], atol=1e-5)


def test_an_export_whose_weights_were_perturbed_is_refused_with_the_figures(
    bundle_copy, cc0_images, tmp_path, monkeypatch
):
    import onnx

    real_check = onnx_export.check_parity

    def perturb_then_check(graph, path, *args, **kwargs):  # type: ignore[no-untyped-def]
        model = onnx.load(str(path))
        for tensor in model.graph.initializer:
            if "heads" in tensor.name:
                weights = onnx.numpy_helper.to_array(tensor)
                tensor.CopyFrom(onnx.numpy_helper.from_array(weights * 1.5 + 0.05, tensor.name))
        onnx.save(model, str(path))
        return real_check(graph, path, *args, **kwargs)

    monkeypatch.setattr(onnx_export, "check_parity", perturb_then_check)
    out = tmp_path / "refused.onnx"
    with pytest.raises(ParityError) as refused:
        export_onnx(bundle_copy, out, [p.read_bytes() for p in cc0_images[:6]])
    report = refused.value.report
    assert not report.ok and report.images == 6
    assert any(g.max_abs_diff > 1e-3 for g in report.groups.values())
    assert "max |dp|" in str(refused.value) and "refused" in str(refused.value)
    assert not out.exists() and not list(tmp_path.glob("*.tmp")), "a refused export leaves no file"


def test_a_missing_export_is_made_beside_the_bundle_once_and_reused(bundle_copy):
    sha = file_sha256(bundle_copy)
    expected = onnx_path_for(bundle_copy, sha)
    assert not expected.exists()
    path = ensure_onnx(bundle_copy, sha)  # exported in a subprocess
    assert path == expected and path.parent == bundle_copy.parent and sha[:16] in path.name
    made = path.stat().st_mtime_ns
    assert ensure_onnx(bundle_copy, sha) == path and path.stat().st_mtime_ns == made
    with pytest.raises(BundleError, match="another bundle"):
        OnnxClassifier(path, ["garment", "kids"], device="cpu", expect_sha256="0" * 64)
