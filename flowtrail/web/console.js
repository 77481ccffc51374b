// The console's shell: the state kept in the URL (so a link shares the view), the time window
// every view uses, the tabs, auto-refresh and errors. Each view module renders from the API.

import { loadFlows, initFlows } from "./flows.js";
import { loadHealth } from "./health.js";
import { initMap, loadMap } from "./map.js";
import { ApiError } from "./util.js";

// Every key the URL may hold, with its default (a default is left out of the URL).
const DEFAULTS = {
  view: "map", win: "15m", from: "", to: "", refresh: "30",
  q: "", group: "auto", known: "", sel: "",
  fw: "", fc: "", fe: "", fun: "", fcx: "", fex: "", fip: "", fport: "", fout: "", fsrc: "", fexp: "", fname: "",
  page: "0", pin: "",
};
const WINDOWS = { "5m": 300, "15m": 900, "1h": 3600, "24h": 86400 };
const VIEWS = { map: loadMap, flows: loadFlows, health: loadHealth };

export const state = { ...DEFAULTS };

function readUrl() {
  const q = new URLSearchParams(location.search);
  for (const k of Object.keys(DEFAULTS)) state[k] = q.get(k) ?? DEFAULTS[k];
  if (!(state.view in VIEWS)) state.view = DEFAULTS.view;
  if (!(state.win in WINDOWS) && !["all", "custom"].includes(state.win)) state.win = DEFAULTS.win;
}

function urlOf(next) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(next)) if (v !== DEFAULTS[k] && v !== "") q.set(k, v);
  const text = q.toString();
  return `${location.pathname}${text ? `?${text}` : ""}`;
}

// Change state, write it to the URL (a new history entry when `push`), reload the view.
export function update(changes, { push = false, reload = true } = {}) {
  Object.assign(state, changes);
  const url = urlOf(state);
  if (url !== `${location.pathname}${location.search}`) {
    if (push) history.pushState(null, "", url);
    else history.replaceState(null, "", url);
  }
  syncControls();
  if (reload) refresh();
}

// The window as API parameters. Presets are counted back from the server's clock ("15m"),
// a custom range is two UTC times.
export function windowParams() {
  if (state.win === "custom") {
    return { since: state.from || undefined, until: state.to || undefined };
  }
  if (state.win === "all") return {};
  return { since: state.win };
}

export function windowLabel() {
  if (state.win === "custom") return `${state.from || "the beginning"} – ${state.to || "now"} UTC`;
  if (state.win === "all") return "everything stored";
  return document.querySelector(`#win option[value="${state.win}"]`).textContent;
}

function syncControls() {
  for (const a of document.querySelectorAll("nav .tab")) {
    const on = a.dataset.view === state.view;
    a.classList.toggle("active", on);
    if (on) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
    a.href = urlOf({ ...state, view: a.dataset.view });
  }
  for (const name of Object.keys(VIEWS)) {
    document.getElementById(`view-${name}`).hidden = name !== state.view;
  }
  document.getElementById("win").value = state.win;
  document.getElementById("refresh").value = state.refresh;
  document.getElementById("custom-range").hidden = state.win !== "custom";
  document.getElementById("from").value = state.from;
  document.getElementById("to").value = state.to;
  scheduleRefresh();
}

let timer = null;
let inflight = null;
let generation = 0;

function scheduleRefresh() {
  clearInterval(timer);
  const every = Number(state.refresh);
  if (every > 0) timer = setInterval(() => refresh(true), every * 1000);
}

export function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message || "";
  box.hidden = !message;
}

// Load the current view; a newer load cancels an older one still running.
export async function refresh(background = false) {
  inflight?.abort();
  const ctl = new AbortController();
  inflight = ctl;
  const mine = ++generation;
  const status = document.getElementById("status");
  document.body.dataset.loading = "true";
  if (!background) status.textContent = "Loading…";
  const started = performance.now();
  try {
    await VIEWS[state.view](ctl.signal);
    if (mine !== generation) return;
    showError("");
    const ms = Math.round(performance.now() - started);
    const now = new Date().toISOString().slice(11, 19);
    status.textContent = `${windowLabel()} · updated ${now} UTC · ${ms} ms`;
    // For tests and benchmarks: this load's time, and the time since navigation began.
    document.body.dataset.loadMs = String(ms);
    document.body.dataset.pageMs = String(Math.round(performance.now()));
    document.body.dataset.loaded = String(mine);
  } catch (err) {
    if (ctl.signal.aborted || mine !== generation) return;
    showError(err instanceof ApiError ? err.message : `Could not load: ${err}`);
    status.textContent = "";
    document.body.dataset.loaded = String(mine);
  } finally {
    if (mine === generation) delete document.body.dataset.loading;
  }
}

function init() {
  readUrl();
  document.getElementById("win").addEventListener("change", (e) => {
    const win = e.target.value;
    if (win === "custom") {
      // Start from the preset just shown, in UTC, so the fields are not empty.
      const secs = WINDOWS[state.win] || 3600;
      const iso = (d) => d.toISOString().slice(0, 19);
      update({
        win, from: state.from || iso(new Date(Date.now() - secs * 1000)),
        to: state.to || iso(new Date()), page: "0", pin: "",
      });
    } else {
      update({ win, from: "", to: "", page: "0", pin: "" });
    }
  });
  document.getElementById("window-form").addEventListener("submit", (e) => {
    e.preventDefault();
    update({ from: document.getElementById("from").value,
      to: document.getElementById("to").value, page: "0", pin: "" });
  });
  document.getElementById("refresh").addEventListener("change", (e) => {
    update({ refresh: e.target.value }, { reload: false });
  });
  document.getElementById("reload").addEventListener("click", () => refresh());
  for (const a of document.querySelectorAll("nav .tab")) {
    a.addEventListener("click", (e) => {
      if (e.ctrlKey || e.metaKey || e.shiftKey) return;
      e.preventDefault();
      update({ view: a.dataset.view }, { push: true });
    });
  }
  window.addEventListener("popstate", () => {
    readUrl();
    syncControls();
    refresh();
  });
  initMap();
  initFlows();
  syncControls();
  refresh();
}

init();
