// Search view: query terms, dropped/pasted/picked images, the results grid, similar items.
"use strict";

function splitTerms(text) {
  // Words join into one term until a word starting with + or -; quoted text stays one word.
  const words = text.match(/[+-]?(?:\d*\.?\d+\*)?(?:"[^"]*"|'[^']*'|\S)+/g) || [];
  const terms = [];
  for (const raw of words) {
    const word = raw.replace(/"([^"]*)"|'([^']*)'/g, "$1$2");
    const last = terms[terms.length - 1];
    const single = /^[+-]|^(\d*\.?\d+\*)?(like|image|text):/.test(word);
    if (!single && last && !/^[+-]?(\d*\.?\d+\*)?(like|image):/.test(last)) terms[terms.length - 1] = `${last} ${word}`;
    else terms.push(word);
  }
  return terms;
}

function addImages(files) {
  for (const file of files) {
    if (!file.type.startsWith("image/")) continue;
    let name = file.name || "pasted.png";
    while (state.images.some((i) => i.name === name)) name = `1-${name}`;
    state.images.push({ file, name, sign: "+", url: URL.createObjectURL(file) });
  }
  renderChips();
}

function renderChips() {
  $("#chips").replaceChildren(...state.images.map((image, n) => {
    const chip = el("button", { type: "button", className: `chip${image.sign === "-" ? " neg" : ""}`,
      title: "click: toggle + / −; Delete: remove" },
      el("img", { src: image.url, alt: "" }), `${image.sign} ${image.name}`);
    chip.addEventListener("click", () => { image.sign = image.sign === "+" ? "-" : "+"; renderChips(); });
    chip.addEventListener("keydown", (e) => {
      if (e.key === "Delete" || e.key === "Backspace") { state.images.splice(n, 1); renderChips(); }
    });
    return chip;
  }));
}

async function runSearch(event) {
  event?.preventDefault();
  if (!state.dataset) return;
  const terms = splitTerms($("#q").value.trim());
  for (const image of state.images) terms.push(`${image.sign === "-" ? "-" : ""}image:${image.name}`);
  const body = {
    terms, k: Number($("#k").value) || 24, raw: $("#raw").checked, group: $("#group").checked,
    where: $("#where").value.split(";").map((w) => w.trim()).filter(Boolean),
  };
  let options;
  if (state.images.length) {
    const form = new FormData();
    form.append("query", JSON.stringify({ ...body, uploads: state.images.map((i) => i.name) }));
    for (const image of state.images) form.append("image", image.file, image.name);
    options = { method: "POST", body: form };
  } else {
    options = { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  }
  $("#search-status").textContent = "searching…";
  const started = performance.now();
  try {
    const answer = await api(`${ds()}/search`, options);
    showMessage("");
    renderResults(answer.rows);
    $("#search-status").textContent =
      `${answer.rows.length} results in ${Math.round(performance.now() - started)} ms for ${describe(answer.terms)}`;
  } catch (error) {
    $("#search-status").textContent = "";
    fail(error);
  }
}

function describe(terms) {
  return terms.map((t) => `${t.weight < 0 ? "-" : ""}${Math.abs(t.weight) !== 1 ? Math.abs(t.weight) + "*" : ""}` +
    `${t.kind === "text" ? "" : t.kind + ":"}${t.value.includes(" ") ? `"${t.value}"` : t.value}`).join(" ");
}

function renderResults(rows) {
  state.results = rows;
  $("#results").replaceChildren(...rows.map((row) => {
    const meta = Object.entries(row.meta || {}).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`);
    const card = el("a", { className: "card", href: `#search`, role: "listitem", dataset: { id: row.id },
      title: `${row.path}\n${meta.join("\n")}\nEnter: similar items · o: open image` },
      el("img", { className: "thumb", src: thumbUrl(row.id), alt: row.path, loading: "lazy" }),
      el("div", { className: "line" }, el("span", { textContent: `#${row.rank}` }),
        el("span", { textContent: row.score.toFixed(3) })),
      el("div", { className: "path", textContent: row.path }),
      el("div", { className: "meta", textContent: meta.join(" · ") }));
    card.addEventListener("click", (e) => { e.preventDefault(); similar(row.id); });
    return card;
  }));
}

function similar(id) {
  if (currentView() !== "search") location.hash = "#search";
  state.images = [];
  renderChips();
  $("#q").value = `like:${id}`;
  runSearch();
}

function gridKeys(event) {
  const cards = [...document.querySelectorAll("#results .card")];
  const index = cards.indexOf(document.activeElement);
  if (index < 0) return;
  const columns = Math.max(1, Math.round($("#results").clientWidth / cards[0].offsetWidth));
  const moves = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns, ArrowUp: -columns };
  if (event.key in moves) {
    event.preventDefault();
    cards[Math.min(cards.length - 1, Math.max(0, index + moves[event.key]))].focus();
  } else if (event.key === "o") {
    window.open(imageUrl(cards[index].dataset.id), "_blank", "noopener");
  }
}

function setupSearch() {
  $("#search-form").addEventListener("submit", runSearch);
  $("#results").addEventListener("keydown", gridKeys);
  $("#file").addEventListener("change", (e) => { addImages(e.target.files); e.target.value = ""; });
  const zone = $("#dropzone");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => { e.preventDefault(); zone.classList.remove("over"); addImages(e.dataTransfer.files); });
  $("#q").addEventListener("paste", (e) => addImages(e.clipboardData?.files || []));
}
