// Search view: query terms, dropped/pasted/picked images, the results grid, similar items, and the
// collection itself when there is no query yet.
"use strict";

let searching = null;  // the AbortController of the search in flight: a new one cancels it

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

function searchBody() {
  const terms = splitTerms($("#q").value.trim());
  for (const image of state.images) terms.push(`${image.sign === "-" ? "-" : ""}image:${image.name}`);
  const min = $("#min").value.trim();
  return { terms, k: Number($("#k").value) || 24, raw: $("#raw").checked, group: $("#group").checked,
           min_score: min === "" ? null : Number(min),
           where: $("#where").value.split(";").map((w) => w.trim()).filter(Boolean) };
}

function requestOptions(body, signal) {
  if (!state.images.length) {
    return { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal };
  }
  const form = new FormData();
  form.append("query", JSON.stringify({ ...body, uploads: state.images.map((i) => i.name) }));
  for (const image of state.images) form.append("image", image.file, image.name);
  return { method: "POST", body: form, signal };
}

// Run the form's search (or show the collection when there is no query). `push`: a history entry.
async function runSearch({ push = true, focusId = null } = {}) {
  if (!state.dataset) return;
  if (push) writeUrl({ view: "search", item: null, ...formToUrl() }, true);
  const body = searchBody();
  const key = JSON.stringify([state.dataset, body]);
  if (!push && !state.images.length && key === state.shownSearch) return;  // already on screen
  searching?.abort();
  const mine = searching = new AbortController();
  state.shownSearch = key;
  const results = $("#results");
  results.classList.add("stale");  // old results stay dimmed until the answer replaces them
  results.setAttribute("aria-busy", "true");
  $("#search-status").textContent = body.terms.length ? "searching…" : "loading the collection…";
  const started = performance.now();
  try {
    if (!body.terms.length) return await showCollection(body, mine.signal);
    showQueryItems(body.terms);
    const answer = await api(`${ds()}/search`, requestOptions(body, mine.signal));
    renderResults(answer.rows, true);
    $("#search-status").textContent = answer.rows.length
      ? `${answer.rows.length} results in ${Math.round(performance.now() - started)} ms for ${describe(answer.terms)}`
      : await whyNoResults(body, answer.terms, mine.signal);
    if (focusId !== null) document.querySelector(`#query-items [data-id="${focusId}"]`)?.focus();
  } catch (error) {
    if (aborted(error)) return;
    state.shownSearch = null;
    renderError(error);
  } finally {
    if (searching === mine) {
      results.classList.remove("stale");
      results.removeAttribute("aria-busy");
    }
  }
}

// Why a search found nothing: the filters (no item passes them) or the minimum score.
async function whyNoResults(body, terms, signal) {
  const query = describe(terms);
  if (body.where.length) {
    const params = new URLSearchParams([["limit", "1"], ...body.where.map((w) => ["where", w])]);
    const passing = (await api(`${ds()}/items?${params}`, { signal })).total;
    if (passing === 0) return `0 results: no item passes the filter ${body.where.join("; ")} — change or clear it.`;
    if (body.min_score !== null) {
      return `0 results for ${query}: ${passing} items pass the filter, but none scores at least ` +
        `${body.min_score} — lower the min score.`;
    }
    return `0 results for ${query}: the ${passing} items that pass the filter are all query items.`;
  }
  if (body.min_score !== null) return `0 results for ${query}: no item scores at least ${body.min_score} — lower the min score.`;
  return `0 results for ${query}: nothing else is embedded in ${state.dataset}.`;
}

function renderError(error) {
  $("#query-items").replaceChildren();
  $("#results").replaceChildren(el("p", { className: "search-error", role: "alert", textContent: errorText(error) }));
  state.results = [];
  $("#search-status").textContent = "search failed";
}

