"""Knowledge distillation: a bigger teacher's answers as soft targets for the serving backbone (issue 28).

A student (e.g. EfficientNet-Lite0, what serves) trains on `(1 - weight) * its labels' loss + weight * the
distillation loss`, the latter per classifier group:
- single choice: Hinton et al.'s KL divergence between the teacher's and the student's softmax at `temperature`,
  scaled by temperature^2 so its gradients keep their size as the temperature changes;
- multi-label: binary cross-entropy of the student's logits against the teacher's sigmoid probabilities.
Groups are weighted as in the labels' loss (`AttributeLoss.group_weights`). The teacher sees every photo, labelled
for a group or not, so it also teaches the groups a photo's label leaves empty.

The teacher (a trained bundle's classifier, e.g. EfficientNet-Lite2) is frozen and in eval mode; each batch reaches
it through its own preprocessing and at its own input size (the student's batch arrives as uint8 pixels).

Must not: load bundles, build data or decide the recipe (`TrainConfig.distil_weight`, `distil_temperature`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from learner.inference.imaging import normalize
from learner.model.classifier import AttributeClassifier
from learner.model.taxonomy import Taxonomy
from learner.training.errors import TrainingError


def check_teacher(teacher: Taxonomy, student: Taxonomy) -> None:
    """TrainingError unless the teacher answers exactly the student's classifier groups, with the same values in the
    same order (its logits are the student's soft targets position by position)."""
    mine = {g.name: list(g.values) for g in student.classifier_groups}
    theirs = {g.name: list(g.values) for g in teacher.classifier_groups}
    if mine.keys() != theirs.keys():
        raise TrainingError(
            f"the teacher's groups {sorted(theirs)} are not the student's {sorted(mine)}: a teacher must be trained on "
            "the same taxonomy"
        )
    for name, values in mine.items():
        if theirs[name] != values:
            raise TrainingError(f"the teacher's values of {name} differ from the student's: same taxonomy needed")


class Distillation(nn.Module):
    """The distillation loss of a batch against a frozen `teacher` (see the module docstring)."""

    def __init__(
        self,
        teacher: AttributeClassifier,
        weight: float,
        temperature: float,
        group_weights: dict[str, float],
        multi_label: frozenset[str],
    ) -> None:
        super().__init__()
        if not 0.0 < weight <= 1.0:
            raise TrainingError(f"--distil-weight must be in (0, 1] with a teacher, not {weight}")
        if temperature <= 0:
            raise TrainingError(f"--distil-temperature must be positive, not {temperature}")
        self.teacher = teacher.eval().requires_grad_(False)
        self.weight, self.temperature = weight, temperature
        self.group_weights, self.multi_label = group_weights, multi_label

    def train(self, mode: bool = True) -> Distillation:
        super().train(mode)
        self.teacher.eval()  # always: its batch-norm statistics and dropout stay as trained
        return self

    @torch.no_grad()
    def soft_targets(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The teacher's logits for a uint8 batch, through its own preprocessing and at its own input size."""
        pre = self.teacher.preprocessing
        x = normalize(images, pre)
        if x.shape[-1] != pre.input_size or x.shape[-2] != pre.input_size:
            x = F.interpolate(x, size=(pre.input_size, pre.input_size), mode="bilinear", antialias=True)
        out: dict[str, torch.Tensor] = self.teacher(x.contiguous(memory_format=torch.channels_last))
        return out

    def forward(self, student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> torch.Tensor:
        t = self.temperature
        total = next(iter(student.values())).new_zeros((), dtype=torch.float32)
        for name, weight in self.group_weights.items():
            s, q = student[name].float(), teacher[name].float()
            if name in self.multi_label:
                part = F.binary_cross_entropy_with_logits(s, torch.sigmoid(q))
            else:
                log_s, log_q = F.log_softmax(s / t, -1), F.log_softmax(q / t, -1)
                part = F.kl_div(log_s, log_q, reduction="batchmean", log_target=True) * t * t
            total = total + weight * part
        return total

    def combine(self, labels_loss: torch.Tensor, distillation_loss: torch.Tensor) -> torch.Tensor:
        return (1.0 - self.weight) * labels_loss + self.weight * distillation_loss
