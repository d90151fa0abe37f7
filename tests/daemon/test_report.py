"""The HTML report of enriched products (`shelfsight report`, and the end of `shelfsight demo`), opened in a real
headless Chromium: every product is a card the browser lays out, its photo decodes, the page logs no console error;
and the check itself can fail (a page without products counts zero cards, a page with a script error is caught)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from connectors.db import ProductStore
from connectors.db.report_view import read_report_products
from connectors.records import AttributeValue, ProductResult
from daemon.cli import app
from daemon.report import count_values, write_report


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
