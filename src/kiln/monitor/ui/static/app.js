// Kiln dashboard: plain JavaScript, inline SVG charts, no libraries and no build step.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#3060c0", "#f08a24", "#1e7b34", "#b3261e", "#7a4fb0", "#0f8a8a"];

function el(tag, attrs = {}, children = []) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const child of children) node.appendChild(child);
  return node;
}

async function getJSON(panel) {
  const response = await fetch(`/ui/api/${panel}`);
  if (!response.ok) throw new Error(`${panel}: HTTP ${response.status}`);
  return response.json();
}

function section(title, id) {
  const s = el("section", { id }, [el("h2", { text: title })]);
  document.getElementById("page").appendChild(s);
  return s;
}

function table(headers, rows) {
  const head = el("tr", {}, headers.map((h) => el("th", { text: h })));
  const body = rows.map((r) => el("tr", {}, r.map((c) => (c instanceof Node ? el("td", {}, [c]) : el("td", { text: c ?? "" })))));
  return el("table", {}, [el("thead", {}, [head]), el("tbody", {}, body)]);
}

function empty(text) { return el("p", { class: "empty", text }); }

// A line chart of named series [{name, points: [[x, y], ...]}].
function lineChart(series, { width = 560, height = 220, xLabel = "", yLabel = "" } = {}) {
  const svg = el("svg:svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "chart" });
  const all = series.flatMap((s) => s.points);
  if (!all.length) return svg;
  const pad = 40;
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs) || 1, y0 = Math.min(0, ...ys), y1 = Math.max(...ys) || 1;
  const sx = (x) => pad + ((x - x0) / (x1 - x0 || 1)) * (width - 2 * pad);
  const sy = (y) => height - pad + -((y - y0) / (y1 - y0 || 1)) * (height - 2 * pad);
  svg.appendChild(el("svg:line", { x1: pad, y1: height - pad, x2: width - pad, y2: height - pad, stroke: "#99a" }));
  svg.appendChild(el("svg:line", { x1: pad, y1: pad, x2: pad, y2: height - pad, stroke: "#99a" }));
  svg.appendChild(el("svg:text", { x: 4, y: pad - 8, text: `${yLabel} ${y1.toPrecision(3)}` }));
  svg.appendChild(el("svg:text", { x: width - pad - 60, y: height - 8, text: xLabel }));
  series.forEach((s, i) => {
    const d = s.points.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
    svg.appendChild(el("svg:path", { d, fill: "none", stroke: COLORS[i % COLORS.length], "stroke-width": 2, "data-series": s.name }));
    svg.appendChild(el("svg:text", { x: pad + 8 + i * 110, y: 14, fill: COLORS[i % COLORS.length], text: s.name }));
  });
  return svg;
}

