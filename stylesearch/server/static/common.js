// stylesearch page, shared: API calls, messages, element helper. Plain JavaScript, no framework.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { dataset: null, datasets: [], images: [], results: [], map: null, label: null, busy: false };

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

const aborted = (error) => error?.name === "AbortError";

function showMessage(text) {
  const box = $("#message");
  box.textContent = text || "";
  box.hidden = !text;
}

function errorText(error) {
  const step = error.step ? `\nRun \`stylesearch ${error.step} ${state.dataset}\` first.` : "";
  return error.message + step;
}

function fail(error) {
  if (!aborted(error)) showMessage(errorText(error));
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

// A path as text that wraps only after "/", "-" or "_" (never inside a word).
function breakable(text) {
  const out = document.createDocumentFragment();
  for (const part of String(text).split(/(?<=[/_-])/)) out.append(part, el("wbr"));
  return out;
}

// ------------------------------------------------------------------ datasets and health

async function loadDatasets() {
  const rows = await api("/api/datasets");
  state.datasets = rows.map((r) => r.name);
  $("#dataset").replaceChildren(...rows.map((r) =>
    el("option", { value: r.name, textContent: `${r.name} (${r.items ?? "?"})` })));
  if (!rows.length) showMessage("No datasets yet: create one with `stylesearch download` or `stylesearch embed`.");
}

async function loadHealth() {
  try {
    const h = await api("/health");
    $("#health").textContent = `v${h.version} · ${h.datasets.length} dataset(s)` +
      (h.ready === false ? " · loading…" : "");
    if (h.ready === false) setTimeout(loadHealth, 1000);
  } catch (error) { $("#health").textContent = "server unreachable"; }
}
