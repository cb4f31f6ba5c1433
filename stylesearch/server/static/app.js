// stylesearch page: wires the views together and starts. Scripts load in order (see index.html).
"use strict";

document.addEventListener("keydown", (e) => {
  if (e.key === "/" && !e.target.matches("input, select")) {
    e.preventDefault();
    if (currentView() !== "search") location.hash = "#search";
    $("#q").focus();
  } else if (e.key === "Escape" && e.target.matches("input")) {
    e.target.blur();
  }
});

async function start() {
  setupSearch();
  setupMap();
  setupLabel();
  $("#dataset").addEventListener("change", (e) => {
    state.dataset = e.target.value;
    localStorage.setItem("stylesearch.dataset", state.dataset);
    $("#results").replaceChildren();
    showView();
  });
  window.addEventListener("hashchange", showView);
  loadHealth();
  try { await loadDatasets(); } catch (error) { fail(error); }
  showView();
}

start();
