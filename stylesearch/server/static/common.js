// stylesearch page, shared: API calls, messages, element helper, views. Plain JavaScript, no framework.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { dataset: null, images: [], results: [], map: null, label: null, busy: false };

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) {
    const error = new Error([body.error, body.hint].filter(Boolean).join("\n"));
    error.status = response.status;
    error.step = body.step;
    throw error;
  }
  return body;
}

function showMessage(text) {
  const box = $("#message");
  box.textContent = text || "";
  box.hidden = !text;
}

function fail(error) {
  const step = error.step ? `\nRun \`stylesearch ${error.step} ${state.dataset}\` first.` : "";
  showMessage(error.message + step);
}

const ds = () => `/api/datasets/${encodeURIComponent(state.dataset)}`;
const thumbUrl = (id) => `${ds()}/items/${id}/thumb`;
const imageUrl = (id) => `${ds()}/items/${id}/image`;

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key in node) node[key] = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

// ------------------------------------------------------------------ datasets, health, views

async function loadDatasets() {
  const rows = await api("/api/datasets");
  const select = $("#dataset");
  select.replaceChildren(...rows.map((r) => el("option", { value: r.name, textContent: `${r.name} (${r.items ?? "?"})` })));
  const saved = new URLSearchParams(location.search).get("dataset") || localStorage.getItem("stylesearch.dataset");
  state.dataset = rows.some((r) => r.name === saved) ? saved : rows[0]?.name || null;
  select.value = state.dataset || "";
  if (!state.dataset) showMessage("No datasets yet: create one with `stylesearch download` or `stylesearch embed`.");
}

async function loadHealth() {
  try {
    const h = await api("/health");
    $("#health").textContent = `v${h.version} · ${h.datasets.length} dataset(s) · up ${Math.round(h.uptime_s)} s`;
  } catch (error) { $("#health").textContent = "server unreachable"; }
}

function currentView() { return (location.hash.replace("#", "").split("?")[0]) || "search"; }

function showView() {
  const view = currentView();
  for (const name of ["search", "map", "label"]) {
    $(`#view-${name}`).hidden = name !== view;
    $(`#nav-${name}`).classList.toggle("active", name === view);
  }
  showMessage("");
  if (!state.dataset) return;
  if (view === "map") loadMap();
  if (view === "label") loadLabel();
  if (view === "search") $("#q").focus();
}
