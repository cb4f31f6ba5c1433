// Neighbourhood view: the selected item at the centre, every other item (the HOOD_LIMIT nearest) placed
// by its distance to it from /distances (under the learned metric unless raw), by a force-directed
// layout: a spring pulls each item to the radius of its distance, collisions push thumbnails apart.
// It starts from the items' places on the map and animates into place; hover, zoom and pan work as on
// the map; clicking another item selects it; Escape or "overview" goes back.
"use strict";

const HOOD_LIMIT = 400;  // items placed (nearest first), the selection included
const HOOD_TICKS = 150;  // 50 frames; the last 30 ticks only resolve collisions
let hoodRequest = null;

async function selectItem(id, { push = true } = {}) {
  const m = state.map;
  if (!m) return;
  id = Number(id);
  if (push) writeUrl({ view: "map", item: id }, true);
  const raw = urlParams().get("raw") === "1";
  hoodRequest?.abort();
  const mine = hoodRequest = new AbortController();
  $("#map-status").textContent = `loading the distances to #${id}…`;
  try {
    const answer = await api(`${ds()}/distances/${id}?limit=${HOOD_LIMIT}&raw=${raw}`, { signal: mine.signal });
    if (state.map !== m || hoodRequest !== mine) return;
    if (!m.hood) m.savedView = { ...m.view };
    prepareCanvas(m);  // its size places the items
    m.hood = makeHood(m, answer);
    m.layout = m.hood.layout;
    Object.assign(m.view, { zoom: 1, dx: 0, dy: 0 });
    m.hover = -1;
    $("#map-tip").hidden = true;  // it pointed into the layout that just changed
    showHoodBar(m.hood, answer, raw);
    animateHood(m, m.hood);
  } catch (error) {
    if (aborted(error)) return;
    $("#map-status").textContent = "";
    fail(error);
  }
}

function makeHood(m, answer) {
  const centre = m.index.get(answer.item.id);
  if (centre === undefined) throw new Error(`Item #${answer.item.id} is not on the map (export the UMAP again).`);
  const nodes = [], dist = new Map();
  answer.ids.forEach((id, k) => {
    const i = m.index.get(id);
    if (i !== undefined && i !== centre) { nodes.push(i); dist.set(i, answer.distances[k]); }
  });
  const values = [...dist.values()], lo = Math.min(...values), hi = Math.max(...values);
  const x = new Float32Array(m.n), y = new Float32Array(m.n), target = new Float32Array(m.n);
  const ox = m.overview.x, oy = m.overview.y;
  for (const i of nodes) {
    target[i] = 0.1 + 0.38 * (hi > lo ? (dist.get(i) - lo) / (hi - lo) : 0.5);
    x[i] = 0.5 + (ox[i] - ox[centre]); y[i] = 0.5 + (oy[i] - oy[centre]);  // from where it is on the map
  }
  x[centre] = 0.5; y[centre] = 0.5;
  const fit = Math.min(m.size[0], m.size[1]) - 2 * MAP.pad;
  const tile = Math.max(14, Math.min(MAP.tile, 0.8 * Math.sqrt(0.7 * fit * fit / Math.max(1, nodes.length))));
  const hood = { id: answer.item.id, centre, nodes, dist, target, tile, lo, hi, tick: 0, settled: false,
    layout: { x, y, w: 1, h: 1, items: nodes } };
  hood.screen = (i) => toScreen(m, x[i], y[i]);
  hood.distanceOf = (i) => (i === centre ? 0 : dist.get(i));
  hood.itemAt = (sx, sy) => {
    let best = -1, bestD = Infinity;
    for (const i of [centre, ...nodes]) {
      const [px, py] = hood.screen(i), half = (i === centre ? 2 * tile : tile) / 2 + 2;
      const d = Math.max(Math.abs(px - sx), Math.abs(py - sy));
      if (d <= half && d < bestD) { best = i; bestD = d; }
    }
    return best;
  };
  return hood;
}

