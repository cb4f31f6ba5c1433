// stylesearch page: wires the views together and starts. Scripts load in order (see index.html).
"use strict";

document.addEventListener("keydown", (e) => {
  if (e.key === "/" && !e.target.matches("input, select")) {
    e.preventDefault();
    if (currentView() !== "search") go({ view: "search", item: null });
    $("#q").focus();
  } else if (e.key === "Escape" && e.target.matches("input")) {
    e.target.blur();
  }
});

async function start() {
  setupSearch();
  setupMap();
  setupLabel();
  for (const view of VIEWS) {
    $(`#nav-${view}`).addEventListener("click", (e) => { e.preventDefault(); go({ view }); });
  }
  $("#dataset").addEventListener("change", (e) => go({ dataset: e.target.value, q: null, where: null, item: null }));
  window.addEventListener("popstate", applyUrl);
  loadHealth();
  try { await loadDatasets(); } catch (error) { fail(error); }
  applyUrl();
  if (currentView() === "search" && !$("#q").value) $("#q").focus();
}

start();
