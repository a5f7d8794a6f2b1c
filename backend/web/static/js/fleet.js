// fleet.js: the fleet table, live through the event stream.

import { get, enc } from "./api.js";
import { h, clear, onlineBadge, badge, progress, fmtAgo, fmtNum, stateKind, debounce } from "./dom.js";
import { deviceView } from "./model.js";

const COLUMNS = [
  { key: "id", label: "Device" },
  { key: "online", label: "Online" },
  { key: "firmware", label: "Firmware" },
  { key: "reported", label: "Config" },
  { key: "fotaState", label: "FOTA" },
  { key: "lastSeen", label: "Last seen" },
  { key: "power", label: "Output power" },
];

const REFRESH_MS = 10000;
// DETAIL_LIMIT bounds the devices whose telemetry and config state the
// page fetches one by one.
const DETAIL_LIMIT = 200;

export async function fleetPage(root, ctx) {
  const devices = new Map(); // id -> view
  const state = { q: "", status: "all", drift: false, sort: "id", dir: 1 };
  const saved = sessionStorage.getItem("ecowatt.fleet");
  if (saved) try { Object.assign(state, JSON.parse(saved)); } catch { /* ignore */ }

  const summary = h("p", { id: "fleet-summary", class: "summary", "aria-live": "polite" });
  const q = h("input", { id: "fleet-q", type: "search", placeholder: "ID or firmware", value: state.q });
  const status = h("select", { id: "fleet-status" },
    ["all", "online", "offline"].map((s) => h("option", { value: s, selected: s === state.status }, s)));
  const drift = h("input", { id: "fleet-drift", type: "checkbox", checked: state.drift });
  const head = h("tr", {});
  const tbody = h("tbody", {});
  const table = h("table", { class: "data", id: "fleet-table", "aria-describedby": "fleet-summary" },
    h("caption", { class: "sr-only" }, "Devices; column headers sort"), h("thead", {}, head), tbody);

  root.append(
    h("div", { class: "page-head" }, h("h1", {}, "Fleet"), summary),
    h("form", { class: "filters", role: "search", "aria-label": "Filter devices", onsubmit: (e) => e.preventDefault() },
      h("label", { for: "fleet-q" }, "Filter"), q,
      h("label", { for: "fleet-status" }, "Status"), status,
      h("label", { class: "check" }, drift, " config drift only")),
    h("div", { class: "table-wrap" }, table));

  const render = debounce(() => {
    const focused = document.activeElement?.dataset?.id;
    head.replaceChildren(...COLUMNS.map((c) => {
      const sorted = state.sort === c.key;
      return h("th", { scope: "col", "aria-sort": sorted ? (state.dir > 0 ? "ascending" : "descending") : "none" },
        h("button", { type: "button", class: "sort", onclick: () => {
          state.dir = state.sort === c.key ? -state.dir : 1;
          state.sort = c.key;
          changed();
        } }, c.label, h("span", { "aria-hidden": "true" }, sorted ? (state.dir > 0 ? " ▲" : " ▼") : "")));
    }));
    const needle = state.q.trim().toLowerCase();
    const rows = [...devices.values()].filter((d) =>
      (state.status === "all" || (state.status === "online") === d.online) &&
      (!state.drift || d.drift) &&
      (!needle || d.id.toLowerCase().includes(needle) || d.firmware.toLowerCase().includes(needle)));
    rows.sort((a, b) => state.dir * cmp(a[state.sort], b[state.sort]) || cmp(a.id, b.id));
    const now = Date.now();
    tbody.replaceChildren(...rows.map((d) => row(d, now)));
    if (!rows.length) {
      tbody.append(h("tr", {}, h("td", { colspan: COLUMNS.length, class: "muted" },
        devices.size ? "No device matches the filter." : "No devices yet. Add some with: ecowatt device add --count 10")));
    }
    const online = [...devices.values()].filter((d) => d.online).length;
    summary.textContent = `${online} of ${devices.size} online` + (rows.length !== devices.size ? `, ${rows.length} shown` : "");
    if (focused) table.querySelector(`[data-id="${CSS.escape(focused)}"]`)?.focus();
  }, 60);

  function changed() {
    sessionStorage.setItem("ecowatt.fleet", JSON.stringify(state));
    render();
  }
  q.addEventListener("input", () => { state.q = q.value; changed(); });
  status.addEventListener("change", () => { state.status = status.value; changed(); });
  drift.addEventListener("change", () => { state.drift = drift.checked; changed(); });

  // docs keeps each device's list document merged with what only the
  // per-device routes have (latest telemetry, config state).
  const docs = new Map();
  const put = (id, patch) => {
    const d = { ...(docs.get(id) || {}), ...patch };
    docs.set(id, d);
    devices.set(id, deviceView(d));
  };
  let noConfig = false;
  async function details(id) {
    const base = "/api/v1/devices/" + enc(id);
    const [doc, cfg] = await Promise.all([get(base).catch(() => null),
      noConfig ? null : get(base + "/config").catch((e) => { if (e.missing) noConfig = true; return null; })]);
    if (doc) put(id, doc);
    if (cfg) put(id, { configState: cfg });
  }
  async function loadAll() {
    const doc = await get("/api/v1/devices");
    const ids = new Set();
    for (const d of doc.devices || []) { ids.add(d.id); put(d.id, d); }
    for (const id of [...devices.keys()]) if (!ids.has(id)) { devices.delete(id); docs.delete(id); }
    render();
    // The list has no telemetry or config state: fill them in for a
    // fleet of dashboard size, a few requests at a time.
    const todo = [...ids].slice(0, DETAIL_LIMIT);
    const worker = async () => { while (todo.length) await details(todo.shift()); };
    await Promise.all(Array.from({ length: 4 }, worker));
    render();
  }

  // Events name a device; refetch it (coalesced) rather than guess.
  const stale = new Set();
  const flush = debounce(async () => {
    const ids = [...stale];
    stale.clear();
    await Promise.all(ids.map((id) => details(id)));
    render();
  }, 150);
  ctx.onCleanup(ctx.stream.on((ev) => {
    if (!ev.device || !devices.has(ev.device)) return;
    if (ev.kind === "presence" && ev.data && typeof ev.data.online === "boolean") {
      put(ev.device, { online: ev.data.online, last_seen: ev.at });
      render();
    }
    stale.add(ev.device);
    flush();
  }));
  let busy = false;
  const timer = setInterval(async () => {
    if (busy) return;
    busy = true;
    try { await loadAll(); } catch { /* the next tick retries */ }
    busy = false;
  }, REFRESH_MS);
  ctx.onCleanup(() => clearInterval(timer));
  await loadAll();
}

