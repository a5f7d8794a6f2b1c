// dom.js: element building and formatting helpers.

// h builds an element: h("a", {href: "#"}, "text", child...). Attributes
// starting with "on" are listeners; "class", "text" and boolean values
// are handled; null/false children are skipped.
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k === "value" && "value" in el) el.value = v;
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

// svg builds an SVG element.
export function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) el.setAttribute(k, String(v));
  }
  for (const c of children) if (c) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

export function clear(el) { el.replaceChildren(); return el; }

// section renders a titled card; body may be replaced later.
export function section(title, id, ...children) {
  const hid = id + "-title";
  return h("section", { class: "card", id, "aria-labelledby": hid },
    h("h2", { id: hid }, title), ...children);
}

export function badge(text, kind) {
  return h("span", { class: "badge " + (kind || "") }, text);
}

export function onlineBadge(on) {
  return on ? badge("online", "ok") : badge("offline", "muted");
}

// stateKind maps a command, FOTA or rollout state to a colour class.
export function stateKind(s) {
  s = String(s || "").toLowerCase();
  if (/succeed|success|done|complete|accepted|acked|ok|finished/.test(s)) return "ok";
  if (/fail|reject|error|expired|abort|rolled_back|timeout|cancel/.test(s)) return "bad";
  if (/paus|pending|queued|idle|waiting/.test(s)) return "muted";
  return "busy";
}

export function progress(pct, label) {
  const v = Math.max(0, Math.min(100, Math.round(Number(pct) || 0)));
  const bar = h("div", { class: "bar" });
  // CSP forbids style attributes; the CSSOM is fine.
  bar.style.width = v + "%";
  return h("div", { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
    "aria-valuenow": v, "aria-label": label || "progress", title: v + "%" },
  bar, h("span", { class: "pct" }, v + "%"));
}

export function fmtTime(t) {
  if (!t) return "—";
  const d = new Date(t);
  if (isNaN(d)) return "—";
  return d.toLocaleString();
}

export function fmtAgo(t, now = Date.now()) {
  if (!t) return "never";
  const d = new Date(t);
  if (isNaN(d)) return "—";
  const s = Math.round((now - d.getTime()) / 1000);
  if (s < 5) return "just now";
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.floor(s / 60) + " min ago";
  if (s < 86400) return Math.floor(s / 3600) + " h ago";
  return Math.floor(s / 86400) + " d ago";
}

export function fmtNum(v, digits = 1) {
  if (v === null || v === undefined || v === "") return "—";
  const n = Number(v);
  if (!isFinite(n)) return String(v);
  return Number.isInteger(n) ? String(n) : n.toFixed(digits);
}

export function fmtBytes(n) {
  n = Number(n) || 0;
  if (n < 1024) return n + " B";
  if (n < 1 << 20) return (n / 1024).toFixed(1) + " KiB";
  return (n / (1 << 20)).toFixed(1) + " MiB";
}

// unavailable renders the note for a section whose API is not there.
export function unavailable(what, err) {
  const msg = err && !err.missing ? err.message : "not available on this server";
  return h("p", { class: "note unavailable", role: "note" }, what + ": " + msg + ".");
}

// needsRole renders the note that stands in for controls the caller's
// role r does not reach (want).
export function needsRole(what, want, r) {
  return h("p", { class: "note", role: "note", "data-role-note": want },
    `${what} needs the role ${want}; you are ${r ? (/^[aeiou]/.test(r) ? "an " : "a ") + r : "signed in with a role the server did not say"}.`);
}

export function errorText(err) {
  return err.field ? err.field + ": " + err.message : err.message;
}

// debounce calls fn at most once per ms, with the latest arguments.
export function debounce(fn, ms) {
  let t = null;
  return (...a) => { clearTimeout(t); t = setTimeout(() => fn(...a), ms); };
}

// The register map (topics/telemetry/registers.go), for labels and units.
export const REGISTERS = [
  { name: "voltage", unit: "V", desc: "AC phase voltage" },
  { name: "current", unit: "A", desc: "AC phase current" },
  { name: "frequency", unit: "Hz", desc: "AC frequency" },
  { name: "pv1_voltage", unit: "V", desc: "PV1 input voltage" },
  { name: "pv2_voltage", unit: "V", desc: "PV2 input voltage" },
  { name: "pv1_current", unit: "A", desc: "PV1 input current" },
  { name: "pv2_current", unit: "A", desc: "PV2 input current" },
  { name: "temperature", unit: "°C", desc: "Inverter temperature" },
  { name: "export_power", unit: "%", desc: "Export power limit", writable: true },
  { name: "output_power", unit: "W", desc: "Output power" },
];
