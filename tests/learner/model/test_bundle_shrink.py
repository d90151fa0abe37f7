"""Shrinking a bundle for shipping: float16 storage halves the file, loading casts the weights back to float32 and
the shrunk bundle tags (torch and the ONNX export) like the original to float16 precision."""

from __future__ import annotations

import pytest
import torch

from learner.inference.engine import TaggingEngine
from learner.inference.onnx_export import export_onnx
from learner.model.bundle import BundleError, load_bundle, read_manifest, shrink_bundle


def test_shrunk_bundle_is_about_half_the_size_and_loads_as_float32(untrained_bundle_path, tmp_path):
    result = shrink_bundle(untrained_bundle_path, tmp_path / "small.safetensors")
    assert result.bytes_after < 0.55 * result.bytes_before
    manifest = read_manifest(result.path)
    assert manifest["weights_dtype"] == "float16"
    assert manifest["model_version"] == "cc0-untrained-test-fp16"
    assert manifest["lineage"]["shrunk_from"] == {
        "model_version": "cc0-untrained-test",
        "tensor_sha256": read_manifest(untrained_bundle_path)["tensor_sha256"],
    }
    bundle = load_bundle(result.path)
    assert {p.dtype for p in bundle.classifier.parameters()} == {torch.float32}
    assert bundle.model_version == "cc0-untrained-test-fp16"


def test_shrunk_bundle_tags_like_the_original(untrained_bundle_path, cc0_images, tmp_path):
    small = shrink_bundle(untrained_bundle_path, tmp_path / "small.safetensors").path
    images = [p.read_bytes() for p in cc0_images[:4]]
    full = TaggingEngine(load_bundle(untrained_bundle_path), device="cpu").tag_bytes(images)
    half = TaggingEngine(load_bundle(small), device="cpu").tag_bytes(images)
    for a, b in zip(full, half, strict=True):
        for group, values in a.attributes.items():
            assert [v for v, _ in values][:1] == [v for v, _ in b.attributes[group]][:1]
            for (_, ca), (_, cb) in zip(values, b.attributes[group], strict=True):
                assert abs(ca - cb) < 5e-3


@pytest.mark.slow
def test_a_shrunk_bundle_exports_to_onnx_with_parity(untrained_bundle_path, cc0_images, tmp_path):
    small = shrink_bundle(untrained_bundle_path, tmp_path / "small.safetensors").path
    result = export_onnx(small, tmp_path / "small.onnx", [p.read_bytes() for p in cc0_images[:4]])
    assert result.parity.ok and result.model_version == "cc0-untrained-test-fp16"


def test_a_corrupt_or_already_shrunk_bundle_is_refused(untrained_bundle_path, tmp_path):
    small = shrink_bundle(untrained_bundle_path, tmp_path / "small.safetensors").path
    with pytest.raises(BundleError, match="already shrunk"):
        shrink_bundle(small, tmp_path / "smaller.safetensors")
    data = bytearray(untrained_bundle_path.read_bytes())
    data[-100] ^= 0xFF
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum"):
        shrink_bundle(broken, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
