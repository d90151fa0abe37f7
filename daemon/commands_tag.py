"""`shelfsight tag`: what would ShelfSight say about these product photos?

Reads local files or http(s) URLs (fetched with the same size/time limits and address guard as the
daemon), tags them with one model bundle, prints attributes with confidences (or JSON), and can draw
boxes, masks (tinted; a mask detector's) and attribute labels onto a PNG; a mask's dominant colour is shown
beside the classifier's. A bad image gets a one-line error naming it; the exit status is
non-zero only when nothing at all could be tagged. A value below its group's auto-fill threshold (calibrated
bundles, see `shelfsight models calibrate`) is marked as a suggestion: the daemon would not auto-fill it.

With `--title` (one image), the title is shown, and when the bundle reads titles (a title model and its fusion) the
product's values as the daemon would decide them from the photo and the title follow: each with what it was decided
from (fused, image, title) and, for a title/photo conflict, both readings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from connectors.records import TITLE_PHOTO_CONFLICT, AttributeValue
from daemon.cli_support import default_model, fail, load_settings, shown_path
from daemon.report import SOURCES
from learner.inference.engine import ImageTags, TagError
from learner.model.shift_guard import UNFAMILIAR_PHOTO


def register(app: typer.Typer) -> None:
    app.command("tag")(tag_command)


def tag_command(
    images: list[str] = typer.Argument(..., help="Image files or http(s) URLs."),
    model: Path | None = typer.Option(
        None,
        "--model",
        "-m",
        help="Model bundle (.safetensors). Default: the registry's champion, else model_path, else the starter model.",
    ),
    title: str | None = typer.Option(
        None,
        "--title",
        help="The product's title (one image only): shown, and read with the photo when the bundle has a title model.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document instead of text."),
    draw: Path | None = typer.Option(None, "--draw", help="Write a PNG with boxes and labels (first image)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    backend: str = typer.Option(
        "torch", "--backend", help="torch or onnxruntime (exports the bundle to ONNX beside it on first use)."
    ),
    top_k: int = typer.Option(3, help="Candidate values shown per attribute group."),
    batch_size: int = typer.Option(32, help="Images per forward pass."),
    max_bytes: int = typer.Option(20_000_000, help="Largest image download accepted."),
    allow_private_networks: bool = typer.Option(
        False, help="Allow URLs that resolve to loopback/private addresses (refused by default)."
    ),
) -> None:
    """Tag product images with catalog attributes and confidences."""
    from learner.inference.backends import BACKENDS, load_engine
    from learner.model.manifest import BundleError

    if backend not in BACKENDS:
        raise fail(f"--backend must be one of {', '.join(BACKENDS)}, not {backend!r}", 2)
    title = (title or "").strip() or None
    if title is not None and len(images) != 1:
        raise fail(f"--title names one product: give one image with it, not {len(images)}", 2)
    if model is None:
        model, why = default_model(load_settings())
        typer.echo(f"model: {shown_path(model)} ({why}; --model to choose another)", err=True)
    try:
        engine = load_engine(model, backend, device=device, top_k=top_k)
    except BundleError as exc:
        raise fail(str(exc), 2) from None
    bundle = engine.bundle

    loaded: list[tuple[str, bytes | TagError]] = [
        (name, data) for name, data in _read_all(images, max_bytes, allow_private_networks)
    ]
    payloads = [d for _, d in loaded if isinstance(d, bytes)]
    tagged = iter(engine.tag_bytes(payloads, batch_size=batch_size))
    results: list[tuple[str, ImageTags | TagError]] = [
        (name, next(tagged) if isinstance(d, bytes) else d) for name, d in loaded
    ]

    tagged_ok = [r for _, r in results if isinstance(r, ImageTags)]
    reads_titles = engine.decider.reads_titles
    # the product's values decided from its photo and its title, as the daemon would (None: no title read)
    decided = engine.decider.decide(tagged_ok, title) if title is not None and reads_titles and tagged_ok else None
    ok = 0
    for name, r in results:
        if isinstance(r, TagError):
            typer.echo(f"error: {name}: {r.reason}: {r.message}", err=True)
        else:
            ok += 1
    if as_json:
        doc = {
            "model_version": bundle.model_version,
            **({"title": title, "title_read": reads_titles} if title is not None else {}),
            "images": [{"image": name, **r.to_dict()} for name, r in results],
            **({"product": [_value_dict(a) for a in decided]} if decided is not None else {}),
        }
        typer.echo(json.dumps(doc, indent=2))
    else:
        for name, r in results:
            if isinstance(r, ImageTags):
                typer.echo(_format_text(name, r, title))
        if decided is not None:
            typer.echo(_format_decision(decided))
        elif title is not None and not reads_titles:
            typer.echo(f"  (model {bundle.model_version} has no title model: the title is shown, not read)")
    if draw is not None:
        first = next(((n, r) for n, r in results if isinstance(r, ImageTags)), None)
        if first is not None:
            data = next(d for n, d in loaded if n == first[0] and isinstance(d, bytes))
            _draw(data, first[1], draw, engine.max_pixels)
            typer.echo(f"drawing written to {draw}", err=True)
    if ok == 0:
        raise typer.Exit(1)


def _read_all(names: list[str], max_bytes: int, allow_private: bool) -> list[tuple[str, bytes | TagError]]:
    out: list[tuple[str, bytes | TagError]] = []
    fetcher = None
    for name in names:
        if name.startswith(("http://", "https://")):
            from connectors.images import FetchError, ImageFetcher

            if fetcher is None:
                fetcher = ImageFetcher(max_bytes=max_bytes, allow_private_networks=allow_private)
            try:
                out.append((name, fetcher.fetch(name).data))
            except FetchError as exc:
                out.append((name, TagError(f"fetch_{exc.reason}", str(exc))))
            continue
        path = Path(name)
        try:
            if path.stat().st_size > max_bytes:
                out.append((name, TagError("too_large", f"file is larger than {max_bytes:,} bytes")))
                continue
            out.append((name, path.read_bytes()))
        except FileNotFoundError:
            out.append((name, TagError("not_found", "no such file")))
        except OSError as exc:
            out.append((name, TagError("unreadable", exc.strerror or str(exc))))
    if fetcher is not None:
        fetcher.close()
    return out


def _format_text(name: str, tags: ImageTags, title: str | None = None) -> str:
    from learner.model.masks import area

    lines = [f"{name}  ({tags.width}x{tags.height}, model {tags.model_version})"]
    if title is not None:
        lines.append(f"  title: {json.dumps(title, ensure_ascii=False)}")
    if tags.unfamiliar:
        lines.append(
            f"  unfamiliar photo (shift score {tags.shift_score:.1f}, above the model's cut-off): unlike the photos the"
            " model was trained on, so nothing is auto-filled; every value below is a suggestion"
        )
    width = max((len(g) for g in tags.attributes), default=0)
    for group, values in tags.attributes.items():
        shown = ", ".join(f"{v} {c:.2f}" for v, c in values) or "-"
        why = "unfamiliar photo" if tags.unfamiliar else "below the auto-fill threshold"
        mark = "" if tags.is_auto_filled(group) or not values else f"  (suggestion: {why})"
        lines.append(f"  {group:<{width}}  {shown}{mark}")
    for d in tags.detections:
        box = ", ".join(f"{v:.0f}" for v in d.box)
        extra = "" if d.mask is None else f", mask of {area(d.mask)} px" + (f", colour {d.colour}" if d.colour else "")
        lines.append(f"  detected {d.label} {d.score:.2f} at [{box}]{extra}")
    return "\n".join(lines)


def _format_decision(values: list[AttributeValue]) -> str:
    """The product's values decided from its photo and its title: value, confidence, what it was decided from, and
    why a suggestion is one (for a title/photo conflict, both readings)."""
    lines = ["  the product, decided from the photo and the title (as the daemon would store it):"]
    width = max((len(a.attribute) for a in values), default=0)
    for a in values:
        value = ", ".join(a.value) if isinstance(a.value, list) else a.value
        source = SOURCES.get(str((a.readings or {}).get("decided_from")), "image")
        mark = "" if a.auto_filled else f"  (suggestion: {_why(a)})"
        lines.append(f"  {a.attribute:<{width}}  {value or '-'} {a.confidence:.2f}  {source}{mark}")
    return "\n".join(lines)


def _why(a: AttributeValue) -> str:
    if a.withheld_by == TITLE_PHOTO_CONFLICT:
        said = [
            f"{who} {reading['value']} {float(reading['confidence']):.2f}"
            for who, key in (("title says", "title"), ("photo says", "photos"))
            if isinstance(reading := (a.readings or {}).get(key), dict)
        ]
        return "title/photo conflict: " + (", ".join(said) or "the title and the photo disagree")
    if a.withheld_by == UNFAMILIAR_PHOTO:
        return "unfamiliar photo"
    return a.withheld_by or "below the auto-fill threshold"


def _value_dict(a: AttributeValue) -> dict[str, Any]:
    return {
        "attribute": a.attribute,
        "value": a.value,
        "confidence": round(float(a.confidence), 4),
        "auto_filled": a.auto_filled,
        "withheld_by": a.withheld_by,
        "source": SOURCES.get(str((a.readings or {}).get("decided_from")), "image"),
        "readings": a.readings,
    }


def _draw(data: bytes, tags: ImageTags, out: Path, max_pixels: int) -> None:
    from PIL import Image, ImageDraw, ImageFont

    from learner.inference.imaging import decode_image

    img = decode_image(data, max_pixels=max_pixels)
    scale = max(1.0, 480 / max(img.size))  # small catalog photos are enlarged so text is legible
    if scale > 1.0:
        img = img.resize((round(img.width * scale), round(img.height * scale)))
    font = ImageFont.load_default(size=14)
    lines: list[tuple[str, tuple[int, int, int]]] = [(f"model {tags.model_version}", (90, 90, 90))]
    if tags.unfamiliar:
        lines.append(("unfamiliar photo: nothing auto-filled", (200, 40, 40)))
    for group, values in tags.attributes.items():
        if values:
            v, c = values[0]
            auto = tags.is_auto_filled(group)
            text = f"{group}: {v} ({c:.2f})" + ("" if auto else " suggestion")
            lines.append((text, (0, 0, 0) if auto else (150, 110, 0)))
    # the panel is as wide as its longest line: nothing (not the model version) is cut
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    panel_w = 20 + max(300, *(round(measure.textlength(text, font=font)) for text, _ in lines))
    canvas = Image.new("RGB", (img.width + panel_w, max(img.height, 40 + 18 * len(lines))), "white")
    canvas.paste(img, (0, 0))
    _overlay_masks(canvas, tags, img.size)
    d = ImageDraw.Draw(canvas)
    for det in tags.detections:
        x1, y1, x2, y2 = (v * scale for v in det.box)
        d.rectangle((x1, y1, x2, y2), outline=(230, 30, 30), width=3)
        label = f"{det.label} {det.score:.2f}" + (f" {det.colour}" if det.colour else "")
        d.text((x1 + 3, y1 + 2), label, fill=(230, 30, 30), font=font)
    y = 10
    for i, (text, colour) in enumerate(lines):
        d.text((img.width + 10, y), text, fill=colour, font=font)
        y += 24 if i == 0 else 18
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, format="PNG")


MASK_TINTS = ((230, 30, 30), (30, 120, 230), (30, 170, 60), (200, 120, 0), (150, 40, 200), (0, 160, 160))


def _overlay_masks(canvas: Any, tags: ImageTags, size: tuple[int, int]) -> None:
    """Tint each detection's mask (a mask detector's) onto the photo at the top left of `canvas` (`size` pixels)."""
    from PIL import Image

    from learner.model.masks import decode

    for i, det in enumerate(d for d in tags.detections if d.mask is not None):
        assert det.mask is not None
        silhouette = Image.fromarray(decode(det.mask).astype("uint8") * 110).resize(size, Image.Resampling.NEAREST)
        tint = Image.new("RGB", size, MASK_TINTS[i % len(MASK_TINTS)])
        region = canvas.crop((0, 0, *size))
        canvas.paste(Image.composite(tint, region, silhouette), (0, 0))
