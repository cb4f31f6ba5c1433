"""The page in a real browser (playwright + a local Chromium), as a person uses it: the collection on
the start page, searching (state in the URL, back/forward/reload, cancelled and failed searches, why
there are 0 results, the query item shown and focused), the map (thumbnails that never pile up, dots
and a hint without an atlas) and its neighbourhood view, and labelling (◆, what was recorded, undo).

One server and one browser for the module. Without playwright or Chromium the tests are skipped,
except in CI (the CI environment variable set), where that is a failure. STYLESEARCH_SCREENSHOTS=DIR
keeps the screenshots (they are always written to the test's tmp folder)."""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

pytest.importorskip("fastapi")

from .test_server import FakeEncoder, free_port, picture_dataset

BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]
pytestmark = pytest.mark.slow  # starts chromium


def chromium() -> str | None:
    for candidate in (os.environ.get("STYLESEARCH_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def unavailable(reason: str):
    """Skip, except in CI, where a browser test that cannot run is a failure (never a silent skip)."""
    if os.environ.get("CI"):
        pytest.fail(f"browser test cannot run in CI: {reason}", pytrace=False)
    pytest.skip(f"browser test skipped: {reason}")


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install playwright)")
    executable = chromium()
    if executable is None:
        unavailable("no Chromium found (apt-get install chromium, or set STYLESEARCH_CHROMIUM)")
    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=executable, args=BROWSER_ARGS, timeout=30_000)
        except Exception as exc:  # noqa: BLE001 - a browser that cannot start here (missing libraries, ...)
            unavailable(f"{executable} did not start ({str(exc).splitlines()[0]})")
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A served root: `pics` (30 images, thumbnails, atlas, metadata, coordinates, a learned metric)
    and `plain` (coordinates, no atlas). Searches for the text `slow` take 1.5 s on the server."""
    import uvicorn

    from stylesearch.learn.metric import DiagonalMetric, save_metric
    from stylesearch.server import queries
    from stylesearch.server.app import create_app
    from stylesearch.server.config import ServerConfig

    root = tmp_path_factory.mktemp("site")
    paths = picture_dataset(root, count=30)
    weights = np.linspace(0.2, 3.0, 48).astype(np.float32)
    save_metric(paths, "m", DiagonalMetric(weights, {"agreement_after": 0.81}))
    plain = picture_dataset(root, "plain", count=12)
    shutil.rmtree(plain.atlas)

    patch = pytest.MonkeyPatch()
    patch.setattr("stylesearch.query.search.query_encoder", lambda p, spec, device="auto", **_: FakeEncoder(48))
    search_one = queries.search_one

    def slow_when_asked(state, body, terms):
        if "slow" in body.terms:
            time.sleep(1.5)
        return search_one(state, body, terms)
    patch.setattr(queries, "search_one", slow_when_asked)
    port = free_port()
    app = create_app(ServerConfig(root=str(root), preload=False, port=port))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", paths
    server.should_exit = True
    thread.join(timeout=10)
    app.state.server.close()
    patch.undo()


class Watched:
    """A page with its script errors, failed responses and API requests recorded."""

    def __init__(self, browser, width=1280, height=860):
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.page = self.context.new_page()
        self.page.set_default_timeout(10_000)
        self.errors, self.failed, self.requests, self.aborted = [], [], [], []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("response", lambda r: r.status >= 400 and self.failed.append(f"{r.status} {r.url}"))
        self.page.on("request", lambda r: self.requests.append(f"{r.method} {urlsplit(r.url).path}?"
                                                                f"{urlsplit(r.url).query}"))
        self.page.on("requestfailed", lambda r: self.aborted.append(urlsplit(r.url).path))

    def count(self, pattern: str) -> int:
        return sum(bool(re.search(pattern, r)) for r in self.requests)

    def params(self) -> dict:
        return {k: v[0] for k, v in parse_qs(urlsplit(self.page.url).query).items()}

    def close(self):
        self.context.close()


def shot(page, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / name), full_page=False)
    folder = os.environ.get("STYLESEARCH_SCREENSHOTS")
    if folder:
        shutil.copy(tmp_path / name, Path(folder) / name)


def status_has(page, selector: str, text: str) -> None:
    try:
        page.wait_for_function("([s, t]) => document.querySelector(s).textContent.includes(t)", arg=[selector, text])
    except Exception:  # noqa: BLE001 - playwright's timeout, said in words
        raise AssertionError(f"{selector} never said {text!r}: {page.locator(selector).inner_text()!r}") from None


def test_search_start_page_url_state_and_feedback(browser, site, tmp_path):
    url, _ = site
    w = Watched(browser)
    page = w.page
    page.goto(url + "/", wait_until="networkidle")
    # the start page shows the collection, and its URL names the dataset and view
    status_has(page, "#search-status", "pics: 30 items")
    assert page.locator("#results .card").count() == 24 and w.params() == {"dataset": "pics", "view": "search"}
    assert page.evaluate("document.activeElement.id") == "q"
    shot(page, tmp_path, "page-start.png")

    page.keyboard.type("striped red -blue")
    page.keyboard.press("Enter")
    status_has(page, "#search-status", 'results in')
    assert '"striped red" -blue' in page.locator("#search-status").inner_text()
    assert w.params()["q"] == "striped red -blue"
    first_rows = page.locator("#results .card .path").all_inner_texts()

    # a click on a result: a similar search whose query item is shown, and focused
    page.locator("#results .card").nth(1).focus()
    clicked = page.evaluate("document.activeElement.dataset.id")
    page.keyboard.press("Enter")
    status_has(page, "#search-status", f"like:{clicked}")
    assert page.evaluate("document.activeElement.className") == "query-item"
    assert page.evaluate("document.activeElement.dataset.id") == clicked
    page.wait_for_function("document.querySelector('#query-items .query-ref').textContent.includes('/')")
    assert w.params()["q"] == f"like:{clicked}"
    assert clicked not in page.locator("#results .card").evaluate_all("cs => cs.map(c => c.dataset.id)")
    page.wait_for_function("[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth)")
    shot(page, tmp_path, "page-similar.png")

    # back restores the earlier search, forward the similar one, reload keeps it
    page.go_back()
    page.wait_for_function("document.querySelector('#q').value === 'striped red -blue'")
    status_has(page, "#search-status", '"striped red" -blue')
    assert page.locator("#results .card .path").all_inner_texts() == first_rows
    page.go_forward()
    status_has(page, "#search-status", f"like:{clicked}")
    page.reload(wait_until="networkidle")
    status_has(page, "#search-status", f"like:{clicked}")
    assert page.locator("#q").input_value() == f"like:{clicked}"

    # a link reproduces a search: k, filter and raw included, with one search request
    before = w.count(r"POST /api/datasets/pics/search")
    page.goto(url + "/?dataset=pics&q=striped+red&k=5&where=palette%3Dwarm&raw=1", wait_until="networkidle")
    status_has(page, "#search-status", "5 results")
    assert page.locator("#where").input_value() == "palette=warm" and page.locator("#raw").is_checked()
    assert all(t.startswith("palette=warm") for t in page.locator("#results .card .meta").all_inner_texts())
    assert w.count(r"POST /api/datasets/pics/search") == before + 1

    # 0 results say why: the filter, or the minimum score
    page.fill("#where", "palette=nosuch")
    page.click("button[type=submit]")
    status_has(page, "#search-status", "no item passes the filter palette=nosuch")
    page.fill("#where", "")
    page.fill("#min", "0.999")
    page.click("button[type=submit]")
    status_has(page, "#search-status", "no item scores at least 0.999")
    assert page.locator("#results .card").count() == 0

    # an error replaces the stale results
    page.fill("#min", "")
    page.fill("#q", "striped")
    page.click("button[type=submit]")
    status_has(page, "#search-status", "5 results")
    page.fill("#where", "palette<<warm")
    page.click("button[type=submit]")
    page.wait_for_selector("#results .search-error")
    assert page.locator("#results .card").count() == 0
    assert "filter" in page.locator("#results .search-error").inner_text().lower()
    shot(page, tmp_path, "page-error.png")

    # a second search cancels the first: old results dimmed meanwhile, the first answer never shown
    page.fill("#where", "")
    page.fill("#q", "slow")
    page.click("button[type=submit]")
    page.wait_for_selector("#results.stale")
    page.fill("#q", "dots")
    page.click("button[type=submit]")
    status_has(page, "#search-status", "for dots")
    assert w.aborted.count("/api/datasets/pics/search") == 1
    page.wait_for_timeout(1600)  # the slow answer would have arrived by now
    assert "for dots" in page.locator("#search-status").inner_text()
    assert page.locator("#results.stale").count() == 0
    assert w.errors == [] and [f for f in w.failed if not f.startswith("400 ")] == [], (w.errors, w.failed)
    w.close()


NO_OVERLAP = """(ids) => {  // the smallest gap between thumbnails on screen, in the larger axis (they are squares)
  const points = ids.map((id) => mapScreenPoint(id)).filter(Boolean);
  let least = Infinity;
  for (let a = 0; a < points.length; a++) for (let b = a + 1; b < points.length; b++)
    least = Math.min(least, Math.max(Math.abs(points[a][0] - points[b][0]), Math.abs(points[a][1] - points[b][1])));
  return least;
}"""
INKED = """() => { const c = document.querySelector('#map'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }"""


def click_item(page, item_id) -> None:
    point = page.evaluate(f"mapScreenPoint({item_id})")
    box = page.locator("#map").bounding_box()
    page.mouse.click(box["x"] + point[0], box["y"] + point[1])


def settled(page, item_id) -> None:
    status_has(page, "#map-status", f"Neighbourhood of #{item_id} ")
    page.wait_for_function("document.querySelector('#map').dataset.hood === 'settled'")


def test_map_overview_and_neighbourhood_view(browser, site, tmp_path):
    url, _ = site
    w = Watched(browser)
    page = w.page
    page.goto(url + "/?dataset=pics&view=map", wait_until="networkidle")
    status_has(page, "#map-status", "30 items")
    page.wait_for_function("state.map.pages.length && state.map.pages.every((p, n) => state.map.bitmaps[n])")
    page.wait_for_timeout(100)
    ids = page.evaluate("state.map.data.ids")
    assert page.evaluate("state.map.drawn") == {"dots": 30, "thumbs": 30}  # every item a thumbnail
    assert page.evaluate(NO_OVERLAP, ids) >= 40  # MAP.tile: none on another
    assert page.locator("#map-hint").is_hidden() and page.locator("#hood-bar").is_hidden()
    shot(page, tmp_path, "page-map.png")
    box = page.locator("#map").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(3):
        page.mouse.wheel(0, -100)
    page.wait_for_function("state.map.view.zoom > 1.9")
    page.wait_for_timeout(100)
    thumbs = page.evaluate("[...levelCells(state.map, zoomLevel(state.map)).of.keys()].map(i => state.map.data.ids[i])")
    assert len(thumbs) == 30 and page.evaluate(NO_OVERLAP, thumbs) >= page.evaluate("thumbSize(state.map)") > 30
    assert page.evaluate("document.activeElement.id") == "map"
    page.keyboard.press("0")
    page.wait_for_function("state.map.view.zoom === 1")

    # a click opens the neighbourhood: the selection at the centre, the others by distance
    target, other = ids[5], ids[20]
    click_item(page, target)
    settled(page, target)
    assert w.params()["item"] == str(target) and w.count(rf"GET /api/datasets/pics/distances/{target}\?") == 1
    centre = page.evaluate(f"mapScreenPoint({target})")
    size = page.evaluate("state.map.size")
    assert abs(centre[0] - size[0] / 2) < 1 and abs(centre[1] - size[1] / 2) < 1
    placed = page.evaluate("state.map.hood.nodes.map(i => [state.map.hood.distanceOf(i), ...mapScreenPoint("
                           "state.map.data.ids[i])])")
    assert len(placed) == 29
    distance, radius = np.array([p[0] for p in placed]), np.hypot(*(np.array([p[1:] for p in placed]) - centre).T)
    ranks = np.corrcoef(distance.argsort().argsort(), radius.argsort().argsort())[0, 1]
    assert ranks > 0.9, ranks  # nearer items sit nearer the centre
    assert page.evaluate(NO_OVERLAP, [i for i in ids if i != target]) >= page.evaluate("state.map.hood.tile") - 1
    assert "under the learned metric (diagonal)" in page.locator("#map-status").inner_text()
    assert page.locator("#map-tip").is_hidden()  # no tooltip left over from the map
    shot(page, tmp_path, "page-hood.png")

    page.check("#hood-raw")  # raw distances instead of the learned metric's
    status_has(page, "#map-status", "raw embedding distance")
    assert w.params()["raw"] == "1" and w.count(rf"/distances/{target}\?.*raw=true") == 1
    page.wait_for_function("document.querySelector('#map').dataset.hood === 'settled'")
    click_item(page, other)  # select another from inside
    settled(page, other)
    assert w.params()["item"] == str(other)
    page.go_back()
    settled(page, target)
    page.locator("#map").focus()
    page.keyboard.press("Escape")
    status_has(page, "#map-status", "30 items")
    assert "item" not in w.params() and page.locator("#hood-bar").is_hidden()
    page.reload(wait_until="networkidle")
    assert "item" not in w.params()
    page.go_back()  # the entry before Escape: the neighbourhood again
    settled(page, target)

    # without an atlas: dots, and a hint saying how to get thumbnails
    page.goto(url + "/?dataset=plain&view=map", wait_until="networkidle")
    status_has(page, "#map-status", "12 items")
    assert "stylesearch atlas plain" in page.locator("#map-hint").inner_text()
    assert page.evaluate(INKED) > 12 * 20
    shot(page, tmp_path, "page-map-dots.png")
    assert w.errors == [] and w.failed == [], (w.errors, w.failed)
    w.close()


PANES = """() => ['left', 'anchor', 'right'].map((s) => { const p = document.querySelector(`#pane-${s}`);
  return [p.dataset.id, p.querySelector('.pick').textContent, p.querySelector('.caption').textContent]; })"""
LINE_BREAKS = """(box) => {  // the character before each line break of a caption, and whether it fits its box
  const text = box.textContent, tops = [];
  const walker = document.createTreeWalker(box, NodeFilter.SHOW_TEXT);
  let node, offset = 0;
  while ((node = walker.nextNode())) {
    for (let i = 0; i < node.length; i++) {
      const range = document.createRange(); range.setStart(node, i); range.setEnd(node, i + 1);
      const rect = range.getBoundingClientRect();
      if (rect.width > 0) tops.push([offset + i, rect.top]);
    }
    offset += node.length;
  }
  const before = [];
  for (let k = 1; k < tops.length; k++) if (tops[k][1] > tops[k - 1][1] + 2) before.push(text[tops[k][0] - 1]);
  return { before, fits: box.scrollWidth <= box.clientWidth + 1, lines: before.length + 1 };
}"""


def test_labelling_marks_confirms_and_undoes_the_last_judgment(browser, site, tmp_path):
    from stylesearch.learn.judgments import read_log

    url, paths = site
    w = Watched(browser, width=420, height=900)  # a narrow window
    page = w.page
    page.goto(url + "/?dataset=pics&view=label", wait_until="networkidle")
    page.wait_for_function("document.querySelector('#pane-anchor img').naturalWidth > 0")
    status_has(page, "#label-status", "0 judgments recorded in pics (0 in this session)")
    assert "agrees with 81% of the answers" in page.locator("#label-status").inner_text()
    shown = []
    for n, (key, choice, words) in enumerate([("a", "left", "A (left) is more like the anchor"),
                                              ("ArrowRight", "right", "B (right) is more like the anchor"),
                                              ("s", "too_similar", "A and B are too similar to tell")], 1):
        panes, triplet = page.evaluate(PANES), page.evaluate("state.label.triplet")
        assert triplet["pick"] in ("left", "right")  # the metric's pick, marked as in the terminal labeller
        marked = [side for side, pane in zip(("left", "anchor", "right"), panes) if pane[1] == "◆ metric's pick"]
        assert marked == [triplet["pick"]]
        assert f"would pick {'A (left)' if triplet['pick'] == 'left' else 'B (right)'}" in \
            page.locator("#label-guess").inner_text()
        shown.append(panes)
        page.keyboard.press(key)
        status_has(page, "#label-status", f"{n} judgment{'s' if n > 1 else ''} recorded in pics ({n} in this session)")
        recorded = page.locator("#label-recorded")
        assert recorded.get_attribute("data-anchor") == panes[1][0]  # about the triplet judged, not the next
        assert recorded.inner_text().strip() == f"Recorded: {words}"
        assert page.locator("#label-recorded img.chosen").count() == (1 if choice != "too_similar" else 0)
        if n == 2:
            guessed = page.locator("#label-guess").inner_text()
            assert re.search(r"It guessed \d of your last 2 A/B answers", guessed), guessed
    page.wait_for_function("[...document.querySelectorAll('.pane img, #label-recorded img')].every(i => i.complete)")
    shot(page, tmp_path, "page-label-narrow.png")
    for box in page.locator(".pane .caption").element_handles():  # no caption broken inside a word
        lines = box.evaluate(LINE_BREAKS)
        assert lines["fits"] and set(lines["before"]) <= set("/-_ "), lines

    page.keyboard.press("u")  # undo withdraws the last judgment: its triplet comes back with its marks
    status_has(page, "#label-status", "2 judgments recorded")
    assert page.evaluate(PANES) == shown[2]
    assert page.locator("#label-recorded").inner_text().strip() == "Withdrawn: A and B are too similar to tell"
    page.keyboard.press("u")
    status_has(page, "#label-status", "1 judgment recorded")
    assert page.evaluate(PANES) == shown[1]
    assert [j["choice"] for j in read_log(paths.triplets).judgments] == ["left"]
    shot(page, tmp_path, "page-label-undone.png")
    assert w.errors == [] and w.failed == [], (w.errors, w.failed)
    w.close()
