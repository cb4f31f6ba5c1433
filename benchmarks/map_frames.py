"""Frame times of the web page's map at 100k items, in Chromium (playwright), with level of detail
(thumbnails one per grid cell, only what is in view, dots thinned to a budget) and without it (every
item drawn every frame at its own place: the baseline) in the same run on the same data.

The dataset is synthetic (bench_data): N random vectors, 2-D coordinates in 60 clusters, and an atlas
of 32-px tiles (flat colours, laid out in map order as `atlas --order umap` does) written directly.
A frame is one synchronous redraw of the canvas after a pan or zoom step (performance.now() around
drawMap and a one-pixel read that makes the canvas carry out what was drawn); a scripted tour pans and zooms from the overview to 256x and back. The first frame at a new
zoom level includes that level's cell assignment. Baseline frames are fewer (each takes long).
Usage: python benchmarks/map_frames.py [COUNT] [FRAMES]
"""

import statistics
import sys
import tempfile
import threading
import time

import numpy as np
from bench_data import random_vector_dataset
from PIL import Image

from stylesearch.embed.models import ModelSpec
from stylesearch.maps.projection import save_projection
from stylesearch.store.files import atomic_write_json
from stylesearch.store.paths import dataset_paths

BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]
TILE, PAGE = 32, 4096
count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
frames = int(sys.argv[2]) if len(sys.argv) > 2 else 120


def build(root: str):
    paths = dataset_paths("big", root)
    spec = ModelSpec("bench", "synthetic")
    random_vector_dataset(paths, count, spec, dim=32)
    rng = np.random.default_rng(1)
    centres = rng.uniform(-10, 10, (60, 2))
    cluster = rng.integers(0, 60, count)
    coords = (centres[cluster] + rng.normal(0, 0.8, (count, 2))).astype(np.float32)
    ids = np.arange(1, count + 1)  # the catalog's ids of bench_data's items
    save_projection(paths, spec.key, ids, coords)
    write_atlas(paths, ids, cluster, np.lexsort((coords[:, 0], cluster)), rng)
    return paths


def write_atlas(paths, ids, cluster, order, rng) -> None:
    per_row = PAGE // TILE
    per_page = per_row * per_row
    colours = rng.integers(40, 255, (60, 3), dtype=np.uint8)
    entries, pages = [], (len(ids) + per_page - 1) // per_page
    paths.atlas.mkdir(parents=True, exist_ok=True)
    for page in range(pages):
        chunk = order[page * per_page:(page + 1) * per_page]
        pixels = np.zeros((PAGE, PAGE, 3), np.uint8)
        for slot, n in enumerate(chunk):
            x, y = slot % per_row * TILE, slot // per_row * TILE
            pixels[y + 2:y + TILE - 2, x + 2:x + TILE - 2] = colours[cluster[n]]
            entries.append({"id": int(ids[n]), "page": page, "x": x, "y": y, "w": TILE, "h": TILE})
        Image.fromarray(pixels).save(paths.atlas_page(page))
    atomic_write_json(paths.atlas_manifest, {"tile": TILE, "padding": 0, "pages": [paths.atlas_page_name(p)
                                             for p in range(pages)], "count": len(entries), "items": entries})


def serve(root: str) -> tuple[str, object]:
    import socket

    import uvicorn

    from stylesearch.server.app import create_app
    from stylesearch.server.config import ServerConfig

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(ServerConfig(root=root, preload=False, port=port))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server


TOUR = """([lod, steps]) => {
  MAP.lod = lod;
  const m = state.map, times = [], drawn = [], zooms = [], canvas = document.querySelector('#map').getContext('2d');
  Object.assign(m.view, { zoom: 1, dx: 0, dy: 0 });
  m.levels.clear();
  for (let n = 0; n < steps; n++) {
    const phase = n / steps;  // zoom in to 256x and back out, panning all along
    m.view.zoom = 2 ** (8 * (phase < 0.5 ? 2 * phase : 2 - 2 * phase));
    m.view.dx = 40 * Math.sin(n / 5) * m.view.zoom ** 0.5;
    m.view.dy = 30 * Math.cos(n / 7) * m.view.zoom ** 0.5;
    const t0 = performance.now();
    drawMap();
    canvas.getImageData(0, 0, 1, 1);  // the canvas records drawing: reading a pixel makes it draw now
    times.push(performance.now() - t0);
    drawn.push(m.drawn.dots + m.drawn.thumbs);
    zooms.push(m.view.zoom);
  }
  return { times, drawn, zooms };
}"""


def figures(times: list[float]) -> str:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return (f"p50 {statistics.median(times):7.1f} ms  p95 {p95:7.1f} ms  max {max(times):7.1f} ms  "
            f"({1000 / statistics.median(times):5.1f} frames/s at the median)")


def main() -> None:
    from playwright.sync_api import sync_playwright

    root = tempfile.mkdtemp(prefix="map-frames-")
    started = time.perf_counter()
    build(root)
    print(f"synthetic dataset: {count:,} items, atlas of {TILE}-px tiles ({time.perf_counter() - started:.0f} s)",
          file=sys.stderr)
    url, server = serve(root)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        started = time.perf_counter()
        page.goto(url + "/?dataset=big&view=map")
        page.wait_for_function("document.querySelector('#map-status').textContent.includes('items ·')",
                               timeout=120_000)
        loaded = time.perf_counter() - started
        page.evaluate(TOUR, [True, 30])  # loads the atlas pages the tour shows
        page.wait_for_function("state.map.pages.every((p, n) => state.map.bitmaps[n])", timeout=120_000)
        lod = page.evaluate(TOUR, [True, frames])
        baseline = page.evaluate(TOUR, [False, max(6, frames // 10)])
        browser.close()
    server.should_exit = True
    print(f"map of {count:,} items in Chromium (software rendering), 1280x860, page loaded and map shown in "
          f"{loaded:.1f} s")
    print(f"  level of detail   {len(lod['times']):4d} frames  {figures(lod['times'])}  "
          f"items drawn per frame: median {statistics.median(lod['drawn']):,.0f}")
    print(f"  everything (base) {len(baseline['times']):4d} frames  {figures(baseline['times'])}  "
          f"items drawn per frame: {count:,}")
    slowest = sorted(zip(lod["times"], lod["zooms"], lod["drawn"]), reverse=True)[:5]
    print("  slowest level-of-detail frames: " + ", ".join(f"{t:.0f} ms at zoom {z:.1f} ({d:,} items)"
                                                        for t, z, d in slowest))


if __name__ == "__main__":
    main()
