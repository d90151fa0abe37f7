"""Multi-attribute classifier: one shared backbone, one head per classifier attribute group.

Single-choice groups get softmax heads, multi-label groups sigmoid heads (see `probabilities`).
The module takes normalised float images (N, 3, H, W) and returns raw logits per group.
"""

from __future__ import annotations

import torch
from torch import nn

from learner.backbones import Backbone, build_backbone
from learner.taxonomy import Taxonomy


class AttributeClassifier(nn.Module):
    def __init__(self, taxonomy: Taxonomy, backbone_name: str, pretrained: bool = True, dropout: float = 0.2):
        super().__init__()
        self.taxonomy = taxonomy
        self.backbone_name = backbone_name
        bb: Backbone = build_backbone(backbone_name, pretrained=pretrained)
        self.backbone = bb.module
        self.preprocessing = bb.preprocessing
        self._stages = bb.stages
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict(
            {g.name: nn.Linear(bb.feature_dim, len(g.values)) for g in taxonomy.classifier_groups}
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.dropout(self.backbone(x))
        return {name: head(features) for name, head in self.heads.items()}

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