// One step of the layout: radial springs toward each item's distance, then collisions resolved.
function hoodStep(m, hood, alpha) {
  const { x, y } = hood.layout, target = hood.target, nodes = hood.nodes;
  for (const i of nodes) {
    const dx = x[i] - 0.5, dy = y[i] - 0.5, r = Math.hypot(dx, dy) || 1e-6;
    const pull = (target[i] - r) * 0.25 * alpha;
    x[i] += (dx / r) * pull; y[i] += (dy / r) * pull;
  }
  const sep = (hood.tile + 4) / fitScale(m), cells = new Map(), key = (cx, cy) => cx * 65536 + cy;
  const all = [hood.centre, ...nodes];
  for (const i of all) {
    const k = key(Math.floor(x[i] / sep), Math.floor(y[i] / sep));
    if (!cells.has(k)) cells.set(k, []);
    cells.get(k).push(i);
  }
  for (const i of nodes) {
    const cx = Math.floor(x[i] / sep), cy = Math.floor(y[i] / sep);
    for (let ox = -1; ox <= 1; ox++) {
      for (let oy = -1; oy <= 1; oy++) {
        for (const j of cells.get(key(cx + ox, cy + oy)) || []) {
          if (j === i) continue;
          const need = j === hood.centre ? sep * 1.6 : sep;  // thumbnails are squares: the larger gap counts
          const dx = x[i] - x[j], dy = y[i] - y[j], gap = Math.max(Math.abs(dx), Math.abs(dy));
          if (gap >= need) continue;
          const d = Math.hypot(dx, dy) || 1e-6;
          const push = (need - gap) * (j === hood.centre ? 1 : 0.5) * Math.max(0.5, alpha);
          x[i] += (dx / d) * push; y[i] += (dy / d) * push;
          if (j !== hood.centre) { x[j] -= (dx / d) * push; y[j] -= (dy / d) * push; }
        }
      }
    }
  }
  x[hood.centre] = 0.5; y[hood.centre] = 0.5;
}

function animateHood(m, hood) {
  $("#map").dataset.hood = "moving";
  const frame = () => {
    if (state.map !== m || m.hood !== hood) return;
    for (let n = 0; n < 3 && hood.tick < HOOD_TICKS; n++, hood.tick++) hoodStep(m, hood, Math.max(0, 1 - hood.tick / (HOOD_TICKS - 30)));
    drawMap();
    if (hood.tick < HOOD_TICKS) requestAnimationFrame(frame);
    else { hood.settled = true; $("#map").dataset.hood = "settled"; }
  };
  requestAnimationFrame(frame);
}

function drawHood(ctx, m) {
  const hood = m.hood, [cx, cy] = hood.screen(hood.centre), s = mapScale(m);
  ctx.strokeStyle = "#2c2c36";
  ctx.fillStyle = "#7a7a86";
  ctx.font = "11px system-ui, sans-serif";
  for (const f of [0.25, 0.5, 0.75, 1]) {  // rings at distances between the nearest and the farthest
    const r = (0.1 + 0.38 * f) * s;
    ctx.beginPath(); ctx.arc(cx, cy, r, 0, 2 * Math.PI); ctx.stroke();
    ctx.fillText((hood.lo + f * (hood.hi - hood.lo)).toFixed(3), cx + r * 0.71 + 3, cy - r * 0.71 - 3);
  }
  for (const i of hood.nodes) {
    const [x, y] = hood.screen(i);
    if (m.atlas) drawSprite(ctx, m, i, x, y, hood.tile);
    else { ctx.fillStyle = "#6ea8ff"; ctx.beginPath(); ctx.arc(x, y, 4, 0, 2 * Math.PI); ctx.fill(); }
  }
  const big = 2 * hood.tile;
  if (m.atlas) drawSprite(ctx, m, hood.centre, cx, cy, big);
  else { ctx.fillStyle = "#ffd166"; ctx.beginPath(); ctx.arc(cx, cy, 8, 0, 2 * Math.PI); ctx.fill(); }
  highlight(ctx, [cx, cy], m.atlas ? big : 16);
  if (m.hover >= 0) highlight(ctx, hood.screen(m.hover), m.hover === hood.centre ? big : hood.tile);
}

function showHoodBar(hood, answer, raw) {
  const m = state.map, metric = answer.metric;
  const how = raw || !metric.learned ? "raw embedding distance" : `distance under the learned metric (${metric.kind})`;
  const shown = hood.nodes.length < m.n - 1 ? `the ${hood.nodes.length} nearest of ${m.n - 1} other items`
    : `all ${hood.nodes.length} other items`;
  $("#map-status").replaceChildren(`Neighbourhood of #${hood.id} `, breakable(answer.item.path),
    `: ${shown}, placed by ${how} · click one to move there · Esc: back to the overview`);
  $("#hood-bar").hidden = false;
  $("#hood-raw").checked = raw;
  $("#hood-raw").disabled = !metric.learned;
  $("#hood-raw-label").title = metric.learned ? "ignore the learned metric" : "no learned metric: distances are raw";
  $("#map-hint").hidden = true;
}

function leaveHood(push) {
  const m = state.map;
  hoodRequest?.abort();
  if (push) writeUrl({ item: null }, true);
  $("#hood-bar").hidden = true;
  delete $("#map").dataset.hood;
  if (!m) return;
  if (m.hood) Object.assign(m.view, m.savedView || { zoom: 1, dx: 0, dy: 0 });
  m.hood = null;
  m.layout = m.overview;
  m.hover = -1;
  $("#map-tip").hidden = true;
  overviewStatus(m);
  scheduleDraw();
}
