// The service map: /api/dependencies drawn as a layered graph (callers left of callees).
//
// Layout, by hand: cycles are broken by a depth-first search in name order, every workload goes
// to the layer after its furthest caller, and each layer is ordered by the mean position of
// its neighbours (a few sweeps each way). Order starts from the previous drawing's, so a
// refresh that adds an edge moves little. A side nobody could name is never left out: it is
// drawn as the network its addresses are in (the API's caller_external/callee_external), one
// node per network, dashed. Many workloads are drawn by group (the part of the name before its
// last "/", else before ":"), each group one node; many networks as one "(external)" node.

import { state, update, windowParams } from "./console.js";
import {
  apiUrl, el, fmtBytes, fmtInt, fmtPct, fmtUs, fmtUtc, getJSON, plural, svg, table,
} from "./util.js";

const UNNAMED = "(unattributed)";
const EXTERNAL = "(external)"; // the group of every network node
const AUTO_GROUP_EXTERNAL_OVER = 12; // networks; more are drawn as one node in "auto"
// Edges drawn at most (besides those with failed attempts or an unnamed side, always drawn):
// beyond, the drawing costs seconds and shows a hairball; the table below lists every edge.
const MAX_DRAWN_EDGES = 600;
const NODE_W = 168;
const NODE_H = 42;
const COL_W = 226;
const ROW_H = 58;
const PAD = 24;
const AUTO_GROUP_OVER = 40; // workloads; more than this are drawn by group in "auto"

let edges = []; // the API's rows, as last loaded
let prevOrder = new Map(); // node key → y index in the last drawing
let drawn = null; // { nodes: Map, links: Map }

// An edge's side, and the node drawn for it: "w:<workload>", "x:<network>" for an unnamed
// side whose addresses are in that network, "u:" for one without (never from this API, which
// is asked to group them); "g:<group>" is a group's node.
const keyOf = (name, external) => (name !== null ? `w:${name}` : external ? `x:${external}` : "u:");
const isNamed = (key) => key.startsWith("w:");
const labelOf = (key) => (key === "u:" ? UNNAMED : key.slice(2));

export function groupOf(key) {
  if (key === "u:") return UNNAMED;
  if (key.startsWith("x:")) return EXTERNAL;
  const name = key.slice(2);
  const slash = name.lastIndexOf("/");
  if (slash > 0) return name.slice(0, slash);
  const colon = name.indexOf(":");
  return colon > 0 ? name.slice(0, colon) : name;
}

// A stable colour per group: a hash of its name picks one of the palette's hues.
function hueOf(group) {
  let h = 0;
  for (const ch of group) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return h % 8;
}

export function initMap() {
  const search = document.getElementById("map-search");
  search.addEventListener("input", () => {
    update({ q: search.value }, { reload: false });
    highlight();
  });
  search.addEventListener("keydown", (e) => {
    if (e.key !== "Enter") return;
    const first = document.querySelector("#map-canvas .node.match");
    if (first) {
      first.focus();
      first.dispatchEvent(new Event("select"));
    }
  });
  document.getElementById("map-group").addEventListener("change", (e) => {
    update({ group: e.target.value, sel: "" });
  });
  document.getElementById("map-known").addEventListener("change", (e) => {
    update({ known: e.target.checked ? "1" : "", sel: "" });
  });
}

export async function loadMap(signal) {
  document.getElementById("map-search").value = state.q;
  document.getElementById("map-group").value = state.group;
  document.getElementById("map-known").checked = state.known === "1";
  const params = { ...windowParams(), known_only: state.known === "1" ? "true" : "",
    group_external: "true" };
  edges = await getJSON(apiUrl("dependencies", params), signal);
  for (const e of edges) {
    e.s = keyOf(e.caller, e.caller_external);
    e.t = keyOf(e.callee, e.callee_external);
  }
  const t0 = performance.now();
  draw();
  const t1 = performance.now();
  renderEdgeTable();
  const t2 = performance.now();
  await renderPanel(signal);
  // For the benchmark: the time spent drawing the map and its table, apart from the API.
  document.body.dataset.drawMs = `${Math.round(t1 - t0)}+${Math.round(t2 - t1)}`;
}

