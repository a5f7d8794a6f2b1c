// jobs.js: the job list with progress, one job's counts, its devices by
// state (the failed ones first) with reasons and pause, resume and cancel,
// and the form that starts a job (prefilled from the fleet page's filter).

import { get, call, enc, may } from "./api.js";
import { h, section, badge, progress, fmtTime, stateKind, unavailable, errorText, needsRole } from "./dom.js";

// DEVICE_STATES is the order of a job's per-device states (backend/jobs).
const DEVICE_STATES = ["queued", "in_progress", "succeeded", "failed", "skipped", "not_run", "abandoned"];
const FINAL = ["completed", "aborted", "cancelled", "expired"];

// settled reports that job j will not change any more: final, and the
// engine has closed it (its queued devices not_run, its parts in flight
// abandoned), which happens at the tick after a cancel.
const settled = (j) => FINAL.includes(j.state) && !j.counts?.queued && !j.counts?.in_progress;

// counts renders the non-zero per-state counts (all of them when none is).
function counts(c, id) {
  const shown = DEVICE_STATES.filter((k) => c?.[k]);
  return h("ul", { class: "counts", id, "aria-label": "Devices per state" },
    (shown.length ? shown : DEVICE_STATES).map((k) => h("li", { "data-state": k },
      badge(k.replace(/_/g, " "), stateKind(k)), " ", String(c?.[k] || 0))));
}

// target is a job's target in words.
function target(sp) {
  if (sp?.selector) return h("code", {}, sp.selector);
  return `${(sp?.devices || []).length} listed devices`;
}

