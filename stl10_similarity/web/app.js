// stl10sim web page: browse the collection, click an image to see its neighbours, or search with your own.
// The URL holds the state (?label=&page=&q=&k=&method=&only=&dups=&dkind=&dpage=), so links can be shared and the
// back button works.
// Arrow keys move between images in the gallery and the neighbours; Enter searches with the focused one.
"use strict";

const PAGE = 60;
const GROUPS = 10; // groups of duplicates a page
const $ = (id) => document.getElementById(id);
let classNames = [];
let uploaded = null; // {file, url}: an image of the user's is not in the URL (it never leaves this page's memory)
let renders = 0; // each render's number: a slower, older render must not overwrite a newer one
let revealResults = false; // the user asked for a search: bring its results into view (and focus) once they come
let maxK = 1000; // the API's largest k: /api/v1/health says
const ONLY_FACTOR = 10; // "in this class only" asks for this many times k neighbours, then keeps the class's

function state() {
  const p = new URLSearchParams(location.search);
  const int = (name, fallback) => (/^\d+$/.test(p.get(name) || "") ? Number(p.get(name)) : fallback);
  return { label: p.get("label") || "", page: int("page", 0), q: p.has("q") ? int("q", null) : null,
           k: int("k", 5), method: p.get("method") || "auto", only: p.get("only") === "1",
           dups: p.get("dups") === "1", dkind: p.get("dkind") || "", dpage: int("dpage", 0) };
}

function go(changes, force = false) {
  const now = state();
  const next = { ...now, ...changes };
  if (!force && Object.keys(next).every((key) => next[key] === now[key])) return; // nothing changed (a blur's late change event)
  const p = new URLSearchParams();
  if (next.label) p.set("label", next.label);
  if (next.page) p.set("page", next.page);
  if (next.q !== null && next.q !== undefined) p.set("q", next.q);
  if (next.k !== 5) p.set("k", next.k);
  if (next.method !== "auto") p.set("method", next.method);
  if (next.only) p.set("only", "1");
  if (next.dups) p.set("dups", "1");
  if (next.dups && next.dkind) p.set("dkind", next.dkind);
  if (next.dups && next.dpage) p.set("dpage", next.dpage);
  const url = `${location.pathname}${p.toString() ? "?" + p : ""}`;
  history.pushState(null, "", url);
  render();
}

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({ error: { message: `HTTP ${response.status}` } }));
  if (!response.ok) throw new Error(body.error ? body.error.message : `HTTP ${response.status}`);
  return body;
}

function showError(err) {
  $("error").hidden = !err;
  $("error").textContent = err ? String(err.message || err) : "";
}

function busy(id, text) {
  // a status line with a spinner while something loads; null hides it
  $(id).hidden = !text;
  $(id).textContent = text || "";
}

function reveal() {
  const still = matchMedia("(prefers-reduced-motion: reduce)").matches;
  $("results").scrollIntoView({ block: "start", behavior: still ? "auto" : "smooth" });
}

function card(image, extraClass, lines, onClick) {
  const div = document.createElement(onClick ? "button" : "div");
  div.className = `card ${extraClass}`;
  if (onClick) { div.type = "button"; div.addEventListener("click", onClick); }
  const img = document.createElement("img");
  img.src = image.src || `/api/v1/images/${image.id}/image.png`;
  img.alt = image.alt || `image ${image.id} (${image.label})`;
  img.loading = "lazy";
  div.appendChild(img);
  if (image.path) lines = [...lines.slice(0, 1), [image.path, "path"], ...lines.slice(1)];
  for (const [text, cls] of lines) {
    const line = document.createElement("div");
    line.textContent = text;
    line.className = `line ${cls || ""}`;
    line.title = text; // each caption keeps to its own line; the whole text where the card cuts it
    div.appendChild(line);
  }
  return div;
}

