// device-commands.js: the command form and the command history.

import { get, call, enc, may } from "./api.js";
import { h, section, badge, fmtTime, stateKind, unavailable, debounce, needsRole, REGISTERS } from "./dom.js";

const ACTIONS = [
  { name: "ping", label: "Ping" },
  { name: "read_register", label: "Read a register", register: true },
  { name: "write_register", label: "Write a register", register: true, value: true },
  { name: "reboot", label: "Reboot" },
];

export async function commandsSection(ctx, base, id) {
  const body = h("div", { id: "commands-body" });
  const el = section("Commands", "device-commands", body);
  let page;
  try {
    page = await get(base + "/commands?limit=20");
  } catch (e) {
    body.append(unavailable("Commands", e));
    return el;
  }
  const action = h("select", { id: "cmd-action", name: "action" }, ACTIONS.map((a) => h("option", { value: a.name }, a.label)));
  const reg = h("select", { id: "cmd-register", name: "target_register" });
  const value = h("input", { id: "cmd-value", name: "value", type: "number", step: 1, "aria-describedby": "cmd-value-help" });
  const ttl = h("input", { id: "cmd-ttl", name: "ttl", type: "text", placeholder: "10m", size: 6, "aria-describedby": "cmd-ttl-help", pattern: "[0-9]+(ms|s|m|h)" });
  const regField = h("div", { class: "field" }, h("label", { for: "cmd-register" }, "Register"), reg);
  const valueField = h("div", { class: "field" }, h("label", { for: "cmd-value" }, "Value"), value,
    h("p", { id: "cmd-value-help", class: "help" }, "export power: 0–100 %"));
  const alert = h("p", { id: "cmd-error", class: "error", role: "alert" });
  const status = h("p", { id: "cmd-status", class: "muted", "aria-live": "polite" });
  const tbody = h("tbody", {});

  const sync = () => {
    const a = ACTIONS.find((x) => x.name === action.value);
    regField.hidden = !a.register;
    valueField.hidden = !a.value;
    const regs = REGISTERS.filter((r) => !a.value || r.writable);
    const keep = reg.value;
    reg.replaceChildren(...regs.map((r) => h("option", { value: r.name, selected: r.name === keep }, `${r.name} (${r.unit})`)));
  };
  action.addEventListener("change", sync);
  sync();

  const form = h("form", { id: "command-form", class: "inline-form", novalidate: true, onsubmit: async (e) => {
    e.preventDefault();
    alert.textContent = "";
    const a = ACTIONS.find((x) => x.name === action.value);
    const doc = { action: a.name };
    if (a.register) doc.target_register = reg.value;
    if (a.value) doc.value = value.value === "" ? null : Number(value.value);
    if (ttl.value.trim()) doc.ttl = ttl.value.trim();
    try {
      const res = await call("POST", base + "/commands", doc);
      const c = res.command || res;
      status.textContent = `Command ${c.id || ""} ${c.state || "queued"}.`;
      ctx.toast(status.textContent, "ok");
      await reload();
    } catch (ex) {
      alert.textContent = "Not sent: " + (ex.field ? ex.field + ": " : "") + ex.message;
    }
  } },
  h("div", { class: "field" }, h("label", { for: "cmd-action" }, "Action"), action),
  regField, valueField,
  h("div", { class: "field" }, h("label", { for: "cmd-ttl" }, "Expires after"), ttl,
    h("p", { id: "cmd-ttl-help", class: "help" }, "e.g. 30s, 10m; default 10m")),
  h("div", { class: "actions" }, h("button", { type: "submit", class: "primary", id: "cmd-send" }, "Send command")),
  alert, status);

  const render = () => {
    const cmds = page.commands || [];
    tbody.replaceChildren(...cmds.map((c) => h("tr", { "data-command": c.id, "data-state": c.state },
      h("td", { class: "mono" }, c.id), h("td", {}, c.action, c.target_register ? ` ${c.target_register}` : "",
        c.value !== undefined && c.value !== null ? ` = ${c.value}` : ""),
      h("td", { class: "state" }, badge(c.state, stateKind(c.state))),
      h("td", {}, result(c)),
      h("td", {}, h("time", { datetime: c.created_at }, fmtTime(c.created_at))),
      h("td", {}, c.state === "queued" && may(ctx.role, "operator") ? h("button", { type: "button", class: "link", "aria-label": `Cancel command ${c.id}`, onclick: () => cancel(c.id) }, "Cancel") : null))));
    if (!cmds.length) tbody.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No commands yet.")));
  };
  async function reload() {
    try { page = await get(base + "/commands?limit=20"); render(); } catch { /* keep */ }
  }
  async function cancel(cid) {
    try {
      await call("DELETE", "/api/v1/commands/" + enc(cid));
      await reload();
    } catch (e) {
      ctx.toast("Cancel failed: " + e.message, "bad");
    }
  }
  const later = debounce(reload, 150);
  ctx.onCleanup(ctx.stream.on((ev) => { if (ev.device === id && ev.kind === "command") later(); }));
  render();
  body.append(may(ctx.role, "operator") ? form : needsRole("Sending commands", "operator", ctx.role),
    h("h3", {}, "History"), h("div", { class: "table-wrap" }, h("table", { class: "data compact", id: "command-history" },
    h("thead", {}, h("tr", {}, ["ID", "Command", "State", "Result", "Queued", ""].map((c) => h("th", { scope: "col" }, c)))), tbody)));
  return el;
}

function result(c) {
  const r = c.result;
  if (r) return `${r.status}${r.value !== undefined && r.value !== null ? " = " + r.value : ""}${r.error ? ": " + r.error : ""}${r.duration_ms ? ` (${r.duration_ms} ms)` : ""}`;
  return c.error || "";
}