function grouped(workloads) {
  if (state.group === "prefix") return true;
  if (state.group === "off") return false;
  const groups = new Set([...workloads].map(groupOf));
  return workloads.size > AUTO_GROUP_OVER && groups.size < workloads.size;
}

// Nodes and links to draw: per workload (and network), or per group when grouping.
function graph() {
  const workloads = new Set();
  for (const e of edges) {
    workloads.add(e.s);
    workloads.add(e.t);
  }
  const byGroup = grouped(workloads);
  const members = new Map();
  for (const w of workloads) {
    const g = groupOf(w);
    if (!members.has(g)) members.set(g, []);
    members.get(g).push(w);
  }
  // Networks are one node when grouping, or in "auto" when there are many.
  const externals = members.get(EXTERNAL)?.length ?? 0;
  const externalGrouped = byGroup
    || (state.group === "auto" && externals > AUTO_GROUP_EXTERNAL_OVER);
  // A group of one is drawn as its workload.
  const nodeOf = (w) => {
    const g = groupOf(w);
    const on = g === EXTERNAL ? externalGrouped : byGroup;
    if (!on || members.get(g).length === 1) return w;
    return `g:${g}`;
  };
  const nodes = new Map();
  for (const w of workloads) {
    const id = nodeOf(w);
    if (!nodes.has(id)) {
      const isGroup = id.startsWith("g:");
      const g = groupOf(w);
      nodes.set(id, {
        id, key: isGroup ? null : w, group: g, isGroup,
        label: isGroup ? `${g}${g === EXTERNAL ? "" : "/*"} (${members.get(g).length})`
          : labelOf(w),
        unnamed: !isNamed(w), external: g === EXTERNAL, members: isGroup ? members.get(g) : [w],
        inFlows: 0, outFlows: 0, failed: 0,
      });
    }
  }
  const links = new Map();
  for (const e of edges) {
    const s = nodeOf(e.s);
    const t = nodeOf(e.t);
    const id = `${s}\u2192${t}`;
    if (!links.has(id)) {
      links.set(id, { id, s, t, rows: [], flows: 0, failed: 0, bytes: 0 });
    }
    const l = links.get(id);
    l.rows.push(e);
    l.flows += e.flows;
    l.failed += e.failed_attempts;
    l.bytes += e.bytes_to_callee + e.bytes_to_caller;
    nodes.get(s).outFlows += e.flows;
    nodes.get(t).inFlows += e.flows;
    nodes.get(s).failed += e.failed_attempts;
  }
  return { nodes, links, byGroup };
}

// Layers (callers left of callees) and an order within each layer.
function layout(nodes, links) {
  const ids = [...nodes.keys()].sort();
  const out = new Map(ids.map((id) => [id, []]));
  for (const l of links.values()) if (l.s !== l.t) out.get(l.s).push(l.t);
  for (const list of out.values()) list.sort();
  // Breadth-first from the workloads nobody calls (then, for call cycles nothing leads into,
  // from the one calling most): each workload one layer right of its nearest caller, so a
  // graph with cycles stays a few layers wide. Calls to the same or an earlier layer are
  // drawn as arcs underneath.
  const indeg = new Map(ids.map((id) => [id, 0]));
  for (const list of out.values()) for (const m of list) indeg.set(m, indeg.get(m) + 1);
  const layer = new Map();
  const visit = (roots) => {
    const queue = [...roots];
    for (const r of roots) layer.set(r, 0);
    while (queue.length) {
      const n = queue.shift();
      for (const m of out.get(n)) {
        if (!layer.has(m)) {
          layer.set(m, layer.get(n) + 1);
          queue.push(m);
        }
      }
    }
  };
  visit(ids.filter((id) => indeg.get(id) === 0));
  for (;;) {
    const left = ids.filter((id) => !layer.has(id));
    if (!left.length) break;
    left.sort((a, b) => out.get(b).length - out.get(a).length || (a < b ? -1 : 1));
    visit([left[0]]);
  }
  const count = Math.max(0, ...layer.values()) + 1;
  const layers = Array.from({ length: count }, () => []);
  for (const id of ids) layers[layer.get(id)].push(id);
  const seed = (id) => [prevOrder.get(id) ?? Infinity, nodes.get(id).group, id];
  const cmp = (a, b) => {
    const x = seed(a);
    const y = seed(b);
    return x[0] - y[0] || (x[1] < y[1] ? -1 : x[1] > y[1] ? 1 : 0) || (a < b ? -1 : 1);
  };
  for (const list of layers) list.sort((a, b) => (cmp(a, b) || 0));
  const neighbours = new Map(ids.map((id) => [id, []]));
  for (const l of links.values()) {
    if (l.s === l.t) continue;
    neighbours.get(l.s).push(l.t);
    neighbours.get(l.t).push(l.s);
  }
  const pos = new Map();
  const place = () => layers.forEach((list) => list.forEach((id, i) => pos.set(id, i)));
  place();
  const sweeps = prevOrder.size ? 2 : 4;
  for (let pass = 0; pass < sweeps * 2; pass += 1) {
    const order = pass % 2 === 0 ? layers.keys() : [...layers.keys()].reverse();
    for (const li of order) {
      const near = (id) => neighbours.get(id).filter((m) => layer.get(m) !== li);
      const bary = (id) => {
        const list = near(id);
        if (!list.length) return pos.get(id);
        return list.reduce((sum, m) => sum + pos.get(m), 0) / list.length;
      };
      const b = new Map(layers[li].map((id) => [id, bary(id)]));
      layers[li].sort((x, y) => b.get(x) - b.get(y) || cmp(x, y));
      layers[li].forEach((id, i) => pos.set(id, i));
    }
  }
  return { layers, layer };
}

