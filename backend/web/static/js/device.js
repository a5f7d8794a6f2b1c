// device.js: one device: facts, telemetry plot, config, commands, FOTA
// and the audit timeline.

import { get, call, enc, may } from "./api.js";
import { h, clear, section, onlineBadge, badge, progress, fmtTime, fmtAgo, fmtNum, stateKind, unavailable, debounce, needsRole, REGISTERS } from "./dom.js";
import { latestValues, fotaPercent, summarize } from "./model.js";
import { charts } from "./plot.js";
import { configSection } from "./device-config.js";
import { commandsSection } from "./device-commands.js";

const WINDOWS = [
  { label: "Last 5 minutes", ms: 5 * 60e3 },
  { label: "Last 15 minutes", ms: 15 * 60e3 },
  { label: "Last hour", ms: 3600e3 },
  { label: "Last 6 hours", ms: 6 * 3600e3 },
  { label: "Last 24 hours", ms: 24 * 3600e3 },
  { label: "Last 7 days", ms: 7 * 24 * 3600e3 },
];

export async function devicePage(root, ctx, id) {
  const base = "/api/v1/devices/" + enc(id);
  let dev = await get(base);
  const head = h("div", { class: "page-head" });
  const facts = h("dl", { class: "facts" });
  const latest = h("div", { class: "latest" });
  const fota = h("div", { id: "fota-body" });

  const renderHead = () => {
    head.replaceChildren(
      h("p", { class: "crumbs" }, h("a", { href: "#/" }, "Fleet"), " / "),
      h("h1", {}, dev.id, " ", onlineBadge(dev.online)));
    facts.replaceChildren(...[
      ["Firmware", dev.firmware_version || "—"], ["Slot", dev.slot || "—"],
      ["Config at boot", dev.config_version !== undefined ? "v" + dev.config_version : "—"], ["Boot count", dev.boot_count ?? "—"],
      ["Uptime", dev.uptime_s ? fmtDuration(dev.uptime_s) : "—"],
      ["Last seen", h("time", { datetime: dev.last_seen || "", title: fmtTime(dev.last_seen) }, fmtAgo(dev.last_seen))],
      ["Provisioned", fmtTime(dev.created_at)],
    ].flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
    const vals = latestValues(dev);
    latest.replaceChildren(...(vals.length ? [h("ul", { class: "tiles", "aria-label": "Latest values" },
      vals.map((v) => h("li", {}, h("span", { class: "k" }, v.name.replace(/_/g, " ")),
        h("span", { class: "v" }, fmtNum(v.value ?? v.v, 2), " ", h("small", {}, v.unit || "")))))] : []));
    renderFota();
  };

  const renderFota = () => {
    const f = dev.fota;
    if (!f) {
      fota.replaceChildren(h("p", { class: "muted" }, "No firmware update has been started for this device."));
      return;
    }
    const pct = fotaPercent(f);
    const shown = f.active ? f.state : (f.result || f.state);
    fota.replaceChildren(
      h("p", {}, badge((shown || "idle").replace(/_/g, " "), stateKind(shown)),
        f.target ? ` to ${f.target}` : "",
        // A job's update is tagged job:JID; its rollout view is ro-JID.
        f.rollout ? [" in rollout ", h("a", { href: "#/rollouts/" + enc(f.rollout.replace(/^job:/, "ro-")) }, f.rollout)] : "",
        f.reason ? ` — ${f.reason}${f.detail ? ": " + f.detail : ""}` : ""),
      pct !== null ? progress(pct, "Firmware update progress") : null,
      f.total_chunks ? h("p", { class: "muted" }, `${f.chunk_received || 0} of ${f.total_chunks} chunks`,
        f.updated_at ? `, updated ${fmtAgo(f.updated_at)}` : "") : null);
  };

  const fwVersion = h("input", { id: "fota-version", name: "version", type: "text", size: 10, placeholder: "1.2.0", required: true });
  const updateForm = h("form", { class: "inline-form", id: "fota-start", onsubmit: async (e) => {
    e.preventDefault();
    try {
      await call("POST", base + "/fota", { version: fwVersion.value.trim() });
      ctx.toast(`Update to ${fwVersion.value.trim()} started`, "ok");
      refresh();
    } catch (ex) {
      ctx.toast(ex.missing ? "Firmware updates are not available on this server" : "Not started: " + ex.message, "bad");
    }
  } }, h("div", { class: "field" }, h("label", { for: "fota-version" }, "Update to version"), fwVersion),
  h("div", { class: "actions" }, h("button", { type: "submit" }, "Start update")));
  const rollbackBtn = h("button", { type: "button", class: "danger", id: "rollback", onclick: async () => {
    if (!confirm(`Roll ${id} back to its previous firmware?`)) return;
    try {
      await call("POST", base + "/rollback", { reason: "operator" });
      ctx.toast("Rollback requested", "ok");
    } catch (e) {
      ctx.toast(e.missing ? "Rollback is not available on this server" : "Rollback failed: " + e.message, "bad");
    }
  } }, "Roll back firmware");

  const lifecycle = lifecycleSection(ctx, base, id, () => dev, (d) => { dev = d; renderHead(); lifecycle.render(); });
  renderHead();
  const tele = telemetrySection(ctx, base, dev);
  const timeline = timelineSection(ctx, base, id);
  root.append(head, h("div", { class: "grid" },
    section("Device", "device-facts", facts, latest),
    section("Firmware update", "device-fota", fota, ...(may(ctx.role, "operator") ? [updateForm, h("div", { class: "actions" }, rollbackBtn)]
      : [needsRole("Starting an update or a rollback", "operator", ctx.role)])),
    lifecycle.el),
  tele.el, await configSection(ctx, base, id), await commandsSection(ctx, base, id), timeline.el);

  const refresh = debounce(async () => {
    try { dev = await get(base); renderHead(); lifecycle.render(); } catch { /* keep the last view */ }
  }, 200);
  ctx.onCleanup(ctx.stream.on((ev) => {
    if (ev.device !== id) return;
    timeline.add(ev);
    if (ev.kind === "presence" || ev.kind === "fota") refresh();
  }));
  const timer = setInterval(refresh, 15000);
  ctx.onCleanup(() => clearInterval(timer));
  await Promise.all([tele.load(), timeline.load()]);
}

function telemetrySection(ctx, base, dev) {
  const chosen = new Set(JSON.parse(sessionStorage.getItem("ecowatt.registers") || '["output_power","pv1_voltage","pv2_voltage"]'));
  const win = h("select", { id: "tele-window" }, WINDOWS.map((w, i) => h("option", { value: i, selected: i === 0 }, w.label)));
  const boxes = REGISTERS.map((r) => h("label", { class: "check" },
    h("input", { type: "checkbox", name: "register", value: r.name, checked: chosen.has(r.name) }),
    ` ${r.name.replace(/_/g, " ")} (${r.unit})`));
  const out = h("div", { id: "telemetry-plot", class: "plots", "aria-live": "polite", "aria-busy": "true" });
  const form = h("form", { class: "plot-controls", onsubmit: (e) => { e.preventDefault(); load(); } },
    h("fieldset", {}, h("legend", {}, "Registers"), h("div", { class: "checks" }, boxes)),
    h("div", { class: "row" }, h("label", { for: "tele-window" }, "Window"), win,
      h("button", { type: "submit" }, "Plot")));
  form.addEventListener("change", () => load());
  let missing = false;
  let last = 0;
  async function load() {
    if (missing) return;
    last = Date.now();
    const regs = boxes.map((b) => b.querySelector("input")).filter((i) => i.checked).map((i) => i.value);
    sessionStorage.setItem("ecowatt.registers", JSON.stringify(regs));
    if (!regs.length) { out.replaceChildren(h("p", { class: "muted" }, "Choose at least one register.")); return; }
    const to = new Date(), from = new Date(to.getTime() - WINDOWS[win.value].ms);
    out.setAttribute("aria-busy", "true");
    try {
      const doc = await get(`${base}/telemetry?from=${enc(from.toISOString())}&to=${enc(to.toISOString())}&registers=${enc(regs.join(","))}`);
      const series = doc.registers || doc.series || [];
      const total = series.reduce((n, s) => n + (s.points || []).length, 0);
      out.replaceChildren(...charts(series, from, to),
        h("p", { class: "muted", id: "telemetry-count", "data-points": total }, `${total} points`));
    } catch (e) {
      if (e.missing) missing = true;
      out.replaceChildren(unavailable("Telemetry", e));
    }
    out.setAttribute("aria-busy", "false");
  }
  // The shortest window follows the data closely; longer ones less often.
  const timer = setInterval(() => { if (win.value === "0" || Date.now() - last > 30000) load(); }, 5000);
  ctx.onCleanup(() => clearInterval(timer));
  return { el: section("Telemetry", "device-telemetry", form, out), load };
}

// lifecycleSection shows whether the device may connect (active,
// disabled, decommissioned: by whom and why) and, for an admin, disable,
// enable and decommission.
function lifecycleSection(ctx, base, id, current, changed) {
  const out = h("div", { id: "lifecycle-body" });
  const err = h("p", { id: "lifecycle-error", class: "error", role: "alert" });
  const act = async (method, path, body, done) => {
    err.textContent = "";
    try {
      const d = await call(method, base + path, body);
      ctx.toast(done, "ok");
      changed(d.device || d);
    } catch (e) {
      err.textContent = (e.missing ? "Not available on this server" : e.message) + ".";
    }
  };
  const reason = h("input", { id: "lifecycle-reason", type: "text", size: 16, placeholder: "stolen", autocomplete: "off" });
  const render = () => {
    const d = current();
    const st = d.state || "active";
    const parts = [h("p", { id: "lifecycle-state", "data-state": st }, badge(st, st === "active" ? "ok" : st === "disabled" ? "warn" : "bad"),
      d.state_reason ? ` — ${d.state_reason}` : "", d.state_by ? [" by ", h("b", {}, d.state_by)] : "",
      d.state_at ? ` ${fmtTime(d.state_at)}` : "")];
    if (!may(ctx.role, "admin")) {
      parts.push(needsRole("Disabling, enabling or decommissioning a device", "admin", ctx.role));
    } else if (st !== "decommissioned") {
      parts.push(h("div", { class: "inline-form" }, h("div", { class: "field" }, h("label", { for: "lifecycle-reason" }, "Reason"), reason)),
        h("div", { class: "actions" },
          st === "disabled"
            ? h("button", { type: "button", id: "dev-enable", onclick: () => act("POST", "/enable", { reason: reason.value.trim() }, `${id} enabled`) }, "Enable")
            : h("button", { type: "button", id: "dev-disable", onclick: () => act("POST", "/disable", { reason: reason.value.trim() }, `${id} disabled`) }, "Disable"),
          h("button", { type: "button", class: "danger", id: "dev-decommission", onclick: () => {
            if (!confirm(`Decommission ${id}? Its key is destroyed; only its history stays.`)) return;
            act("DELETE", "", undefined, `${id} decommissioned`);
          } }, "Decommission")), err);
    }
    out.replaceChildren(...parts);
  };
  render();
  return { el: section("Lifecycle", "device-lifecycle", out), render };
}

function timelineSection(ctx, base, id) {
  const kinds = ["all", "config", "command", "fota", "presence", "security"];
  const kind = h("select", { id: "timeline-kind" }, kinds.map((k) => h("option", { value: k }, k)));
  const list = h("ol", { class: "timeline", id: "timeline", "aria-live": "polite" });
  let events = [];
  const seen = new Set();
  const render = () => {
    const k = kind.value;
    const shown = events.filter((e) => k === "all" || e.kind === k).slice(0, 200);
    list.replaceChildren(...shown.map((e) => h("li", { class: "ev " + e.kind, "data-kind": e.kind },
      h("time", { datetime: e.at }, fmtTime(e.at)), " ", badge(e.kind, kindClass(e)), " ", summarize(e),
      e.by ? h("span", { class: "by muted" }, " by ", h("b", {}, e.by)) : null)));
    if (!shown.length) list.append(h("li", { class: "muted" }, "No events."));
  };
  kind.addEventListener("change", render);
  return {
    el: section("Audit timeline", "device-timeline",
      h("div", { class: "row" }, h("label", { for: "timeline-kind" }, "Show"), kind), list),
    async load() {
      try {
        const doc = await get(`${base}/events?n=200`);
        for (const e of doc.events || []) { if (e.id) seen.add(e.id); }
        events = (doc.events || []).concat(events.filter((e) => !e.id || !seen.has(e.id)));
        events.sort((a, b) => new Date(b.at) - new Date(a.at));
        render();
      } catch (e) {
        list.replaceChildren(h("li", {}, unavailable("Audit timeline", e)));
      }
    },
    add(ev) {
      if (ev.id && seen.has(ev.id)) return;
      if (ev.id) seen.add(ev.id);
      events.unshift(ev);
      render();
    },
  };
}

function kindClass(e) {
  const d = e.data || {};
  if (e.kind === "security") return "bad";
  if (e.kind === "presence") return d.online === false ? "muted" : "ok";
  return stateKind(d.state || d.status || (typeof d.result === "string" ? d.result : ""));
}

function fmtDuration(s) {
  s = Number(s);
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min";
  if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
}
