"""The shipped starter keeps the auto-fill promise on photos unlike its training photos: no value under its group's
confidence floor is ever auto-filled, CC0 user photos of clothes get only values that are right (>= 0.95 in every group
that auto-fills anything there), and street scenes (COCO) get nothing auto-filled on at least 95% of them.

The user photos and street scenes come from ../shared/data (clothing-cc0, coco128): outside CI a missing folder
skips those tests with the reason; in CI (env CI set) it fails. The class map of the CC0 set is
`tests.benchmarks.shift_guard.CC0_MAP`, the one the benchmark (docs/model-card.md, "Shift guard") reports with."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from learner.inference.backends import load_engine
from learner.inference.engine import ImageTags, TagError, TaggingEngine
from tests.benchmarks.shift_guard import CC0_GROUPS, CC0_MAP, LabelledPhotos, cc0_photos, figures

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "deploy" / "demo" / "starter.safetensors"
DATA = ROOT.parent / "shared" / "data"


def shared(folder: str) -> Path:
    path = DATA / folder
    if not path.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing and CI is set: CI always has ../shared beside the checkout")
        pytest.skip(f"{path} is not here (../shared/data beside the checkout)")
    return path


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TaggingEngine]:
    yield load_engine(BUNDLE, "onnxruntime", device="cpu", onnx_cache_dir=tmp_path_factory.mktemp("onnx"))


def tag(engine: TaggingEngine, paths: list[Path]) -> list[ImageTags]:
    out = []
    for i in range(0, len(paths), 32):
        for t in engine.tag_bytes([p.read_bytes() for p in paths[i : i + 32]]):
            assert not isinstance(t, TagError), t
            out.append(t)
    return out


def test_the_starter_never_auto_fills_a_value_under_its_groups_confidence_floor(engine: TaggingEngine) -> None:
    assert engine.bundle.shift_guard is not None, "the starter ships with a shift guard"
    taxonomy = engine.bundle.taxonomy
    photos = sorted((ROOT / "deploy" / "demo" / "clothing-cc0" / "images").glob("*.jpg"))
    guard, engine.decoder.shift_guard = engine.decoder.shift_guard, None  # the floor alone: no photo withheld
    try:
        tagged = tag(engine, photos)
    finally:
        engine.decoder.shift_guard = guard
    auto_filled, under_floor = 0, 0
    for t in tagged:
        for g in taxonomy.classifier_groups:
            if g.multi_label or not t.attributes.get(g.name):
                continue
            value, confidence = t.attributes[g.name][0]
            under_floor += confidence < g.auto_fill_confidence_floor
            if t.is_auto_filled(g.name):
                assert confidence >= g.auto_fill_confidence_floor, (g.name, value, confidence)
                auto_filled += 1
    assert auto_filled > 0 and under_floor > 0  # both kinds of value were there to check


@pytest.mark.xfail(
    strict=True,
    reason="issue 26, not met yet: the all-folders starter lets 37 CC0 photos through the shift guard with subCategory "
    "auto-filled, 5 wrong (0.865), and articleType on 10, 2 wrong; the single-folder starter before it: 19, 2 wrong. "
    "A stronger guard or user photos in training are needed. strict: when it passes, remove this marker",
)
def test_user_photos_of_clothes_get_only_values_that_are_right_at_least_95_percent_of_the_time(
    engine: TaggingEngine,
) -> None:
    photos = cc0_photos(shared("clothing-cc0"))
    assert len(photos.paths) == 255 and {len(m) for m in CC0_MAP.values()} == {3}
    found = figures(photos, tag(engine, photos.paths), CC0_GROUPS)
    for group in CC0_GROUPS:
        g = found[group]
        assert isinstance(g, dict)
        if g["n"]:
            assert g["precision"] >= 0.95, (group, g)


def test_street_scenes_get_nothing_auto_filled_on_at_least_95_percent_of_them(engine: TaggingEngine) -> None:
    photos = sorted((shared("coco128") / "images").rglob("*.jpg"))
    groups = [g.name for g in engine.bundle.taxonomy.classifier_groups if not g.multi_label]
    found = figures(LabelledPhotos("coco128", photos), tag(engine, photos), groups)
    assert 1.0 - float(found["any_auto_filled"]) >= 0.95, found  # type: ignore[arg-type]
