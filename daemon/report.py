"""The HTML report of enriched products: one static file, photos embedded as JPEG thumbnails, no script and no
request to anywhere, so it can be mailed or opened from a CI artifact.

Each product is a card (`article.product-card`): its photo, title (else its id), id and description, and one row per
attribute with the value, what the model decided it from (`fused`: photos and title together, `image`: the photos,
`title`: the title alone), the confidence (a bar and the figure), and whether it was auto-filled, kept as a
suggestion (below its group's auto-fill threshold) or set by an annotator, and the model version that produced it. A
value withheld because the title and the photos disagree (`title_photo_conflict`) is followed by both readings, the
title's and the photos'. The header counts products, values and conflicts. Written by `shelfsight report` and at the
end of `shelfsight demo`.

What it must not do: query the database (connectors/db/report_view.py reads it), fetch http(s) images (a card shows
the address instead), or read configuration.
"""

from __future__ import annotations

import base64
import html
import io
import time
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from connectors.db.report_view import CatalogSnapshot, ReportedProduct
from connectors.db.types import StoredAttribute
from connectors.records import TITLE_PHOTO_CONFLICT
from learner.model.shift_guard import UNFAMILIAR_PHOTO

THUMBNAIL_PX = 200
MAX_PIXELS = 40_000_000  # a decompression bomb is shown as "image not shown", not decoded
DESCRIPTION_CHARS = 240  # a longer description is cut on the card (the whole text is its tooltip)
# what a model value was decided from (`readings["decided_from"]`, learner/inference/product_decision.py) as the
# report names it; a model value without readings (written before, or a multi-label or detector value) is "image"
SOURCES = {"photos+title": "fused", "photos": "image", "title": "title"}


@dataclass(frozen=True)
class ReportCounts:
    products: int  # shown in the report
    total_products: int  # in the database
    auto_filled: int  # model values auto-filled
    suggested: int  # model values kept as suggestions (below the auto-fill threshold)
    human: int  # values set by annotators
    routed: int  # products with a review-outbox row
    model_versions: tuple[str, ...]
    conflicts: int = 0  # model values withheld because the title and the photos disagree


def count_values(snapshot: CatalogSnapshot) -> ReportCounts:
    kinds: Counter[str] = Counter()
    versions: set[str] = set()
    conflicts = 0
    for item in snapshot.products:
        for attr in item.product.attributes.values():
            kinds[_kind(attr)] += 1
            conflicts += _conflict(attr)
            if attr.model_version:
                versions.add(attr.model_version)
    return ReportCounts(
        products=len(snapshot.products),
        total_products=snapshot.total_products,
        auto_filled=kinds["auto"],
        suggested=kinds["suggestion"],
        human=kinds["human"],
        routed=sum(1 for p in snapshot.products if p.routed_for_review),
        model_versions=tuple(sorted(versions)),
        conflicts=conflicts,
    )


