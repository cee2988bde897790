// The Loupe console: one page, three views, filled from /api and kept live
// by the server-sent events of /api/feed. Every text from the server goes
// into the page as text (recipe names and frame ids come from clients).
"use strict";

const main = document.getElementById("main");
const crumbs = document.getElementById("crumbs");
const live = document.getElementById("live");

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

async function getJson(path) {
  const response = await fetch(path, { headers: { accept: "application/json" } });
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

const fmt = (x, digits = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));
const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + " %");
const clock = (ms) => new Date(ms).toLocaleTimeString([], { hour12: false });
const when = (ms) => new Date(ms).toLocaleString([], { hour12: false });
const badge = (text) => el("span", { class: "badge " + text, text });
const recipeLink = (name) => el("a", { href: "/recipes/" + encodeURIComponent(name), text: name });

function setCrumbs(...parts) {
  crumbs.replaceChildren(...parts.flatMap((part, i) => (i ? [" / ", part] : [part])));
}

function showError(error) {
  main.replaceChildren(el("p", { class: "error", id: "error", text: String(error.message || error) }));
}

// ---- the live feed, shared by the views --------------------------------

// Items that came before a view was ready to draw them are kept (the
// newest 50), so that a view starts with them.
const listeners = new Set();
const received = [];
function listen(listener, replay) {
  listeners.clear();
  if (listener) {
    if (replay) received.forEach((item) => listener(item, false));
    listeners.add(listener);
  }
}
function connectFeed() {
  const source = new EventSource("/api/feed");
  source.onopen = () => { live.textContent = "live"; live.className = "live on"; };
  source.onerror = () => { live.textContent = "reconnecting"; live.className = "live off"; };
  source.addEventListener("result", (message) => {
    const item = JSON.parse(message.data);
    received.push(item);
    if (received.length > 50) received.shift();
    for (const listener of listeners) listener(item, true);
  });
}

// ---- home: recipes and the live feed -----------------------------------

function feedEntry(item, fresh) {
  const thumb = item.pictures && item.id
    ? el("img", { class: "thumb", src: `/api/results/${encodeURIComponent(item.id)}/overlay.png`, alt: "overlay", loading: "lazy" })
    : el("span", { class: "thumb none", text: item.id ? "not kept" : "no trail" });
  const frame = item.id
    ? el("a", { href: "/results/" + encodeURIComponent(item.id), text: item.frame_id || "(no frame id)" })
    : document.createTextNode(item.frame_id || "(no frame id)");
  return el("li", { class: fresh ? "new" : null, "data-frame": item.frame_id, "data-verdict": item.verdict, "data-seq": item.seq },
    thumb,
    el("div", { class: "feed-text" },
      el("div", { class: "frame" }, frame),
      el("div", { class: "sub" }, `${clock(item.at_ms)} · ${item.recipe} · score ${fmt(item.score)} / ${fmt(item.threshold)}` +
        (item.regions ? ` · ${item.regions} region${item.regions > 1 ? "s" : ""}` : ""))),
    badge(item.verdict));
}

function recipeRow(recipe) {
  const drift = recipe.drift ? badge(recipe.drift.state) : el("span", { class: "muted", text: "–" });
  return el("tr", { "data-recipe": recipe.name },
    el("td", {}, recipeLink(recipe.name), el("div", { class: "muted", text: `rev ${recipe.revision} · ${recipe.status}` })),
    el("td", { text: `${recipe.mode}, ${recipe.input}` }),
    el("td", { class: "num", text: fmt(recipe.threshold, 4) }),
    el("td", { text: recipe.threshold_source }),
    el("td", {}, drift),
    el("td", { class: "num pass-count", text: recipe.counts.pass }),
    el("td", { class: "num fail-count", text: recipe.counts.fail }));
}

