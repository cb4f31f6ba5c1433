// Labelling view: the anchor between two options; the terminal labeller's keys.
"use strict";

function sessionId() {
  const key = `stylesearch.session.${state.dataset}`;
  let id = localStorage.getItem(key);
  if (!id) {
    id = "web-" + Math.random().toString(36).slice(2, 12);
    localStorage.setItem(key, id);
  }
  return id;
}

async function loadLabel() {
  try {
    showLabel(await api(`${ds()}/label?session=${sessionId()}`));
  } catch (error) { fail(error); }
}

function showLabel(view) {
  state.label = view;
  const t = view.triplet;
  for (const side of ["left", "anchor", "right"]) {
    const pane = $(`#pane-${side}`), item = t && t[side];
    pane.querySelector("img").src = item ? thumbUrl(item.id) : "";
    pane.querySelector("img").alt = item ? item.path : "";
    pane.querySelector(".caption").textContent = item
      ? `${item.path}${item.score !== undefined ? ` · score ${item.score.toFixed(3)}` : ""}` : "";
  }
  const s = view.status;
  $("#label-status").textContent = t === null ? "Every triplet has been judged." :
    `${s.total} judgments (${s.session} this session)` +
    (s.agreement != null ? ` · metric agreement ${Number(s.agreement).toFixed(3)}` : "");
}

async function judge(choice) {
  const t = state.label?.triplet;
  if (!t || state.busy) return;
  state.busy = true;
  try {
    const answer = await api("/api/triplets", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ dataset: state.dataset, session: sessionId(), anchor: t.anchor.path, left: t.left.path,
        right: t.right.path, choice }),
    });
    const flash = { left: "#pane-left", right: "#pane-right" }[choice];
    if (flash) { $(flash).classList.add("flash"); setTimeout(() => $(flash).classList.remove("flash"), 150); }
    showLabel(answer.next);
  } catch (error) { fail(error); } finally { state.busy = false; }
}

async function undo() {
  if (state.busy) return;
  state.busy = true;
  try {
    const answer = await api("/api/triplets/undo", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ dataset: state.dataset, session: sessionId() }),
    });
    showLabel(answer.next);
  } catch (error) { fail(error); } finally { state.busy = false; }
}

const LABEL_KEYS = { a: "left", ArrowLeft: "left", b: "right", ArrowRight: "right", s: "too_similar",
  d: "anchor_different", " ": "unknown" };

function setupLabel() {
  for (const button of document.querySelectorAll(".label-buttons button")) {
    button.addEventListener("click", () => (button.dataset.undo !== undefined ? undo() : judge(button.dataset.choice)));
  }
  document.addEventListener("keydown", (e) => {
    if (currentView() !== "label" || e.ctrlKey || e.metaKey || e.altKey || e.target.matches("input, select")) return;
    const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    if (key in LABEL_KEYS) { e.preventDefault(); judge(LABEL_KEYS[key]); }
    else if (key === "u") { e.preventDefault(); undo(); }
  });
}