function draw() {
  const canvas = document.getElementById("map-canvas");
  const { nodes, links, byGroup } = graph();
  if (!nodes.size) {
    drawn = { nodes, links };
    canvas.replaceChildren(el("p", { class: "empty" },
      "No connections in this window. Choose a longer window above."));
    return;
  }
  const { layers, layer } = layout(nodes, links);
  const tallest = Math.max(...layers.map((l) => l.length));
  const width = PAD * 2 + (layers.length - 1) * COL_W + NODE_W;
  let height = PAD * 2 + (tallest - 1) * ROW_H + NODE_H;
  const at = new Map();
  prevOrder = new Map();
  layers.forEach((list, li) => {
    const top = PAD + ((tallest - list.length) * ROW_H) / 2;
    list.forEach((id, i) => {
      at.set(id, { x: PAD + li * COL_W, y: top + i * ROW_H });
      prevOrder.set(id, i + (tallest - list.length) / 2);
    });
  });
  const maxFlows = Math.max(1, ...[...links.values()].map((l) => l.flows + l.failed));
  const shown = drawnLinks(nodes, links);
  const root = svg("svg", {
    class: "map", width, height, viewBox: `0 0 ${width} ${height}`, role: "group",
    "aria-label": `Service map: ${nodes.size} ${byGroup ? "nodes (grouped)" : "workloads"}, `
      + `${shown.length < links.size ? `${shown.length} of ` : ""}${links.size} edges drawn`,
  });
  root.append(svg("defs", {},
    svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 9,
      markerHeight: 9, markerUnits: "userSpaceOnUse", orient: "auto-start-reverse" }, svg("path", { d: "M0 0L10 5L0 10z",
      class: "arrowhead" })),
    svg("marker", { id: "arrow-fail", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 9,
      markerHeight: 9, markerUnits: "userSpaceOnUse", orient: "auto-start-reverse" }, svg("path", { d: "M0 0L10 5L0 10z",
      class: "arrowhead fail" }))));
  const edgeLayer = svg("g", { class: "edges" });
  const nodeLayer = svg("g", { class: "nodes" });
  const showLabels = links.size <= 40; // beyond, numbers show on hover and in the panel
  const sortedLinks = shown.sort((a, b) => (a.id < b.id ? -1 : 1));
  for (const l of sortedLinks) {
    const a = at.get(l.s);
    const b = at.get(l.t);
    let d;
    let mid;
    if (l.s === l.t) {
      const x = a.x + NODE_W - 30;
      d = `M${x} ${a.y}c0 -26 40 -26 28 0`;
      mid = { x: x + 14, y: a.y - 22 };
    } else if (layer.get(l.t) > layer.get(l.s)) {
      const x1 = a.x + NODE_W;
      const y1 = a.y + NODE_H / 2;
      const x2 = b.x - 2;
      const y2 = b.y + NODE_H / 2;
      const c = Math.max(40, (x2 - x1) / 2);
      d = `M${x1} ${y1}C${x1 + c} ${y1} ${x2 - c} ${y2} ${x2} ${y2}`;
      mid = { x: (x1 + x2) / 2, y: (y1 + y2) / 2 };
    } else if (layer.get(l.t) === layer.get(l.s)) {
      // Within one layer: an arc out to the right of the column.
      const x = a.x + NODE_W;
      const y1 = a.y + NODE_H / 2 + 5;
      const y2 = b.y + NODE_H / 2 - 5;
      const bulge = 24 + Math.abs(y2 - y1) / 5;
      d = `M${x} ${y1}C${x + bulge} ${y1} ${x + bulge} ${y2} ${x + 3} ${y2}`;
      mid = { x: x + bulge * 0.75, y: (y1 + y2) / 2 };
    } else {
      // Back to an earlier layer: from the caller's left side to the callee's right side.
      const x1 = a.x;
      const y1 = a.y + NODE_H / 2 + 6;
      const x2 = b.x + NODE_W + 3;
      const y2 = b.y + NODE_H / 2 + 6;
      const c = Math.max(40, (x1 - x2) / 2);
      d = `M${x1} ${y1}C${x1 - c} ${y1} ${x2 + c} ${y2} ${x2} ${y2}`;
      mid = { x: (x1 + x2) / 2, y: (y1 + y2) / 2 };
    }
    const fail = l.failed > 0;
    const w = 1.2 + 4 * (Math.log1p(l.flows + l.failed) / Math.log1p(maxFlows));
    const names = `${nodes.get(l.s).label} → ${nodes.get(l.t).label}`;
    const g = svg("g", {
      class: `edge${fail ? " fail" : ""}${nodes.get(l.s).unnamed || nodes.get(l.t).unnamed ? " unk" : ""}`,
      tabindex: 0, role: "button", dataset: { id: l.id, s: l.s, t: l.t, flows: l.flows,
        failed: l.failed },
      "aria-label": `${names}: ${fmtInt(l.flows)} connections, ${fmtInt(l.failed)} failed `
        + `attempts, ${fmtBytes(l.bytes)}`,
    },
    svg("title", {}, `${names}\n${fmtInt(l.flows)} connections · ${fmtInt(l.failed)} failed`
      + ` · ${fmtBytes(l.bytes)}`),
    svg("path", { d, class: "hit" }),
    svg("path", { d, class: "line", "stroke-width": w.toFixed(2),
      "marker-end": `url(#${fail ? "arrow-fail" : "arrow"})` }));
    if (showLabels) {
      const text = l.failed ? `${fmtInt(l.flows)} · ${fmtInt(l.failed)}✕` : fmtInt(l.flows);
      g.append(svg("text", { x: mid.x, y: mid.y - 4, class: "elabel" }, text));
    }
    bindSelect(g, l.rows.length === 1 && !nodes.get(l.s).isGroup && !nodes.get(l.t).isGroup
      ? ["e", l.rows[0].s, l.rows[0].t] : ["l", l.s, l.t]);
    edgeLayer.append(g);
  }
  for (const [id, n] of nodes) {
    const p = at.get(id);
    // What fits the box in 13 px bold; the whole name is in the tooltip and the panel.
    const short = n.label.length > 21 ? `${n.label.slice(0, 20)}…` : n.label;
    const sub = `${n.external ? "unnamed · " : ""}${fmtInt(n.inFlows)} in · ${fmtInt(n.outFlows)} out`
      + (n.failed ? ` · ${fmtInt(n.failed)}✕` : "");
    const g = svg("g", {
      class: `node hue${hueOf(n.group)}${n.unnamed || n.external ? " unk" : ""}`
        + `${n.external ? " ext" : ""}${n.isGroup ? " grp" : ""}`,
      transform: `translate(${p.x},${p.y})`, tabindex: 0, role: "button",
      dataset: { id, name: n.label },
      "aria-label": `${n.isGroup ? "group " : ""}${n.external ? "unnamed addresses " : ""}`
        + `${n.label}: ${fmtInt(n.inFlows)} connections `
        + `in, ${fmtInt(n.outFlows)} out, ${fmtInt(n.failed)} failed attempts out`,
    },
    svg("title", {}, n.label),
    svg("rect", { width: NODE_W, height: NODE_H, rx: 8, class: "box" }),
    svg("rect", { width: 5, height: NODE_H - 12, x: 6, y: 6, rx: 2, class: "stripe" }),
    svg("text", { x: 18, y: 18, class: "nlabel" }, short),
    svg("text", { x: 18, y: 33, class: "nsub" }, sub));
    bindSelect(g, n.isGroup ? ["g", n.group] : ["n", n.key]);
    nodeLayer.append(g);
  }
  // Fit the canvas's width when that keeps text readable (down to 75 %); else scroll.
  const room = canvas.clientWidth - 2;
  const scale = room > 0 && width > room ? Math.max(0.75, room / width) : 1;
  root.setAttribute("width", Math.round(width * scale));
  root.setAttribute("height", Math.ceil(height * scale));
  root.setAttribute("viewBox", `0 0 ${width} ${Math.ceil(height)}`);
  root.append(edgeLayer, nodeLayer);
  const note = shown.length < links.size ? el("p", { class: "hint map-note", id: "map-note" },
    `Drawn: ${fmtInt(shown.length)} of ${fmtInt(links.size)} edges, those with the most `
    + "connections and every one with failed attempts or an unnamed side. The table below "
    + "lists them all; Group or Find narrows the map.") : null;
  canvas.replaceChildren(...(note ? [note, root] : [root]));
  drawn = { nodes, links };
  highlight();
}