async function home() {
  setCrumbs("Overview");
  const table = el("tbody", { id: "recipes" });
  const feed = el("ul", { id: "feed" });
  main.replaceChildren(el("div", { class: "grid" },
    el("section", { class: "panel" },
      el("h2", { text: "Recipes" }),
      el("table", {},
        el("thead", {}, el("tr", {},
          el("th", { text: "Recipe" }), el("th", { text: "Mode, input" }), el("th", { class: "num", text: "Threshold" }),
          el("th", { text: "Basis" }), el("th", { text: "Drift" }), el("th", { class: "num", text: "Pass" }), el("th", { class: "num", text: "Fail" }))),
        table),
      el("p", { class: "muted", text: "Pass and fail: parts judged since the server started." })),
    el("section", { class: "panel" }, el("h2", { text: "Live feed" }), feed)));
  let refreshing = null;
  const refresh = async () => {
    const recipes = await getJson("/api/recipes");
    table.replaceChildren(...(recipes.length ? recipes.map(recipeRow)
      : [el("tr", {}, el("td", { colspan: 7, class: "muted", text: "No recipes yet: create one with `loupe recipe create`." }))]));
  };
  await refresh();
  listen((item, fresh) => {
    feed.prepend(feedEntry(item, fresh));
    while (feed.children.length > 50) feed.lastChild.remove();
    // The counts and drift states, at most twice a second.
    if (fresh && !refreshing) refreshing = setTimeout(() => { refreshing = null; refresh().catch(() => {}); }, 500);
  }, true);
}

// ---- a recipe: settings, drift, the chart of scores ---------------------

function scoreChart(recipe, results) {
  // Drawn at the page's own width, so that points stay round.
  const width = Math.max(600, main.clientWidth - 26), height = 300, left = 56, right = 12, top = 12, bottom = 28;
  const points = results.slice().reverse();
  const drift = recipe.drift;
  const basis = drift && drift.basis;
  // The scale runs to at most four times the threshold, so that the
  // threshold and the drift band stay readable; a higher score is drawn at
  // the top edge.
  const levels = [2 * recipe.threshold, Math.min(4 * recipe.threshold, Math.max(0, ...points.map((r) => r.score)))];
  if (basis) levels.push(1.2 * (basis[0] + drift.limit_shift * basis[2]));
  const top_ = Math.max(...levels) * 1.05 || 1;
  const y = (v) => top + (height - top - bottom) * (1 - Math.min(v, top_) / top_);
  const x = (i) => left + (width - left - right) * (points.length > 1 ? i / (points.length - 1) : 0.5);
  const chart = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, id: "chart" });
  if (basis) {
    // The drift band: the calibration's median to the WATCH and DRIFT
    // levels of the median shift.
    const [median, , spread] = basis;
    const watch = median + drift.watch_shift * spread, limit = median + drift.limit_shift * spread;
    chart.append(svg("rect", { class: "band-ok", x: left, width: width - left - right, y: y(watch), height: Math.max(0, y(median) - y(watch)) }));
    chart.append(svg("rect", { class: "band-watch", x: left, width: width - left - right, y: y(limit), height: Math.max(0, y(watch) - y(limit)) }));
    chart.append(svg("line", { class: "median", x1: left, x2: width - right, y1: y(median), y2: y(median) }));
  }
  for (let i = 0; i <= 4; i++) {
    const v = (top_ * i) / 4;
    chart.append(svg("line", { class: "axis", x1: left, x2: width - right, y1: y(v), y2: y(v) }));
    chart.append(svg("text", { x: 4, y: y(v) + 4 }, fmt(v, 2)));
  }
  chart.append(svg("line", { class: "threshold", id: "threshold-line", x1: left, x2: width - right, y1: y(recipe.threshold), y2: y(recipe.threshold) }));
  points.forEach((r, i) => {
    const dot = svg("circle", { class: r.verdict === "PASS" ? "pass" : "fail", cx: x(i), cy: y(r.score), r: 3.5, "data-id": r.id });
    dot.append(svg("title", {}, `${r.frame_id} ${r.verdict} ${fmt(r.score)} at ${when(r.at_ms)}`));
    chart.append(dot);
  });
  if (points.length) {
    chart.append(svg("text", { x: left, y: height - 8 }, when(points[0].at_ms)));
    chart.append(svg("text", { x: width - right, y: height - 8, "text-anchor": "end" }, when(points[points.length - 1].at_ms)));
  }
  return chart;
}

