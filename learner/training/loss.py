"""The classifier's training loss (`AttributeLoss`): one term per classifier group, missing labels masked out.

Must not: hold optimiser or schedule logic (learner/training/optim.py) or know where samples came from.
"""

from __future__ import annotations

import torch
from torch import nn

from learner.datasets.labelled import IGNORE_INDEX, Sample, class_counts
from learner.model.taxonomy import AttributeGroup, Taxonomy


def positive_weights(samples: list[Sample], group: AttributeGroup, cap: float) -> torch.Tensor:
    """Per value of a multi-label group, the weight of its positive targets in the BCE loss:
    min(`cap`, negatives / positives), counted over the samples whose label of the group is known. A value
    with no positive or no negative sample keeps weight 1 (there is no ratio to take)."""
    positives = torch.tensor(class_counts(samples, group), dtype=torch.float64)
    known = sum(1 for s in samples if s.labels.get(group.name) is not None)
    negatives = known - positives
    ratio = negatives / positives.clamp(min=1)
    weights = torch.where((positives > 0) & (negatives > 0), ratio.clamp(max=cap), torch.ones_like(ratio))
    return weights.float()


class AttributeLoss(nn.Module):
    """Weighted sum over classifier groups of each group's loss; missing labels are masked out.

    Single-choice: cross-entropy with label smoothing and class weights (frequency ** -power, normalised
    so the average training sample weighs 1). Multi-label: BCE with smoothed targets, NaN rows masked; with
    `pos_weight_cap` > 0 each value's positives weigh `positive_weights` (negatives / positives on the training
    samples, capped), so rare values are not drowned by their negatives.
    """

    def __init__(
        self,
        taxonomy: Taxonomy,
        train_samples: list[Sample],
        label_smoothing: float,
        class_weight_power: float,
        group_weights: dict[str, float] | None = None,
        pos_weight_cap: float = 0.0,
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
        if pos_weight_cap < 0:
            raise ValueError(f"pos_weight_cap must be >= 0 (0: off), not {pos_weight_cap}")
        self.multi_pos_weights = pos_weight_cap > 0
        for g in taxonomy.classifier_groups:
            if g.multi_label and self.multi_pos_weights:
                self.register_buffer(f"pos_weight_{g.name}", positive_weights(train_samples, g, pos_weight_cap))

    def class_weights(self, group: str) -> torch.Tensor:
        w: torch.Tensor = getattr(self, f"weight_{group}")
        return w

    def pos_weight(self, group: str) -> torch.Tensor | None:
        """The per-value positive weights of a multi-label group; None when `pos_weight_cap` is off."""
        w: torch.Tensor | None = getattr(self, f"pos_weight_{group}", None) if self.multi_pos_weights else None
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
                loss = nn.functional.binary_cross_entropy_with_logits(
                    z[known], smooth, pos_weight=self.pos_weight(g.name)
                )
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
