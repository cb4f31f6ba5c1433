// Map view: the saved UMAP coordinates on a canvas. Thumbnails (atlas sprites) snap to a grid of
// thumbnail-sized cells per zoom level (a level per doubling), one per cell (the item nearest the
// cell's centre; on smaller maps the others take a free neighbouring cell, else stay a dot), so they
// never pile up. Level of detail: a level is drawn once into a layer around the view (only the
// spatial-grid cells there are visited, dots thinned to a budget and written as pixels), and each
// frame within it is one scaled copy. Selecting an item opens its neighbourhood (hood.js).
"use strict";

const MAP = { pad: 24, tile: 40, gap: 6, dotBudget: 40000, grid: 128, lod: true };

// ------------------------------------------------------------------ data and spatial index

function makeMap(data) {
  const n = data.count, nx = new Float32Array(n), ny = new Float32Array(n);
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  for (let i = 0; i < n; i++) {
    x0 = Math.min(x0, data.x[i]); x1 = Math.max(x1, data.x[i]);
    y0 = Math.min(y0, data.y[i]); y1 = Math.max(y1, data.y[i]);
  }
  const span = Math.max(1e-9, x1 - x0, y1 - y0);
  for (let i = 0; i < n; i++) { nx[i] = (data.x[i] - x0) / span; ny[i] = (y1 - data.y[i]) / span; }
  const index = new Map(data.ids.map((id, i) => [id, i]));
  const layout = { x: nx, y: ny, w: (x1 - x0) / span || 1, h: (y1 - y0) / span || 1, items: null };
  return { data, n, index, overview: layout, layout, grid: spatialGrid(nx, ny, n), levels: new Map(), pages: [], bitmaps: [],
           view: { zoom: 1, dx: 0, dy: 0 }, dataset: state.dataset, hood: null, hover: -1, size: [0, 0] };
}

// Items bucketed in MAP.grid × MAP.grid cells of the unit square (CSR arrays), for visits of a view.
function spatialGrid(x, y, n) {
  const g = MAP.grid, start = new Uint32Array(g * g + 1), cell = new Uint32Array(n), items = new Uint32Array(n);
  for (let i = 0; i < n; i++) {
    cell[i] = Math.min(g - 1, Math.floor(y[i] * g)) * g + Math.min(g - 1, Math.floor(x[i] * g));
    start[cell[i] + 1]++;
  }
  for (let c = 0; c < g * g; c++) start[c + 1] += start[c];
  const fill = start.slice(0, g * g);
  for (let i = 0; i < n; i++) items[fill[cell[i]]++] = i;
  return { g, start, items };
}

// Visit the items in the unit-square rectangle [x0,x1]×[y0,y1] (cell by cell), every `stride`-th one.
function visitGrid(grid, x0, y0, x1, y1, stride, fn) {
  const g = grid.g, c0 = Math.max(0, Math.floor(x0 * g)), c1 = Math.min(g - 1, Math.floor(x1 * g));
  const r0 = Math.max(0, Math.floor(y0 * g)), r1 = Math.min(g - 1, Math.floor(y1 * g));
  for (let r = r0; r <= r1; r++) {
    for (let c = c0; c <= c1; c++) {
      const cell = r * g + c;
      for (let k = grid.start[cell]; k < grid.start[cell + 1]; k += stride) fn(grid.items[k]);
    }
  }
}

function countGrid(grid, x0, y0, x1, y1) {
  const g = grid.g, c0 = Math.max(0, Math.floor(x0 * g)), c1 = Math.min(g - 1, Math.floor(x1 * g));
  let total = 0;
  for (let r = Math.max(0, Math.floor(y0 * g)); r <= Math.min(g - 1, Math.floor(y1 * g)); r++) {
    total += grid.start[r * g + c1 + 1] - grid.start[r * g + c0];
  }
  return total;
}

// ------------------------------------------------------------------ view transform

function fitScale(m) {
  const [w, h] = m.size;
  return Math.min((w - 2 * MAP.pad) / m.layout.w, (h - 2 * MAP.pad) / m.layout.h);
}

function mapScale(m) { return fitScale(m) * m.view.zoom; }

function toScreen(m, wx, wy) {
  const s = mapScale(m);
  return [m.size[0] / 2 + m.view.dx + (wx - m.layout.w / 2) * s, m.size[1] / 2 + m.view.dy + (wy - m.layout.h / 2) * s];
}

function toWorld(m, sx, sy) {
  const s = mapScale(m);
  return [(sx - m.size[0] / 2 - m.view.dx) / s + m.layout.w / 2, (sy - m.size[1] / 2 - m.view.dy) / s + m.layout.h / 2];
}