function arrowKeys(grid) {
  grid.addEventListener("keydown", (e) => {
    const cards = [...grid.querySelectorAll("button.card")];
    const at = cards.indexOf(document.activeElement);
    if (at < 0) return;
    const columns = getComputedStyle(grid).gridTemplateColumns.split(" ").length;
    const step = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns, ArrowUp: -columns,
                   Home: -at, End: cards.length - 1 - at }[e.key];
    if (step === undefined) return;
    e.preventDefault();
    cards[Math.max(0, Math.min(cards.length - 1, at + step))].focus();
  });
}

async function renderBrowse(s, current) {
  const label = s.label ? `&label=${encodeURIComponent(s.label)}` : "";
  busy("gallery-status", $("gallery").children.length ? `loading page ${s.page + 1} ...` : "loading the collection ...");
  $("gallery").classList.add("stale");
  const page = await api(`/api/v1/images?offset=${s.page * PAGE}&limit=${PAGE}${label}`);
  if (!current()) return;
  busy("gallery-status", null);
  $("gallery").classList.remove("stale");
  const pages = Math.max(1, Math.ceil(page.total / PAGE));
  $("browse-info").textContent = `${page.total.toLocaleString()} images${s.label ? " labelled " + s.label : ""}`;
  $("page-info").textContent = `page ${s.page + 1} of ${pages}`;
  $("prev").disabled = s.page <= 0;
  $("next").disabled = s.page + 1 >= pages;
  $("gallery").replaceChildren(...page.images.map((im) =>
    card(im, s.q === im.id ? "query" : "", [[`${im.id} · ${im.label}`]], () => pick(im.id))));
}

function formatBytes(n) {
  return n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} kB` : `${(n / 1048576).toFixed(1)} MB`;
}

function groupRow(g, number) {
  const row = document.createElement("div");
  row.className = "group";
  const title = document.createElement("h3");
  title.textContent = `group ${number} · ${g.kind} · ${g.ids.length} images · min cos ${g.min_cosine.toFixed(3)}`;
  const grid = document.createElement("div");
  grid.className = "grid";
  g.ids.forEach((id, m) => {
    const kept = id === g.keep;
    const lines = [[kept ? `keep · id ${id}` : `id ${id}`, kept ? "kept" : ""]];
    if (g.resolutions && g.resolutions[m]) lines.push([`${g.resolutions[m][0]}×${g.resolutions[m][1]}`, "scores"]);
    if (g.bytes && g.bytes[m] !== null) lines.push([formatBytes(g.bytes[m]), "scores"]);
    if (!kept) lines.push([`cos ${g.scores[m].toFixed(3)} to the kept`, "scores"]);
    grid.appendChild(card({ id, path: g.paths ? g.paths[m] : null, alt: `image ${id}` }, kept ? "keep" : "",
                          lines, () => pick(id)));
  });
  arrowKeys(grid);
  row.append(title, grid);
  return row;
}

async function renderDuplicates(s, current) {
  $("dups").open = s.dups;
  $("dkind").value = s.dkind;
  if (!s.dups) return;
  busy("dups-status", $("dups-list").children.length ? `loading page ${s.dpage + 1} ...`
    : "finding duplicates ... (the first time takes a few seconds per 10,000 images)");
  $("dups-list").classList.add("stale");
  const kind = s.dkind ? `&kind=${encodeURIComponent(s.dkind)}` : "";
  const page = await api(`/api/v1/duplicates?offset=${s.dpage * GROUPS}&limit=${GROUPS}${kind}`);
  if (!current()) return;
  busy("dups-status", null);
  $("dups-list").classList.remove("stale");
  const pages = Math.max(1, Math.ceil(page.total / GROUPS));
  $("dups-info").textContent = `${page.total.toLocaleString()} groups`;
  $("dpage-info").textContent = `page ${s.dpage + 1} of ${pages}`;
  $("dprev").disabled = s.dpage <= 0;
  $("dnext").disabled = s.dpage + 1 >= pages;
  $("dups-list").replaceChildren(...(page.groups.length ? page.groups.map((g, i) => groupRow(g, s.dpage * GROUPS + i + 1))
    : [Object.assign(document.createElement("p"), { className: "muted", textContent: "no duplicates of this kind" })]));
}

function renderResults(doc, queryCard, roundTripMs, s) {
  const q = doc.query;
  const cards = [queryCard];
  const all = doc.results.length;
  const results = s.only && s.label ? doc.results.filter((m) => m.label === s.label).slice(0, s.k) : doc.results;
  for (const m of results) {
    const cls = q.class_index === null || q.class_index < 0 ? "none" : (m.class_index === q.class_index ? "same" : "other");
    cards.push(card(m, cls, [
      [`#${m.rank} · id ${m.id}`], [m.label],
      [`cos ${m.cosine.toFixed(3)}`, "scores"],
      [`sets J ${m.set_jaccard.toFixed(2)} · J≈ ${m.jaccard_estimate.toFixed(2)}`, "scores"],
      [`top-K dims J ${m.jaccard.toFixed(2)}`, "scores"],
    ], () => pick(m.id)));
  }
  $("neighbours").replaceChildren(...cards);
  const t = doc.timing_ms;
  const how = doc.params.method === doc.params.answered_by ? doc.params.method
    : `${doc.params.method} (${doc.params.answered_by})`;
  $("timing").textContent = `${how}, ${doc.candidates.toLocaleString()} candidates examined; ` +
    `search ${(t.search + t.describe).toFixed(2)} ms on the server` + (t.embed ? `, embedding ${t.embed.toFixed(0)} ms` : "") +
    `, ${roundTripMs.toFixed(0)} ms round trip` +
    (s.only && s.label ? `; in class ${s.label} only: ${results.length} of the nearest ${all}` : "");
  busy("results-status", null);
  $("neighbours").classList.remove("stale");
  $("results").hidden = false;
  if (revealResults) {
    revealResults = false;
    reveal();
    const first = $("neighbours").querySelector("button.card");
    if (first) first.focus({ preventScroll: true }); // the keyboard goes on from the results
  }
}

