"""Multi-attribute classifier: one shared backbone, one head per classifier attribute group.

Single-choice groups get softmax heads, multi-label groups sigmoid heads (see `probabilities`).
The module takes normalised float images (N, 3, H, W) and returns raw logits per group.

Colour groups (`colour: true` in the taxonomy) can also see a colour histogram of the product's pixels
(`colour_bins` > 0): ImageNet features are trained to be partly colour-invariant and global pooling mixes
the product with its background, so a fixed (not learned) histogram of the foreground's RGB values,
concatenated to the pooled features, gives the colour head the one thing it needs. It is computed inside
the model from the same input tensor, so training, evaluation and inference cannot disagree.

Every head can also see intermediate stages (`tap_stages`): the global average of each named stage's
output is concatenated to the backbone's pooled features ("hypercolumn" pooling). The last stage of an
ImageNet network has learnt to ignore much of an object's colour; a middle stage still carries it, and
`tap_pooling="foreground"` averages it over the product's pixels only (`foreground_mask`), not the white
studio backdrop. `tests/benchmarks/probe_pooling.py` measures what each pooling gives a linear probe.
"""

from __future__ import annotations

from typing import TypedDict

import torch
from torch import nn

from learner.model.backbones import Backbone, Preprocessing, build_backbone
from learner.model.taxonomy import Taxonomy


