// Small helpers shared by the views: building elements, formatting numbers and times, asking
// the API. Times arrive as ns since the epoch (JSON numbers: exact to well under a microsecond,
// enough for the millisecond UTC shown).

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  for (const c of children.flat(Infinity)) {
    if (c !== null && c !== undefined && c !== false) {
      node.append(c instanceof Node ? c : String(c));
    }
  }
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";

export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  for (const c of children.flat(Infinity)) {
    if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

function setAttrs(node, attrs) {
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
}

// One formatter for every number: toLocaleString builds a new one per call, which costs
// hundreds of milliseconds over a map of a few hundred edges.
const INT = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });

export function fmtInt(n) {
  return n === null || n === undefined ? "–" : INT.format(Math.round(Number(n)));
}

export function plural(n, word) {
  return `${fmtInt(n)} ${word}${Number(n) === 1 ? "" : "s"}`;
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "kB", "MB", "GB", "TB", "PB"];
  let v = Number(n);
  let i = 0;
  while (Math.abs(v) >= 1000 && i < units.length - 1) {
    v /= 1000;
    i += 1;
  }
  return `${i === 0 ? v : v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0)} ${units[i]}`;
}

export function fmtPct(p) {
  if (p === null || p === undefined) return "–";
  const v = Number(p);
  if (v === 100 || v === 0) return `${v}%`;
  // Enough digits that 99.97 % is not shown as 100 % and 0.004 % not as 0 %.
  if (v >= 99.9) return `${Number(v.toPrecision(4))}%`;
  if (v < 0.1) return `${Number(v.toPrecision(2))}%`;
  return `${v.toFixed(1)}%`;
}

export function fmtMs(ms) {
  if (ms === null || ms === undefined) return "–";
  const v = Number(ms);
  if (v === 0) return "0";
  if (v >= 60000) return `${(v / 60000).toFixed(1)} min`;
  if (v >= 1000) return `${(v / 1000).toFixed(v >= 10000 ? 0 : 1)} s`;
  return `${v.toFixed(v >= 10 ? 0 : 1)} ms`;
}

export function fmtUs(us) {
  return us === null || us === undefined ? "–" : fmtMs(Number(us) / 1000);
}

// 2026-12-07 19:08:01.123 (UTC): the CLI's --format table shows the same instant.
export function fmtUtc(ns) {
  if (ns === null || ns === undefined) return "–";
  const iso = new Date(Math.floor(Number(ns) / 1e6)).toISOString();
  return `${iso.slice(0, 10)} ${iso.slice(11, 23)}`;
}

export function fmtAge(ns) {
  if (ns === null || ns === undefined) return "";
  const s = Math.max(0, (Date.now() - Number(ns) / 1e6) / 1000);
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 36 * 3600) return `${(s / 3600).toFixed(1)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export function apiUrl(endpoint, params = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== null && v !== undefined && v !== "") q.set(k, v);
  }
  const text = q.toString();
  return `/api/${endpoint}${text ? `?${text}` : ""}`;
}

export class ApiError extends Error {}

// GET a JSON answer; an error answer becomes an ApiError with the server's one-line message.
export async function getJSON(path, signal) {
  const res = await fetch(path, { signal, headers: { Accept: "application/json" } });
  const text = await res.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    throw new ApiError(`${path}: ${res.status} ${text.slice(0, 200)}`);
  }
  if (!res.ok && !(path === "/healthz" && body && "ok" in body)) {
    throw new ApiError(`${path}: ${body.error || res.status}`);
  }
  return body;
}

export function table(node, columns, rows, { empty = "No rows.", rowAttrs = null } = {}) {
  const head = el("thead", {}, el("tr", {}, columns.map((c) =>
    el("th", { scope: "col", class: c.num ? "num" : null }, c.label))));
  const body = el("tbody");
  if (rows.length === 0) {
    body.append(el("tr", {}, el("td", { colspan: columns.length, class: "empty" }, empty)));
  }
  for (const r of rows) {
    const tr = el("tr", rowAttrs ? rowAttrs(r) : {});
    for (const c of columns) {
      const v = c.value(r);
      tr.append(el("td", { class: c.num ? "num" : c.cls || null }, v));
    }
    body.append(tr);
  }
  node.replaceChildren(head, body);
}
