// firmware.js: firmware upload, the versions with their manifests, and
// creating a rollout.

import { get, call, enc, may } from "./api.js";
import { h, section, badge, fmtBytes, fmtTime, unavailable, needsRole } from "./dom.js";

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
    const fws = list.firmware || [];
    tbody.replaceChildren(...fws.map((f) => h("tr", { "data-version": f.version },
      h("th", { scope: "row" }, f.version, f.fail_boot ? [" ", badge("fails self-test", "warn")] : null),
      h("td", { class: "num" }, fmtBytes(f.size)),
      h("td", { class: "num" }, `${f.chunks ?? "—"} × ${fmtBytes(f.chunk_size)}`),
      h("td", { class: "mono", title: f.hash }, (f.hash || "").slice(0, 16) + "…"),
      h("td", {}, f.signed ? `by ${f.signed}` : "—"),
      h("td", {}, fmtTime(f.uploaded_at)),
      h("td", {}, h("button", { type: "button", class: "link", "aria-expanded": "false", onclick: (e) => manifest(e.target, f.version) }, "Manifest")))));
    if (!fws.length) tbody.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No firmware uploaded yet.")));
    const keep = versionSel.value;
    versionSel.replaceChildren(...fws.map((f) => h("option", { value: f.version, selected: f.version === keep }, f.version)));
  };
  // manifest shows a version's signed manifest under its row.
  const manifest = async (btn, version) => {
    const row = btn.closest("tr");
    if (row.nextElementSibling?.classList.contains("manifest-row")) {
      row.nextElementSibling.remove();
      btn.setAttribute("aria-expanded", "false");
      return;
    }
    try {
      const f = await get("/api/v1/firmware/" + enc(version));
      row.after(h("tr", { class: "manifest-row" }, h("td", { colspan: 7 },
        h("pre", { class: "manifest", tabindex: 0, "aria-label": `Manifest of ${version}` }, JSON.stringify(f.manifest || f, null, 2)))));
      btn.setAttribute("aria-expanded", "true");
    } catch (e) {
      ctx.toast("Manifest: " + e.message, "bad");
    }
  };
  const reload = async () => { list = await get("/api/v1/firmware"); render(); };

  const file = h("input", { id: "fw-file", name: "file", type: "file", required: true, accept: ".bin,.img,application/octet-stream" });
  const version = h("input", { id: "fw-version", name: "version", type: "text", required: true, size: 12, placeholder: "1.2.0",
    "aria-describedby": "fw-version-help" });
  const upErr = h("p", { id: "fw-error", class: "error", role: "alert" });
  const upStatus = h("p", { id: "fw-status", class: "muted", "aria-live": "polite" });
  const upload = h("form", { id: "fw-upload", class: "inline-form", onsubmit: async (e) => {
    e.preventDefault();
    upErr.textContent = "";
    const f = file.files[0];
    if (!f) { upErr.textContent = "Choose an image file."; file.focus(); return; }
    if (!version.value.trim()) { upErr.textContent = "Give the image's version."; version.focus(); return; }
    upStatus.textContent = `Uploading ${f.name} (${fmtBytes(f.size)})…`;
    const form = new FormData();
    form.append("version", version.value.trim());
    form.append("file", f);
    try {
      const m = await call("POST", "/api/v1/firmware", form);
      upStatus.textContent = `Uploaded firmware ${m.version}.`;
      ctx.toast(upStatus.textContent, "ok");
      await reload();
      versionSel.value = m.version;
    } catch (ex) {
      upStatus.textContent = "";
      upErr.textContent = "Upload refused: " + (ex.field ? ex.field + ": " : "") + ex.message;
    }
  } },
  h("div", { class: "field" }, h("label", { for: "fw-version" }, "Version"), version,
    h("p", { id: "fw-version-help", class: "help" }, "must match the version inside the image")),
  h("div", { class: "field" }, h("label", { for: "fw-file" }, "Firmware image"), file),
  h("div", { class: "actions" }, h("button", { type: "submit", class: "primary", id: "fw-send" }, "Upload")), upErr, upStatus);

  const devices = h("input", { id: "ro-devices", name: "devices", type: "text", placeholder: "all devices", "aria-describedby": "ro-devices-help" });
  const canary = h("input", { id: "ro-canary", name: "canary", type: "number", min: 0, value: 1, "aria-describedby": "ro-canary-help" });
  const batch = h("input", { id: "ro-batch", name: "batch_size", type: "number", min: 1, value: 50 });
  const failPct = h("input", { id: "ro-fail", name: "max_failure_percent", type: "number", min: 0, max: 100, value: 10, "aria-describedby": "ro-fail-help" });
  const roErr = h("p", { id: "ro-error", class: "error", role: "alert" });
  const rollout = h("form", { id: "ro-create", class: "inline-form", onsubmit: async (e) => {
    e.preventDefault();
    roErr.textContent = "";
    const ids = devices.value.split(/[\s,]+/).filter(Boolean);
    const doc = { version: versionSel.value, devices: ids.length ? ids : "all", canary: Number(canary.value),
      batch_size: Number(batch.value), max_failure_percent: Number(failPct.value) };
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
  h("div", { class: "field" }, h("label", { for: "ro-canary" }, "Canary devices"), canary,
    h("p", { id: "ro-canary-help", class: "help" }, "updated first, alone; 0 for none")),
  h("div", { class: "field" }, h("label", { for: "ro-batch" }, "Batch size"), batch),
  h("div", { class: "field" }, h("label", { for: "ro-fail" }, "Abort above failure %"), failPct,
    h("p", { id: "ro-fail-help", class: "help" }, "the rollout stops when more devices than this fail")),
  h("div", { class: "actions" }, h("button", { type: "submit", class: "primary", id: "ro-start" }, "Start rollout")), roErr);

  render();
  // Uploading is admin's (a new image can reach every device), starting a
  // rollout operator's; a viewer gets the notes instead of the forms.
  root.append(h("div", { class: "grid" },
    section("Upload", "fw-upload-card", may(ctx.role, "admin") ? upload : needsRole("Uploading firmware", "admin", ctx.role)),
    section("Create a rollout", "fw-rollout", may(ctx.role, "operator") ? rollout : needsRole("Starting a rollout", "operator", ctx.role))),
    section("Versions", "fw-versions", h("div", { class: "table-wrap" }, h("table", { class: "data", id: "fw-table" },
      h("thead", {}, h("tr", {}, ["Version", "Size", "Chunks", "SHA-256", "Signed", "Uploaded", ""].map((c) => h("th", { scope: "col" }, c)))), tbody))));
}