function searching(text) {
  $("results").hidden = false;
  $("neighbours").classList.add("stale");
  busy("results-status", text);
  if (revealResults) reveal(); // at once: the status line is where the results will appear
}

async function renderQuery(s, current) {
  const k = s.only && s.label ? Math.min(maxK, s.k * ONLY_FACTOR) : s.k;
  if (uploaded) {
    const form = new FormData();
    form.append("image", uploaded.file);
    form.append("k", String(k));
    form.append("method", s.method);
    searching(`embedding ${uploaded.file.name} and searching ... (the first upload loads the model: up to half a minute)`);
    const t0 = performance.now();
    const doc = await api("/api/v1/search", { method: "POST", body: form });
    if (!current()) return;
    $("results-title").textContent = `Neighbours of ${uploaded.file.name}`; // only now: a refused upload leaves the last results as they were
    renderResults(doc, card({ src: uploaded.url, alt: uploaded.file.name }, "query", [["your image"]]),
                  performance.now() - t0, s);
    return;
  }
  if (s.q === null) { $("results").hidden = true; return; }
  searching(`searching for the neighbours of image ${s.q} ...`);
  const t0 = performance.now();
  const doc = await api(`/api/v1/search?image_id=${s.q}&k=${k}&method=${encodeURIComponent(s.method)}`);
  if (!current()) return;
  $("results-title").textContent = `Neighbours of image ${s.q}`;
  renderResults(doc, card(doc.query, "query", [[`query ${s.q}`], [doc.query.label]]), performance.now() - t0, s);
}

