from __future__ import annotations

import json
import struct

import pytest
import torch

from learner.inference.engine import TaggingEngine
from learner.model.bundle import BundleError, load_bundle, read_manifest


def test_saved_and_loaded_bundle_gives_identical_outputs(untrained_bundle_path, cc0_images, tmp_path):
    original = load_bundle(untrained_bundle_path)
    copy_path = tmp_path / "copy.safetensors"
    original.thresholds = {"garment": {"Dress": 0.42}}
    original.save(copy_path)
    reloaded = load_bundle(copy_path)

    images = [p.read_bytes() for p in cc0_images[:4]]
    a = TaggingEngine(original, device="cpu").tag_bytes(images)
    b = TaggingEngine(reloaded, device="cpu").tag_bytes(images)
    for ra, rb in zip(a, b, strict=True):
        assert ra.attributes == rb.attributes
    assert reloaded.threshold("garment", "Dress") == 0.42
    assert reloaded.taxonomy == original.taxonomy
    assert reloaded.preprocessing == original.preprocessing


def test_manifest_describes_the_model_without_loading_weights(untrained_bundle_path):
    m = read_manifest(untrained_bundle_path)
    assert m["model_version"] == "cc0-untrained-test"
    assert m["classifier"]["backbone"] == "tf_efficientnet_lite0"
    assert m["preprocessing"]["input_size"] == 224
    assert list(m["taxonomy"]["groups"]) == ["garment", "kids", "detectedObjects"]


def test_flipped_weight_byte_is_detected_as_corruption(untrained_bundle_path, tmp_path):
    data = bytearray(untrained_bundle_path.read_bytes())
    header_len = struct.unpack("<Q", data[:8])[0]
    data[8 + header_len + 1000] ^= 0xFF  # inside the tensor data
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch"):
        load_bundle(bad)


def test_truncated_bundle_is_a_clear_error(untrained_bundle_path, tmp_path):
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(untrained_bundle_path.read_bytes()[:5000])
    with pytest.raises(BundleError, match=r"corrupt|truncated"):
        load_bundle(bad)


def test_bundle_from_a_newer_format_is_refused(untrained_bundle_path, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(untrained_bundle_path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    manifest = json.loads(meta["shelfsight.manifest"])
    manifest["format_version"] = 99
    path = tmp_path / "future.safetensors"
    save_file(tensors, str(path), metadata={"shelfsight.manifest": json.dumps(manifest)})
    with pytest.raises(BundleError, match="format_version 99 is not supported"):
        load_bundle(path)


def test_plain_safetensors_without_manifest_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(BundleError, match="without a ShelfSight manifest"):
        load_bundle(path)


def test_missing_bundle_is_a_clear_error(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope.safetensors")


def test_tapped_stages_survive_save_and_load_with_identical_outputs(cc0_images, tmp_path):
    from pathlib import Path

    import learner
    from learner.model.bundle import ModelBundle
    from learner.model.classifier import AttributeClassifier
    from learner.model.taxonomy import load_taxonomy

    torch.manual_seed(0)
    taxonomy = load_taxonomy(Path(learner.__file__).parent / "taxonomies" / "clothing-cc0.yaml")
    model = AttributeClassifier(
        taxonomy, "tf_efficientnet_lite0", pretrained=False, tap_stages=(3, 5), tap_pooling="foreground"
    )
    path = ModelBundle("cc0-taps-test", taxonomy, model).save(tmp_path / "taps.safetensors")

    reloaded = load_bundle(path)
    assert reloaded.classifier.tap_stages == (3, 5)
    assert reloaded.classifier.tap_pooling == "foreground"
    assert read_manifest(path)["classifier"]["tap_stages"] == [3, 5]
    images = [p.read_bytes() for p in cc0_images[:3]]
    a = TaggingEngine(ModelBundle("cc0-taps-test", taxonomy, model.eval()), device="cpu").tag_bytes(images)
    b = TaggingEngine(reloaded, device="cpu").tag_bytes(images)
    assert [r.attributes for r in a] == [r.attributes for r in b]
