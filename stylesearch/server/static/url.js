// The page's state in its URL: ?dataset=&view=&q=&where=&k=&min=&raw=1&group=1&item=
// Each search, view change and map selection is a history entry; back/forward and reload restore it,
// and a copied link reproduces the search (query images are not part of a link).
"use strict";

const URL_KEYS = ["dataset", "view", "q", "where", "k", "min", "raw", "group", "item"];
const VIEWS = ["search", "map", "label"];

function urlParams() {
  const params = new URLSearchParams(location.search);
  const legacy = location.hash.replace("#", "");  // links of the earlier page: #map, #label
  if (!params.get("view") && VIEWS.includes(legacy)) params.set("view", legacy);
  return params;
}

function currentView() {
  const view = urlParams().get("view");
  return VIEWS.includes(view) ? view : "search";
}

// Merge `changes` (null or "" removes a key) into the URL: a new history entry when `push`.
function writeUrl(changes, push = true) {
  const params = urlParams();
  for (const [key, value] of Object.entries(changes)) {
    if (value === null || value === undefined || value === "" || value === false) params.delete(key);
    else params.set(key, value === true ? "1" : String(value));
  }
  const ordered = new URLSearchParams();
  for (const key of URL_KEYS) if (params.has(key)) ordered.set(key, params.get(key));
  const target = `${location.pathname}?${ordered}`;
  if (target === `${location.pathname}${location.search}` && !location.hash) return false;
  history[push ? "pushState" : "replaceState"](null, "", target);
  return true;
}

// The search form as URL values, and back.
function formToUrl() {
  return { q: $("#q").value.trim(), where: $("#where").value.trim(), k: $("#k").value === "24" ? null : $("#k").value,
           min: $("#min").value.trim(), raw: $("#raw").checked, group: $("#group").checked };
}

function urlToForm(params) {
  $("#q").value = params.get("q") || "";
  $("#where").value = params.get("where") || "";
  $("#k").value = params.get("k") || "24";
  $("#min").value = params.get("min") || "";
  $("#raw").checked = params.get("raw") === "1";
  $("#group").checked = params.get("group") === "1";
}

function chosenDataset(params) {
  const wanted = params.get("dataset") || localStorage.getItem("stylesearch.dataset");
  return state.datasets.includes(wanted) ? wanted : state.datasets[0] || null;
}

// Show what the URL says: dataset, form, view, and the view's content (search, map selection, labels).
function applyUrl() {
  const params = urlParams();
  const dataset = chosenDataset(params);
  if (dataset !== state.dataset) {
    state.dataset = dataset;
    state.map = null;
    state.label = null;
  }
  $("#dataset").value = dataset || "";
  if (dataset) {
    localStorage.setItem("stylesearch.dataset", dataset);
    writeUrl({ dataset, view: currentView() }, false);  // the canonical link of what is shown
  }
  urlToForm(params);
  showView(currentView());
  if (!state.dataset) return;
  const view = currentView();
  if (view === "search") runSearch({ push: false });
  else if (view === "map") showMap(params.get("item"));
  else loadLabel();
}

function showView(view) {
  for (const name of VIEWS) {
    $(`#view-${name}`).hidden = name !== view;
    $(`#nav-${name}`).classList.toggle("active", name === view);
    $(`#nav-${name}`).href = `?${new URLSearchParams({ dataset: state.dataset || "", view: name })}`;
  }
  showMessage("");
}

function go(changes) {
  writeUrl(changes, true);
  applyUrl();
}
