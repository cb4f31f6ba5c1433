// Map view: the saved UMAP coordinates on a canvas, atlas sprites as thumbnails.
"use strict";

async function loadMap() {
  const canvas = $("#map");
  $("#map-status").textContent = "loading coordinates…";
  try {
    const data = await api(`${ds()}/map`);
    const xs = data.x, ys = data.y;
    const bounds = { x0: Math.min(...xs), x1: Math.max(...xs), y0: Math.min(...ys), y1: Math.max(...ys) };
    state.map = { data, bounds, zoom: 1, dx: 0, dy: 0, sprites: [], dataset: state.dataset };
    if (data.atlas && data.count <= 5000) {
      state.map.sprites = Array.from({ length: data.atlas.pages }, (_, page) => {
        const img = new Image();
        img.onload = drawMap;
        img.src = `${ds()}/atlas/${page}`;
        return img;
      });
    }
    $("#map-status").textContent = `${data.count} items · model ${data.model_key}` +
      (data.atlas ? " · thumbnails from the atlas" : "");
    drawMap();
    canvas.focus();
  } catch (error) {
    $("#map-status").textContent = "";
    state.map = null;
    canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
    fail(error);
  }
}

function mapProjection() {
  const canvas = $("#map"), m = state.map, pad = 30;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  const sx = (w - 2 * pad) / Math.max(1e-9, m.bounds.x1 - m.bounds.x0);
  const sy = (h - 2 * pad) / Math.max(1e-9, m.bounds.y1 - m.bounds.y0);
  const s = Math.min(sx, sy) * m.zoom;
  const cx = w / 2 + m.dx, cy = h / 2 + m.dy;
  const mx = (m.bounds.x0 + m.bounds.x1) / 2, my = (m.bounds.y0 + m.bounds.y1) / 2;
  return (i) => [cx + (m.data.x[i] - mx) * s, cy - (m.data.y[i] - my) * s];
}

function drawMap() {
  const canvas = $("#map"), m = state.map;
  if (!m) return;
  const ratio = window.devicePixelRatio || 1;
  canvas.width = canvas.clientWidth * ratio;
  canvas.height = canvas.clientHeight * ratio;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, canvas.clientWidth, canvas.clientHeight);
  const base = Math.min(64, Math.max(10, 0.5 * Math.sqrt(canvas.clientWidth * canvas.clientHeight / m.data.count)));
  const at = mapProjection(), size = Math.min(160, base * Math.sqrt(m.zoom));
  const sprites = m.data.atlas?.sprites;
  for (let i = 0; i < m.data.count; i++) {
    const [x, y] = at(i);
    const tile = sprites && sprites[i], page = tile && m.sprites[tile[0]];
    if (page && page.complete && page.naturalWidth) {
      const scale = size / Math.max(tile[3], tile[4]);
      ctx.drawImage(page, tile[1], tile[2], tile[3], tile[4], x - tile[3] * scale / 2, y - tile[4] * scale / 2,
        tile[3] * scale, tile[4] * scale);
    } else {
      ctx.fillStyle = "#6ea8ff";
      ctx.fillRect(x - 1.5, y - 1.5, 3, 3);
    }
  }
}

function nearestPoint(px, py) {
  const at = mapProjection();
  let best = -1, bestD = 20 * 20;
  for (let i = 0; i < state.map.data.count; i++) {
    const [x, y] = at(i), d = (x - px) ** 2 + (y - py) ** 2;
    if (d < bestD) { best = i; bestD = d; }
  }
  return best;
}

function setupMap() {
  const canvas = $("#map"), tip = $("#map-tip");
  let drag = null;
  canvas.addEventListener("mousedown", (e) => { drag = { x: e.clientX, y: e.clientY, moved: false }; });
  window.addEventListener("mouseup", () => { setTimeout(() => { drag = null; }, 0); });
  canvas.addEventListener("mousemove", (e) => {
    if (!state.map) return;
    if (drag && e.buttons) {
      state.map.dx += e.clientX - drag.x; state.map.dy += e.clientY - drag.y;
      drag.moved = drag.moved || Math.abs(e.clientX - drag.x) + Math.abs(e.clientY - drag.y) > 2;
      drag.x = e.clientX; drag.y = e.clientY;
      drawMap();
      return;
    }
    const i = nearestPoint(e.offsetX, e.offsetY);
    tip.hidden = i < 0;
    if (i >= 0) {
      const id = state.map.data.ids[i];
      tip.replaceChildren(el("img", { src: thumbUrl(id), alt: "" }), `#${id} ${state.map.data.paths[i]}`);
      tip.style.left = `${e.offsetX + 14}px`; tip.style.top = `${e.offsetY + 14}px`;
    }
  });
  canvas.addEventListener("mouseleave", () => { tip.hidden = true; });
  canvas.addEventListener("click", (e) => {
    if (!state.map || drag?.moved) return;
    const i = nearestPoint(e.offsetX, e.offsetY);
    if (i >= 0) similar(state.map.data.ids[i]);
  });
  canvas.addEventListener("wheel", (e) => { e.preventDefault(); zoom(e.deltaY < 0 ? 1.25 : 0.8); }, { passive: false });
  canvas.addEventListener("keydown", (e) => {
    if (!state.map) return;
    const pan = { ArrowLeft: [40, 0], ArrowRight: [-40, 0], ArrowUp: [0, 40], ArrowDown: [0, -40] }[e.key];
    if (pan) { e.preventDefault(); state.map.dx += pan[0]; state.map.dy += pan[1]; drawMap(); }
    else if (e.key === "+" || e.key === "=") zoom(1.25);
    else if (e.key === "-" || e.key === "−") zoom(0.8);
    else if (e.key === "0") { Object.assign(state.map, { zoom: 1, dx: 0, dy: 0 }); drawMap(); }
  });
  window.addEventListener("resize", drawMap);
}

function zoom(factor) {
  state.map.zoom = Math.min(200, Math.max(0.2, state.map.zoom * factor));
  state.map.dx *= factor; state.map.dy *= factor;
  drawMap();
}