// Where an item is drawn on screen (its snapped cell when it shows as a thumbnail): for tests and hover.
function mapScreenPoint(id) {
  const m = state.map, i = m?.index.get(Number(id));
  if (i === undefined) return null;
  if (m.hood) return m.hood.screen(i);
  const cells = m.atlas ? levelCells(m, zoomLevel(m)) : null, cell = cells?.of.get(i);
  if (cell !== undefined) return cellCentre(m, cells, cell);
  return toScreen(m, m.layout.x[i], m.layout.y[i]);
}

// An atlas page, loaded on first use and kept decoded as an ImageBitmap (an <img> of a large page
// may be decoded again for every draw); null until it has arrived, and its arrival redraws.
function atlasPage(m, page) {
  if (!m.pages[page]) {
    const img = new Image();
    const arrived = (bitmap) => { m.bitmaps[page] = bitmap; if (m.layer) m.layer.stale = true; scheduleDraw(); };
    img.onload = () => createImageBitmap(img).then(arrived, () => arrived(img));
    img.src = `${ds()}/atlas/${page}`;
    m.pages[page] = img;
  }
  return m.bitmaps[page] || null;
}

function drawSprite(ctx, m, i, x, y, size) {
  const tile = m.data.atlas.sprites[i], page = tile && atlasPage(m, tile[0]);
  if (!page) {
    ctx.strokeStyle = "#3a3a44";
    ctx.strokeRect(x - size / 2, y - size / 2, size, size);
    return;
  }
  const scale = size / Math.max(tile[3], tile[4]);
  ctx.drawImage(page, tile[1], tile[2], tile[3], tile[4], x - tile[3] * scale / 2, y - tile[4] * scale / 2,
    tile[3] * scale, tile[4] * scale);
}

// ------------------------------------------------------------------ drawing

let drawPending = false;
function scheduleDraw() {
  if (drawPending) return;
  drawPending = true;
  requestAnimationFrame(() => { drawPending = false; drawMap(); });
}

function prepareCanvas(m) {
  const canvas = $("#map"), ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (w !== m.size[0] || h !== m.size[1] || canvas.width !== Math.round(w * ratio)) {
    canvas.width = Math.round(w * ratio);
    canvas.height = Math.round(h * ratio);
    m.size = [w, h];
    m.levels.clear();
    m.layer = null;
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, w, h);
  return ctx;
}

function drawMap() {
  const m = state.map;
  if (!m || $("#view-map").hidden) return;
  const ctx = prepareCanvas(m);
  if (m.hood) return drawHood(ctx, m);
  if (!MAP.lod) return drawEverything(ctx, m);
  const [wx0, wy0] = toWorld(m, 0, 0), [wx1, wy1] = toWorld(m, m.size[0], m.size[1]);
  const level = zoomLevel(m);
  let layer = m.layer;
  if (!layer || layer.stale || layer.level !== level || wx0 < layer.wx0 || wy0 < layer.wy0 || wx1 > layer.wx1 ||
      wy1 > layer.wy1) {
    layer = m.layer = renderLayer(m, level, wx0, wy0, wx1, wy1);
  }
  const k = layer.scale;  // a frame within the layer is one copy of it
  ctx.drawImage(layer.canvas, (wx0 - layer.wx0) * k, (wy0 - layer.wy0) * k, (wx1 - wx0) * k, (wy1 - wy0) * k,
    0, 0, m.size[0], m.size[1]);
  if (m.hover >= 0) highlight(ctx, mapScreenPoint(m.data.ids[m.hover]), thumbSize(m));
}

// The map at a zoom level's own scale, around the view with a margin: dots, then that level's thumbnails.
function renderLayer(m, level, wx0, wy0, wx1, wy1) {
  const mx = (wx1 - wx0) / 4, my = (wy1 - wy0) / 4;
  const layer = { level, scale: fitScale(m) * 2 ** level, wx0: wx0 - mx, wy0: wy0 - my, wx1: wx1 + mx, wy1: wy1 + my,
                  stale: false, canvas: m.layer?.canvas || document.createElement("canvas") };
  const w = Math.ceil((layer.wx1 - layer.wx0) * layer.scale), h = Math.ceil((layer.wy1 - layer.wy0) * layer.scale);
  if (layer.canvas.width !== w || layer.canvas.height !== h) Object.assign(layer.canvas, { width: w, height: h });
  const ctx = layer.canvas.getContext("2d");
  drawDots(m, ctx, layer, w, h);
  if (m.atlas) drawThumbs(m, ctx, layer);
  return layer;
}

