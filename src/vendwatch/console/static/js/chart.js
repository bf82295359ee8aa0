// Time charts as hand-written SVG: axes with times and values, lines or bars, threshold
// lines and event markers. No library: the console needs a handful of small charts, and
// ~200 lines of SVG keep the package free of third-party code under a strict CSP.
// Every value reaches the page through setAttribute/text nodes, never as markup.

import {fmtNum, h} from './dom.js';

const SVG = 'http://www.w3.org/2000/svg';
const W = 640;
const PAD = {l: 46, r: 12, t: 10, b: 24};

export function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== null && v !== undefined) el.setAttribute(k, String(v));
  for (const c of children) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

/** Round tick values covering [lo, hi] (about n of them). */
export function niceTicks(lo, hi, n = 4) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toFixed(10)));
  return out;
}

const pad2 = (n) => String(n).padStart(2, '0');

/** Local clock time for an axis: "14:05", with the date when the span crosses days. */
function timeLabel(t, withDate) {
  const d = new Date(t * 1000);
  const hm = `${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
  return withDate ? `${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${hm}` : hm;
}

function timeTicks(t0, t1) {
  const span = t1 - t0;
  const steps = [60, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400];
  const step = steps.find((s) => span / s <= 6) || 86400;
  const out = [];
  for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) out.push(t);
  return out;
}

/**
 * A time chart. series: [{label, cls, points: [[epoch s, value], ...], bars?}];
 * thresholds: [{value, label, cls}]; markers: [{t, label, cls}].
 * Returns a <figure> (or a "no data" note when there is nothing to draw).
 */
export function timeChart({series, thresholds = [], markers = [], unit = '', height = 180, testid, title, yMin, empty}) {
  const drawn = series.filter((s) => s.points.length);
  const pts = drawn.flatMap((s) => s.points);
  if (!pts.length) return h('p', {class: 'muted', 'data-testid': testid && `${testid}-empty`}, empty || 'No data yet.');
  let t0 = Math.min(...pts.map((p) => p[0]));
  let t1 = Math.max(...pts.map((p) => p[0]));
  const barW = drawn.some((s) => s.bars) ? Math.max(...drawn.filter((s) => s.bars).map((s) => s.step || 3600)) : 0;
  if (barW) t1 += barW;
  if (t1 - t0 < 60) { t0 -= 30; t1 += 30; }
  const vals = [...pts.map((p) => p[1]), ...thresholds.map((x) => x.value)];
  let v0 = yMin !== undefined ? Math.min(yMin, ...vals) : Math.min(...vals);
  let v1 = Math.max(...vals);
  if (drawn.some((s) => s.bars)) v0 = Math.min(0, v0);
  if (v1 - v0 < 1e-9) { v1 += 1; v0 -= v0 === 0 ? 0 : 1; }
  const span = v1 - v0;
  v1 += span * 0.08;
  if (v0 !== 0) v0 -= span * 0.05;
  const x = (t) => PAD.l + ((t - t0) / (t1 - t0)) * (W - PAD.l - PAD.r);
  const y = (v) => height - PAD.b - ((v - v0) / (v1 - v0)) * (height - PAD.t - PAD.b);
  const withDate = t1 - t0 > 86400;
  const parts = [];
  for (const v of niceTicks(v0, v1)) {
    parts.push(svg('line', {class: 'grid', x1: PAD.l, x2: W - PAD.r, y1: y(v), y2: y(v)}),
      svg('text', {class: 'tick', x: PAD.l - 4, y: y(v) + 3, 'text-anchor': 'end'}, fmtNum(v, Math.abs(v) < 10 && v % 1 ? 1 : 0)));
  }
  for (const t of timeTicks(t0, t1)) {
    parts.push(svg('line', {class: 'grid', x1: x(t), x2: x(t), y1: PAD.t, y2: height - PAD.b}),
      svg('text', {class: 'tick', x: x(t), y: height - 6, 'text-anchor': 'middle'}, timeLabel(t, withDate)));
  }
  parts.push(svg('line', {class: 'axis', x1: PAD.l, x2: PAD.l, y1: PAD.t, y2: height - PAD.b}),
    svg('line', {class: 'axis', x1: PAD.l, x2: W - PAD.r, y1: height - PAD.b, y2: height - PAD.b}));
  for (const th of thresholds) {
    parts.push(svg('g', {class: `threshold ${th.cls || ''}`, 'data-role': 'threshold'},
      svg('line', {x1: PAD.l, x2: W - PAD.r, y1: y(th.value), y2: y(th.value)}),
      svg('text', {x: W - PAD.r - 2, y: y(th.value) - 3, 'text-anchor': 'end'}, th.label)));
  }
  for (const m of markers) {
    if (m.t < t0 || m.t > t1) continue;
    parts.push(svg('g', {class: `marker ${m.cls || ''}`, 'data-role': 'marker'},
      svg('title', {}, `${m.label} at ${timeLabel(m.t, true)}`),
      svg('line', {x1: x(m.t), x2: x(m.t), y1: PAD.t, y2: height - PAD.b}),
      svg('text', {x: x(m.t) + 2, y: PAD.t + 8}, m.short || m.label[0])));
  }
  for (const s of drawn) {
    if (s.bars) {
      const bw = Math.max(1, x(t0 + (s.step || 3600)) - x(t0) - 1);
      parts.push(svg('g', {class: `bars ${s.cls}`, 'data-role': 'series'}, ...s.points.map(([t, v]) => svg('rect', {
        x: x(t), width: bw, y: Math.min(y(v), y(0)), height: Math.abs(y(0) - y(v))},
      svg('title', {}, `${timeLabel(t, true)}: ${fmtNum(v, 1)} ${unit}`)))));
    } else {
      parts.push(svg('polyline', {class: `line ${s.cls}`, fill: 'none', 'data-role': 'series',
        points: s.points.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(' ')}));
      if (s.points.length === 1) parts.push(svg('circle', {class: `dot ${s.cls}`, cx: x(s.points[0][0]), cy: y(s.points[0][1]), r: 3}));
    }
  }
  const chart = svg('svg', {viewBox: `0 0 ${W} ${height}`, class: 'chart', role: 'img', 'data-testid': testid},
    svg('title', {}, title || drawn.map((s) => s.label).join(', ')), ...parts);
  const legend = h('figcaption', {class: 'legend-row small'},
    drawn.map((s) => h('span', {class: `legend ${s.cls}`}, s.label)),
    thresholds.map((th) => h('span', {class: `legend legend-threshold ${th.cls || ''}`}, th.label)),
    markers.length ? h('span', {class: 'legend legend-marker'}, `${markers.length} marker${markers.length === 1 ? '' : 's'}: `
      + [...new Set(markers.map((m) => m.label))].slice(0, 4).join(', ')) : null,
    unit ? h('span', {class: 'muted'}, `(${unit}; times in your time zone)`) : h('span', {class: 'muted'}, '(times in your time zone)'));
  return h('figure', {class: 'chart-box'}, chart, legend);
}