function barChart(bars, { width = 560, height = 200, threshold = null } = {}) {
  const svg = el("svg:svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "chart" });
  if (!bars.length) return svg;
  const pad = 30, max = Math.max(...bars.map((b) => b.value), threshold ?? 0) || 1;
  const w = (width - 2 * pad) / bars.length;
  bars.forEach((b, i) => {
    const h = (b.value / max) * (height - 2 * pad);
    svg.appendChild(el("svg:rect", { x: pad + i * w + 2, y: height - pad - h, width: Math.max(w - 4, 1), height: h, fill: b.color || COLORS[0], "data-bar": b.label }));
    svg.appendChild(el("svg:text", { x: pad + i * w + 2, y: height - pad + 12, text: b.label.slice(0, 10) }));
  });
  return svg;
}

const pages = {
  async models() {
    const data = await getJSON("overview");
    const served = section("Served models", "served");
    served.appendChild(data.served.length ? table(["model", "versions", "canary"], data.served.map((m) => [
      m.name, m.versions.map((v) => `v${v.version} (${v.precision})`).join(", "),
      Object.entries(m.canary).map(([v, w]) => `v${v}: ${w}%`).join(", ") || "newest takes all"])) : empty("No server models."));
    const reg = section("Registry", "registry");
    reg.appendChild(data.registry.length ? table(["model", "version", "precision", "aliases"], data.registry.flatMap((m) =>
      m.versions.map((v) => [m.name, `v${v.version}`, v.precision, v.aliases.join(", ")]))) : empty("No registry under KILN_HOME."));
  },
  async lineage() {
    const data = await getJSON("lineage");
    const s = section("Lineage", "lineage-graph");
    if (!data.nodes.length) { s.appendChild(empty("No packages yet.")); return; }
    const depth = {};
    const parents = {};
    data.edges.forEach((e) => { parents[e.child] = e.parent; });
    const level = (id, seen = 0) => (parents[id] && seen < 20 ? 1 + level(parents[id], seen + 1) : 0);
    data.nodes.forEach((n) => { depth[n.id] = level(n.id); });
    const rows = {};
    const pos = {};
    data.nodes.forEach((n) => { const d = depth[n.id]; rows[d] = (rows[d] || 0) + 1; pos[n.id] = [40 + d * 220, 30 + (rows[d] - 1) * 60]; });
    const height = 60 + 60 * Math.max(...Object.values(rows));
    const svg = el("svg:svg", { width: 900, height, viewBox: `0 0 900 ${height}` });
    data.edges.forEach((e) => {
      const a = pos[e.parent], b = pos[e.child];
      if (!a || !b) return;
      svg.appendChild(el("svg:line", { x1: a[0] + 160, y1: a[1] + 15, x2: b[0], y2: b[1] + 15, stroke: "#778", "data-edge": `${e.parent}->${e.child}` }));
      svg.appendChild(el("svg:text", { x: (a[0] + 160 + b[0]) / 2 - 20, y: (a[1] + b[1]) / 2 + 10, text: e.transformation }));
    });
    data.nodes.forEach((n) => {
      const [x, y] = pos[n.id];
      svg.appendChild(el("svg:rect", { x, y, width: 160, height: 30, rx: 5, fill: "#e8eefc", stroke: "#3060c0", "data-node": n.id }));
      svg.appendChild(el("svg:text", { x: x + 8, y: y + 19, text: `${n.id.slice(0, 22)} ${n.precision || ""}` }));
    });
    s.appendChild(svg);
  },
  async training() {
    const runs = await getJSON("runs");
    if (!runs.length) { section("Training curves", "training").appendChild(empty("No run metrics found.")); return; }
    for (const run of runs) {
      const s = section(`Training curves: ${run.name}`, `run-${run.name}`);
      const train = run.records.filter((r) => r.type === "train" && r.loss !== undefined).map((r) => [r.step, r.loss]);
      const evalLoss = run.records.filter((r) => r.type === "eval").map((r) => [r.step, r.loss]);
      const acc = run.records.filter((r) => r.type === "eval" && r.accuracy !== undefined).map((r) => [r.step, r.accuracy]);
      s.appendChild(lineChart([{ name: "train loss", points: train }, { name: "val loss", points: evalLoss }, { name: "val accuracy", points: acc }], { xLabel: "step", yLabel: "max" }));
    }
  },
  async compression() {
    const points = await getJSON("compression");
    const s = section("Compression: accuracy vs latency", "compression");
    const usable = points.filter((p) => p.accuracy !== null);
    s.appendChild(table(["version", "precision", "accuracy", "latency (ms)"], points.map((p) => [p.ref, p.precision, p.accuracy?.toFixed(4), p.latency_ms?.toFixed(2)])));
    if (usable.length) s.appendChild(lineChart(usable.map((p) => ({ name: p.ref, points: [[p.latency_ms ?? 0, p.accuracy], [p.latency_ms ?? 0, p.accuracy]] })), { xLabel: "latency ms", yLabel: "accuracy" }));
  },
  async traffic() {
    const data = await getJSON("traffic");
    const s = section("Live traffic", "traffic");
    const last = data.points[data.points.length - 1] || {};
    s.appendChild(el("div", { class: "kpis" }, [
      el("div", { class: "kpi" }, [el("b", { text: String(data.requests), id: "kpi-requests" }), el("span", { text: "requests" })]),
      el("div", { class: "kpi" }, [el("b", { text: String(data.errors), id: "kpi-errors" }), el("span", { text: "errors" })]),
      el("div", { class: "kpi" }, [el("b", { text: (last.p99_ms ?? 0).toFixed(1) }), el("span", { text: "p99 ms (last s)" })]),
    ]));
    const t0 = data.points.length ? data.points[0].t : 0;
    s.appendChild(lineChart([{ name: "QPS", points: data.points.map((p) => [p.t - t0, p.qps]) }], { xLabel: "seconds", yLabel: "QPS" }));
    s.appendChild(lineChart(["p50_ms", "p95_ms", "p99_ms"].map((k) => ({ name: k, points: data.points.map((p) => [p.t - t0, p[k]]) })), { xLabel: "seconds", yLabel: "ms" }));
    const buckets = Object.entries(data.batch_sizes).filter(([le]) => le !== "+Inf");
    let prev = 0;
    const bars = buckets.map(([le, count]) => { const b = { label: `<=${le}`, value: count - prev }; prev = count; return b; });
    const b = section("Batch sizes", "batches");
    b.appendChild(bars.length ? barChart(bars) : empty("No batches yet."));
  },
  async drift() {
    const reports = await getJSON("drift");
    if (!reports.length) { section("Drift", "drift").appendChild(empty("No window evaluated yet.")); return; }
    for (const r of reports) {
      const s = section(`Drift: ${r.model} v${r.version} (${r.rows} inputs, drift share ${(r.values.drift_share ?? 0).toFixed(2)})`, `drift-${r.model}-${r.version}`);
      s.appendChild(table(["statistic", "method", "score", "threshold", "PSI", "drift"], r.columns.map((c) => [
        c.column, c.method, c.score.toFixed(4), c.threshold, (c.stats.psi ?? 0).toFixed(3),
        el("span", { class: c.is_drifted ? "drifted" : "ok", text: c.is_drifted ? "drifted" : "ok" })])));
      s.appendChild(barChart(r.columns.map((c) => ({ label: c.column, value: c.stats.psi ?? 0, color: c.is_drifted ? "#b3261e" : "#1e7b34" }))));
    }
  },
  async alerts() {
    const data = await getJSON("alerts");
    const a = section("Active alerts", "active-alerts");
    a.appendChild(data.active.length ? table(["rule", "model", "version"], data.active.map((x) => [el("span", { class: "firing", text: x.rule }), x.model, x.version])) : empty("No active alerts."));
    const h = section("Alert history", "alert-history");
    h.appendChild(data.history.length ? table(["time", "rule", "model", "state", "value", "condition"], data.history.map((e) => [
      new Date(e.at * 1000).toISOString().replace("T", " ").slice(0, 19), e.rule, `${e.model}@${e.version}`,
      el("span", { class: e.state === "firing" ? "firing" : "ok", text: e.state }), e.value?.toFixed?.(4), e.condition])) : empty("No alerts yet."));
  },
};

async function render() {
  const name = (location.hash || "#models").slice(1);
  const page = pages[name] ? name : "models";
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === page));
  const main = document.getElementById("page");
  main.replaceChildren();
  main.dataset.page = page;
  try {
    await pages[page]();
  } catch (err) {
    main.appendChild(el("p", { class: "drifted", text: String(err) }));
  }
  main.dataset.ready = page;
}

window.addEventListener("hashchange", render);
render();