// Dots written straight into the pixels (thinned to MAP.dotBudget): no path of 100,000 rectangles.
function drawDots(m, ctx, layer, w, h) {
  const { wx0, wy0, wx1, wy1, scale } = layer, x = m.layout.x, y = m.layout.y;
  const inView = countGrid(m.grid, wx0, wy0, wx1, wy1), stride = Math.max(1, Math.ceil(inView / MAP.dotBudget));
  const room = Math.sqrt(w * h / Math.max(1, inView));  // pixels per item
  const dot = m.atlas ? 2 : Math.min(10, Math.max(2, Math.round(0.12 * room)));
  const image = ctx.createImageData(w, h), pixels = new Uint32Array(image.data.buffer);
  const colour = m.atlas ? 0xff996a4d : 0xffffa86e;  // #4d6a99, #6ea8ff as little-endian RGBA
  visitGrid(m.grid, wx0, wy0, wx1, wy1, stride, (i) => {
    const left = Math.round((x[i] - wx0) * scale - dot / 2), top = Math.round((y[i] - wy0) * scale - dot / 2);
    for (let row = Math.max(0, top); row < Math.min(h, top + dot); row++) {
      pixels.fill(colour, row * w + Math.max(0, left), row * w + Math.min(w, left + dot));
    }
  });
  ctx.putImageData(image, 0, 0);
  m.drawn = { dots: Math.ceil(inView / stride), thumbs: 0 };
}

function drawThumbs(m, ctx, layer) {
  const cells = levelCells(m, layer.level), size = cells.size, k = layer.scale;
  coverCells(m, cells, layer.wx0, layer.wy0, layer.wx1, layer.wy1);
  for (let cx = Math.floor(layer.wx0 / size) - 1; cx <= Math.floor(layer.wx1 / size); cx++) {
    for (let cy = Math.floor(layer.wy0 / size) - 1; cy <= Math.floor(layer.wy1 / size); cy++) {
      const i = cells.owner.get(cells.key(cx, cy));
      if (i === undefined) continue;
      drawSprite(ctx, m, i, ((cx + 0.5) * size - layer.wx0) * k, ((cy + 0.5) * size - layer.wy0) * k, MAP.tile);
      m.drawn.thumbs++;
    }
  }
}

// The baseline without level of detail: every item, every frame, at its own position (benchmarks).
function drawEverything(ctx, m) {
  for (let i = 0; i < m.n; i++) {
    const [sx, sy] = toScreen(m, m.layout.x[i], m.layout.y[i]);
    if (m.atlas) drawSprite(ctx, m, i, sx, sy, MAP.tile);
    else { ctx.fillStyle = "#6ea8ff"; ctx.fillRect(sx - 1.5, sy - 1.5, 3, 3); }
  }
  m.drawn = { dots: m.atlas ? 0 : m.n, thumbs: m.atlas ? m.n : 0 };
}

function highlight(ctx, point, size) {
  if (!point) return;
  ctx.strokeStyle = "#6ea8ff";
  ctx.lineWidth = 2;
  ctx.strokeRect(point[0] - size / 2 - 2, point[1] - size / 2 - 2, size + 4, size + 4);
  ctx.lineWidth = 1;
}

// ------------------------------------------------------------------ loading, hover, keys

async function showMap(item) {
  showMessage("");
  if (!state.map || state.map.dataset !== state.dataset) {
    $("#map-status").textContent = "loading coordinates…";
    try {
      const data = await api(`${ds()}/map`);
      state.map = makeMap(data);
      state.map.atlas = Boolean(data.atlas);
    } catch (error) {
      $("#map-status").textContent = "";
      state.map = null;
      const canvas = $("#map");
      canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
      fail(error);
      return;
    }
  }
  $("#map").focus({ preventScroll: true });  // keys pan and zoom at once
  if (item) return selectItem(item, { push: false });
  leaveHood(false);
}

function overviewStatus(m) {
  const atlas = m.atlas ? "thumbnails from the atlas, one per cell at each zoom level; dots for the rest"
    : "dots only (no atlas)";
  $("#map-status").textContent = `${m.n} items · model ${m.data.model_key} · ${atlas} · click an item for its neighbourhood`;
  $("#map-hint").hidden = m.atlas;
  for (const name of document.querySelectorAll("#map-hint .ds")) name.textContent = state.dataset;
}

