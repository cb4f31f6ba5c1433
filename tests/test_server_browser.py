"""The page in a real browser: search (text, uploaded image, click for similar items), the map, and
labelling by keyboard. Runs playwright against a locally installed Chromium; skipped (with the
reason) when either is missing. STYLESEARCH_SCREENSHOTS=DIR keeps a screenshot of each view."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from .test_server import picture_dataset, threaded_server  # noqa: E402,F401 (a fixture)

BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium() -> str | None:
    for candidate in (os.environ.get("STYLESEARCH_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@pytest.fixture
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("browser test skipped: playwright is not installed (pip install playwright)")
    executable = chromium()
    if executable is None:
        pytest.skip("browser test skipped: no Chromium found (apt-get install chromium, or set STYLESEARCH_CHROMIUM)")
    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=executable, args=BROWSER_ARGS, timeout=30_000)
        except Exception as exc:  # a browser that cannot start here (missing libraries, ...)
            pytest.skip(f"browser test skipped: {executable} did not start ({str(exc).splitlines()[0]})")
        yield browser
        browser.close()


@pytest.fixture
def served(root, threaded_server):
    paths = picture_dataset(root, count=30)
    return threaded_server(), paths


def shot(page, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / name), full_page=False)
    folder = os.environ.get("STYLESEARCH_SCREENSHOTS")
    if folder:
        shutil.copy(tmp_path / name, Path(folder) / name)


@pytest.mark.slow  # starts chromium
def test_page_search_map_and_labelling(browser, served, tmp_path):
    from stylesearch.learn.judgments import read_log

    url, paths = served
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url + "/", wait_until="networkidle")
    assert page.locator("#dataset").input_value() == "pics"

    page.keyboard.press("Escape")  # the query box has focus on load; Escape leaves it, / comes back
    page.keyboard.press("/")
    page.keyboard.type("striped red -blue")
    page.keyboard.press("Enter")
    page.wait_for_selector("#results .card")
    assert page.locator("#results .card").count() == 24
    assert '"striped red" -blue' in page.locator("#search-status").inner_text()
    page.wait_for_function("[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth)")
    shot(page, tmp_path, "stylesearch-search.png")

    page.locator("#results .card").first.focus()
    page.keyboard.press("ArrowRight")
    second = page.evaluate("document.activeElement.dataset.id")
    page.keyboard.press("Enter")
    page.wait_for_function(f"document.querySelector('#q').value === 'like:{second}'")
    page.wait_for_function(f"document.querySelector('#search-status').textContent.includes('like:{second}')")

    image = next(paths.images.rglob("dots-*.jpg"))
    page.set_input_files("#file", str(image))
    page.fill("#q", "")
    page.click("button[type=submit]")
    page.wait_for_function("document.querySelector('#search-status').textContent.includes('image:')")
    assert page.locator("#results .card .path").first.inner_text() == str(image.relative_to(paths.images))
    shot(page, tmp_path, "stylesearch-image-search.png")

    page.click("#nav-map")
    page.wait_for_function("document.querySelector('#map-status').textContent.includes('30 items')")
    page.wait_for_timeout(300)  # atlas pages drawn
    shot(page, tmp_path, "stylesearch-map.png")
    assert page.evaluate("(() => { const c = document.querySelector('#map'); const d = c.getContext('2d')"
                         ".getImageData(0, 0, c.width, c.height).data; let n = 0;"
                         " for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; })()") > 5000

    page.click("#nav-label")
    page.wait_for_function("document.querySelector('#pane-anchor img').naturalWidth > 0")
    page.wait_for_function("document.querySelector('#label-status').textContent.includes('0 judgments')")
    anchor = page.locator("#pane-anchor .caption").inner_text()
    page.keyboard.press("a")
    page.wait_for_function("document.querySelector('#label-status').textContent.startsWith('1 judgments')")
    page.keyboard.press("ArrowRight")
    page.wait_for_function("document.querySelector('#label-status').textContent.startsWith('2 judgments')")
    page.keyboard.press("u")
    page.wait_for_function("document.querySelector('#label-status').textContent.startsWith('1 judgments')")
    page.keyboard.press("s")
    page.wait_for_function("document.querySelector('#label-status').textContent.startsWith('2 judgments')")
    page.wait_for_function("document.querySelector('#pane-anchor img').naturalWidth > 0")
    page.wait_for_timeout(200)  # the chosen pane's flash is over
    shot(page, tmp_path, "stylesearch-label.png")
    choices = [j["choice"] for j in read_log(paths.triplets).judgments]
    page.goto(url + "/docs", wait_until="networkidle")  # OpenAPI docs, assets served locally when bundled
    page.wait_for_selector(".opblock", timeout=10_000)
    shot(page, tmp_path, "stylesearch-docs.png")
    assert choices == ["left", "too_similar"] and anchor
    assert errors == []
