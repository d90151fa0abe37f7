"""`shelfsight demo` end to end on a few CC0 photos with a small shrunk bundle (the shipped starter model is checked by
tests/deploy/test_starter_bundle.py): it tags without training, marks suggestions, writes the review queue file, the
report and the summary; without a model it says how to build one. And `shelfsight tag` without --model says which
model it chose."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from daemon.cli import app
from learner.lifecycle.registry import ModelRegistry
from learner.model.bundle import shrink_bundle


@pytest.fixture(scope="module")
def small_bundle(calibrated_bundle_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The calibrated test bundle (garment never auto-filled, kids always) with float16 weights, like the starter."""
    return shrink_bundle(calibrated_bundle_path, tmp_path_factory.mktemp("starter") / "starter.safetensors").path


def test_demo_tags_user_photos_routes_the_unsure_and_writes_a_report(small_bundle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    home = tmp_path / "demo"
    args = ["demo", "--model", str(small_bundle), "--limit", "5", "--show", "2", "--home", str(home)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "not catalog photos" in out
    assert "garment=" in out and "? = suggestion" in out and "?" in out.split("garment=")[1].split()[1]
    assert "products enriched  5 of 5 published" in out
    assert "values             10: 5 auto-filled, 5 suggestions" in out
    assert "dead letters       0" in out
    assert "demo/review-queue.jsonl (Label Studio is not configured" in out
    assert "cc0-untrained-test-fp16" in out and "demo/report.html" in out and "next: .venv/bin/shelfsight tag" in out
    queued = [json.loads(line) for line in (home / "review-queue.jsonl").read_text().splitlines()]
    assert len(queued) == 5 and all(q["low_values"][0]["group"] == "garment" for q in queued)
    assert (home / "report.html").read_text().count('class="product-card"') == 5
    # the CC0 photos have no titles, so the events carry none (nothing made up for a title model to read): the
    # products are shown by id and photo file
    published = [json.loads(f.read_text()) for f in sorted((home / "events" / "done").glob("demo-*.json"))]
    assert len(published) == 5 and not any("title" in event for event in published)
    first = published[0]["product_id"]
    assert f"\n  {first} ({Path(published[0]['image_urls'][0]).name})" in out and "User photo" not in out
    assert f"<h2>{first}</h2>" in (home / "report.html").read_text()

    again = CliRunner().invoke(app, args)  # a second run starts from a clean demo directory
    assert again.exit_code == 0 and "products enriched  5 of 5 published" in again.output


def test_demo_without_a_model_says_how_to_build_the_starter(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--model", str(tmp_path / "none.safetensors"), "--home", str(tmp_path)])
    assert result.exit_code == 2
    assert "bash deploy/demo/build_starter.sh" in result.output
    assert not (tmp_path / "events").exists()  # nothing was published


def test_tag_without_model_uses_the_registry_champion_else_model_path(small_bundle, cc0_images, tmp_path, monkeypatch):
    monkeypatch.setenv("SHELFSIGHT_MODEL_PATH", str(small_bundle))
    monkeypatch.setenv("SHELFSIGHT_LEARNER__REGISTRY_DIR", str(tmp_path / "registry"))
    result = CliRunner().invoke(app, ["tag", str(cc0_images[0])])
    assert result.exit_code == 0, result.output
    assert "model_path of the configuration" in result.output and "garment" in result.output

    registry = ModelRegistry(tmp_path / "registry")
    registry.promote(registry.register(small_bundle, source="test").version, reason="test")
    result = CliRunner().invoke(app, ["tag", str(cc0_images[0])])
    assert result.exit_code == 0, result.output
    assert "the champion of the registry" in result.output
