// model.js: reads the fields the dashboard shows out of API documents,
// tolerating the optional parts that a server may not have.

// deviceView flattens a device document for the fleet table.
export function deviceView(d) {
  const cfg = d.config || d.configState || {};
  const desired = num(d.desired_config_version ?? cfg.desired_version ?? cfg.desired?.version);
  const reported = num(cfg.reported?.version ?? d.config_version ?? cfg.reported_version);
  const drift = Array.isArray(cfg.drift) ? cfg.drift.length > 0
    : (d.config_drift ?? (desired !== null && reported !== null && desired > 0 && desired !== reported));
  const f = d.fota || {};
  return {
    id: d.id,
    labels: d.labels || {},
    online: !!d.online,
    firmware: d.firmware_version || "",
    reported, desired, drift: !!drift,
    pending: !!(cfg.pending ?? d.config_pending),
    fotaState: (f.active === false && f.result) ? f.result : (f.state || ""),
    fotaVersion: f.target || f.version || "",
    fotaPct: fotaPercent(f),
    lastSeen: d.last_seen || null,
    power: latestValue(d, "output_power"),
  };
}

// fotaPercent reads a FOTA status's progress as 0-100, or null.
export function fotaPercent(f) {
  if (!f) return null;
  if (f.result === "succeeded") return 100;
  if (typeof f.percent === "number") return f.percent;
  if (typeof f.progress === "number") return f.progress <= 1 && f.progress > 0 && !Number.isInteger(f.progress) ? f.progress * 100 : f.progress;
  if (f.total_chunks > 0) return (100 * (f.chunk_received || 0)) / f.total_chunks;
  if (f.state === "succeeded") return 100;
  return null;
}

// latestValues returns the device's latest telemetry values as
// [{name, value, unit, at}], from whichever field the server fills.
export function latestValues(d) {
  if (Array.isArray(d.latest)) return d.latest;
  const t = d.telemetry || d.latest || {};
  const vals = t.values || d.latest_values || [];
  if (Array.isArray(vals)) return vals;
  return Object.entries(vals).map(([name, v]) => (typeof v === "object" ? { name, ...v } : { name, value: v }));
}

export function latestValue(d, name) {
  const v = latestValues(d).find((x) => x.name === name);
  return v ? Number(v.value ?? v.v) : null;
}

function num(v) {
  return v === undefined || v === null || v === "" ? null : Number(v);
}

// summarize turns an audit event into one line of text.
export function summarize(ev) {
  const d = ev.data || {};
  const kv = (o, keys) => keys.filter((k) => o[k] !== undefined && o[k] !== null && o[k] !== "")
    .map((k) => `${k.replace(/_/g, " ")} ${typeof o[k] === "object" ? JSON.stringify(o[k]) : o[k]}`).join(", ");
  switch (ev.kind) {
    case "presence":
      return (d.online === false || d.state === "offline" ? "went offline" : "came online") +
        (d.reason ? ` (${d.reason})` : "") + (d.firmware_version ? `, firmware ${d.firmware_version}` : "");
    case "command": {
      const res = d.result ? ` → ${d.result.status}${d.result.value !== undefined ? " = " + d.result.value : ""}` : "";
      return `command ${d.id || d.command || ""} ${d.action || ""} ${d.state || d.status || ""}${res}${d.error ? ": " + (d.error.message || d.error) : ""}`.replace(/\s+/g, " ");
    }
    case "config": {
      if (d.ack || d.accepted || d.rejected) {
        const a = d.ack || d;
        const parts = [];
        if (a.accepted?.length) parts.push("accepted " + a.accepted.map((x) => x.parameter).join(", "));
        if (a.rejected?.length) parts.push("rejected " + a.rejected.map((x) => `${x.parameter} (${x.reason})`).join(", "));
        return `config v${a.version ?? d.version ?? "?"} acked: ${parts.join("; ") || "nothing changed"}`;
      }
      return `config ${d.status || d.event || d.type || "changed"}` + (d.version !== undefined ? ` v${d.version}` : "") +
        (d.changes?.length ? ": " + d.changes.map((c) => `${c.parameter} ${fmt(c.old)} → ${fmt(c.new)}`).join(", ") : "");
    }
    case "fota":
      return `FOTA ${kv(d, ["state", "version", "reason", "detail", "rollout"]) || JSON.stringify(d)}`;
    case "security":
      return `security: ${kv(d, ["reason", "detail"])}`;
  }
  return JSON.stringify(d);
}

function fmt(v) {
  return Array.isArray(v) ? v.join(",") : String(v);
}
