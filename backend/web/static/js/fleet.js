// fleet.js: the fleet table, one page at a time from the server
// (selector, sort, cursor), the summary counts as bars, live through the
// event stream. The page never loads the whole fleet.

import { get, enc, may } from "./api.js";
import { h, onlineBadge, badge, progress, fmtAgo, fmtNum, stateKind, debounce, errorText } from "./dom.js";
import { deviceView } from "./model.js";

// COLUMNS: sort names the server's order for that column (the server
// sorts by id, last_seen and firmware only).
const COLUMNS = [
  { key: "id", label: "Device", sort: "id" },
  { key: "online", label: "Online" },
  { key: "firmware", label: "Firmware", sort: "firmware" },
  { key: "reported", label: "Config" },
  { key: "fotaState", label: "FOTA" },
  { key: "lastSeen", label: "Last seen", sort: "last_seen" },
  { key: "power", label: "Output power" },
  { key: "labels", label: "Labels" },
];

const REFRESH_MS = 10000;
const PAGE_SIZES = [25, 50, 100, 200];

export async function fleetPage(root, ctx) {
  const state = { selector: "", status: "all", drift: false, sort: "id", limit: 50 };
  const saved = sessionStorage.getItem("ecowatt.fleet");
  if (saved) try { Object.assign(state, JSON.parse(saved)); } catch { /* ignore */ }
  if (!PAGE_SIZES.includes(state.limit)) state.limit = 50;
  // A state saved by an older page may sort by a column the server cannot.
  if (!COLUMNS.some((c) => c.sort === state.sort)) state.sort = "id";
  // cursors[i] is the cursor of page i+1 ("" for the first); next is the
  // cursor the server gave for the page after the one shown.
  let cursors = [""];
  let next = "";

  const summary = h("p", { id: "fleet-summary", class: "summary", "aria-live": "polite" });
  const q = h("input", { id: "fleet-q", type: "search", class: "selector", placeholder: "selector, e.g. site=colombo,firmware<1.1.0",
    value: state.selector, "aria-describedby": "fleet-q-error", spellcheck: "false", autocomplete: "off" });
  const qError = h("p", { id: "fleet-q-error", class: "field-error", "aria-live": "polite" });
  const status = h("select", { id: "fleet-status" },
    ["all", "online", "offline"].map((s) => h("option", { value: s, selected: s === state.status }, s)));
  const drift = h("input", { id: "fleet-drift", type: "checkbox", checked: state.drift });
  const size = h("select", { id: "fleet-limit" },
    PAGE_SIZES.map((n) => h("option", { value: n, selected: n === state.limit }, String(n))));
  const prev = h("button", { id: "fleet-prev", type: "button", onclick: () => go(-1) }, "‹ Previous");
  const nextBtn = h("button", { id: "fleet-next", type: "button", onclick: () => go(1) }, "Next ›");
  const pageInfo = h("span", { id: "fleet-page", class: "muted", "aria-live": "polite" });
  const bars = h("div", { id: "fleet-bars", class: "fleet-bars", "aria-label": "Fleet summary" });
  const head = h("tr", {});
  const tbody = h("tbody", {});
  const table = h("table", { class: "data", id: "fleet-table", "aria-describedby": "fleet-summary" },
    h("caption", { class: "sr-only" }, "Devices; the Device, Firmware and Last seen headers sort"), h("thead", {}, head), tbody);

  root.append(
    h("div", { class: "page-head" }, h("h1", {}, "Fleet"), summary),
    bars,
    h("form", { class: "filters", role: "search", "aria-label": "Filter devices",
      onsubmit: (e) => { e.preventDefault(); state.selector = q.value.trim(); changed(); } },
    h("label", { for: "fleet-q" }, "Selector"), q,
    h("label", { for: "fleet-status" }, "Status"), status,
    h("label", { class: "check" }, drift, " config drift only"),
    h("label", { for: "fleet-limit" }, "Per page"), size,
    may(ctx.role, "operator") && h("button", { type: "button", id: "fleet-start-job", title: "A job over the devices this filter selects",
      onclick: () => { location.hash = "#/jobs/new/" + enc(selector()); } }, "Start job from this filter"), qError),
    h("div", { class: "table-wrap" }, table),
    h("nav", { class: "pager", "aria-label": "Fleet pages" }, prev, pageInfo, nextBtn));

  // The server's selector: the box, and the status and drift controls as
  // the built-in fields they stand for.
  function selector() {
    const terms = [];
    if (state.selector) terms.push(state.selector);
    if (state.status !== "all") terms.push("online=" + (state.status === "online"));
    if (state.drift) terms.push("config_drift=true");
    return terms.join(",");
  }
  function query(extra) {
    const p = new URLSearchParams({ selector: selector(), ...extra });
    return p.toString();
  }

  let page = { devices: [], total: 0 };
  const devices = new Map(); // id -> view, the rows of this page
  const docs = new Map(); // id -> list document merged with per-device details

  const render = debounce(() => {
    const focused = document.activeElement?.dataset?.id;
    head.replaceChildren(...COLUMNS.map((c) => {
      if (!c.sort) return h("th", { scope: "col" }, c.label);
      const sorted = state.sort === c.sort;
      return h("th", { scope: "col", "aria-sort": sorted ? "ascending" : "none" },
        h("button", { type: "button", class: "sort", "data-sort": c.sort, onclick: () => { state.sort = c.sort; changed(); } },
          c.label, h("span", { "aria-hidden": "true" }, sorted ? " ▲" : "")));
    }));
    const now = Date.now();
    const rows = page.devices.map((d) => devices.get(d.id)).filter(Boolean);
    tbody.replaceChildren(...rows.map((d) => row(d, now)));
    if (!rows.length) {
      tbody.append(h("tr", {}, h("td", { colspan: COLUMNS.length, class: "muted" },
        selector() ? "No device matches the selector." : "No devices yet. Add some with: ecowatt device add --count 10")));
    }
    const first = (cursors.length - 1) * state.limit;
    pageInfo.textContent = rows.length ? `${first + 1}–${first + rows.length} of ${page.total}` : `0 of ${page.total}`;
    prev.disabled = cursors.length <= 1;
    nextBtn.disabled = !next;
    if (focused) table.querySelector(`[data-id="${CSS.escape(focused)}"]`)?.focus();
  }, 60);

  function changed() {
    sessionStorage.setItem("ecowatt.fleet", JSON.stringify(state));
    cursors = [""];
    reload();
  }
  // The selector applies as it is typed (after a pause) or on Enter; a
  // half-typed one shows the server's reason at the box.
  const typed = debounce(() => { if (q.value.trim() !== state.selector) { state.selector = q.value.trim(); changed(); } }, 400);
  q.addEventListener("input", typed);
  status.addEventListener("change", () => { state.status = status.value; changed(); });
  drift.addEventListener("change", () => { state.drift = drift.checked; changed(); });
  size.addEventListener("change", () => { state.limit = Number(size.value); changed(); });

  function go(dir) {
    if (dir > 0 && next) cursors.push(next);
    else if (dir < 0 && cursors.length > 1) cursors.pop();
    else return;
    reload();
  }

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

  // seq drops answers to a query that was replaced while in flight.
  let seq = 0;
  async function loadPage() {
    const mine = ++seq;
    const cursor = cursors[cursors.length - 1];
    let doc;
    try {
      doc = await get("/api/v1/devices?" + query({ sort: state.sort, limit: String(state.limit), ...(cursor ? { cursor } : {}) }));
    } catch (e) {
      if (mine !== seq) return;
      if (e.status === 400) {
        // The selector (or a cursor from before a change) was refused:
        // say why at the box and show nothing stale.
        if (e.field === "cursor") { cursors = [""]; return loadPage(); }
        qError.textContent = errorText(e);
        q.setAttribute("aria-invalid", "true");
        page = { devices: [], total: 0 };
        next = "";
        bars.replaceChildren();
        summary.textContent = "";
        render();
        return;
      }
      throw e;
    }
    if (mine !== seq) return;
    qError.textContent = "";
    q.removeAttribute("aria-invalid");
    page = { devices: doc.devices || [], total: doc.total || 0 };
    next = doc.next_cursor || "";
    const ids = new Set(page.devices.map((d) => d.id));
    for (const id of [...devices.keys()]) if (!ids.has(id)) { devices.delete(id); docs.delete(id); }
    for (const d of page.devices) put(d.id, d);
    render();
    // The page has no telemetry or config state: fill them in for its
    // rows only, a few requests at a time.
    const todo = [...ids];
    const worker = async () => { while (todo.length) await details(todo.shift()); };
    await Promise.all(Array.from({ length: 4 }, worker));
    if (mine === seq) render();
  }

  async function loadSummary() {
    const mine = seq;
    let s;
    try { s = await get("/api/v1/fleet/summary?" + query({})); } catch { return; }
    if (mine !== seq) return;
    const online = s.online?.online || 0;
    summary.textContent = `${online} of ${s.total} online` + (selector() ? ` (selector ${selector()})` : "");
    bars.replaceChildren(
      barGroup("online", "Presence", s.total, s.online),
      barGroup("firmware", "Firmware", s.total, s.firmware),
      barGroup("config", "Config", s.total, s.config));
  }

  async function reload() {
    await loadPage();
    await loadSummary();
  }

  // Events name a device; refetch the rows of this page (coalesced), and
  // the counts now and then, rather than guess.
  const stale = new Set();
  const flush = debounce(async () => {
    const ids = [...stale];
    stale.clear();
    await Promise.all(ids.map((id) => details(id)));
    render();
  }, 150);
  const recount = debounce(() => loadSummary(), 1000);
  ctx.onCleanup(ctx.stream.on((ev) => {
    if (!ev.device) return;
    if (ev.kind === "presence" || ev.kind === "config" || ev.kind === "fota") recount();
    if (!devices.has(ev.device)) return;
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
    try { await reload(); } catch { /* the next tick retries */ }
    busy = false;
  }, REFRESH_MS);
  ctx.onCleanup(() => clearInterval(timer));
  await reload();
}

// barGroup draws one summary count map as labelled bars, largest first.
function barGroup(id, title, total, counts) {
  const entries = Object.entries(counts || {}).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0], undefined, { numeric: true }));
  return h("section", { class: "bar-group", id: "fleet-bars-" + id, "aria-label": title },
    h("h2", {}, title),
    h("ul", {}, entries.map(([k, n]) => h("li", { "data-key": k, "data-count": n },
      h("span", { class: "bar-label" }, k.replace(/_/g, " ")),
      progress(total ? (100 * n) / total : 0, `${title} ${k}: ${n} of ${total}`),
      h("span", { class: "bar-count num" }, fmtNum(n, 0))))));
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
    h("td", { class: "num" }, d.power === null || isNaN(d.power) ? "—" : fmtNum(d.power, 0) + " W"),
    h("td", { class: "labels" }, Object.entries(d.labels || {}).sort().map(([k, v]) => badge(`${k}=${v}`, "label"))));
}
