// Attribution health: /api/health (the window's figures), /api/health-series (over time),
// /api/exporters (agents and their last batch) and /healthz (what waits now, drops).

import { windowParams } from "./console.js";
import {
  apiUrl, el, fmtAge, fmtInt, fmtMs, fmtPct, fmtUtc, getJSON, svg, table,
} from "./util.js";

const SOURCES = ["heartbeat", "event", "unattributed"];

export async function loadHealth(signal) {
  const w = windowParams();
  const [health, series, agents, live] = await Promise.all([
    getJSON(apiUrl("health", w), signal),
    getJSON(apiUrl("health-series", { ...w, buckets: 60 }), signal),
    getJSON(apiUrl("exporters", w), signal),
    getJSON("/healthz", signal).catch(() => ({})),
  ]);
  const group = (name) => health.find((g) => g.group === name);
  const all = group("all") || { rows: 0 };
  const attributed = group("attributed");
  cards([
    ["attributed", "Attributed", attributed ? fmtPct(attributed.pct) : all.rows ? "0%" : "–",
      `${fmtInt(attributed ? attributed.rows : 0)} of ${fmtInt(all.rows)} rows`],
    ["waiting", "Waiting now", live.waiting_flows === undefined ? "–"
      : fmtInt(live.waiting_flows), "rows held for a heartbeat"],
    ["wait", "Wait p50 / p99", `${fmtMs(all.wait_p50_ms)} / ${fmtMs(all.wait_p99_ms)}`,
      "received → decided"],
    ["agents", "Agents", fmtInt(agents.length), agents.length
      ? `last batch ${fmtAge(Math.max(...agents.map((a) => a.last_received_ns ?? 0)))}`
      : "none in this window"],
  ]);
  table(document.getElementById("health-sources"), [
    { label: "Named by", value: (g) => el("span", { class: `src ${g.group.slice(7)}` },
      g.group.slice(7)) },
    { label: "Rows", num: true, value: (g) => fmtInt(g.rows) },
    { label: "Share", num: true, value: (g) => fmtPct(g.pct) },
    { label: "Wait p50", num: true, value: (g) => fmtMs(g.wait_p50_ms) },
    { label: "Wait p99", num: true, value: (g) => fmtMs(g.wait_p99_ms) },
  ], health.filter((g) => g.group.startsWith("source=")), {
    empty: "No rows in this window.",
    rowAttrs: (g) => ({ dataset: { group: g.group } }),
  });
  const prefix = "unattributed reason=";
  table(document.getElementById("health-reasons"), [
    { label: "Reason", value: (g) => g.group.slice(prefix.length).replaceAll("_", " ") },
    { label: "Rows", num: true, value: (g) => fmtInt(g.rows) },
    { label: "Share", num: true, value: (g) => fmtPct(g.pct) },
  ], health.filter((g) => g.group.startsWith(prefix)), {
    empty: "None: every row was named.",
    rowAttrs: (g) => ({ dataset: { group: g.group } }),
  });
  const drops = live.drops && typeof live.drops === "object" ? Object.entries(live.drops) : null;
  table(document.getElementById("health-drops"), [
    { label: "Reason", value: ([k]) => k.replaceAll("_", " ") },
    { label: "Count", num: true, value: ([, v]) => fmtInt(v) },
  ], drops ? drops.sort((a, b) => b[1] - a[1]) : [], {
    empty: drops ? "Nothing dropped since start." : "This server reports no drop counters.",
  });
  table(document.getElementById("health-agents"), [
    { label: "Exporter", value: (a) => a.exporter },
    { label: "Rows", num: true, value: (a) => fmtInt(a.rows) },
    { label: "Attributed", num: true, value: (a) => fmtPct(a.attributed_pct) },
    { label: "Last batch received (UTC)", cls: "time", value: (a) => (a.last_received_ns === null
      ? "–" : `${fmtUtc(a.last_received_ns)} · ${fmtAge(a.last_received_ns)}`) },
    { label: "Newest flow end (UTC)", cls: "time", value: (a) => fmtUtc(a.last_end_ns) },
  ], agents, { empty: "No agent sent rows in this window." });
  rowsChart(series);
  waitChart(series);
}

