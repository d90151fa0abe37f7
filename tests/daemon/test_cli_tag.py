from __future__ import annotations

import json
import socket

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