function row(d, now) {
  const cfg = [d.reported === null ? "—" : "v" + d.reported];
  if (d.desired !== null && d.desired !== d.reported) cfg.push(h("span", { class: "muted" }, ` → v${d.desired}`));
  if (d.drift) cfg.push(" ", badge("drift", "warn"));
  else if (d.pending) cfg.push(" ", badge("pending", "muted"));
  const fota = d.fotaState && d.fotaState !== "idle"
    ? [badge(d.fotaState.replace(/_/g, " "), stateKind(d.fotaState)), d.fotaVersion ? h("span", { class: "muted" }, " " + d.fotaVersion) : null,
      d.fotaPct !== null && d.fotaState !== "succeeded" ? progress(d.fotaPct, `FOTA progress of ${d.id}`) : null]
    : h("span", { class: "muted" }, "idle");
  return h("tr", { "data-device": d.id, class: d.online ? "" : "offline" },
    h("th", { scope: "row" }, h("a", { href: "#/device/" + enc(d.id), "data-id": d.id }, d.id)),
    h("td", { class: "online" }, onlineBadge(d.online)),
    h("td", {}, d.firmware || "—"),
    h("td", { class: "config" + (d.drift ? " drift" : "") }, cfg),
    h("td", { class: "fota" }, fota),
    h("td", { title: d.lastSeen || "" }, h("time", { datetime: d.lastSeen || "" }, fmtAgo(d.lastSeen, now))),
    h("td", { class: "num" }, d.power === null || isNaN(d.power) ? "—" : fmtNum(d.power, 0) + " W"));
}

function cmp(a, b) {
  if (a === b) return 0;
  if (a === null || a === undefined || a === "") return 1;
  if (b === null || b === undefined || b === "") return -1;
  if (typeof a === "boolean") return a ? -1 : 1;
  if (typeof a === "number" && typeof b === "number") return a - b;
  return String(a).localeCompare(String(b), undefined, { numeric: true });
}
