// device-config.js: desired vs reported config, the editor with the API's
// per-field validation errors, and the device's per-field ack.

import { get, call, may } from "./api.js";
import { h, section, badge, fmtTime, unavailable, debounce, needsRole, REGISTERS } from "./dom.js";

const PARAMS = [
  { name: "sampling_interval", label: "Sampling interval", unit: "s", help: "1–300 s" },
  { name: "upload_interval", label: "Upload interval", unit: "s", help: "a multiple of the sampling interval, at most 3600 s" },
  { name: "registers", label: "Registers", help: "1–10 registers" },
];

export async function configSection(ctx, base, id) {
  const body = h("div", { id: "config-body" });
  const el = section("Configuration", "device-config", body);
  let st;
  try {
    st = await get(base + "/config");
  } catch (e) {
    body.append(unavailable("Configuration", e));
    return el;
  }

  const view = h("div", {});
  const ack = h("div", { id: "config-ack", "aria-live": "polite" });
  const alert = h("p", { id: "config-error", class: "error", role: "alert" });
  const status = h("p", { id: "config-status", class: "muted", "aria-live": "polite" });
  const inputs = {};
  const errs = {};
  for (const p of PARAMS) errs[p.name] = h("p", { id: `cfg-${p.name}-error`, class: "field-error" });
  inputs.sampling_interval = h("input", { id: "cfg-sampling_interval", name: "sampling_interval", type: "number", min: 1, max: 300, step: 1, required: true,
    "aria-describedby": "cfg-sampling_interval-help cfg-sampling_interval-error" });
  inputs.upload_interval = h("input", { id: "cfg-upload_interval", name: "upload_interval", type: "number", min: 1, max: 3600, step: 1, required: true,
    "aria-describedby": "cfg-upload_interval-help cfg-upload_interval-error" });
  const regBoxes = REGISTERS.map((r) => h("label", { class: "check" },
    h("input", { type: "checkbox", name: "cfg-register", value: r.name }), " " + r.name.replace(/_/g, " ")));
  inputs.registers = h("fieldset", { id: "cfg-registers", "aria-describedby": "cfg-registers-help cfg-registers-error" },
    h("legend", {}, "Registers"), h("div", { class: "checks" }, regBoxes));

  const form = h("form", { class: "config-form", id: "config-form", novalidate: true, onsubmit: submit },
    h("h3", {}, "Change the desired configuration"),
    ...["sampling_interval", "upload_interval"].map((n) => {
      const p = PARAMS.find((x) => x.name === n);
      return h("div", { class: "field" }, h("label", { for: "cfg-" + n }, `${p.label} (${p.unit})`), inputs[n],
        h("p", { id: `cfg-${n}-help`, class: "help" }, p.help), errs[n]);
    }),
    h("div", { class: "field" }, inputs.registers, h("p", { id: "cfg-registers-help", class: "help" }, PARAMS[2].help), errs.registers),
    alert,
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary", id: "config-save" }, "Save and send"),
      h("button", { type: "button", onclick: () => fill(st.desired) }, "Reset")),
    status);

  function fill(c) {
    inputs.sampling_interval.value = c.sampling_interval;
    inputs.upload_interval.value = c.upload_interval;
    for (const b of regBoxes) { const i = b.querySelector("input"); i.checked = (c.registers || []).includes(i.value); }
  }

  function render() {
    const rep = st.reported || {};
    const rows = PARAMS.map((p) => {
      const drift = (st.drift || []).includes(p.name);
      return h("tr", { class: drift ? "drift" : "" }, h("th", { scope: "row" }, p.label),
        h("td", {}, show(st.desired[p.name], p.unit)), h("td", {}, st.reported ? show(rep[p.name], p.unit) : "—"),
        h("td", {}, drift ? badge("drift", "warn") : badge("in sync", "ok")));
    });
    view.replaceChildren(
      h("p", {}, `Desired v${st.desired.version}`, st.desired.updated_at ? ` (set ${fmtTime(st.desired.updated_at)}${st.desired.updated_by ? " by " + st.desired.updated_by : ""})` : "",
        ", reported ", st.reported ? `v${rep.version}` : "nothing yet", " ",
        st.pending ? badge("waiting for ack", "busy") : null),
      h("table", { class: "data compact", id: "config-table" },
        h("thead", {}, h("tr", {}, ["Parameter", "Desired", "Reported", ""].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, rows)));
    renderAck();
  }

  function renderAck() {
    const a = st.last_ack;
    ack.dataset.desired = st.desired.version;
    if (!a) { ack.replaceChildren(h("p", { class: "muted" }, "No acknowledgement from the device yet.")); return; }
    ack.dataset.version = a.version;
    const items = [];
    for (const c of a.accepted || []) items.push(h("li", { class: "accepted", "data-param": c.parameter }, badge("accepted", "ok"), ` ${c.parameter}: ${show(c.old)} → ${show(c.new)}`));
    for (const r of a.rejected || []) items.push(h("li", { class: "rejected", "data-param": r.parameter }, badge("rejected", "bad"), ` ${r.parameter}: ${r.reason}`));
    for (const u of a.unchanged || []) items.push(h("li", { class: "unchanged", "data-param": u }, badge("unchanged", "muted"), ` ${u}`));
    ack.replaceChildren(h("h3", {}, `Device ack of v${a.version}`, a.at ? h("small", { class: "muted" }, " " + fmtTime(a.at)) : null),
      h("ul", { class: "ack" }, items));
  }

  async function submit(e) {
    e.preventDefault();
    for (const p of PARAMS) { errs[p.name].textContent = ""; inputs[p.name].removeAttribute("aria-invalid"); }
    alert.textContent = "";
    const doc = {
      sampling_interval: Number(inputs.sampling_interval.value),
      upload_interval: Number(inputs.upload_interval.value),
      registers: regBoxes.map((b) => b.querySelector("input")).filter((i) => i.checked).map((i) => i.value),
    };
    try {
      const res = await call("PUT", base + "/config", doc);
      st = res.state || res;
      render();
      status.textContent = res.changed === false ? "Nothing changed." : `Version ${st.desired.version} saved; waiting for the device's ack.`;
      ctx.toast(status.textContent, "ok");
    } catch (ex) {
      const f = (ex.field || "").split(/[.[]/)[0];
      if (errs[f]) {
        errs[f].textContent = ex.message;
        inputs[f].setAttribute("aria-invalid", "true");
        (f === "registers" ? regBoxes[0].querySelector("input") : inputs[f]).focus();
      }
      alert.textContent = "Not saved: " + (ex.field ? ex.field + ": " : "") + ex.message;
    }
  }

  const reload = debounce(async () => {
    try { st = await get(base + "/config"); render(); } catch { /* keep */ }
  }, 150);
  ctx.onCleanup(ctx.stream.on((ev) => {
    if (ev.device !== id || ev.kind !== "config") return;
    reload();
    if (ev.data && ev.data.status === "acked") status.textContent = `The device acknowledged v${ev.data.version}.`;
  }));

  fill(st.desired);
  render();
  body.append(h("div", { class: "split" }, h("div", {}, view, ack), may(ctx.role, "operator") ? form
    : needsRole("Changing the configuration", "operator", ctx.role)));
  return el;
}

function show(v, unit) {
  if (v === undefined || v === null) return "—";
  if (Array.isArray(v)) return v.join(", ");
  return unit ? `${v} ${unit}` : String(v);
}
