// rollout.js: the rollout list and one rollout's progress, per batch and
// per device, with pause, resume and abort.

import { get, call, enc, may } from "./api.js";
import { h, section, badge, progress, fmtTime, stateKind, unavailable, debounce, needsRole } from "./dom.js";

export async function rolloutsPage(root, ctx) {
  root.append(h("div", { class: "page-head" }, h("h1", {}, "Rollouts")));
  let doc;
  try {
    doc = await get("/api/v1/rollouts");
  } catch (e) {
    root.append(section("Rollouts", "ro-list", unavailable("Rollouts", e)));
    return;
  }
  const ros = doc.rollouts || [];
  root.append(section("Rollouts", "ro-list", ros.length ? h("table", { class: "data", id: "rollouts-table" },
    h("thead", {}, h("tr", {}, ["Rollout", "Version", "State", "Progress", "Created"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, ros.map((r) => h("tr", {},
      h("th", { scope: "row" }, h("a", { href: "#/rollouts/" + enc(r.id) }, r.id)), h("td", {}, r.version),
      h("td", {}, badge(r.state, stateKind(r.state))), h("td", {}, progress(pct(r), `Progress of rollout ${r.id}`)),
      h("td", {}, fmtTime(r.created_at))))))
    : h("p", { class: "muted" }, "No rollouts yet.", may(ctx.role, "operator") ? [" Start one from the ", h("a", { href: "#/firmware" }, "Firmware"), " page."] : "")));
}

// FINISHED are the device states of a rollout that will not change.
const FINISHED = ["succeeded", "failed", "skipped", "cancelled"];

// pct reads the progress of a rollout or a batch as 0-100: the share of
// its devices in a finished state.
function pct(r) {
  if (typeof r.percent === "number") return r.percent;
  const c = r.counts || {};
  const total = r.total ?? r.size ?? Object.values(c).reduce((a, b) => a + b, 0);
  const done = FINISHED.reduce((n, k) => n + (c[k] || 0), 0);
  if (!total) return r.state === "completed" || r.state === "done" ? 100 : 0;
  return (100 * done) / total;
}

export async function rolloutPage(root, ctx, id) {
  const path = "/api/v1/rollouts/" + enc(id);
  const head = h("div", { class: "page-head" });
  const body = h("div", {});
  root.append(head, body);
  let r;
  const render = () => {
    head.replaceChildren(h("p", { class: "crumbs" }, h("a", { href: "#/rollouts" }, "Rollouts"), " / "),
      h("h1", {}, `Rollout ${r.id} `, badge(r.state, stateKind(r.state))));
    const counts = r.counts || {};
    const devices = r.devices || [];
    const batches = r.batches || [];
    const over = r.state === "completed" || r.state === "aborted";
    const ctl = (verb, label, cls) => h("button", { type: "button", class: cls || "", id: "ro-" + verb,
      disabled: over || (verb === "pause" && r.state === "paused") || (verb === "resume" && r.state !== "paused"), onclick: async () => {
      if (verb === "abort" && !confirm(`Abort rollout ${r.id}?`)) return;
      try { await call("POST", `${path}/${verb}`, {}); await load(); } catch (e) { ctx.toast(`${label} failed: ${e.message}`, "bad"); }
    } }, label);
    body.replaceChildren(
      section("Progress", "ro-progress",
        h("p", {}, `Firmware ${r.version} to ${r.total ?? "?"} devices in ${r.batch_count ?? "?"} batches`,
          r.created_at ? `, started ${fmtTime(r.created_at)}` : "",
          r.finished_at ? `, finished ${fmtTime(r.finished_at)}` : "",
          typeof r.failure_percent === "number" ? ` — failures ${r.failure_percent.toFixed(1)}% (limit ${r.max_failure_percent}%)` : "",
          r.reason ? ` — ${r.reason}` : ""),
        h("div", { id: "ro-overall" }, progress(pct(r), "Overall rollout progress")),
        h("ul", { class: "counts", "aria-label": "Devices per state" },
          Object.entries(counts).map(([k, v]) => h("li", { "data-state": k }, badge(k.replace(/_/g, " "), stateKind(k)), " ", String(v)))),
        may(ctx.role, "operator") ? h("div", { class: "actions" }, ctl("pause", "Pause"), ctl("resume", "Resume"), ctl("abort", "Abort", "danger"))
          : needsRole("Pausing, resuming or aborting a rollout", "operator", ctx.role)),
      batches.length ? section("Batches", "ro-batches", h("ol", { class: "batches" }, batches.map((b, i) =>
        h("li", { "data-batch": b.index ?? i }, h("span", {}, b.canary ? "Canary " : "Batch ", `${(b.index ?? i) + 1} `, badge(b.state || "", stateKind(b.state)),
          ` ${b.size ?? ""} devices `, h("span", { class: "muted" }, Object.entries(b.counts || {}).filter(([, v]) => v).map(([k, v]) => `${v} ${k}`).join(", "))),
          progress(pct(b), `Progress of batch ${(b.index ?? i) + 1}`))))) : null,
      section("Devices", "ro-devices-card", h("div", { class: "table-wrap" }, h("table", { class: "data compact", id: "ro-device-table" },
        h("thead", {}, h("tr", {}, ["Device", "Batch", "State", "Progress", "Detail"].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, devices.map((d) => h("tr", { "data-device": d.device || d.id },
          h("th", { scope: "row" }, h("a", { href: "#/device/" + enc(d.device || d.id) }, d.device || d.id)),
          h("td", {}, d.batch !== undefined ? d.batch + 1 : "—"), h("td", {}, badge((d.state || "").replace(/_/g, " "), stateKind(d.state))),
          h("td", {}, progress(d.state === "succeeded" ? 100 : d.percent ?? (d.total_chunks ? (100 * (d.chunk_received || 0)) / d.total_chunks : 0), `Progress of ${d.device || d.id}`)),
          h("td", {}, [d.fota_state && d.fota_state !== d.state ? d.fota_state.replace(/_/g, " ") : "", d.reason, d.detail].filter(Boolean).join(": ")))))))));
  };
  async function load() {
    try {
      const doc = await get(path);
      r = doc.rollout || doc;
      render();
    } catch (e) {
      body.replaceChildren(unavailable("Rollout", e));
    }
  }
  const later = debounce(load, 250);
  ctx.onCleanup(ctx.stream.on((ev) => { if (ev.kind === "fota") later(); }));
  const timer = setInterval(() => { if (!r || (r.state !== "completed" && r.state !== "aborted")) load(); }, 2000);
  ctx.onCleanup(() => clearInterval(timer));
  await load();
}
