"""Multi-attribute classifier: one shared backbone, one head per classifier attribute group.

Single-choice groups get softmax heads, multi-label groups sigmoid heads (see `probabilities`).
The module takes normalised float images (N, 3, H, W) and returns raw logits per group.

Colour groups (`colour: true` in the taxonomy) can also see a colour histogram of the product's pixels
(`colour_bins` > 0): ImageNet features are trained to be partly colour-invariant and global pooling mixes
the product with its background, so a fixed (not learned) histogram of the foreground's RGB values,
concatenated to the pooled features, gives the colour head the one thing it needs. It is computed inside
the model from the same input tensor, so training, evaluation and inference cannot disagree.
"""

from __future__ import annotations

import torch
from torch import nn

from learner.backbones import Backbone, Preprocessing, build_backbone
from learner.taxonomy import Taxonomy


class AttributeClassifier(nn.Module):
    def __init__(
        self,
        taxonomy: Taxonomy,
        backbone_name: str,
        pretrained: bool = True,
        dropout: float = 0.2,
        colour_bins: int = 0,
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
        extra = colour_bins**3
        self.heads = nn.ModuleDict(
            {
                g.name: nn.Linear(bb.feature_dim + (extra if g.name in self.colour_groups else 0), len(g.values))
                for g in taxonomy.classifier_groups
            }
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.dropout(self.backbone(x))
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

    def parameter_groups(self, base_lr: float, backbone_lr_decay: float) -> list[dict[str, object]]:
        """Discriminative learning rates: heads get `base_lr`, each earlier stage `decay` times less."""
        groups: list[dict[str, object]] = [{"params": list(self.heads.parameters()), "lr": base_lr, "name": "heads"}]
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


def colour_histogram(x: torch.Tensor, pre: Preprocessing, bins: int, background: float = 0.92) -> torch.Tensor:
    """Square-rooted, normalised RGB histogram (bins^3 cells) of the non-background pixels of each image.

    Pixels whose channels are all above `background` (the white studio background and the letterbox
    padding) are left out; an image that is all background falls back to all its pixels.
    """
    with torch.no_grad():
        mean = torch.tensor(pre.mean, device=x.device, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(pre.std, device=x.device, dtype=torch.float32).view(1, 3, 1, 1)
        rgb = (x.float() * std + mean).clamp(0.0, 1.0)
        rgb = torch.nn.functional.avg_pool2d(rgb, 4)  # 56x56 is plenty for a colour summary
        q = (rgb * bins).long().clamp(max=bins - 1)
        index = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]  # N x h x w
        foreground = (rgb.min(dim=1).values < background).float()
        empty = foreground.flatten(1).sum(1) == 0
        foreground[empty] = 1.0
        hist = torch.zeros(x.shape[0], bins**3, device=x.device, dtype=torch.float32)
        hist.scatter_add_(1, index.flatten(1), foreground.flatten(1))
        hist = hist / hist.sum(dim=1, keepdim=True)
        return hist.sqrt().to(x.dtype)