function cards(items) {
  document.getElementById("health-cards").replaceChildren(...items.map(([key, label, value,
    note]) => el("div", { class: "card", dataset: { card: key } },
    el("div", { class: "card-label" }, label),
    el("div", { class: "card-value" }, value),
    el("div", { class: "card-note" }, note))));
}

const W = 560;
const H = 210;
const M = { l: 56, r: 12, t: 12, b: 28 };

function frame(series, max, yFmt) {
  const g = svg("g", { class: "axes" });
  const x0 = M.l;
  const x1 = W - M.r;
  const y0 = H - M.b;
  for (let i = 0; i <= 4; i += 1) {
    const y = y0 - ((y0 - M.t) * i) / 4;
    g.append(svg("line", { x1: x0, x2: x1, y1: y, y2: y, class: "grid" }));
    g.append(svg("text", { x: x0 - 6, y: y + 4, class: "ytick" }, yFmt((max * i) / 4)));
  }
  if (series.length) {
    const lo = series[0].start_ns;
    const hi = series[series.length - 1].end_ns;
    for (let i = 0; i <= 4; i += 1) {
      const t = lo + ((hi - lo) * i) / 4;
      const x = x0 + ((x1 - x0) * i) / 4;
      g.append(svg("text", { x, y: H - 8, class: `xtick${i === 0 ? " first" : i === 4 ? " last" : ""}` },
        fmtUtc(t).slice(hi - lo > 2 * 86400e9 ? 5 : 11, 16)));
    }
  }
  return g;
}

function xScale(series) {
  const lo = series[0].start_ns;
  const hi = series[series.length - 1].end_ns;
  return (t) => M.l + ((W - M.l - M.r) * (t - lo)) / Math.max(1, hi - lo);
}

function rowsChart(series) {
  const fig = document.getElementById("chart-rows");
  const max = Math.max(1, ...series.map((s) => s.rows));
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img",
    "aria-label": "Rows per span by how the remote side was named" });
  root.append(frame(series, max, (v) => fmtInt(v)));
  if (series.length) {
    const x = xScale(series);
    const y = (v) => (H - M.b) - ((H - M.b - M.t) * v) / max;
    for (const s of series) {
      let base = 0;
      const x1 = x(s.start_ns);
      const w = Math.max(1, x(s.end_ns) - x1 - 1);
      for (const src of SOURCES) {
        const v = s[src];
        if (!v) continue;
        root.append(svg("rect", { x: x1, width: w, y: y(base + v), height: y(base) - y(base + v),
          class: `bar ${src}` }, svg("title", {}, `${fmtUtc(s.start_ns)}: ${fmtInt(v)} ${src}`)));
        base += v;
      }
    }
  }
  fig.replaceChildren(
    el("figcaption", {}, "Rows by how the remote side was named ",
      ...SOURCES.map((s) => el("span", { class: `swatch ${s}` }, s))),
    series.length ? root : el("p", { class: "empty" }, "No rows in this window."),
  );
}

function waitChart(series) {
  const fig = document.getElementById("chart-wait");
  const max = Math.max(1, ...series.map((s) => s.wait_p99_ms ?? 0));
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img",
    "aria-label": "Wait for a decision, p50 and p99, per span" });
  root.append(frame(series, max, (v) => fmtMs(v)));
  if (series.length) {
    const x = xScale(series);
    const y = (v) => (H - M.b) - ((H - M.b - M.t) * v) / max;
    for (const key of ["wait_p99_ms", "wait_p50_ms"]) {
      const pts = series.filter((s) => s[key] !== null)
        .map((s) => `${x((s.start_ns + s.end_ns) / 2).toFixed(1)},${y(s[key]).toFixed(1)}`);
      if (pts.length) {
        root.append(svg("polyline", { points: pts.join(" "), class: `line ${key}` }));
      }
    }
  }
  fig.replaceChildren(
    el("figcaption", {}, "Wait before the decision ",
      el("span", { class: "swatch wait_p50_ms" }, "p50"),
      el("span", { class: "swatch wait_p99_ms" }, "p99")),
    series.length ? root : el("p", { class: "empty" }, "No rows in this window."),
  );
}