// The links to draw: all, or beyond MAX_DRAWN_EDGES those with the most connections, plus
// every one with failed attempts or an unnamed side (never left out).
function drawnLinks(nodes, links) {
  const all = [...links.values()];
  if (all.length <= MAX_DRAWN_EDGES) return all;
  const odd = (n) => n.unnamed || n.external;
  const must = (l) => l.failed > 0 || odd(nodes.get(l.s)) || odd(nodes.get(l.t));
  const rest = all.filter((l) => !must(l))
    .sort((a, b) => b.flows - a.flows || (a.id < b.id ? -1 : 1));
  const kept = all.filter(must);
  return [...kept, ...rest.slice(0, Math.max(0, MAX_DRAWN_EDGES - kept.length))];
}

function bindSelect(g, sel) {
  const pick = () => update({ sel: JSON.stringify(sel) }, { reload: false });
  g.addEventListener("click", () => {
    pick();
    renderPanel();
  });
  g.addEventListener("select", () => {
    pick();
    renderPanel();
  });
  g.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      pick();
      renderPanel();
    }
  });
}

function selection() {
  try {
    const sel = JSON.parse(state.sel);
    return Array.isArray(sel) ? sel : null;
  } catch {
    return null;
  }
}

// Search matches and the selection, as classes on the drawing.
function highlight() {
  const q = state.q.trim().toLowerCase();
  const sel = selection();
  const canvas = document.getElementById("map-canvas");
  const matched = new Set();
  for (const g of canvas.querySelectorAll(".node")) {
    const hit = q !== "" && g.dataset.name.toLowerCase().includes(q);
    if (hit) matched.add(g.dataset.id);
    g.classList.toggle("match", hit);
    g.classList.toggle("dim", q !== "" && !hit);
    const id = sel ? selectedId(sel) : null;
    g.classList.toggle("selected", id === g.dataset.id);
  }
  for (const g of canvas.querySelectorAll(".edge")) {
    g.classList.toggle("dim", q !== "" && !matched.has(g.dataset.s) && !matched.has(g.dataset.t));
    const id = sel ? selectedId(sel) : null;
    g.classList.toggle("selected", id === g.dataset.id
      || (id !== null && (g.dataset.s === id || g.dataset.t === id)));
  }
  const svgRoot = canvas.querySelector("svg");
  if (svgRoot) svgRoot.classList.toggle("has-sel", Boolean(sel));
}