export async function jobsPage(root, ctx) {
  const r = ctx.role;
  root.append(h("div", { class: "page-head" }, h("h1", {}, "Jobs"),
    may(r, "operator") ? h("a", { href: "#/jobs/new", class: "button primary", id: "job-new" }, "New job") : null));
  const body = h("div", {});
  root.append(body);
  let list = [];
  async function load() {
    try {
      list = (await get("/api/v1/jobs?limit=100")).jobs || [];
    } catch (e) {
      body.replaceChildren(section("Jobs", "job-list", unavailable("Jobs", e)));
      return;
    }
    body.replaceChildren(section("Jobs", "job-list", list.length ? h("div", { class: "table-wrap" }, h("table", { class: "data", id: "jobs-table" },
      h("thead", {}, h("tr", {}, ["Job", "Action", "Target", "State", "Progress", "Devices", "Created"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, list.map((j) => h("tr", { "data-job": j.id, "data-state": j.state },
        h("th", { scope: "row" }, h("a", { href: "#/jobs/" + enc(j.id) }, j.id)),
        h("td", {}, j.kind.replace(/_/g, " ")), h("td", {}, target(j.spec)),
        h("td", {}, badge(j.state, stateKind(j.state))),
        h("td", {}, progress(j.percent, `Progress of job ${j.id}`)),
        h("td", {}, counts(j.counts)),
        h("td", {}, fmtTime(j.created_at), j.created_by ? h("span", { class: "muted" }, ` by ${j.created_by}`) : null))))))
      : h("p", { class: "muted" }, "No jobs yet. Start one from the ", h("a", { href: "#/" }, "Fleet"), " page's filter.")));
  }
  const timer = setInterval(() => { if (list.some((j) => !settled(j))) load(); }, 2000);
  ctx.onCleanup(() => clearInterval(timer));
  await load();
}

export async function jobPage(root, ctx, jid) {
  const path = "/api/v1/jobs/" + enc(jid);
  const r = ctx.role;
  const head = h("div", { class: "page-head" });
  const body = h("div", {});
  const stateSel = h("select", { id: "job-dev-state" },
    DEVICE_STATES.map((s) => h("option", { value: s, selected: s === "failed" }, s.replace(/_/g, " "))));
  const devBody = h("tbody", {});
  const devInfo = h("p", { id: "job-dev-info", class: "muted", "aria-live": "polite" });
  const more = h("button", { type: "button", id: "job-dev-more", hidden: true, onclick: () => loadDevices(true) }, "More");
  root.append(head, body, section("Devices", "job-devices",
    h("div", { class: "filters" }, h("label", { for: "job-dev-state" }, "State"), stateSel, devInfo),
    h("div", { class: "table-wrap" }, h("table", { class: "data compact", id: "job-device-table" },
      h("thead", {}, h("tr", {}, ["Device", "State", "Reason", "Issued"].map((c) => h("th", { scope: "col" }, c)))), devBody)),
    more));
  let j, cursor = "";
  const ctl = (verb, label, allowed, cls) => may(r, "operator") ? h("button", { type: "button", class: cls || "", id: "job-" + verb,
    disabled: !allowed, onclick: async () => {
      if (verb === "cancel" && !confirm(`Cancel job ${j.id}? Devices not reached yet get nothing.`)) return;
      try { await call("POST", `${path}/${verb}`, {}); await load(); } catch (e) { ctx.toast(`${label} failed: ${e.message}`, "bad"); }
    } }, label) : null;
  function render() {
    head.replaceChildren(h("p", { class: "crumbs" }, h("a", { href: "#/jobs" }, "Jobs"), " / "),
      h("h1", {}, `Job ${j.id} `, badge(j.state, stateKind(j.state))));
    const sp = j.spec || {};
    const action = sp.config ? `config ${JSON.stringify(sp.config)}` : sp.command ? `command ${sp.command.action}`
      : sp.firmware ? `firmware ${sp.firmware.version}` : sp.rotate_key ? "key rotation" : j.kind;
    const live = !FINAL.includes(j.state);
    body.replaceChildren(section("Progress", "job-progress",
      h("p", {}, `${action} on `, target(sp), `, ${j.total} devices, at most ${sp.max_per_minute}/min`,
        j.created_by ? ` — created by ${j.created_by} ${fmtTime(j.created_at)}` : "",
        j.finished_at ? `, ended ${fmtTime(j.finished_at)}` : "", j.reason ? ` — ${j.reason}` : ""),
      h("div", { id: "job-overall" }, progress(j.percent, "Overall job progress")),
      counts(j.counts, "job-counts"),
      h("div", { class: "actions" },
        ctl("pause", "Pause", j.state === "running" || j.state === "scheduled"),
        ctl("resume", "Resume", j.state === "paused"),
        ctl("cancel", "Cancel", live, "danger"))));
  }
  async function load() {
    try {
      j = await get(path);
      render();
    } catch (e) {
      body.replaceChildren(unavailable("Job", e));
    }
  }
  // loadDevices shows the job's devices in the chosen state, a page at a
  // time (the cursor is the server's, bound to the job and state).
  let seq = 0;
  async function loadDevices(append) {
    const mine = ++seq;
    const q = new URLSearchParams({ state: stateSel.value, limit: "100" });
    if (append && cursor) q.set("cursor", cursor);
    let p;
    try { p = await get(`${path}/devices?${q}`); } catch (e) { devInfo.textContent = errorText(e); return; }
    if (mine !== seq) return;
    const rows = (p.devices || []).map((d) => h("tr", { "data-device": d.device, "data-state": d.state },
      h("th", { scope: "row" }, h("a", { href: "#/device/" + enc(d.device) }, d.device)),
      h("td", {}, badge(d.state.replace(/_/g, " "), stateKind(d.state))),
      h("td", { class: "reason" }, d.reason || "—"), h("td", {}, fmtTime(d.issued_at))));
    if (append) devBody.append(...rows); else devBody.replaceChildren(...rows);
    if (!devBody.children.length) devBody.append(h("tr", {}, h("td", { colspan: 4, class: "muted" }, `No device is ${stateSel.value.replace(/_/g, " ")}.`)));
    devInfo.textContent = `${p.total} ${stateSel.value.replace(/_/g, " ")}`;
    cursor = p.next_cursor || "";
    more.hidden = !cursor;
  }
  stateSel.addEventListener("change", () => { cursor = ""; loadDevices(false); });
  const timer = setInterval(async () => {
    if (j && settled(j)) return;
    await load();
    if (!cursor) loadDevices(false); // a first page only: do not lose what "More" added
  }, 2000);
  ctx.onCleanup(() => clearInterval(timer));
  await load();
  await loadDevices(false);
}

// newJobPage is the form that starts a job; selector prefills it (the
// fleet page's "Start job from this filter").
export async function newJobPage(root, ctx, selector) {
  const r = ctx.role;
  root.append(h("div", { class: "page-head" }, h("p", { class: "crumbs" }, h("a", { href: "#/jobs" }, "Jobs"), " / "), h("h1", {}, "New job")));
  if (!may(r, "operator")) {
    root.append(needsRole("Starting a job", "operator", r));
    return;
  }
  const sel = h("input", { id: "job-selector", type: "text", class: "selector", required: true, value: selector || "",
    spellcheck: "false", autocomplete: "off", placeholder: "site=colombo,online=true" });
  const kinds = [["config", "Set config"], ["command", "Send a command"], ["firmware", "Install firmware"]];
  if (may(r, "admin")) kinds.push(["rotate_key", "Rotate keys (admin)"]);
  const kind = h("select", { id: "job-kind" }, kinds.map(([v, l]) => h("option", { value: v }, l)));
  const arg = h("input", { id: "job-arg", type: "text", autocomplete: "off" });
  const argLabel = h("label", { for: "job-arg" });
  const hints = { config: ["Config fields (key=value, comma separated)", "sampling_interval=10"],
    command: ["Command action", "reboot"], firmware: ["Firmware version", "1.0.4"] };
  const syncKind = () => {
    const hnt = hints[kind.value];
    argLabel.parentElement.hidden = !hnt;
    if (hnt) { argLabel.textContent = hnt[0]; arg.placeholder = hnt[1]; }
  };
  const rate = h("input", { id: "job-rate", type: "number", min: 1, max: 100000, value: 600, required: true });
  const err = h("p", { id: "job-error", class: "error", role: "alert" });
  const form = h("form", { id: "job-form", class: "card", onsubmit: async (e) => {
    e.preventDefault();
    err.textContent = "";
    const spec = { selector: sel.value.trim(), max_per_minute: Number(rate.value) };
    const v = arg.value.trim();
    switch (kind.value) {
      case "config": {
        const cfg = {};
        for (const kv of v.split(",").map((s) => s.trim()).filter(Boolean)) {
          const [k, val] = kv.split("=");
          if (!k || val === undefined) { err.textContent = `"${kv}" is not key=value`; return; }
          cfg[k.trim()] = isFinite(Number(val)) && val.trim() !== "" ? Number(val) : val.trim();
        }
        spec.config = cfg;
        break;
      }
      case "command": spec.command = { action: v }; break;
      case "firmware": spec.firmware = { version: v }; break;
      case "rotate_key": spec.rotate_key = {}; break;
    }
    try {
      const j = await call("POST", "/api/v1/jobs", spec);
      location.hash = "#/jobs/" + enc(j.id);
    } catch (ex) {
      err.textContent = errorText(ex);
    }
  } },
  h("div", { class: "field" }, h("label", { for: "job-selector" }, "Selector"), sel),
  h("div", { class: "field" }, h("label", { for: "job-kind" }, "Action"), kind),
  h("div", { class: "field" }, argLabel, arg),
  h("div", { class: "field" }, h("label", { for: "job-rate" }, "At most per minute"), rate),
  err,
  h("div", { class: "actions" }, h("button", { type: "submit", class: "primary", id: "job-submit" }, "Start job")));
  kind.addEventListener("change", syncKind);
  root.append(form);
  syncKind();
}