class AttributeClassifier(nn.Module):
    def __init__(
        self,
        taxonomy: Taxonomy,
        backbone_name: str,
        pretrained: bool = True,
        dropout: float = 0.2,
        colour_bins: int = 0,
        tap_stages: tuple[int, ...] = (),
        tap_pooling: str = "mean",
    ):
        super().__init__()
        self.taxonomy = taxonomy
        self.backbone_name = backbone_name
        bb: Backbone = build_backbone(backbone_name, pretrained=pretrained)
        self.backbone = bb.module
        self.preprocessing = bb.preprocessing
        self._stages = bb.stages
        self.dropout = nn.Dropout(dropout)
        self.colour_bins = colour_bins
        self.colour_groups = {g.name for g in taxonomy.classifier_groups if g.colour} if colour_bins else set()
        self.tap_stages = tuple(sorted(set(tap_stages)))
        if tap_pooling not in TAP_POOLING:
            raise ValueError(f"tap_pooling must be one of {', '.join(TAP_POOLING)}, not {tap_pooling!r}")
        self.tap_pooling = tap_pooling
        feature_dim = bb.feature_dim + sum(self._tap_channels(bb))
        extra = colour_bins**3
        self.heads = nn.ModuleDict(
            {
                g.name: nn.Linear(feature_dim + (extra if g.name in self.colour_groups else 0), len(g.values))
                for g in taxonomy.classifier_groups
            }
        )

    def _tap_channels(self, bb: Backbone) -> list[int]:
        """Channels of each tapped stage's output, from one small forward pass (any backbone family)."""
        if not self.tap_stages:
            return []
        for i in self.tap_stages:
            if not 0 <= i < len(self._stages) or isinstance(self._stages[i], nn.ModuleList):
                callable_stages = [j for j, s in enumerate(self._stages) if not isinstance(s, nn.ModuleList)]
                raise ValueError(f"{self.backbone_name}: stage {i} cannot be tapped; choose from {callable_stages}")
        was_training = bb.module.training
        bb.module.eval()
        with torch.no_grad():
            _, taps = self._backbone_with_taps(torch.zeros(1, 3, 64, 64))
        bb.module.train(was_training)
        return [t.shape[1] for t in taps]

    def backbone_and_stage_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The backbone's pooled features and the raw output maps (N x C x h x w) of the tapped stages."""
        if not self.tap_stages:
            return self.backbone(x), []
        outputs: dict[int, torch.Tensor] = {}
        handles = [
            self._stages[i].register_forward_hook(lambda _m, _in, out, i=i: outputs.__setitem__(i, out))
            for i in self.tap_stages
        ]
        try:
            features = self.backbone(x)
        finally:
            for h in handles:
                h.remove()
        return features, [outputs[i] for i in self.tap_stages]

    def _backbone_with_taps(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The backbone's pooled features and the pooled outputs of the tapped stages (`tap_pooling`)."""
        features, maps = self.backbone_and_stage_maps(x)
        if self.tap_pooling == "mean" or not maps:
            return features, [m.mean(dim=(2, 3)) for m in maps]
        mask = foreground_mask(x, self.preprocessing)
        return features, [masked_average(m, mask) for m in maps]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """N x D: what the heads read, without dropout: the pooled backbone features, the tapped stages and, when
        colour groups read one, the colour histogram (learner/evaluation/label_issues.py fits its own heads on it)."""
        pooled, taps = self._backbone_with_taps(x)
        parts = [pooled, *taps]
        if self.colour_groups:
            parts.append(colour_histogram(x, self.preprocessing, self.colour_bins))
        return torch.cat(parts, dim=1) if len(parts) > 1 else pooled

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled, taps = self._backbone_with_taps(x)
        features = self.dropout(torch.cat([pooled, *taps], dim=1) if taps else pooled)
        if not self.colour_groups:
            return {name: head(features) for name, head in self.heads.items()}
        with_colour = torch.cat([features, colour_histogram(x, self.preprocessing, self.colour_bins)], dim=1)
        return {
            name: head(with_colour if name in self.colour_groups else features) for name, head in self.heads.items()
        }

    def probabilities(self, logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for g in self.taxonomy.classifier_groups:
            z = logits[g.name].float()
            out[g.name] = torch.sigmoid(z) if g.multi_label else torch.softmax(z, dim=-1)
        return out

    # -- fine-tuning helpers --------------------------------------------------------------------------
    @property
    def num_stages(self) -> int:
        return len(self._stages)

    def freeze_stages(self, n: int) -> None:
        """Freeze the first `n` backbone stages (weights and batch-norm statistics)."""
        for i, stage in enumerate(self._stages):
            frozen = i < n
            for p in stage.parameters():
                p.requires_grad = not frozen

    def frozen_modules(self) -> list[nn.Module]:
        return [s for s in self._stages if not any(p.requires_grad for p in s.parameters())]

    def train(self, mode: bool = True) -> AttributeClassifier:
        super().train(mode)
        # frozen stages keep their batch-norm statistics: run them in eval mode
        if mode:
            for stage in self.frozen_modules():
                stage.eval()
        return self

    def parameter_groups(self, base_lr: float, backbone_lr_decay: float) -> list[ParameterGroup]:
        """Discriminative learning rates: heads get `base_lr`, each earlier stage `decay` times less."""
        groups: list[ParameterGroup] = [{"params": list(self.heads.parameters()), "lr": base_lr, "name": "heads"}]
        seen: set[int] = set()
        lr = base_lr
        for i, stage in reversed(list(enumerate(self._stages))):
            lr *= backbone_lr_decay
            params = [p for p in stage.parameters() if p.requires_grad and id(p) not in seen]
            seen.update(id(p) for p in stage.parameters())
            if params:
                groups.append({"params": params, "lr": lr, "name": f"stage{i}"})
        rest = [p for p in self.backbone.parameters() if p.requires_grad and id(p) not in seen]
        if rest:
            groups.append({"params": rest, "lr": base_lr * backbone_lr_decay, "name": "backbone-rest"})
        return groups


class ParameterGroup(TypedDict):
    """One learning-rate group of `AttributeClassifier.parameter_groups` (an optimizer param group)."""

    params: list[nn.Parameter]
    lr: float
    name: str


TAP_POOLING = ("mean", "foreground")


def _rgb(x: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """Undo the normalisation: N x 3 x H x W float in [0, 1]."""
    mean = torch.tensor(pre.mean, device=x.device, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, device=x.device, dtype=torch.float32).view(1, 3, 1, 1)
    return (x.detach().float() * std + mean).clamp(0.0, 1.0)


def foreground_mask(x: torch.Tensor, pre: Preprocessing, background: float = 0.92) -> torch.Tensor:
    """N x 1 x H x W: 1 where a pixel is not studio background or letterbox padding (some channel below
    `background`), else 0."""
    return (_rgb(x, pre).min(dim=1, keepdim=True).values < background).float()


def masked_average(features: torch.Tensor, mask: torch.Tensor, floor: float = 1e-3) -> torch.Tensor:
    """Average of an N x C x h x w map weighted by the share of foreground pixels under each cell.

    `floor` keeps every cell slightly weighted, so a photo with no white background at all (or nothing
    but background) degrades to the plain average instead of dividing by zero.
    """
    height, width = features.shape[-2:]
    weights = torch.nn.functional.adaptive_avg_pool2d(mask, (height, width)).to(features.dtype) + floor
    return (features * weights).sum(dim=(2, 3)) / weights.sum(dim=(2, 3))


def colour_histogram(x: torch.Tensor, pre: Preprocessing, bins: int, background: float = 0.92) -> torch.Tensor:
    """Square-rooted, normalised RGB histogram (bins^3 cells) of the non-background pixels of each image.

    Pixels whose channels are all above `background` (the white studio background and the letterbox
    padding) are left out; an image that is all background falls back to all its pixels.
    """
    with torch.no_grad():
        rgb = torch.nn.functional.avg_pool2d(_rgb(x, pre), 4)  # 56x56 is plenty for a colour summary
        q = (rgb * bins).long().clamp(max=bins - 1)
        index = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]  # N x h x w
        foreground = (rgb.min(dim=1).values < background).float()
        empty = foreground.flatten(1).sum(1) == 0
        foreground[empty] = 1.0
        hist = torch.zeros(x.shape[0], bins**3, device=x.device, dtype=torch.float32)
        hist.scatter_add_(1, index.flatten(1), foreground.flatten(1))
        hist = hist / hist.sum(dim=1, keepdim=True)
        return hist.sqrt().to(x.dtype)
