"""A real headless browser for the tests of pages ShelfSight writes: Debian's Chromium (deploy/dev/install_chromium.sh)
driven by Playwright's Python client, which is pointed at that binary (Playwright's own browser download cannot work
without internet access).

`render(path)` opens a local HTML file, waits until it has loaded, takes a screenshot and returns what a person would
have seen: how many product cards are laid out with a size, how many of their photos decoded, and every console error
or uncaught page error. Outside CI a missing chromium skips the test with the install command; in CI (env CI set) the
install script is run once, and a chromium still missing fails the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL_CHROMIUM = ROOT / "deploy" / "dev" / "install_chromium.sh"
# as the machine notes say: no sandbox as root, and none of Chromium's own network traffic (refused here anyway)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass(frozen=True)
class Rendered:
    cards: int  # elements matching the card selector with a non-zero size on the page
    photos_decoded: int  # <img> inside those cards that the browser decoded (naturalWidth > 0)
    console_errors: list[str]  # console.error messages and uncaught exceptions
    screenshot: Path


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None and os.environ.get("CI") and os.geteuid() == 0:
        subprocess.run(["bash", str(INSTALL_CHROMIUM)], check=False, timeout=900)
        path = shutil.which("chromium")
    if path is None:
        hint = f"install it with `bash {INSTALL_CHROMIUM.relative_to(ROOT)}`"
        if os.environ.get("CI"):
            pytest.fail(f"chromium is not installed and CI is set: {hint}")
        pytest.skip(f"chromium is not installed; {hint}")
    return path


@pytest.fixture(scope="session")
def render(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Rendered]]:
    from playwright.sync_api import sync_playwright

    executable = _chromium()
    shots = tmp_path_factory.mktemp("screenshots")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, timeout=60_000)

        def render_page(page_file: Path, card_selector: str = "article.product-card") -> Rendered:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
            try:
                page.goto(page_file.resolve().as_uri(), wait_until="load", timeout=30_000)
                sizes = page.eval_on_selector_all(
                    card_selector,
                    "cards => cards.map(c => { const r = c.getBoundingClientRect(); return [r.width, r.height,"
                    " [...c.querySelectorAll('img')].filter(i => i.complete && i.naturalWidth > 0).length]; })",
                )
                shot = shots / f"{page_file.stem}.png"
                page.screenshot(path=str(shot), full_page=False)
            finally:
                page.close()
            visible = [s for s in sizes if s[0] > 0 and s[1] > 0]
            return Rendered(len(visible), sum(int(s[2]) for s in visible), errors, shot)

        yield render_page
        browser.close()
