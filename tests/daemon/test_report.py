"""The HTML report of enriched products (`shelfsight report`, and the end of `shelfsight demo`), opened in a real
headless Chromium: every product is a card the browser lays out, its photo decodes, the page logs no console error;
and the check itself can fail (a page without products counts zero cards, a page with a script error is caught)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from connectors.db import ProductStore
from connectors.db.report_view import read_report_products
from connectors.records import TITLE_PHOTO_CONFLICT, AttributeValue, ProductResult
from daemon.cli import app
from daemon.report import DESCRIPTION_CHARS, count_values, write_report


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ProductStore]:
    s = ProductStore(f"sqlite:///{tmp_path / 'products.db'}")
    s.migrate()
    yield s
    s.close()


def _result(product_id: str, photo: Path, suggested: bool) -> ProductResult:
    return ProductResult(
        product_id=product_id,
        title=f"Product {product_id}",
        category_hint=None,
        event_id=f"evt-{product_id}",
        image_url=photo.resolve().as_uri(),
        image_digest=f"sha-{product_id}",
        model_version="fashion-test-v1-fp16",
        attributes=[
            AttributeValue("articleType", "Tshirts", 0.93),
            AttributeValue("baseColour", "Navy Blue", 0.41, auto_filled=not suggested),
        ],
        source=f"local:events/{product_id}.json",
    )


def test_report_shows_every_product_with_its_photo_and_no_console_error(store, cc0_images, tmp_path, render):
    store.write_results([_result(f"p{i}", photo, suggested=i % 2 == 0) for i, photo in enumerate(cc0_images[:3])])
    snapshot = read_report_products(store)
    counts = count_values(snapshot)
    assert (counts.products, counts.auto_filled, counts.suggested) == (3, 4, 2)
    page = write_report(snapshot, tmp_path / "report.html", source="test.db", file_root=cc0_images[0].parent)

    rendered = render(page)
    assert rendered.cards == 3
    assert rendered.photos_decoded == 3
    assert rendered.console_errors == []
    assert rendered.screenshot.stat().st_size > 10_000  # a real picture of the page, not a blank one
    html = page.read_text()
    assert "fashion-test-v1-fp16" in html and html.count('<tr class="attr suggestion">') == 2 and "Navy Blue" in html


def test_an_empty_database_renders_zero_cards_and_says_so(store, tmp_path, render):
    page = write_report(read_report_products(store), tmp_path / "empty.html", source="empty.db")
    rendered = render(page)
    assert rendered.cards == 0  # what the first test's `== 3` would catch if the page rendered no product
    assert "No enriched products" in page.read_text()


def test_the_browser_check_catches_a_script_error(tmp_path, render):
    page = tmp_path / "broken.html"
    page.write_text('<html><body><article class="product-card">x</article><script>nope();</script></body></html>')
    rendered = render(page)
    assert rendered.cards == 1
    assert any("nope" in e for e in rendered.console_errors)


def test_photos_outside_the_file_root_and_remote_photos_are_not_embedded(store, cc0_images, tmp_path):
    store.write_results([_result("local", cc0_images[0], suggested=False)])
    remote = _result("remote", cc0_images[1], suggested=False)
    store.write_results([ProductResult(**{**remote.__dict__, "image_url": "https://cdn.example/p.jpg"})])
    html = write_report(read_report_products(store), tmp_path / "r.html", source="x", file_root=tmp_path).read_text()
    assert "data:image/jpeg" not in html
    assert "outside" in html and 'href="https://cdn.example/p.jpg"' in html


def test_report_command_writes_the_page_and_refuses_a_missing_database(store, cc0_images, tmp_path):
    store.write_results([_result("p1", cc0_images[0], suggested=True)])
    out = tmp_path / "out" / "report.html"
    result = CliRunner().invoke(app, ["report", "--database", store.redacted_url, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "report of 1 products (1 values auto-filled, 1 suggestions)" in result.output
    assert out.read_text().count('class="product-card"') == 1
    missing = CliRunner().invoke(app, ["report", "--database", f"sqlite:///{tmp_path / 'nope.db'}"])
    assert missing.exit_code == 1 and "run `shelfsight demo`" in missing.output


def _cards(page: str) -> dict[str, str]:
    """Product id -> the card's HTML."""
    return {
        m[1]: m[0] for m in re.finditer(r'<article class="product-card" data-product-id="([^"]+)">.*?</article>', page)
    }


def _text(fragment: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", fragment).replace("&middot;", "·").split())


def test_a_card_shows_the_title_where_each_value_came_from_and_both_readings_of_a_conflict(
    store, cc0_images, tmp_path, render
):
    def read(title: str | None, photos: str | None, decided_from: str = "photos+title") -> dict[str, object]:
        return {
            "decided_from": decided_from,
            "title": {"value": title, "confidence": 0.97} if title else None,
            "photos": {"value": photos, "confidence": 0.88} if photos else None,
        }

    titled = _result("p1", cc0_images[0], suggested=False)
    described = ProductResult(
        **{
            **titled.__dict__,
            "title": "Nike Men Blue Round Neck T-shirt",
            "description": "Soft cotton jersey. " * 30,
            "attributes": [
                AttributeValue("articleType", "Tshirts", 0.99, readings=read("Tshirts", "Tshirts")),
                AttributeValue(
                    "baseColour", "Red", 0.52, auto_filled=False, withheld_by=TITLE_PHOTO_CONFLICT,
                    readings=read("Blue", "Red"),
                ),
                AttributeValue("gender", "Men", 0.91, readings=read("Men", None, decided_from="title")),
                AttributeValue("usage", "Casual", 0.95),  # no readings: from the photos, as before titles
            ],
        }
    )  # fmt: skip
    untitled = ProductResult(**{**_result("p2", cc0_images[1], suggested=True).__dict__, "title": None})
    store.write_results([described, untitled])
    snapshot = read_report_products(store)
    assert count_values(snapshot).conflicts == 1
    page = write_report(snapshot, tmp_path / "report.html", source="test.db", file_root=cc0_images[0].parent)

    html = page.read_text()
    cards = _cards(html)
    card, plain = cards["p1"], cards["p2"]
    assert "<h2>Nike Men Blue Round Neck T-shirt</h2>" in card and "<h2>p2</h2>" in plain  # no title: the id
    description = re.search(r'<p class="description"[^>]*>(.*?)</p>', card)
    assert description is not None and description[1].startswith("Soft cotton jersey.")
    assert len(description[1]) == DESCRIPTION_CHARS + 1 and description[1].endswith("…")  # cut, whole in the tooltip
    assert 'class="description"' not in plain

    rows = {m[1]: m[0] for m in re.finditer(r'<tr class="attr[^"]*"><th>([^<]+)</th>.*?</tr>', card)}
    sources = {group: re.findall(r'class="from (\w+)"', row) for group, row in rows.items()}
    assert sources == {"articleType": ["fused"], "baseColour": ["fused"], "gender": ["title"], "usage": ["image"]}
    assert 'class="from image"' in plain
    assert 'class="attr suggestion conflict"' in rows["baseColour"]
    assert "title/photo conflict: title says Blue 0.97 · photos say Red 0.88" in _text(card)
    assert _text(card).count("title/photo conflict:") == 1 and "title/photo conflict" not in _text(plain)
    assert "1 values where the title and the photos disagree" in _text(html)

    rendered = render(page)
    assert (rendered.cards, rendered.photos_decoded, rendered.console_errors) == (2, 2, [])
