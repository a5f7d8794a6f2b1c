// firmware.js: firmware upload, the versions with their manifests, and
// creating a rollout.

import { get, call, enc } from "./api.js";
import { h, section, fmtBytes, fmtTime, unavailable } from "./dom.js";

export async function firmwarePage(root, ctx) {
  root.append(h("div", { class: "page-head" }, h("h1", {}, "Firmware")));
  let list;
  try {
    list = await get("/api/v1/firmware");
  } catch (e) {
    root.append(section("Firmware versions", "fw-list", unavailable("Firmware", e)));
    return;
  }
  const tbody = h("tbody", {});
  const versionSel = h("select", { id: "ro-version", name: "version", required: true });
  const render = () => {
    const fws = list.firmware || list.versions || list.images || [];
    tbody.replaceChildren(...fws.map((f) => {
      const m = f.manifest || f;
      return h("tr", { "data-version": m.version },
        h("th", { scope: "row" }, m.version), h("td", { class: "num" }, fmtBytes(m.size)),
        h("td", { class: "num" }, (m.chunks || []).length || f.total_chunks || "—"),
        h("td", { class: "mono", title: m.hash }, (m.hash || "").slice(0, 16) + "…"),
        h("td", {}, fmtTime(f.uploaded_at || f.created_at)),
        h("td", {}, h("details", {}, h("summary", {}, "Manifest"), h("pre", { class: "manifest" }, JSON.stringify(m, null, 2)))));
    }));
    if (!fws.length) tbody.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No firmware uploaded yet.")));
    versionSel.replaceChildren(...fws.map((f) => h("option", { value: (f.manifest || f).version }, (f.manifest || f).version)));
  };
  const reload = async () => { list = await get("/api/v1/firmware"); render(); };

  const file = h("input", { id: "fw-file", name: "image", type: "file", required: true, accept: ".bin,.img,application/octet-stream" });
  const upErr = h("p", { id: "fw-error", class: "error", role: "alert" });
  const upStatus = h("p", { id: "fw-status", class: "muted", "aria-live": "polite" });
  const upload = h("form", { id: "fw-upload", class: "inline-form", onsubmit: async (e) => {
    e.preventDefault();
    upErr.textContent = "";
    const f = file.files[0];
    if (!f) { upErr.textContent = "Choose an image file."; file.focus(); return; }
    upStatus.textContent = `Uploading ${f.name} (${fmtBytes(f.size)})…`;
    try {
      const res = await call("POST", "/api/v1/firmware", f, { contentType: "application/octet-stream" });
      const m = res.manifest || res;
      upStatus.textContent = `Uploaded firmware ${m.version}.`;
      ctx.toast(upStatus.textContent, "ok");
      await reload();
      versionSel.value = m.version;
    } catch (ex) {
      upStatus.textContent = "";
      upErr.textContent = "Upload refused: " + (ex.field ? ex.field + ": " : "") + ex.message;
    }
  } },
  h("div", { class: "field" }, h("label", { for: "fw-file" }, "Firmware image"), file),
  h("div", { class: "actions" }, h("button", { type: "submit", class: "primary", id: "fw-send" }, "Upload and sign")), upErr, upStatus);

  const devices = h("input", { id: "ro-devices", name: "devices", type: "text", placeholder: "all devices", "aria-describedby": "ro-devices-help" });
  const batch = h("input", { id: "ro-batch", name: "batch_size", type: "number", min: 1, value: 10 });
  const failPct = h("input", { id: "ro-fail", name: "max_failure_pct", type: "number", min: 0, max: 100, value: 20, "aria-describedby": "ro-fail-help" });
  const roErr = h("p", { id: "ro-error", class: "error", role: "alert" });
  const rollout = h("form", { id: "ro-create", class: "inline-form", onsubmit: async (e) => {
    e.preventDefault();
    roErr.textContent = "";
    const doc = { version: versionSel.value, batch_size: Number(batch.value), max_failure_pct: Number(failPct.value) };
    const ids = devices.value.split(/[\s,]+/).filter(Boolean);
    if (ids.length) doc.devices = ids;
    try {
      const res = await call("POST", "/api/v1/rollouts", doc);
      const r = res.rollout || res;
      location.hash = "#/rollouts/" + enc(r.id);
    } catch (ex) {
      roErr.textContent = "Not started: " + (ex.field ? ex.field + ": " : "") + ex.message;
    }
  } },
  h("div", { class: "field" }, h("label", { for: "ro-version" }, "Version"), versionSel),
  h("div", { class: "field" }, h("label", { for: "ro-devices" }, "Devices"), devices,
    h("p", { id: "ro-devices-help", class: "help" }, "IDs separated by commas; empty for the whole fleet")),
  h("div", { class: "field" }, h("label", { for: "ro-batch" }, "Batch size"), batch),
  h("div", { class: "field" }, h("label", { for: "ro-fail" }, "Abort above failure %"), failPct,
    h("p", { id: "ro-fail-help", class: "help" }, "a batch with more failures than this pauses the rollout")),
  h("div", { class: "actions" }, h("button", { type: "submit", class: "primary", id: "ro-start" }, "Start rollout")), roErr);

  render();
  root.append(h("div", { class: "grid" }, section("Upload", "fw-upload-card", upload), section("Create a rollout", "fw-rollout", rollout)),
    section("Versions", "fw-versions", h("div", { class: "table-wrap" }, h("table", { class: "data", id: "fw-table" },
      h("thead", {}, h("tr", {}, ["Version", "Size", "Chunks", "SHA-256", "Uploaded", ""].map((c) => h("th", { scope: "col" }, c)))), tbody))));
}