def write_report(snapshot: CatalogSnapshot, out: Path, *, source: str, file_root: Path | None = None) -> Path:
    """Write the report for `snapshot` to `out` (atomically) and return it. `source` names the database (redacted);
    `file_root`, when given, is the only directory whose file:// images are embedded."""
    counts = count_values(snapshot)
    cards = "\n".join(_card(item, file_root) for item in snapshot.products)
    shown = (
        f"{counts.products} products"
        if counts.products == counts.total_products
        else f"the {counts.products} most recently updated of {counts.total_products} products"
    )
    empty = "" if snapshot.products else '<p class="empty">No enriched products in this database yet.</p>'
    page = _PAGE.format(
        title="ShelfSight: enriched products",
        generated=html.escape(time.strftime("%Y-%m-%d %H:%M:%S %Z")),
        source=html.escape(source),
        shown=html.escape(shown),
        auto=counts.auto_filled,
        suggested=counts.suggested,
        human=counts.human,
        routed=counts.routed,
        conflicts=counts.conflicts,
        versions=html.escape(", ".join(counts.model_versions) or "-"),
        cards=cards,
        empty=empty,
        css=_CSS,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out


def _kind(attr: StoredAttribute) -> str:
    if attr.source == "human":
        return "human"
    return "auto" if attr.auto_filled else "suggestion"


def _conflict(attr: StoredAttribute) -> bool:
    return attr.source != "human" and attr.withheld_by == TITLE_PHOTO_CONFLICT


def value_source(attr: StoredAttribute) -> str | None:
    """What a model value was decided from, as the report names it (`SOURCES`); None for an annotator's value."""
    if attr.source == "human":
        return None
    return SOURCES.get(str((attr.readings or {}).get("decided_from")), "image")


def _readings(attr: StoredAttribute) -> str:
    """The row under a conflicting value: the title's reading and the photos'."""
    readings = attr.readings or {}
    said = []
    for signal, verb in (("title", "title says"), ("photos", "photos say")):
        reading = readings.get(signal)
        if isinstance(reading, dict) and reading.get("value") is not None:
            figure = f" {float(reading['confidence']):.2f}" if reading.get("confidence") is not None else ""
            said.append(f"{verb} <b>{html.escape(str(reading['value']))}</b>{figure}")
    text = " &middot; ".join(said) or "the title and the photos disagree"
    return f'<tr class="readings"><td colspan="4">title/photo conflict: {text}</td></tr>'


_COLUMNS = '<colgroup><col class="g"><col class="v"><col class="c"><col class="m"></colgroup>'
_MARKS = {"auto": "auto", "suggestion": "suggested", "human": "human"}
_FROM = {
    "fused": "decided from the photos and the title together",
    "image": "decided from the photos",
    "title": "decided from the title alone (no photo the model could read)",
}


def _card(item: ReportedProduct, file_root: Path | None) -> str:
    p = item.product
    rows = []
    for name, attr in p.attributes.items():
        kind = _kind(attr)
        value = ", ".join(attr.value) if isinstance(attr.value, list) else attr.value
        pct = max(0.0, min(1.0, attr.confidence)) * 100
        who = attr.annotator if kind == "human" else attr.model_version
        source = value_source(attr)
        tag = f' <span class="from {source}" title="{_FROM[source]}">{source}</span>' if source else ""
        conflict = " conflict" if _conflict(attr) else ""
        rows.append(
            f'<tr class="attr {kind}{conflict}"><th>{html.escape(name)}</th>'
            f'<td class="value">{html.escape(value or "-")}{tag}</td>'
            f'<td class="conf"><span class="bar"><span style="width:{pct:.0f}%"></span></span>{attr.confidence:.2f}'
            f'</td><td class="mark" title="{html.escape(who or "")}">{_MARKS[kind]}</td></tr>'
        )
        if conflict:
            rows.append(_readings(attr))
    routed = '<span class="routed">waiting for review</span>' if item.routed_for_review else ""
    if any(a.withheld_by == UNFAMILIAR_PHOTO for a in p.attributes.values() if a.source != "human"):
        routed += (
            ' <span class="unfamiliar" title="the photo is unlike the photos the model was trained on: nothing of it'
            ' is auto-filled">unfamiliar photo</span>'
        )
    if any(_conflict(a) for a in p.attributes.values()):
        routed += (
            ' <span class="conflict" title="the title and the photos confidently disagree: nothing of those groups is'
            ' auto-filled">title/photo conflict</span>'
        )
    versions = sorted({a.model_version for a in p.attributes.values() if a.model_version})
    description = ""
    if p.description:
        cut = p.description if len(p.description) <= DESCRIPTION_CHARS else p.description[:DESCRIPTION_CHARS] + "…"
        description = f'<p class="description" title="{html.escape(p.description)}">{html.escape(cut)}</p>'
    return (
        f'<article class="product-card" data-product-id="{html.escape(p.product_id)}">'
        f"{_photo(item.image_url, file_root)}"
        f'<div class="body"><h2>{html.escape(p.title or p.product_id)}</h2>'
        f'<p class="meta">{html.escape(p.product_id)} {routed}</p>{description}'
        f"<table>{_COLUMNS}{''.join(rows)}</table>"
        f'<p class="model">model {html.escape(", ".join(versions) or "-")}</p></div></article>'
    )


def _photo(url: str | None, file_root: Path | None) -> str:
    if url is None:
        return '<div class="photo missing">no image</div>'
    if not url.startswith("file://"):
        return f'<div class="photo missing">not embedded: <a href="{html.escape(url)}">{html.escape(url)}</a></div>'
    path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))
    try:
        if file_root is not None and not path.resolve().is_relative_to(file_root.resolve()):
            raise ValueError(f"outside {file_root}")
        data = _thumbnail(path)
    except (OSError, ValueError) as exc:
        return f'<div class="photo missing">image not shown ({html.escape(str(exc)[:120])})</div>'
    return f'<img class="photo" alt="{html.escape(path.name)}" src="data:image/jpeg;base64,{data}">'