function selectedId(sel) {
  if (sel[0] === "n") return sel[1];
  if (sel[0] === "g") return `g:${sel[1]}`;
  if (sel[0] === "e") return `${sel[1]}\u2192${sel[2]}`;
  if (sel[0] === "l") return `${sel[1]}\u2192${sel[2]}`;
  return null;
}

// The flows explorer's filter for one edge: each side's workload, or the network of a side
// with no name (or, without one, that the side has no name).
export function edgeFilter(e) {
  const side = (key) => ({
    name: isNamed(key) ? key.slice(2) : "", net: key.startsWith("x:") ? key.slice(2) : "",
    unnamed: key === "u:",
  });
  const c = side(e.s);
  const t = side(e.t);
  const unnamed = c.unnamed && t.unnamed ? "both"
    : c.unnamed ? "caller" : t.unnamed ? "callee" : "";
  return { fc: c.name, fe: t.name, fcx: c.net, fex: t.net, fun: unnamed };
}

const FLOW_FILTERS = { fw: "", fc: "", fe: "", fun: "", fcx: "", fex: "", fip: "", fport: "",
  fout: "", fsrc: "", fexp: "", page: "0", pin: "" };

function linkButton(text, changes) {
  return el("button", { type: "button", class: "link",
    onclick: () => update({ ...FLOW_FILTERS, ...changes, view: "flows" }, { push: true }) },
  text);
}