// The start page: the collection (the first k items that pass the filter), each a way into similar items.
async function showCollection(body, signal) {
  $("#query-items").replaceChildren();
  const params = new URLSearchParams([["limit", String(Math.min(body.k, 1000))], ...body.where.map((w) => ["where", w])]);
  const page = await api(`${ds()}/items?${params}`, { signal });
  renderResults(page.items.map((item) => ({ ...item, rank: null, score: null })), false);
  const filtered = body.where.length ? ` passing ${body.where.join("; ")}` : "";
  $("#search-status").textContent = page.total
    ? `${state.dataset}: ${page.total} items${filtered}; showing ${page.items.length}. ` +
      "Type a query, drop an image, or pick an item for similar ones."
    : `No item of ${state.dataset}${filtered}.`;
}

// The items a `like:` search started from, shown as the query.
function showQueryItems(terms) {
  const likes = terms.map((t) => /^([+-]?)(?:\d*\.?\d+\*)?like:(.+)$/.exec(t)).filter(Boolean);
  $("#query-items").replaceChildren(...likes.map(([, sign, ref]) => {
    const isId = /^\d+$/.test(ref);
    const card = el("div", { className: `query-item${sign === "-" ? " neg" : ""}`, tabIndex: 0,
      dataset: { id: ref }, title: `the query: ${sign === "-" ? "unlike" : "similar to"} ${ref}` },
      el("span", { className: "muted", textContent: sign === "-" ? "unlike" : "similar to" }),
      isId ? el("img", { src: thumbUrl(ref), alt: `item ${ref}` }) : "",
      el("span", { className: "query-ref", textContent: isId ? `#${ref}` : ref }));
    if (isId) {
      api(`${ds()}/items/${ref}`).then((item) => {
        card.querySelector(".query-ref").replaceChildren(`#${ref} `, breakable(item.path));
      }).catch(() => {});
    }
    return card;
  }));
}

function describe(terms) {
  return terms.map((t) => `${t.weight < 0 ? "-" : ""}${Math.abs(t.weight) !== 1 ? Math.abs(t.weight) + "*" : ""}` +
    `${t.kind === "text" ? "" : t.kind + ":"}${t.value.includes(" ") ? `"${t.value}"` : t.value}`).join(" ");
}

function renderResults(rows, scored) {
  state.results = rows;
  $("#results").replaceChildren(...rows.map((row) => {
    const meta = Object.entries(row.meta || {}).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`);
    const card = el("a", { className: "card", href: `?${new URLSearchParams({ dataset: state.dataset, view: "search",
      q: `like:${row.id}` })}`, role: "listitem", dataset: { id: row.id },
      title: `${row.path}\n${meta.join("\n")}\nEnter: similar items · o: open image` },
      el("img", { className: "thumb", src: thumbUrl(row.id), alt: row.path, loading: "lazy" }),
      el("div", { className: "line" }, el("span", { textContent: scored ? `#${row.rank}` : `id ${row.id}` }),
        el("span", { textContent: scored ? row.score.toFixed(3) : "" })),
      el("div", { className: "path", textContent: row.path }),
      el("div", { className: "meta", textContent: meta.join(" · ") }));
    card.addEventListener("click", (e) => { e.preventDefault(); similar(row.id); });
    return card;
  }));
}

function similar(id) {
  state.images = [];
  renderChips();
  $("#q").value = `like:${id}`;
  writeUrl({ view: "search", item: null, ...formToUrl() }, true);
  showView("search");
  runSearch({ push: false, focusId: String(id) });
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
  $("#search-form").addEventListener("submit", (e) => { e.preventDefault(); runSearch(); });
  $("#results").addEventListener("keydown", gridKeys);
  $("#file").addEventListener("change", (e) => { addImages(e.target.files); e.target.value = ""; });
  const zone = $("#dropzone");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => { e.preventDefault(); zone.classList.remove("over"); addImages(e.dataTransfer.files); });
  $("#q").addEventListener("paste", (e) => addImages(e.clipboardData?.files || []));
}
