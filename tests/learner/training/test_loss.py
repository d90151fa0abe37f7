"""The training loss's multi-label positive weights: counted on the training samples, capped, and weighing the
positives of a rare value more than the plain BCE does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from learner.datasets.labelled import Sample
from learner.model.taxonomy import parse_taxonomy
from learner.training.loss import AttributeLoss, positive_weights
from learner.training.recipe import TrainConfig

TAXONOMY = parse_taxonomy(
    """
schema_version: 1
name: tiny
groups:
  kind:
    kind: single
    label_column: articleType
    values: [Shirt, Shoe]
  tags:
    kind: multi
    label_column: tags
    values: [sale, new, rare, everywhere]
"""
)
TAGS = TAXONOMY.group("tags")


def _samples() -> list[Sample]:
    """20 labelled rows and 5 without tags: sale on 10 (ratio 1), new on 4 (4), rare on 1 (19), everywhere on all
    20 (no negative), nothing else."""
    rows: list[Sample] = []
    for i in range(25):
        tags = None if i >= 20 else tuple(j for j, on in enumerate((i < 10, i < 4, i == 0, True)) if on)
        rows.append(Sample(f"s{i}", Path(f"{i}.jpg"), f"s{i}", {"kind": i % 2, "tags": tags}))
    return rows


def test_positive_weights_are_negatives_over_positives_on_labelled_rows_capped() -> None:
    weights = positive_weights(_samples(), TAGS, cap=10.0)

    # rows without tags count neither way; rare's 19 is capped at 10; a value never negative keeps weight 1
    assert weights.tolist() == pytest.approx([1.0, 4.0, 10.0, 1.0])
    assert positive_weights(_samples(), TAGS, cap=2.0).tolist() == pytest.approx([1.0, 2.0, 2.0, 1.0])


def test_a_value_without_positives_keeps_weight_one() -> None:
    samples = [Sample("a", Path("a.jpg"), "a", {"tags": (0,)}), Sample("b", Path("b.jpg"), "b", {"tags": (0, 1)})]

    assert positive_weights(samples, TAGS, cap=5.0).tolist() == pytest.approx([1.0, 1.0, 1.0, 1.0])


def _mistake_costs(cap: float) -> tuple[float, float]:
    """How much the tags loss grows, at `cap`, when a confident model misses the one positive of `rare`, and when
    it wrongly adds `rare` to a row without it (each against the confident model's own loss)."""
    loss = AttributeLoss(TAXONOMY, _samples(), label_smoothing=0.0, class_weight_power=0.0, pos_weight_cap=cap)
    targets = {"kind": torch.tensor([0, 1]), "tags": torch.tensor([[1.0, 0, 1, 1], [0, 0, 0, 1]])}
    kind = torch.tensor([[3.0, -3.0], [-3.0, 3.0]])
    confident = torch.tensor([[4.0, -4, 4, 4], [-4, -4, -4, 4]])
    missed = confident.clone()
    missed[0, 2] = -4.0  # the rare positive scored negative
    added = confident.clone()
    added[1, 2] = 4.0  # a rare negative scored positive

    def tags_loss(logits: torch.Tensor) -> float:
        return loss({"kind": kind, "tags": logits}, targets)[1]["tags"]

    base = tags_loss(confident)
    return tags_loss(missed) - base, tags_loss(added) - base


def test_pos_weight_makes_a_missed_rare_positive_cost_more_than_a_false_one() -> None:
    missed_plain, added_plain = _mistake_costs(cap=0.0)
    missed_weighted, added_weighted = _mistake_costs(cap=10.0)

    assert missed_plain == pytest.approx(added_plain)  # plain BCE: the two mistakes cost the same
    assert added_weighted == pytest.approx(added_plain)  # negatives are not reweighted
    assert missed_weighted == pytest.approx(10 * missed_plain)  # rare's positives weigh min(10, 19 / 1) = 10


def test_negative_cap_is_refused_and_the_cap_is_part_of_the_recorded_recipe() -> None:
    with pytest.raises(ValueError, match="pos_weight_cap"):
        AttributeLoss(TAXONOMY, _samples(), 0.1, 0.5, pos_weight_cap=-1.0)

    recipe = TrainConfig(pos_weight_cap=8.0)
    assert recipe.to_dict()["pos_weight_cap"] == 8.0
    assert TrainConfig.from_dict(recipe.to_dict()).pos_weight_cap == 8.0
    old = recipe.to_dict()
    del old["pos_weight_cap"]  # a bundle recorded before the option trains without it
    assert TrainConfig.from_dict(old).pos_weight_cap == 0.0