def _thumbnail(path: Path) -> str:
    from PIL import Image

    with Image.open(path) as img:
        if img.width * img.height > MAX_PIXELS:
            raise ValueError(f"{img.width}x{img.height} pixels is above the limit")
        img.draft("RGB", (THUMBNAIL_PX * 2, THUMBNAIL_PX * 2))  # JPEG: decode at a reduced size
        thumb = img.convert("RGB")
        thumb.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        buf = io.BytesIO()
        thumb.save(buf, format="JPEG", quality=80)
    return base64.b64encode(buf.getvalue()).decode("ascii")


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f4f4f2;color:#222}
header{padding:16px 24px;background:#1f2a36;color:#fff}
header h1{margin:0 0 4px;font-size:20px}
header p{margin:2px 0;color:#cfd6dd}
.legend span{display:inline-block;margin-right:14px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(440px,1fr));gap:14px;padding:16px 24px}
.product-card{background:#fff;border-radius:6px;box-shadow:0 1px 3px #0002;display:flex;gap:10px;padding:10px}
.photo{width:110px;height:150px;object-fit:contain;flex:none;background:#fafafa}
.photo.missing{display:flex;align-items:center;justify-content:center;font-size:11px;color:#888;
  text-align:center;overflow:hidden;word-break:break-all}
.body{flex:1;min-width:0}
h2{font-size:14px;margin:0 0 2px}
.meta,.model{font-size:11px;color:#666;margin:0 0 4px;word-break:break-all}
table{border-collapse:collapse;width:100%;font-size:12px;table-layout:fixed}
col.g{width:31%}col.v{width:30%}col.c{width:23%}col.m{width:16%}
th{text-align:left;font-weight:500;color:#555;padding:1px 4px 1px 0;overflow:hidden;text-overflow:ellipsis}
td{padding:1px 4px}
td.value{font-weight:600}
.unfamiliar,span.conflict{color:#b02020;font-weight:600}
tr.conflict td.value,tr.conflict td.conf{color:#b02020}
.description{font-size:12px;color:#444;margin:0 0 4px}
.from{font-size:10px;font-weight:400;color:#666;border:1px solid #ccc;border-radius:3px;padding:0 3px}
.from.fused{color:#245;border-color:#9ab}
.from.title{color:#624;border-color:#c9a}
tr.readings td{font-size:11px;color:#b02020;padding:0 4px 3px 12px}
tr.suggestion td.value{color:#9a6a00;font-style:italic}
tr.human td.value{color:#1b6e2a}
td.mark{font-size:10px;color:#777;white-space:nowrap}
tr.suggestion td.mark{color:#9a6a00}
.conf{white-space:nowrap;font-variant-numeric:tabular-nums}
.bar{display:inline-block;width:40px;height:6px;background:#e4e4e4;margin-right:4px;vertical-align:middle}
.bar span{display:block;height:100%;background:#4a7bd0}
tr.suggestion .bar span{background:#d9a21b}
.routed{background:#fde8c4;color:#7a4d00;border-radius:3px;padding:0 4px}
.empty{padding:24px}
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{css}</style></head>
<body><header><h1>{title}</h1>
<p>{shown}; {auto} values auto-filled, {suggested} suggestions (below the auto-fill threshold), {human} set by
annotators; {routed} products routed for review; {conflicts} values where the title and the photos disagree</p>
<p>model versions: {versions} &middot; database: {source} &middot; generated {generated}</p>
<p class="legend"><span><b>auto</b>: auto-filled, the daemon wrote it as the product's value</span>
<span><i>suggested</i>: kept, but below its group's auto-fill threshold: a person should confirm it</span>
<span><b>human</b>: set by an annotator</span></p>
<p class="legend"><span><b>fused</b>: decided from the photos and the title together</span>
<span><b>image</b>: from the photos</span><span><b>title</b>: from the title alone</span>
<span><b>title/photo conflict</b>: the title and the photos disagree; both readings are shown, nothing of that group
is auto-filled</span></p>
</header>
<main class="grid">
{cards}
</main>{empty}
</body></html>
"""
