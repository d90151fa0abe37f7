"""Object detector: torchvision detection models whose class names become attributes via the taxonomy.

Weights come either from torchvision's weights API (e.g. COCO-trained Faster R-CNN, used only when the
file is already in `$TORCH_HOME/hub/checkpoints/`; nothing is downloaded) or from a ShelfSight bundle
(a detector fine-tuned on annotators' boxes). The product works without any detector.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from learner.model.backbones import PretrainedWeightsUnavailable, _require_torchvision_file

DETECTOR_ARCHS = {
    "fasterrcnn_resnet50_fpn_v2": "FasterRCNN_ResNet50_FPN_V2_Weights",
    "fasterrcnn_mobilenet_v3_large_fpn": "FasterRCNN_MobileNet_V3_Large_FPN_Weights",
    "fasterrcnn_mobilenet_v3_large_320_fpn": "FasterRCNN_MobileNet_V3_Large_320_FPN_Weights",
    "ssdlite320_mobilenet_v3_large": "SSDLite320_MobileNet_V3_Large_Weights",
    "retinanet_resnet50_fpn_v2": "RetinaNet_ResNet50_FPN_V2_Weights",
    "fcos_resnet50_fpn": "FCOS_ResNet50_FPN_Weights",
}


@dataclass
class DetectorSpec:
    """Everything needed to rebuild a detector. `class_names[0]` is the background class."""

    arch: str
    class_names: list[str]
    weights: str = "bundle"  # "bundle" or "torchvision:<WeightsEnum>.<member>"
    score_threshold: float = 0.5
    max_detections: int = 20
    options: dict[str, Any] = field(default_factory=dict)  # e.g. min_size / max_size

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "class_names": self.class_names,
            "weights": self.weights,
            "score_threshold": self.score_threshold,
            "max_detections": self.max_detections,
            "options": self.options,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectorSpec:
        return cls(
            arch=d["arch"],
            class_names=list(d["class_names"]),
            weights=d.get("weights", "bundle"),
            score_threshold=float(d.get("score_threshold", 0.5)),
            max_detections=int(d.get("max_detections", 20)),
            options=dict(d.get("options", {})),
        )


def torchvision_detector_spec(arch: str, score_threshold: float = 0.5) -> DetectorSpec:
    """Spec for a torchvision COCO detector; raises PretrainedWeightsUnavailable if its file is absent."""
    weights = _torchvision_weights(arch)
    _require_torchvision_file(weights.url)
    member = f"{type(weights).__name__}.{weights.name}"
    return DetectorSpec(
        arch=arch,
        class_names=list(weights.meta["categories"]),
        weights=f"torchvision:{member}",
        score_threshold=score_threshold,
    )


def build_detector(spec: DetectorSpec) -> nn.Module:
    """Build the detector module. Weights named `torchvision:*` are loaded here; `bundle` ones by the caller."""
    import torchvision.models as tvm

    if spec.arch not in DETECTOR_ARCHS:
        raise ValueError(f"unknown detector arch {spec.arch!r}; choose one of {', '.join(DETECTOR_ARCHS)}")
    kwargs = dict(spec.options)
    kwargs["box_detections_per_img"] = spec.max_detections
    if spec.arch.startswith("ssd"):
        kwargs.pop("box_detections_per_img")
        kwargs["detections_per_img"] = spec.max_detections
    if spec.weights.startswith("torchvision:"):
        weights = _torchvision_weights(spec.arch)
        expected = f"torchvision:{type(weights).__name__}.{weights.name}"
        if spec.weights != expected:
            weights = tvm.get_weight(spec.weights.removeprefix("torchvision:"))
        _require_torchvision_file(weights.url)
        return tvm.get_model(spec.arch, weights=weights, weights_backbone=None, **kwargs)
    return tvm.get_model(spec.arch, weights=None, weights_backbone=None, num_classes=len(spec.class_names), **kwargs)


def _torchvision_weights(arch: str) -> Any:
    import torchvision.models as tvm

    if arch not in DETECTOR_ARCHS:
        raise ValueError(f"unknown detector arch {arch!r}; choose one of {', '.join(DETECTOR_ARCHS)}")
    try:
        return tvm.get_model_weights(arch).DEFAULT
    except Exception as exc:  # pragma: no cover - depends on torchvision version
        raise PretrainedWeightsUnavailable(f"torchvision has no weights for {arch}: {exc}") from exc


@torch.inference_mode()
def detect(model: nn.Module, images: list[torch.Tensor], spec: DetectorSpec) -> list[list[dict[str, Any]]]:
    """Run the detector on float images in [0, 1] (each 3xHxW). Returns per image its detections."""
    outputs = model(images)
    results = []
    for out in outputs:
        dets = []
        for box, label, score in zip(out["boxes"], out["labels"], out["scores"], strict=True):
            s = float(score)
            if s < spec.score_threshold:
                continue
            idx = int(label)
            name = spec.class_names[idx] if 0 <= idx < len(spec.class_names) else str(idx)
            dets.append({"label": name, "score": s, "box": [float(v) for v in box]})
        results.append(dets)
    return results
