"""Object detector: torchvision detection models whose class names become attributes via the taxonomy.

Weights come either from torchvision's weights API (e.g. COCO-trained Faster R-CNN or Mask R-CNN, used only when
the file is already in `$TORCH_HOME/hub/checkpoints/`; nothing is downloaded) or from a ShelfSight bundle
(a detector fine-tuned on annotators' boxes or masks). The product works without any detector.

Mask detectors (`MASK_ARCHS`: torchvision's Mask R-CNN ResNet-50 FPN v1/v2, and a MobileNetV3-Large FPN Mask R-CNN
that only exists as bundle weights, small enough to fine-tune on a CPU) also return one instance mask per
detection, as COCO RLE (`learner.model.masks`) in the detector input's pixels.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from learner.model.backbones import PretrainedWeightsUnavailable, require_torchvision_file
from learner.model.manifest import MASK_ARCHS

DETECTOR_ARCHS = {
    "fasterrcnn_resnet50_fpn_v2": "FasterRCNN_ResNet50_FPN_V2_Weights",
    "fasterrcnn_mobilenet_v3_large_fpn": "FasterRCNN_MobileNet_V3_Large_FPN_Weights",
    "fasterrcnn_mobilenet_v3_large_320_fpn": "FasterRCNN_MobileNet_V3_Large_320_FPN_Weights",
    "ssdlite320_mobilenet_v3_large": "SSDLite320_MobileNet_V3_Large_Weights",
    "retinanet_resnet50_fpn_v2": "RetinaNet_ResNet50_FPN_V2_Weights",
    "fcos_resnet50_fpn": "FCOS_ResNet50_FPN_Weights",
    "maskrcnn_resnet50_fpn": "MaskRCNN_ResNet50_FPN_Weights",
    "maskrcnn_resnet50_fpn_v2": "MaskRCNN_ResNet50_FPN_V2_Weights",
    "maskrcnn_mobilenet_v3_large_fpn": "",  # ShelfSight's: bundle weights only (no COCO weights exist)
}
MASK_THRESHOLD = 0.5  # a pixel belongs to the instance when its mask probability is at least this


@dataclass
class DetectorSpec:
    """Everything needed to rebuild a detector. `class_names[0]` is the background class."""

    arch: str
    class_names: list[str]
    weights: str = "bundle"  # "bundle" or "torchvision:<WeightsEnum>.<member>"
    score_threshold: float = 0.5
    max_detections: int = 20
    options: dict[str, Any] = field(default_factory=dict)  # e.g. min_size / max_size

    @property
    def has_masks(self) -> bool:
        return self.arch in MASK_ARCHS

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
    require_torchvision_file(weights.url)
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
        require_torchvision_file(weights.url)
        return tvm.get_model(spec.arch, weights=weights, weights_backbone=None, **kwargs)
    if spec.arch == "maskrcnn_mobilenet_v3_large_fpn":
        return _maskrcnn_mobilenet(len(spec.class_names), **kwargs)
    return tvm.get_model(spec.arch, weights=None, weights_backbone=None, num_classes=len(spec.class_names), **kwargs)


def _maskrcnn_mobilenet(num_classes: int, **kwargs: Any) -> nn.Module:
    """Mask R-CNN on torchvision's MobileNetV3-Large FPN (the backbone and anchors of
    `fasterrcnn_mobilenet_v3_large_fpn`, ordinary batch norm, every block trainable; freezing is the recipe's)."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import mobilenet_backbone

    # MobileNetV3's own batch norm (the default of `mobilenet_v3_large`), not the frozen one `mobilenet_backbone`
    # defaults to; trainable_layers=6: every block
    norm = functools.partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
    backbone = mobilenet_backbone(
        backbone_name="mobilenet_v3_large", weights=None, fpn=True, norm_layer=norm, trainable_layers=6
    )
    anchor_sizes = ((32, 64, 128, 256, 512),) * 3
    anchors = AnchorGenerator(anchor_sizes, ((0.5, 1.0, 2.0),) * len(anchor_sizes))
    return MaskRCNN(backbone, num_classes, rpn_anchor_generator=anchors, **{"rpn_score_thresh": 0.05, **kwargs})


def _torchvision_weights(arch: str) -> Any:
    import torchvision.models as tvm

    if arch not in DETECTOR_ARCHS:
        raise ValueError(f"unknown detector arch {arch!r}; choose one of {', '.join(DETECTOR_ARCHS)}")
    if not DETECTOR_ARCHS[arch]:
        raise PretrainedWeightsUnavailable(f"{arch} has no torchvision weights; it is fine-tuned into a bundle")
    try:
        return tvm.get_model_weights(arch).DEFAULT
    except Exception as exc:  # pragma: no cover - depends on torchvision version
        raise PretrainedWeightsUnavailable(f"torchvision has no weights for {arch}: {exc}") from exc


@torch.inference_mode()
def detect(model: nn.Module, images: list[torch.Tensor], spec: DetectorSpec) -> list[list[dict[str, Any]]]:
    """Run the detector on float images in [0, 1] (each 3xHxW). Returns per image its detections: label, score,
    box [x1, y1, x2, y2] and, for a mask detector, `mask` (COCO RLE, in the input image's pixels)."""
    from learner.model.masks import encode

    outputs = model(images)
    results = []
    for out in outputs:
        dets = []
        masks = out.get("masks")
        for i, (box, label, score) in enumerate(zip(out["boxes"], out["labels"], out["scores"], strict=True)):
            s = float(score)
            if s < spec.score_threshold:
                continue
            idx = int(label)
            name = spec.class_names[idx] if 0 <= idx < len(spec.class_names) else str(idx)
            det: dict[str, Any] = {"label": name, "score": s, "box": [float(v) for v in box]}
            if masks is not None:
                det["mask"] = encode((masks[i, 0] >= MASK_THRESHOLD).cpu().numpy())
            dets.append(det)
        results.append(dets)
    return results
