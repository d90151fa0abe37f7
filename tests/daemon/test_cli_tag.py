from __future__ import annotations

import json
import socket

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from daemon.cli import app
from tests.learner.inference.test_engine import png_bomb

runner = CliRunner()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tag_prints_attributes_with_confidences(untrained_bundle_path, cc0_images, backend):
    result = runner.invoke(
        app, ["tag", str(cc0_images[0]), "--model", str(untrained_bundle_path), "--backend", backend]
    )
    assert result.exit_code == 0, result.output
    assert "garment" in result.stdout and "kids" in result.stdout
    assert "cc0-untrained-test" in result.stdout


def test_json_output_is_machine_readable(untrained_bundle_path, cc0_images, backend):
    result = runner.invoke(
        app, ["tag", *map(str, cc0_images[:2]), "--model", str(untrained_bundle_path), "--backend", backend, "--json"]
    )
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert [i["image"] for i in doc["images"]] == [str(p) for p in cc0_images[:2]]
    first = doc["images"][0]["attributes"]["garment"][0]
    assert set(first) == {"value", "confidence"} and 0 <= first["confidence"] <= 1


def test_draw_writes_a_png(untrained_bundle_path, cc0_images, tmp_path, backend):
    out = tmp_path / "drawn.png"
    result = runner.invoke(
        app,
        ["tag", str(cc0_images[0]), "--model", str(untrained_bundle_path), "--backend", backend, "--draw", str(out)],
    )
    assert result.exit_code == 0
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 300


def test_bad_inputs_get_one_line_errors_and_the_good_image_is_still_tagged(
    untrained_bundle_path, cc0_images, tmp_path, backend
):
    (tmp_path / "notimage.jpg").write_bytes(b"hello, I am text")
    good = cc0_images[0].read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (tmp_path / "bomb.png").write_bytes(png_bomb())
    url = f"http://127.0.0.1:{closed_port()}/shirt.jpg"
    bad = [str(tmp_path / "missing.jpg"), str(tmp_path / "notimage.jpg"), str(tmp_path / "truncated.jpg"),
           str(tmp_path / "bomb.png"), url]  # fmt: skip
    result = runner.invoke(
        app,
        [
            "tag",
            *bad,
            str(cc0_images[0]),
            "--model",
            str(untrained_bundle_path),
            "--backend",
            backend,
            "--allow-private-networks",
        ],
    )
    assert result.exit_code == 0, "one image could be tagged, so the command succeeds"
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == len(bad)
    for name, line in zip(bad, errors, strict=True):
        assert name in line
    assert "garment" in result.stdout


def test_exit_status_is_nonzero_when_nothing_could_be_tagged(untrained_bundle_path, tmp_path, backend):
    result = runner.invoke(
        app, ["tag", str(tmp_path / "missing.jpg"), "--model", str(untrained_bundle_path), "--backend", backend]
    )
    assert result.exit_code == 1
    assert "missing.jpg: not_found" in result.stderr


def test_a_corrupt_bundle_is_reported_not_a_traceback(cc0_images, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 100)
    result = runner.invoke(app, ["tag", str(cc0_images[0]), "--model", str(bad)])
    assert result.exit_code == 2
    assert "is not a ShelfSight bundle" in result.stderr


def test_values_below_their_auto_fill_threshold_are_shown_as_suggestions(calibrated_bundle_path, cc0_images, backend):
    text = runner.invoke(app, ["tag", str(cc0_images[0]), "--model", str(calibrated_bundle_path), "--backend", backend])
    assert text.exit_code == 0, text.output
    garment = next(line for line in text.stdout.splitlines() if line.strip().startswith("garment"))
    kids = next(line for line in text.stdout.splitlines() if line.strip().startswith("kids"))
    assert "suggestion" in garment and "suggestion" not in kids

    as_json = runner.invoke(
        app, ["tag", str(cc0_images[0]), "--model", str(calibrated_bundle_path), "--backend", backend, "--json"]
    )
    assert json.loads(as_json.stdout)["images"][0]["auto_filled"] == {"garment": False, "kids": True}


def test_a_title_is_shown_with_its_photo_and_names_one_product(untrained_bundle_path, cc0_images):
    args = ["tag", str(cc0_images[0]), "--model", str(untrained_bundle_path), "--title", " Puma Men Black Shoes "]
    text = runner.invoke(app, args)
    assert text.exit_code == 0, text.output
    assert text.stdout.splitlines()[1] == '  title: "Puma Men Black Shoes"'
    assert "has no title model: the title is shown, not read" in text.stdout  # a bundle without one says so
    doc = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    assert (doc["title"], doc["title_read"]) == ("Puma Men Black Shoes", False) and "product" not in doc
    assert "title" not in json.loads(runner.invoke(app, [*args[:4], "--json"]).stdout)

    two = runner.invoke(app, [*args, str(cc0_images[1])])
    assert two.exit_code == 2 and "--title names one product" in two.stderr


def test_a_bundle_that_reads_titles_shows_the_products_values_and_a_conflict_with_both_readings(
    untrained_bundle_path, cc0_images, tmp_path
):
    from learner.model.bundle import load_bundle, store_title_model
    from learner.model.fusion import Fusion, GroupFusion
    from learner.model.title_model import TitleModel, title_features

    title = "Denim Blouse"
    bundle = load_bundle(untrained_bundle_path)
    garment = bundle.taxonomy.group("garment").values
    features = sorted(set(title_features(title)))
    says_blouse = np.zeros((len(garment), 2), dtype=np.float32)
    says_blouse[garment.index("Blouse")] = [12.0, 0.0]  # every feature of the title points at Blouse
    titles = TitleModel(
        vocab={f: i for i, f in enumerate(features)},
        embedding=np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (len(features), 1)),
        heads={"garment": (says_blouse, np.zeros(len(garment))), "kids": (np.zeros((2, 2)), np.zeros(2))},
    )
    reads = store_title_model(untrained_bundle_path, tmp_path / "reads-titles.safetensors", titles, bundle.taxonomy)
    bundle = load_bundle(reads)
    # garment: a title sure of Blouse and photos not sure of it is a conflict; kids: fused and auto-filled
    bundle.fusion = Fusion(
        {
            "garment": GroupFusion(threshold=0.0, conflict_title=0.9, conflict_image=0.999),
            "kids": GroupFusion(threshold=0.0),
        }
    )
    bundle.save(reads)

    args = ["tag", str(cc0_images[0]), "--model", str(reads), "--title", title]
    text = runner.invoke(app, args)
    assert text.exit_code == 0, text.output
    lines = text.stdout.split("decided from the photo and the title")[1].splitlines()
    garment_line = next(line for line in lines if line.strip().startswith("garment"))
    assert (
        "fused" in garment_line
        and "(suggestion: title/photo conflict: title says Blouse 1.00, photo says" in garment_line
    )
    kids = next(line for line in lines if line.strip().startswith("kids"))
    assert "fused" in kids and "suggestion" not in kids

    doc = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    product = {v["attribute"]: v for v in doc["product"]}
    assert doc["title_read"] is True and product["garment"]["withheld_by"] == "title_photo_conflict"
    said = product["garment"]["readings"]["title"]
    assert said["value"] == "Blouse" and said["confidence"] > 0.99
    assert (product["kids"]["source"], product["kids"]["auto_filled"]) == ("fused", True)
