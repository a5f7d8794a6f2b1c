// plot.js: a small SVG line chart for telemetry, one chart per unit.

import { h, svg, fmtNum } from "./dom.js";

const W = 720, H = 220, L = 56, R = 12, T = 12, B = 28;
const COLOURS = ["#2563eb", "#d97706", "#059669", "#dc2626", "#7c3aed", "#0891b2", "#be185d", "#4d7c0f", "#9333ea", "#475569"];

// charts renders series ([{name, unit, points: [{t, v}]}]) between from and
// to (Dates) as one chart per unit, each with a legend naming its colours.
export function charts(series, from, to) {
  const byUnit = new Map();
  series.forEach((s, i) => {
    const u = s.unit || "";
    if (!byUnit.has(u)) byUnit.set(u, []);
    byUnit.get(u).push({ ...s, colour: COLOURS[i % COLOURS.length] });
  });
  const out = [];
  for (const [unit, ss] of byUnit) out.push(chart(unit, ss, from, to));
  return out;
}

function chart(unit, ss, from, to) {
  const t0 = from.getTime(), t1 = Math.max(to.getTime(), t0 + 1);
  let lo = Infinity, hi = -Infinity, n = 0;
  for (const s of ss) for (const p of s.points || []) { lo = Math.min(lo, p.v); hi = Math.max(hi, p.v); n++; }
  if (!n) { lo = 0; hi = 1; }
  if (lo === hi) { lo -= 1; hi += 1; }
  const pad = (hi - lo) * 0.08;
  lo -= pad; hi += pad;
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);

  const names = ss.map((s) => s.name).join(", ");
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "plot", role: "img",
    "aria-label": `${names} in ${unit || "raw units"}; ${n} points` });
  root.append(svg("title", {}, `${names} (${unit})`));
  const grid = svg("g", { class: "grid" });
  for (const v of ticks(lo, hi, 5)) {
    grid.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v) }),
      svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, fmtNum(v, 1)));
  }
  for (const t of timeTicks(t0, t1, 6)) {
    grid.append(svg("line", { x1: x(t), x2: x(t), y1: T, y2: H - B }),
      svg("text", { x: x(t), y: H - 8, "text-anchor": "middle" }, timeLabel(t, t1 - t0)));
  }
  grid.append(svg("text", { x: 8, y: T + 10, class: "unit" }, unit));
  root.append(grid);
  for (const s of ss) {
    const pts = (s.points || []).map((p) => [x(new Date(p.t).getTime()), y(p.v)]);
    if (pts.length === 1) {
      root.append(svg("circle", { cx: pts[0][0], cy: pts[0][1], r: 3, fill: s.colour }));
    } else if (pts.length > 1) {
      const d = pts.map((p, i) => (i ? "L" : "M") + p[0].toFixed(1) + " " + p[1].toFixed(1)).join("");
      root.append(svg("path", { d, fill: "none", stroke: s.colour, "stroke-width": 1.8, "stroke-linejoin": "round" }));
    }
  }
  const legend = h("ul", { class: "legend" }, ss.map((s) => {
    const last = (s.points || []).at(-1);
    const sw = h("span", { class: "swatch", "aria-hidden": "true" });
    sw.style.background = s.colour;
    return h("li", {}, sw, `${s.name}`, h("span", { class: "muted" },
      last ? ` ${fmtNum(last.v, 2)} ${unit}` : " no data"));
  }));
  return h("figure", { class: "chart" }, root, h("figcaption", {}, legend));
}

function ticks(lo, hi, n) {
  const step = nice((hi - lo) / n);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi; v += step) out.push(Math.abs(v) < step / 1e6 ? 0 : v);
  return out;
}

function nice(x) {
  const e = Math.pow(10, Math.floor(Math.log10(x)));
  const f = x / e;
  return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * e;
}

function timeTicks(t0, t1, n) {
  const steps = [1, 5, 10, 15, 30, 60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400].map((s) => s * 1000);
  const step = steps.find((s) => (t1 - t0) / s <= n) || 86400000;
  const out = [];
  for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) out.push(t);
  return out;
}

function timeLabel(t, span) {
  const d = new Date(t);
  const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: span < 600000 ? "2-digit" : undefined });
  return span > 86400000 ? d.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + hm : hm;
}
