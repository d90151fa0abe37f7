"""Photos, title and both side by side: each source is decided as the daemon decides it, and measured alike."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest

from learner.evaluation.source_comparison import compare_sources, comparison_lines, coverage_at_precision
from learner.inference.product_decision import Fusion, GroupFusion
from learner.model.shift_guard import ShiftGuard
from learner.model.taxonomy import Taxonomy, parse_taxonomy

TAXONOMY = """
schema_version: 1
name: shop
groups:
  colour:
    kind: single
    values: [Blue, Red, Black]
"""


class ColourTitles:
    """A title model stand-in that reads the colour word of a title (calibrated 0.96 on it), no signal without one."""

    def __init__(self) -> None:
        self.autofill_thresholds = {"colour": 0.9}

    def probabilities(self, titles: Sequence[str | None]) -> dict[str, np.ndarray]:
        rows = []
        for t in titles:
            words = (t or "").lower().split()
            hit = [i for i, v in enumerate(("blue", "red", "black")) if v in words]
            row = np.full(3, 0.02) if hit else np.full(3, np.nan)
            if hit:
                row[hit[0]] = 0.96
            rows.append(row)
        return {"colour": np.array(rows)}

    def has_signal(self, title: str | None) -> bool:
        return not np.isnan(self.probabilities([title])["colour"]).any()


@dataclass
class Bundle:
    taxonomy: Taxonomy
    title_model: ColourTitles | None = field(default_factory=ColourTitles)
    fusion: Fusion | None = field(default_factory=lambda: Fusion({"colour": GroupFusion(1.0, 1.0, threshold=0.9)}))
    temperatures: dict[str, float] = field(default_factory=dict)
    autofill_thresholds: dict[str, float] = field(default_factory=lambda: {"colour": 0.8})
    shift_guard: ShiftGuard | None = None


@dataclass
class Group:
    probs: np.ndarray
    targets: np.ndarray


class Predictions(dict[str, Group]):
    shift_scores: np.ndarray


@pytest.fixture(scope="module")
def taxonomy() -> Taxonomy:
    return parse_taxonomy(TAXONOMY)


def photos(rows: list[list[float]], targets: list[int]) -> Predictions:
    return Predictions({"colour": Group(np.array(rows), np.array(targets))})


def test_each_source_is_measured_on_its_own_decisions(taxonomy: Taxonomy) -> None:
    # four blue products: the photos are sure of two, unsure of one and wrong on one; every title names blue
    preds = photos([[0.9, 0.05, 0.05], [0.85, 0.1, 0.05], [0.5, 0.4, 0.1], [0.1, 0.8, 0.1]], [0, 0, 0, 0])
    titles = ["Blue Shirt", "Blue Jeans", "blue cap", "Blue Shoe"]
    figures = compare_sources(Bundle(taxonomy), preds, titles)["sources"]

    assert figures["photos"]["colour"]["top1"] == pytest.approx(0.75)
    assert figures["photos"]["colour"]["coverage"] == pytest.approx(0.75)  # 0.9, 0.85, 0.8: three reach 0.8
    assert figures["photos"]["colour"]["precision"] == pytest.approx(2 / 3)
    assert figures["title"]["colour"]["top1"] == 1.0
    assert figures["fused"]["colour"]["top1"] == 1.0  # the title outweighs the unsure and the wrong photo
    # with the colour word masked the title says nothing: the title alone is wrong everywhere, fused = photos
    assert figures["title_masked"]["colour"]["top1"] == 0.0
    assert figures["title_masked"]["colour"]["coverage"] == 0.0
    assert figures["fused_masked"]["colour"]["top1"] == figures["photos"]["colour"]["top1"]


def test_a_title_contradicting_a_sure_photo_is_counted_as_a_conflict(taxonomy: Taxonomy) -> None:
    cuts = GroupFusion(1.0, 1.0, threshold=0.9, conflict_title=0.5, conflict_image=0.05)
    bundle = Bundle(taxonomy, fusion=Fusion({"colour": cuts}))
    preds = photos([[0.98, 0.01, 0.01], [0.98, 0.01, 0.01]], [0, 0])
    figures = compare_sources(bundle, preds, ["Red Shirt", "Blue Shirt"], masked=False)["sources"]
    assert figures["fused"]["colour"]["conflicts"] == 1
    assert "title_masked" not in figures


def test_a_bundle_that_reads_no_titles_has_nothing_to_compare(taxonomy: Taxonomy) -> None:
    with pytest.raises(ValueError, match="reads no titles"):
        compare_sources(Bundle(taxonomy, title_model=None), photos([[1.0, 0.0, 0.0]], [0]), ["Blue"])


def test_coverage_at_precision_is_the_longest_most_confident_run_that_keeps_it() -> None:
    conf = np.array([0.99, 0.98, 0.97, 0.6, 0.5])
    right = np.array([True, True, True, False, True])
    assert coverage_at_precision(conf, right, 0.99) == pytest.approx(0.6)
    assert coverage_at_precision(conf, right, 0.8) == pytest.approx(1.0)
    assert coverage_at_precision(conf, ~right, 0.99) == 0.0


def test_the_table_has_a_row_per_group_and_a_column_per_source(taxonomy: Taxonomy) -> None:
    preds = photos([[0.9, 0.05, 0.05]], [0])
    lines = comparison_lines(compare_sources(Bundle(taxonomy), preds, ["Blue Shirt"]))
    assert lines[0].split() == ["group", "photos", "title", "fused", "title_masked", "fused_masked"]
    assert lines[2].split()[0] == "colour" and len(lines) == 3


def test_titles_with_the_value_word_swapped_measure_the_conflict_check(taxonomy: Taxonomy) -> None:
    cuts = GroupFusion(1.0, 1.0, threshold=0.9, conflict_title=0.5, conflict_image=0.05)
    bundle = Bundle(taxonomy, fusion=Fusion({"colour": cuts}))
    n = 60  # blue products, their photos sure of it; ten of their titles do not name the colour
    preds = photos([[0.98, 0.01, 0.01]] * n, [0] * n)
    titles = [f"Blue Shirt {i}" for i in range(n - 10)] + [f"Cotton Shirt {i}" for i in range(10)]
    swaps = compare_sources(bundle, preds, titles, masked=False)["swaps"]
    assert swaps["colour"] == {"swapped": n - 10, "flagged": 1.0, "clean": n, "clean_flagged": 0.0}
    # with a cut-off no photo reaches, the same swaps go unflagged: the figure measures the check
    blind = Bundle(taxonomy, fusion=Fusion({"colour": GroupFusion(1.0, 1.0, threshold=0.9)}))
    assert compare_sources(blind, preds, titles, masked=False)["swaps"]["colour"]["flagged"] == 0.0


def test_the_comparison_is_drawn_as_a_png(taxonomy: Taxonomy, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from learner.evaluation.report import plot_sources

    preds = photos([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1]], [0, 0])
    path = plot_sources(compare_sources(Bundle(taxonomy), preds, ["Blue Shirt", "Shirt"]), tmp_path / "sources.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
