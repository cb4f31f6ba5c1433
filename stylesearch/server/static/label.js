// Labelling view: the anchor between two options; the terminal labeller's keys and its ◆ (the
// option the current metric would pick). After each answer, what was recorded is shown with the
// triplet it was about; undo brings that triplet back.
"use strict";

const CHOICE_WORDS = { left: "A (left) is more like the anchor", right: "B (right) is more like the anchor",
  too_similar: "A and B are too similar to tell", anchor_different: "the anchor is too different from both",
  unknown: "don't know" };

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
    pane.dataset.id = item ? item.id : "";
    pane.classList.toggle("picked", Boolean(t && t.pick === side));
    pane.querySelector(".pick").textContent = t && t.pick === side ? "◆ metric's pick" : "";
    const caption = pane.querySelector(".caption");
    caption.replaceChildren(...(item ? [breakable(item.path)] : []));
    if (item && item.score !== undefined) caption.append(el("span", { className: "score", textContent: ` score ${item.score.toFixed(3)}` }));
  }
  $("#label-guess").textContent = t === null ? "" : guessWords(t, view.status);
  $("#label-status").textContent = t === null ? `Every triplet has been judged. ${countWords(view.status)}`
    : countWords(view.status);
}

function guessWords(t, s) {
  const side = { left: "A (left)", right: "B (right)" };
  const pick = t.pick ? `The metric would pick ${side[t.pick]}` + (t.sure != null ? `, ${Math.round(t.sure * 100)}% sure.` : ".")
    : "The metric has no preference here.";
  const record = s.guesses ? ` It guessed ${s.guessed_right} of your last ${s.guesses} A/B answers.` : "";
  return pick + record;
}

function countWords(s) {
  const count = `${s.total} judgment${s.total === 1 ? "" : "s"} recorded in ${state.dataset} (${s.session} in this session).`;
  const agreement = s.agreement != null
    ? ` The metric agrees with ${Math.round(Number(s.agreement) * 100)}% of the answers it was checked on.`
    : ` No metric agreement yet: run \`stylesearch train ${state.dataset}\` after some judgments.`;
  return count + agreement;
}

// What was recorded (or withdrawn) about which triplet: small images, the chosen one outlined.
function showRecorded(verb, triplet, choice) {
  const box = $("#label-recorded");
  const thumbs = ["anchor", "left", "right"].map((side) => el("img", { src: thumbUrl(triplet[side].id),
    alt: `${side}: ${triplet[side].path}`, className: side === choice ? "chosen" : "", title: triplet[side].path }));
  box.replaceChildren(el("span", { className: "thumbs" }, ...thumbs),
    el("span", { textContent: `${verb}: ${CHOICE_WORDS[choice] || choice}` }));
  box.dataset.verb = verb.toLowerCase();
  box.dataset.anchor = triplet.anchor.id;
  box.hidden = false;
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
    showRecorded("Recorded", t, answer.record?.choice || choice);
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
    if (answer.undone && answer.next.triplet) showRecorded("Withdrawn", answer.next.triplet, answer.undone.choice);
    else $("#label-recorded").replaceChildren("Nothing to undo in this session.");
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