function itemAt(m, sx, sy) {
  if (m.hood) return m.hood.itemAt(sx, sy);
  if (m.atlas) {
    const level = zoomLevel(m), cells = levelCells(m, level), [wx, wy] = toWorld(m, sx, sy);
    const key = cells.key(Math.floor(wx / cells.size), Math.floor(wy / cells.size));
    const i = cells.owner.get(key);
    if (i !== undefined) {
      const [cx, cy] = cellCentre(m, cells, key);
      const half = thumbSize(m) / 2 + 2;
      if (Math.abs(cx - sx) <= half && Math.abs(cy - sy) <= half) return i;
    }
  }
  const s = mapScale(m), r = 12 / s, [wx, wy] = toWorld(m, sx, sy);
  let best = -1, bestD = r * r;
  visitGrid(m.grid, wx - r, wy - r, wx + r, wy + r, 1, (i) => {
    const d = (m.layout.x[i] - wx) ** 2 + (m.layout.y[i] - wy) ** 2;
    if (d < bestD) { best = i; bestD = d; }
  });
  return best;
}

function showTip(m, i, sx, sy) {
  const tip = $("#map-tip");
  tip.hidden = i < 0;
  if (i < 0) return;
  const id = m.data.ids[i], distance = m.hood?.distanceOf(i);
  tip.replaceChildren(el("img", { src: thumbUrl(id), alt: "" }),
    el("span", {}, `#${id} `, breakable(m.data.paths[i])),
    distance !== undefined ? el("span", { className: "muted", textContent: ` · distance ${distance.toFixed(3)}` }) : "");
  tip.style.left = `${Math.min(sx + 14, m.size[0] - 190)}px`;
  tip.style.top = `${sy + 14}px`;
}

function zoomAt(factor, sx, sy) {
  const m = state.map, v = m.view;
  const zoom = Math.min(400, Math.max(0.25, v.zoom * factor)), f = zoom / v.zoom;
  const px = sx ?? m.size[0] / 2, py = sy ?? m.size[1] / 2;  // keep the point under the cursor in place
  v.dx = (v.dx + m.size[0] / 2 - px) * f + px - m.size[0] / 2;
  v.dy = (v.dy + m.size[1] / 2 - py) * f + py - m.size[1] / 2;
  v.zoom = zoom;
  scheduleDraw();
}

function setupMap() {
  const canvas = $("#map");
  let drag = null;
  canvas.addEventListener("mousedown", (e) => { drag = { x: e.clientX, y: e.clientY, moved: false }; });
  window.addEventListener("mouseup", () => { setTimeout(() => { drag = null; }, 0); });
  canvas.addEventListener("mousemove", (e) => {
    const m = state.map;
    if (!m) return;
    if (drag && e.buttons) {
      m.view.dx += e.clientX - drag.x; m.view.dy += e.clientY - drag.y;
      drag.moved = drag.moved || Math.abs(e.clientX - drag.x) + Math.abs(e.clientY - drag.y) > 2;
      drag.x = e.clientX; drag.y = e.clientY;
      scheduleDraw();
      return;
    }
    const i = itemAt(m, e.offsetX, e.offsetY);
    if (i !== m.hover) { m.hover = i; scheduleDraw(); }
    showTip(m, i, e.offsetX, e.offsetY);
  });
  canvas.addEventListener("mouseleave", () => { $("#map-tip").hidden = true; });
  canvas.addEventListener("click", (e) => {
    const m = state.map;
    if (!m || drag?.moved) return;
    const i = itemAt(m, e.offsetX, e.offsetY);
    if (i >= 0) selectItem(m.data.ids[i]);
  });
  canvas.addEventListener("wheel", (e) => { e.preventDefault(); zoomAt(e.deltaY < 0 ? 1.25 : 0.8, e.offsetX, e.offsetY); },
    { passive: false });
  canvas.addEventListener("keydown", (e) => {
    const m = state.map;
    if (!m) return;
    const pan = { ArrowLeft: [40, 0], ArrowRight: [-40, 0], ArrowUp: [0, 40], ArrowDown: [0, -40] }[e.key];
    if (pan) { e.preventDefault(); m.view.dx += pan[0]; m.view.dy += pan[1]; scheduleDraw(); }
    else if (e.key === "+" || e.key === "=") zoomAt(1.25);
    else if (e.key === "-" || e.key === "−") zoomAt(0.8);
    else if (e.key === "0") { Object.assign(m.view, { zoom: 1, dx: 0, dy: 0 }); scheduleDraw(); }
    else if (e.key === "Escape" && m.hood) leaveHood(true);
    else if (e.key === "Enter" && m.hover >= 0) selectItem(m.data.ids[m.hover]);
  });
  $("#hood-back").addEventListener("click", () => leaveHood(true));
  $("#hood-raw").addEventListener("change", (e) => {
    writeUrl({ raw: e.target.checked }, true);
    if (state.map?.hood) selectItem(state.map.hood.id, { push: false });
  });
  $("#hood-similar").addEventListener("click", () => state.map?.hood && similar(state.map.hood.id));
  window.addEventListener("resize", scheduleDraw);
}
