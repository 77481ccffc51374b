// The flows explorer: /api/flows with the filters in the URL, newest first, a page at a time.
// Going to an older page pins the window's end at the first page's newest row, so rows that
// arrive meanwhile do not shift the pages.

import { state, update, windowParams } from "./console.js";
import { apiUrl, el, fmtBytes, fmtInt, fmtUs, fmtUtc, getJSON, table } from "./util.js";

const PAGE = 100;
const FILTERS = {
  fw: "workload", fc: "caller", fe: "callee", fun: "unnamed", fcx: "caller_external",
  fex: "callee_external", fip: "ip", fport: "port",
  fout: "outcome", fsrc: "source", fexp: "exporter", fname: "name",
};
let newestEnd = null; // end_ns of page 0's first row (for the pin)

export function initFlows() {
  const form = document.getElementById("flow-filters");
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const changes = { page: "0", pin: "" };
    for (const k of Object.keys(FILTERS)) changes[k] = form.elements[k].value.trim();
    update(changes);
  });
  form.addEventListener("change", (e) => {
    if (e.target.tagName === "SELECT") form.requestSubmit();
  });
  document.getElementById("flow-clear").addEventListener("click", () => {
    const changes = { page: "0", pin: "" };
    for (const k of Object.keys(FILTERS)) changes[k] = "";
    update(changes);
  });
  document.getElementById("flow-prev").addEventListener("click", () => {
    const page = Math.max(0, Number(state.page) - 1);
    update({ page: String(page), pin: page === 0 ? "" : state.pin });
  });
  document.getElementById("flow-next").addEventListener("click", () => {
    let pin = state.pin;
    if (!pin && newestEnd !== null && state.win !== "custom") {
      // The first page's newest row, rounded up to the next millisecond, as UTC.
      pin = new Date(Math.floor(Number(newestEnd) / 1e6) + 1).toISOString();
    }
    update({ page: String(Number(state.page) + 1), pin });
  });
}

export function flowParams() {
  const params = { ...windowParams() };
  if (state.pin) params.until = state.pin;
  for (const [k, name] of Object.entries(FILTERS)) if (state[k]) params[name] = state[k];
  return params;
}

// A side's name: its workload; else, for the remote side, the DNS name(s) its workload resolved
// for the address (remote_dns, docs/dns.md), marked as such: ownership wins, DNS only fills in.
function side(workload, ip, port, nat, dns = null) {
  const name = workload !== null ? el("b", {}, workload)
    : dns ? el("span", { class: "dns-name", title: "named by DNS (remote_dns): no workload owns it" },
      `${dns} (DNS)`)
      : el("span", { class: "unk-name" }, "unnamed");
  return el("span", { class: "end" }, name,
    el("span", { class: "addr" }, ` ${ip}:${port}${nat ? ` → ${nat}` : ""}`));
}

const COLUMNS = [
  { label: "End (UTC)", cls: "time", value: (r) => fmtUtc(r.end_ns) },
  { label: "Caller", value: (r) => (r.direction === "outbound"
    ? side(r.local_workload, r.local_ip, r.local_port, null)
    : side(r.remote_workload, r.remote_ip, r.remote_port, null, r.remote_dns)) },
  { label: "Callee", value: (r) => (r.direction === "outbound"
    ? side(r.remote_workload, r.remote_ip, r.remote_port,
      r.nat_remote_ip ? `${r.nat_remote_ip}:${r.nat_remote_port}` : null, r.remote_dns)
    : side(r.local_workload, r.local_ip, r.local_port, null)) },
  { label: "Captured by", value: (r) => `${r.exporter} · ${r.direction === "outbound" ? "caller" : "callee"}` },
  { label: "Named by", value: (r) => el("span", { class: `src ${r.remote_source}` }, r.remote_source) },
  { label: "Outcome", value: (r) => `${r.outcome ?? "established"}${r.state === "active" ? " (open)" : ""}` },
  { label: "Duration", num: true, value: (r) => fmtUs((r.end_ns - r.start_ns) / 1000) },
  { label: "Sent", num: true, value: (r) => fmtBytes(r.bytes_sent) },
  { label: "Received", num: true, value: (r) => fmtBytes(r.bytes_received) },
  { label: "Retr.", num: true, value: (r) => fmtInt(r.retransmits) },
  { label: "RTT", num: true, value: (r) => fmtUs(r.srtt_us) },
];

export async function loadFlows(signal) {
  const form = document.getElementById("flow-filters");
  for (const k of Object.keys(FILTERS)) form.elements[k].value = state[k];
  const page = Math.max(0, Number(state.page) || 0);
  const params = { ...flowParams(), limit: PAGE, offset: page ? page * PAGE : "" };
  const rows = await getJSON(apiUrl("flows", params), signal);
  if (page === 0) newestEnd = rows.length ? rows[0].end_ns : null;
  table(document.getElementById("flow-table"), COLUMNS, rows, {
    empty: "No flows match in this window.",
    rowAttrs: (r) => ({ dataset: { flowId: r.flow_id, exporter: r.exporter } }),
  });
  const first = page * PAGE;
  document.getElementById("flow-count").textContent = rows.length
    ? `Rows ${fmtInt(first + 1)}–${fmtInt(first + rows.length)}${state.pin ? ` (ending ${state.pin})` : ""}`
    : "No rows";
  document.getElementById("flow-prev").disabled = page === 0;
  document.getElementById("flow-next").disabled = rows.length < PAGE;
  const all = { ...flowParams(), limit: PAGE, offset: page ? page * PAGE : "" };
  const api = document.getElementById("flow-api");
  api.href = apiUrl("flows", all);
  api.textContent = "API URL";
  api.title = api.href;
  document.getElementById("flow-csv").href = apiUrl("flows", { ...flowParams(), limit: 10000,
    format: "csv" });
}