const EDGE_COLUMNS = [
  { label: "Caller", value: (e) => nameCell(e.s) },
  { label: "Callee", value: (e) => nameCell(e.t) },
  { label: "Connections", num: true, value: (e) => fmtInt(e.flows) },
  { label: "Failed attempts", num: true, value: (e) => fmtInt(e.failed_attempts) },
  { label: "Bytes →", num: true, value: (e) => fmtBytes(e.bytes_to_callee) },
  { label: "Bytes ←", num: true, value: (e) => fmtBytes(e.bytes_to_caller) },
  { label: "Retransmits", num: true, value: (e) => fmtInt(e.retransmits) },
  { label: "RTT p50", num: true, value: (e) => fmtUs(e.rtt_p50_us) },
  { label: "RTT p99", num: true, value: (e) => fmtUs(e.rtt_p99_us) },
];

function nameCell(key) {
  return isNamed(key) ? labelOf(key) : el("span", { class: "unk-name" }, labelOf(key));
}

const EDGE_ROWS = 100; // the table's first rows (by bytes); the rest on request
let allEdgeRows = false;

function renderEdgeTable() {
  const cols = [
    { label: "Edge", value: (e) => el("button", { type: "button", class: "link",
      onclick: () => {
        update({ sel: JSON.stringify(["e", e.s, e.t]) }, { reload: false });
        renderPanel();
        document.getElementById("map-panel").focus();
      } }, `${labelOf(e.s)} → ${labelOf(e.t)}`) },
    ...EDGE_COLUMNS.slice(2),
  ];
  const shown = allEdgeRows ? edges : edges.slice(0, EDGE_ROWS);
  const node = document.getElementById("edge-table");
  table(node, cols, shown, {
    empty: "No edges in this window.",
    rowAttrs: (e) => ({ dataset: { caller: labelOf(e.s), callee: labelOf(e.t) } }),
  });
  if (shown.length < edges.length) {
    node.tBodies[0].append(el("tr", {}, el("td", { colspan: cols.length },
      el("button", { type: "button", onclick: () => {
        allEdgeRows = true;
        renderEdgeTable();
      } }, `Show all ${fmtInt(edges.length)} edges`))));
  }
  document.querySelector("#map-edges summary").textContent = shown.length < edges.length
    ? `Edges (${fmtInt(edges.length)}; the ${fmtInt(shown.length)} moving the most bytes below)`
    : `Edges (${fmtInt(edges.length)})`;
}