async function render() {
  const s = state();
  const mine = ++renders;
  const current = () => mine === renders;
  $("label").value = s.label;
  $("k").value = s.k;
  $("method").value = s.method;
  $("same-class").checked = s.only;
  $("same-class").disabled = !s.label;
  showError(null);
  try {
    await Promise.all([renderBrowse(s, current), renderQuery(s, current), renderDuplicates(s, current)]);
  } catch (err) {
    if (current()) {
      busy("gallery-status", null);
      busy("results-status", null);
      busy("dups-status", null);
      $("gallery").classList.remove("stale");
      $("dups-list").classList.remove("stale");
      $("neighbours").classList.remove("stale");
      revealResults = false;
      showError(err);
    }
  }
}

function pick(id) {
  // a collection image as the query: leaves any upload behind
  const hadUpload = uploaded !== null;
  uploaded = null;
  revealResults = true;
  go({ q: id }, hadUpload || state().q === id);
}

function useUpload(file) {
  if (!file) return;
  if (uploaded) URL.revokeObjectURL(uploaded.url);
  uploaded = { file, url: URL.createObjectURL(file) };
  history.pushState({ upload: true }, "", location.href);
  revealResults = true;
  render();
}

function describeCollection(h) {
  // in the words people use: how many images, of how many classes; the index's parameters go in the details line
  const classes = h.class_names.length;
  return `${h.n.toLocaleString()} images` + (classes ? ` in ${classes.toLocaleString()} ${classes === 1 ? "class" : "classes"}` : "") +
    (h.newer_index_on_disk ? " · a newer index exists on disk: restart the server to use it" : "");
}

function describeIndex(h) {
  const sets = h.sets === "centroids"
    ? `each image's ${h.set_size} nearest of ${Number(h.centroids).toLocaleString()} learned centroids`
    : `each image's top ${h.top_k} feature dimensions`;
  return `Index: ${sets}, MinHashed with ${h.num_perm} permutations into an LSH forest of ${h.trees} trees.`;
}

async function init() {
  const health = await api("/api/v1/health");
  classNames = health.class_names;
  maxK = health.max_k || maxK;
  $("collection").textContent = describeCollection(health);
  $("index-details").textContent = describeIndex(health);
  for (const name of classNames.includes("unlabeled") ? classNames : [...classNames, "unlabeled"]) {
    const option = document.createElement("option");
    option.value = option.textContent = name;
    $("label").appendChild(option);
  }
  $("controls").addEventListener("submit", (e) => e.preventDefault()); // Enter in a field: no page reload
  $("label").addEventListener("change", () => go({ label: $("label").value, page: 0 }));
  $("k").addEventListener("change", () => go({ k: Math.max(1, Math.min(100, Number($("k").value) || 5)) }));
  $("method").addEventListener("change", () => go({ method: $("method").value }));
  $("same-class").addEventListener("change", () => go({ only: $("same-class").checked }));
  arrowKeys($("gallery"));
  arrowKeys($("neighbours"));
  $("prev").addEventListener("click", () => go({ page: Math.max(0, state().page - 1) }));
  $("next").addEventListener("click", () => go({ page: state().page + 1 }));
  $("upload").addEventListener("change", () => useUpload($("upload").files[0]));
  $("dups").addEventListener("toggle", () => { // the user's click, not render() setting it to the URL's state
    if ($("dups").open !== state().dups) go({ dups: $("dups").open, dpage: 0 });
  });
  $("dups-controls").addEventListener("submit", (e) => e.preventDefault());
  $("dkind").addEventListener("change", () => go({ dkind: $("dkind").value, dpage: 0 }));
  $("dprev").addEventListener("click", () => go({ dpage: Math.max(0, state().dpage - 1) }));
  $("dnext").addEventListener("click", () => go({ dpage: state().dpage + 1 }));
  const drop = $("drop");
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("upload").click(); });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    useUpload(e.dataTransfer.files[0]);
  });
  window.addEventListener("popstate", (e) => {
    if (!(e.state && e.state.upload)) uploaded = null; // back from an upload: the URL's query again
    render();
  });
  await render();
}

init().catch((err) => { busy("gallery-status", null); showError(err); });
