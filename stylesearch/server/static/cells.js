// Map thumbnails snapped to a grid per zoom level (used by map.js): a level per doubling of the zoom,
// cells the size of a thumbnail, one item per cell, so thumbnails never pile up.
"use strict";

const zoomLevel = (m) => Math.round(Math.log2(m.view.zoom));  // a level per doubling of the zoom
const thumbSize = (m) => MAP.tile * 2 ** (Math.log2(m.view.zoom) - zoomLevel(m));  // grows with its cell
const cellWorld = (m, level) => (MAP.tile + MAP.gap) / (fitScale(m) * 2 ** level);

function cellCentre(m, cells, key) {
  const size = cells.size, cx = key % cells.cols - 2, cy = Math.floor(key / cells.cols) - 2;
  return toScreen(m, (cx + 0.5) * size, (cy + 0.5) * size);
}

// One item per cell of this zoom level: the one nearest the cell's centre. On maps of up to
// RELAX_LIMIT items, computed at once, and an item that loses its cell takes a free neighbouring one
// (else it stays a dot); on larger maps, computed for the parts of the map that come into view
// (`coverCells`), each part once per level.
const RELAX_LIMIT = 20000;

function levelCells(m, level) {
  let cells = m.levels.get(level);
  if (!cells) {
    const size = cellWorld(m, level), cols = Math.ceil(m.layout.w / size) + 4, rows = Math.ceil(m.layout.h / size) + 4;
    // a cell's key: a small integer (fast map keys); -1 for cells beyond the map's margin
    const key = (cx, cy) => (cx < -2 || cy < -2 || cx >= cols - 2 || cy >= rows - 2 ? -1 : (cy + 2) * cols + cx + 2);
    cells = { owner: new Map(), of: new Map(), size, cols, key, done: null };
    m.levels.set(level, cells);
    if (m.n > RELAX_LIMIT) cells.done = new Uint8Array(m.grid.g * m.grid.g);
    else {
      for (let i = 0; i < m.n; i++) claimCell(m, cells, i);
      relaxCells(m, cells);
    }
  }
  return cells;
}

function claimCell(m, cells, i) {
  const fx = m.layout.x[i] / cells.size, fy = m.layout.y[i] / cells.size, cx = Math.floor(fx), cy = Math.floor(fy);
  const key = cells.key(cx, cy), held = cells.owner.get(key);
  if (held !== undefined) {
    const hx = m.layout.x[held] / cells.size - cx - 0.5, hy = m.layout.y[held] / cells.size - cy - 0.5;
    if (hx * hx + hy * hy <= (fx - cx - 0.5) ** 2 + (fy - cy - 0.5) ** 2) return;
    cells.of.delete(held);
  }
  cells.owner.set(key, i);
  cells.of.set(i, key);
}

// Items that lost their cell move to a free neighbouring cell on the side they lean to.
function relaxCells(m, cells) {
  const ring = [[1, 0], [-1, 0], [0, 1], [0, -1], [1, 1], [-1, -1], [1, -1], [-1, 1]];
  for (let i = 0; i < m.n; i++) {
    if (cells.of.has(i)) continue;
    const fx = m.layout.x[i] / cells.size, fy = m.layout.y[i] / cells.size, cx = Math.floor(fx), cy = Math.floor(fy);
    const lean = (o) => (o[0] - (fx - cx - 0.5)) ** 2 + (o[1] - (fy - cy - 0.5)) ** 2;
    for (const [ox, oy] of ring.slice().sort((a, b) => lean(a) - lean(b))) {
      const key = cells.key(cx + ox, cy + oy);
      if (key >= 0 && !cells.owner.has(key)) { cells.owner.set(key, i); cells.of.set(i, key); break; }
    }
  }
}

// Large maps: assign the items of the spatial-grid cells around the view that were not yet assigned.
function coverCells(m, cells, wx0, wy0, wx1, wy1) {
  if (!cells.done) return;
  const g = m.grid.g, s = cells.size, clamp = (v) => Math.min(g - 1, Math.max(0, Math.floor(v * g)));
  for (let r = clamp(wy0 - s); r <= clamp(wy1 + s); r++) {
    for (let c = clamp(wx0 - s); c <= clamp(wx1 + s); c++) {
      const cell = r * g + c;
      if (cells.done[cell]) continue;
      cells.done[cell] = 1;
      for (let k = m.grid.start[cell]; k < m.grid.start[cell + 1]; k++) claimCell(m, cells, m.grid.items[k]);
    }
  }
}