function settingsList(recipe) {
  // Settings are f32 on the server: six digits say them exactly enough.
  const shown = (value) => value === null ? "unset"
    : typeof value === "number" ? String(Number(value.toPrecision(6)))
    : typeof value === "object" ? JSON.stringify(value) : String(value);
  const rows = Object.entries(recipe.settings).map(([key, value]) => [el("dt", { text: key }), el("dd", { text: shown(value) })]);
  return el("dl", { class: "kv" }, rows.flat());
}

function driftPanel(recipe) {
  const d = recipe.drift;
  if (!d) return el("p", { class: "muted", text: "No drift watch: the recipe has no reference yet." });
  const kv = [
    ["State", badge(d.state)],
    ["Parts watched", `${d.window_parts} in the window (${d.parts_seen} since the reference; ${d.min_parts} needed)`],
    ["Median shift", d.median_shift === null ? "–" : `${fmt(d.median_shift, 2)} spreads (WATCH ${d.watch_shift}, DRIFT ${d.limit_shift})`],
    ["Above calibration p95", d.share_above_p95 === null ? "–" : `${pct(d.share_above_p95)} (WATCH ${pct(d.watch_share)}, DRIFT ${pct(d.limit_share)})`],
  ];
  if (d.basis) kv.push(["Calibration", `median ${fmt(d.basis[0])}, p95 ${fmt(d.basis[1])}`]);
  if (d.reason) kv.push(["Why unavailable", d.reason]);
  return el("dl", { class: "kv", id: "drift" }, kv.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", {}, v)]));
}

async function recipePage(name) {
  setCrumbs(el("a", { href: "/", text: "Overview" }), name);
  const draw = async () => {
    const recipe = await getJson("/api/recipes/" + encodeURIComponent(name));
    const results = await getJson("/api/results?limit=500&recipe=" + encodeURIComponent(name)).catch((error) => error);
    const c = recipe.calibration;
    const chartPanel = results instanceof Error
      ? el("p", { class: "muted", text: results.message })
      : [scoreChart(recipe, results),
         el("div", { class: "legend" },
           el("span", {}, el("i", { style: "background:#1a7f37" }), "PASS"),
           el("span", {}, el("i", { style: "background:#c62828" }), "FAIL"),
           el("span", {}, el("i", { style: "border-top:2px dashed #c62828;height:0" }), `threshold ${fmt(recipe.threshold, 4)}`),
           el("span", {}, el("i", { style: "background:#dcf5e3" }), "calibration median to WATCH"),
           el("span", {}, el("i", { style: "background:#fff4d1" }), "WATCH to DRIFT"),
           el("span", { text: `${results.length} newest results` }))];
    main.replaceChildren(
      el("h1", {}, recipe.name, " ", el("span", { class: "muted", text: `revision ${recipe.revision} · ${recipe.status}` })),
      el("section", { class: "panel" }, el("h2", { text: "Scores over time" }), chartPanel),
      el("div", { class: "grid" },
        el("section", { class: "panel" }, el("h2", { text: "Threshold and drift" }),
          el("dl", { class: "kv" },
            el("dt", { text: "Threshold" }), el("dd", { id: "threshold", text: fmt(recipe.threshold, 4) }),
            el("dt", { text: "Comes from" }), el("dd", { text: recipe.threshold_source }),
            el("dt", { text: "Calibration" }), el("dd", { text: c ? `${c.rule}, ${c.frames_scored} good frames scored, target false rejects ${pct(c.target_false_reject_rate)}, expected ${pct(c.expected_false_reject_rate)}` : "none" }),
            el("dt", { text: "Since start" }), el("dd", { text: `${recipe.counts.pass} pass, ${recipe.counts.fail} fail` })),
          el("h2", { text: "Drift watch", style: "margin-top:10px" }), driftPanel(recipe)),
        el("section", { class: "panel" }, el("h2", { text: "Settings" }), settingsList(recipe))));
  };
  await draw();
  let pending = null;
  listen((item) => {
    if (item.recipe === name && !pending) pending = setTimeout(() => { pending = null; draw().catch(() => {}); }, 1000);
  }, false);
}

// ---- a result: frame, overlay, regions, score against threshold ---------

async function resultPage(id) {
  const r = await getJson("/api/results/" + encodeURIComponent(id));
  setCrumbs(el("a", { href: "/", text: "Overview" }), recipeLink(r.recipe), r.frame_id || r.id);
  const share = Math.min(1, r.score / (2 * r.threshold || 1));
  const bar = el("div", { class: "scorebar" },
    el("div", { class: "fill", style: `width:${100 * share}%;background:${r.verdict === "PASS" ? "#1a7f37" : "#c62828"}` }),
    el("div", { class: "mark", style: "left:50%", title: "threshold" }));
  const boxes = (img) => {
    const holder = el("div", { class: "picture" }, img);
    img.addEventListener("load", () => {
      // Region boxes in frame pixels, placed over the picture as drawn.
      const scale = Math.min(img.clientWidth / img.naturalWidth, img.clientHeight / img.naturalHeight);
      const dx = (img.clientWidth - img.naturalWidth * scale) / 2, dy = (img.clientHeight - img.naturalHeight * scale) / 2;
      for (const g of r.regions) {
        holder.append(el("div", { class: "box", style: `left:${dx + g.x * scale}px;top:${dy + g.y * scale}px;width:${g.width * scale}px;height:${g.height * scale}px` }));
      }
    });
    return holder;
  };
  const pictures = r.pictures === "kept"
    ? el("div", { class: "pictures" },
        el("div", {}, el("h2", { text: "Frame, with regions" }), boxes(el("img", { id: "frame", src: `/api/results/${encodeURIComponent(r.id)}/frame.png`, alt: "frame" }))),
        el("div", {}, el("h2", { text: "Heatmap overlay" }), el("div", { class: "picture" }, el("img", { id: "overlay", src: `/api/results/${encodeURIComponent(r.id)}/overlay.png`, alt: "overlay" }))))
    : el("p", { class: "muted", text: `Pictures: ${r.pictures} (the trail keeps every FAIL's and a sample of PASS).` });
  const t = r.timings_ms;
  main.replaceChildren(
    el("h1", {}, el("span", { id: "verdict", class: "badge " + r.verdict, text: r.verdict }), " ", r.frame_id || "(no frame id)"),
    el("div", { class: "grid" },
      el("section", { class: "panel" }, pictures),
      el("section", { class: "panel" },
        el("h2", { text: "Score against threshold" }),
        el("div", { id: "score", text: `${fmt(r.score, 4)} / ${fmt(r.threshold, 4)} (${fmt(r.score / r.threshold, 2)} x threshold)` }),
        bar,
        el("dl", { class: "kv", style: "margin-top:10px" },
          el("dt", { text: "Recipe" }), el("dd", {}, recipeLink(r.recipe), ` revision ${r.revision}`),
          el("dt", { text: "When" }), el("dd", { text: when(r.at_ms) }),
          el("dt", { text: "Result id" }), el("dd", { text: r.id }),
          el("dt", { text: "Client" }), el("dd", { text: r.peer || "–" }),
          el("dt", { text: "Time" }), el("dd", { text: `${fmt(t.total, 1)} ms (queue ${fmt(t.queue, 1)}, decode ${fmt(t.decode, 1)}, preprocess ${fmt(t.preprocess, 1)}, model ${fmt(t.model, 1)}, search ${fmt(t.search, 1)})` })),
        el("h2", { text: `Regions (${r.regions.length})`, style: "margin-top:10px" }),
        r.regions.length
          ? el("table", { id: "regions" }, el("thead", {}, el("tr", {}, ["x", "y", "width", "height", "area", "max score"].map((h) => el("th", { class: "num", text: h })))),
              el("tbody", {}, r.regions.map((g) => el("tr", {}, [g.x, g.y, g.width, g.height, g.area, fmt(g.max_score)].map((v) => el("td", { class: "num", text: v }))))))
          : el("p", { class: "muted", text: "none" }))));
  listen(null);
}

// ---- routing -------------------------------------------------------------

async function route() {
  const path = location.pathname;
  try {
    let match;
    if ((match = path.match(/^\/recipes\/(.+)$/))) await recipePage(decodeURIComponent(match[1]));
    else if ((match = path.match(/^\/results\/(.+)$/))) await resultPage(decodeURIComponent(match[1]));
    else await home();
    document.body.dataset.ready = "true";
  } catch (error) {
    showError(error);
    document.body.dataset.ready = "error";
  }
}

connectFeed();
route();
