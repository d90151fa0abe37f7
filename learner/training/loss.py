"""The classifier's training loss (`AttributeLoss`): one term per classifier group, missing labels masked out.

Must not: hold optimiser or schedule logic (learner/training/engine.py) or know where samples came from.
"""

from __future__ import annotations

import torch
from torch import nn

from learner.model.taxonomy import Taxonomy
from learner.training.data import IGNORE_INDEX, Sample, class_counts


class AttributeLoss(nn.Module):
    """Weighted sum over classifier groups of each group's loss; missing labels are masked out.

    Single-choice: cross-entropy with label smoothing and class weights (frequency ** -power, normalised
    so the average training sample weighs 1). Multi-label: BCE with smoothed targets, NaN rows masked.
    """

    def __init__(
        self,
        taxonomy: Taxonomy,
        train_samples: list[Sample],
        label_smoothing: float,
        class_weight_power: float,
        group_weights: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.taxonomy = taxonomy
        self.label_smoothing = label_smoothing
        names = {g.name for g in taxonomy.classifier_groups}
        unknown = set(group_weights or {}) - names
        if unknown:
            raise ValueError(f"loss weights name unknown groups {sorted(unknown)}; groups: {sorted(names)}")
        self.group_weights = {name: float((group_weights or {}).get(name, 1.0)) for name in names}
        for g in taxonomy.classifier_groups:
            counts = torch.tensor(class_counts(train_samples, g), dtype=torch.float64)
            weights = torch.where(counts > 0, counts.clamp(min=1) ** -class_weight_power, torch.zeros_like(counts))
            if counts.sum() > 0:
                weights = weights * counts.sum() / (weights * counts).sum()
            self.register_buffer(f"weight_{g.name}", weights.float())

    def class_weights(self, group: str) -> torch.Tensor:
        w: torch.Tensor = getattr(self, f"weight_{group}")
        return w

    def forward(
        self, logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        total = next(iter(logits.values())).new_zeros((), dtype=torch.float32)
        parts: dict[str, float] = {}
        for g in self.taxonomy.classifier_groups:
            z = logits[g.name].float()
            t = targets[g.name]
            if g.multi_label:
                known = ~torch.isnan(t).any(dim=1)
                if not known.any():
                    continue
                smooth = t[known] * (1 - self.label_smoothing) + self.label_smoothing / 2
                loss = nn.functional.binary_cross_entropy_with_logits(z[known], smooth)
            else:
                if not (t != IGNORE_INDEX).any():
                    continue
                loss = nn.functional.cross_entropy(
                    z,
                    t,
                    weight=self.class_weights(g.name),
                    ignore_index=IGNORE_INDEX,
                    label_smoothing=self.label_smoothing,
                )
            total = total + self.group_weights[g.name] * loss
            parts[g.name] = float(loss.detach())
        return total, parts