function stats(pairs) {
  return el("dl", { class: "stats" }, pairs.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

async function renderPanel(signal) {
  highlight();
  const panel = document.getElementById("map-panel");
  const sel = selection();
  if (!sel || !drawn) {
    panel.replaceChildren(
      el("h2", {}, "Select a workload or an edge"),
      el("p", { class: "hint" }, "Click, or Tab to it and press Enter: its numbers, peers and "
        + "flows appear here. Thicker edges carry more connections; red ones had failed "
        + "attempts."),
      summary(),
    );
    return;
  }
  if (sel[0] === "e") return edgePanel(panel, sel[1], sel[2], signal);
  if (sel[0] === "n") return nodePanel(panel, sel[1]);
  if (sel[0] === "g") return groupPanel(panel, sel[1]);
  if (sel[0] === "l") return linkPanel(panel, `${sel[1]}\u2192${sel[2]}`);
  return undefined;
}

function summary() {
  const flows = edges.reduce((s, e) => s + e.flows, 0);
  const failed = edges.reduce((s, e) => s + e.failed_attempts, 0);
  const unnamed = edges.filter((e) => e.caller === null || e.callee === null)
    .reduce((s, e) => s + e.flows, 0);
  return stats([
    ["Edges", fmtInt(edges.length)],
    ["Connections", fmtInt(flows)],
    ["Failed attempts", fmtInt(failed)],
    ["With an unnamed side", `${fmtInt(unnamed)} (${fmtPct(flows ? (100 * unnamed) / flows : null)})`],
  ]);
}

async function edgePanel(panel, s, t, signal) {
  const e = edges.find((x) => x.s === s && x.t === t);
  const title = `${labelOf(s)} → ${labelOf(t)}`;
  if (!e) {
    panel.replaceChildren(el("h2", {}, title), el("p", { class: "empty" },
      "No such edge in this window."));
    return;
  }
  const list = el("table", { id: "edge-flows" },
    el("tbody", {}, el("tr", {}, el("td", { class: "hint" }, "Loading flows…"))));
  panel.replaceChildren(
    el("h2", {}, title),
    stats([
      ["Connections", fmtInt(e.flows)],
      ["Seen at both ends", fmtInt(e.seen_both_ends)],
      ["Failed attempts", fmtInt(e.failed_attempts)],
      ["Bytes to callee", fmtBytes(e.bytes_to_callee)],
      ["Bytes to caller", fmtBytes(e.bytes_to_caller)],
      ["Retransmits", fmtInt(e.retransmits)],
      ["RTT p50 / p99", `${fmtUs(e.rtt_p50_us)} / ${fmtUs(e.rtt_p99_us)}`],
    ]),
    el("h3", {}, "Its flows, newest first"),
    el("p", { class: "hint" }, "Each connection's latest row from every end that captured "
      + "it (seen at both ends: two rows), and the failed attempts."),
    el("div", { class: "table-wrap" }, list),
    el("p", {}, linkButton("All of this edge's flows →", edgeFilter(e))),
  );
  const f = edgeFilter(e);
  const rows = await getJSON(apiUrl("flows", { ...windowParams(), caller: f.fc, callee: f.fe,
    caller_external: f.fcx, callee_external: f.fex, unnamed: f.fun, limit: 50 }), signal);
  table(list, [
    { label: "Ended (UTC)", value: (r) => el("span", { title: fmtUtc(r.end_ns) },
      fmtUtc(r.end_ns).slice(11)), cls: "time" },
    { label: "End", value: (r) => el("span", { title: r.exporter },
      r.direction === "outbound" ? "caller" : "callee") },
    { label: "Outcome", value: (r) => r.outcome ?? "established" },
    { label: "Bytes", num: true, value: (r) => fmtBytes(r.bytes_sent + r.bytes_received) },
  ], rows, { rowAttrs: (r) => ({ dataset: { flowId: r.flow_id, exporter: r.exporter } }) });
}

// replaceChildren, leaving out the parts not shown (null)
function fill(node, ...parts) {
  node.replaceChildren(...parts.filter((p) => p !== null && p !== undefined && p !== false));
}

function peerRows(match) {
  return edges.filter(match);
}

function nodePanel(panel, key) {
  const out = peerRows((e) => e.s === key);
  const inn = peerRows((e) => e.t === key);
  const sum = (rows, f) => rows.reduce((s, e) => s + f(e), 0);
  const all = [...out, ...inn.filter((e) => e.s !== key)];
  const conns = sum(all, (e) => e.flows);
  const unnamedPeer = sum(all.filter((e) => !isNamed(e.s === key ? e.t : e.s)), (e) => e.flows);
  const peerTable = el("table");
  table(peerTable, [
    { label: "Peer", value: (e) => el("button", { type: "button", class: "link", onclick: () => {
      update({ sel: JSON.stringify(["e", e.s, e.t]) }, { reload: false });
      renderPanel();
    } }, e.s === key ? `→ ${labelOf(e.t)}` : `← ${labelOf(e.s)}`) },
    { label: "Conns", num: true, value: (e) => fmtInt(e.flows) },
    { label: "Failed", num: true, value: (e) => fmtInt(e.failed_attempts) },
    { label: "Bytes", num: true, value: (e) => fmtBytes(e.bytes_to_callee + e.bytes_to_caller) },
  ], all);
  const net = key.startsWith("x:") ? key.slice(2) : "";
  let flowsLinks = [linkButton("Its flows →", { fw: labelOf(key) })];
  if (key === "u:") flowsLinks = [linkButton("Its unattributed flows →", { fsrc: "unattributed" })];
  if (net) {
    flowsLinks = [
      inn.length ? linkButton("Its flows as callee →", { fex: net }) : null,
      out.length ? linkButton("Its flows as caller →", { fcx: net }) : null,
    ].filter(Boolean);
  }
  fill(panel,
    el("h2", {}, labelOf(key)),
    !isNamed(key) ? el("p", { class: "hint" }, `${net ? `Addresses in ${net} that ` : "Traffic "
      + "whose other side "}no workload owned: no heartbeat or event named them at the time. `
      + "Its edges list their flows.") : null,
    stats([
      ["Calls out", `${plural(sum(out, (e) => e.flows), "connection")} to `
        + `${plural(out.length, "callee")}`],
      ["Called", `${plural(sum(inn, (e) => e.flows), "connection")} from `
        + `${plural(inn.length, "caller")}`],
      ["Failed attempts out", fmtInt(sum(out, (e) => e.failed_attempts))],
      ["Failed attempts in", fmtInt(sum(inn, (e) => e.failed_attempts))],
      ["Bytes sent / received", `${fmtBytes(sum(out, (e) => e.bytes_to_callee)
        + sum(inn, (e) => e.bytes_to_caller))} / ${fmtBytes(sum(out, (e) => e.bytes_to_caller)
        + sum(inn, (e) => e.bytes_to_callee))}`],
      ["Peer unnamed", !isNamed(key) ? "–"
        : `${plural(unnamedPeer, "connection")} (${fmtPct(conns ? (100 * unnamedPeer) / conns : null)})`],
    ]),
    el("h3", {}, "Peers"),
    el("div", { class: "table-wrap" }, peerTable),
    el("p", {}, ...flowsLinks),
  );
}

function groupPanel(panel, group) {
  const inGroup = (w) => groupOf(w) === group;
  const rows = edges.filter((e) => inGroup(e.s) || inGroup(e.t));
  const members = [...new Set(rows.flatMap((e) => [e.s, e.t]).filter(inGroup))].sort();
  panel.replaceChildren(
    el("h2", {}, group === EXTERNAL ? group : `${group}/*`),
    el("p", { class: "hint" }, group === EXTERNAL
      ? `${members.length} networks of addresses no workload owned, drawn as one node.`
      : `${members.length} workloads drawn as one node.`),
    el("ul", { class: "members" }, members.map((m) => el("li", {}, el("button", {
      type: "button", class: "link",
      onclick: () => update({ group: "off", sel: JSON.stringify(["n", m]) }),
    }, labelOf(m))))),
  );
}

function linkPanel(panel, id) {
  const l = drawn?.links.get(id);
  if (!l) {
    panel.replaceChildren(el("p", { class: "empty" }, "No such edge in this window."));
    return;
  }
  const t = el("table");
  table(t, [
    { label: "Edge", value: (e) => el("button", { type: "button", class: "link", onclick: () => {
      update({ sel: JSON.stringify(["e", e.s, e.t]) }, { reload: false });
      renderPanel();
    } }, `${labelOf(e.s)} → ${labelOf(e.t)}`) },
    ...EDGE_COLUMNS.slice(2, 5),
  ], l.rows);
  panel.replaceChildren(
    el("h2", {}, `${drawn.nodes.get(l.s).label} → ${drawn.nodes.get(l.t).label}`),
    stats([["Connections", fmtInt(l.flows)], ["Failed attempts", fmtInt(l.failed)],
      ["Bytes", fmtBytes(l.bytes)]]),
    el("h3", {}, "Workload edges in it"),
    el("div", { class: "table-wrap" }, t),
  );
}
