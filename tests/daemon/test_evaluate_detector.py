"""`shelfsight evaluate-detector`: a bundle's detector scored on a COCO instances file (box and mask mAP, IoU
sweeps), on the classes both have, with categories renamed onto detector classes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from daemon.cli import app
from learner.evaluation.detector_eval import detection_figures
from learner.model.masks import encode
from tests.learner.scenes import draw_shape_scenes, small_mask_detector

runner = CliRunner()


def test_exact_detections_score_one_and_masks_count_only_fully_outlined_images() -> None:
    import numpy as np

    square = np.zeros((20, 20), dtype=bool)
    square[2:10, 2:10] = True
    mask = encode(square)
    truth = [[("person", [2.0, 2.0, 10.0, 10.0], mask)], [("person", [2.0, 2.0, 10.0, 10.0])]]
    exact = [[("person", 0.9, [2.0, 2.0, 10.0, 10.0], mask)], [("person", 0.8, [2.0, 2.0, 10.0, 10.0], None)]]

    figures = detection_figures(exact, truth, masks=True)

    assert figures["map"] == pytest.approx(1.0) and figures["iou_sweep"] == pytest.approx(1.0)
    assert figures["mask_map"] == pytest.approx(1.0) and figures["mask_images"] == 1  # the second has no mask
    missed = detection_figures([[], []], truth, masks=True)
    assert missed["map"] == 0.0 and missed["iou_sweep"] == 0.0 and missed["mask_iou_sweep"] == 0.0
    assert "mask_map" not in detection_figures(exact, truth, masks=False)


def _bundle(tmp_path: Path) -> Path:
    import torch

    from learner.model.bundle import ModelBundle
    from learner.model.classifier import AttributeClassifier
    from learner.model.taxonomy import load_taxonomy

    taxonomy = load_taxonomy(Path(__file__).resolve().parents[2] / "learner" / "taxonomies" / "clothing-cc0.yaml")
    torch.manual_seed(0)
    classifier = AttributeClassifier(taxonomy, "tf_efficientnet_lite0", pretrained=False)
    detector, spec = small_mask_detector(seed=0, score_threshold=0.0)
    bundle = ModelBundle("masks-test", taxonomy, classifier, detector=detector, detector_spec=spec)
    return bundle.save(tmp_path / "masks.safetensors")


def _coco_of_own_detections(bundle_path: Path, images: list[Path], out: Path) -> int:
    """A COCO file whose objects are the bundle's own detections (class `person` renamed `human`), plus one
    `sleeve` the detector has no class for: scored against it, the detector must be perfect."""
    from learner.inference.engine import ImageTags, TaggingEngine
    from learner.model.bundle import load_bundle

    tagged = TaggingEngine(load_bundle(bundle_path), device="cpu").tag_bytes([p.read_bytes() for p in images])
    categories = {"human": 1, "handbag": 2, "sleeve": 3}
    doc: dict[str, list[dict[str, object]]] = {"images": [], "annotations": [], "categories": []}
    doc["categories"] = [{"id": i, "name": n} for n, i in categories.items()]
    for i, (path, tags) in enumerate(zip(images, tagged, strict=True)):
        assert isinstance(tags, ImageTags)
        doc["images"].append({"id": i, "file_name": path.name, "width": tags.width, "height": tags.height})
        for det in tags.detections:
            x1, y1, x2, y2 = det.box
            name = "human" if det.label == "person" else det.label
            doc["annotations"].append(
                {
                    "id": len(doc["annotations"]) + 1,
                    "image_id": i,
                    "category_id": categories[name],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "segmentation": det.mask,
                    "iscrowd": 0,
                }
            )
    doc["annotations"].append(
        {"id": 999, "image_id": 0, "category_id": 3, "bbox": [1, 1, 5, 5], "segmentation": [[1, 1, 6, 1, 6, 6]]}
    )
    out.write_text(json.dumps(doc))
    return len(doc["annotations"]) - 1


def test_evaluate_detector_scores_a_mask_detector_perfect_on_its_own_detections(tmp_path: Path) -> None:
    scenes = draw_shape_scenes(tmp_path / "images", 3, seed=3)
    bundle = _bundle(tmp_path)
    objects = _coco_of_own_detections(bundle, sorted(scenes), tmp_path / "instances.json")
    assert objects > 0

    result = runner.invoke(
        app,
        [
            "evaluate-detector",
            str(bundle),
            "--coco",
            str(tmp_path / "instances.json"),
            "--rename",
            "human=person",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "figures.json"),
        ],
    )

    assert result.exit_code == 0, result.output
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert figures["classes"] == ["person", "handbag"]  # sleeve: not a detector class
    assert figures["images"] == 3 and figures["objects"] == objects
    assert figures["left_out"] == {"detections of other classes": 0, "objects of other classes": 1}
    assert figures["map"] == pytest.approx(1.0) and figures["iou_sweep"] == pytest.approx(1.0)
    assert figures["mask_images"] == 3 and 0.0 <= figures["mask_map"] <= 1.0
    assert "box mAP 1.000" in result.output and "mask mAP" in result.output


def test_evaluate_detector_says_how_to_map_categories_when_none_is_a_detector_class(tmp_path: Path) -> None:
    draw_shape_scenes(tmp_path / "images", 1, seed=4)
    doc = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "human"}]}
    (tmp_path / "instances.json").write_text(json.dumps(doc))

    result = runner.invoke(
        app, ["evaluate-detector", str(_bundle(tmp_path)), "--coco", str(tmp_path / "instances.json")]
    )

    assert result.exit_code == 1
    assert "--rename CATEGORY=CLASS" in result.output
