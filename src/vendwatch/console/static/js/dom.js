// DOM building and formatting. Every value reaches the page as a text node or an
// attribute set through the DOM API, never as HTML: device ids, payloads and SQL
// results are attacker-controlled data.

/** Create an element: h('a', {href: '/console/', class: 'x', onclick: fn}, 'text', child, [more]). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      el.addEventListener(name.slice(2), value);
    } else if (name === 'href' || name === 'src') {
      // only this origin's paths: data can never become a javascript: or outside URL
      const v = String(value);
      if (!v.startsWith('/') || v.startsWith('//')) throw new Error(`refusing ${name}=${v}`);
      el.setAttribute(name, v);
    } else if (name === 'dataset') {
      Object.assign(el.dataset, value);
    } else {
      el.setAttribute(name, value === true ? '' : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replace the content of an element. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A table from column specs {label, cell(row) -> node|text, class?} and rows. */
export function table(columns, rows, {rowClass, empty = 'Nothing to show.', testid} = {}) {
  if (!rows.length) return h('p', {class: 'muted', 'data-testid': testid && `${testid}-empty`}, empty);
  return h('table', {class: 'grid', 'data-testid': testid},
    h('thead', null, h('tr', null, columns.map((c) => h('th', {class: c.class}, c.label)))),
    h('tbody', null, rows.map((r) => h('tr', {class: rowClass ? rowClass(r) : null},
      columns.map((c) => h('td', {class: c.class}, c.cell(r)))))));
}

/** Definition list from [label, value] pairs; pairs whose value is null/undefined are skipped. */
export function facts(pairs, testid) {
  const items = pairs.filter(([, v]) => v !== null && v !== undefined && v !== '');
  if (!items.length) return h('p', {class: 'muted'}, 'Not reported yet.');
  return h('dl', {class: 'facts', 'data-testid': testid},
    items.map(([k, v]) => [h('dt', null, k), h('dd', null, v)]));
}

export function badge(text, kind) {
  return h('span', {class: `badge badge-${kind || text}`}, text);
}

export function card(title, ...body) {
  return h('section', {class: 'card'}, h('h2', null, title), ...body);
}

/** A card spanning the whole row of a card grid. */
export function wideCard(title, ...body) {
  const c = card(title, ...body);
  c.classList.add('wide');
  return c;
}

/** Device page path; ids may contain "/" so the id is one encoded segment. */
export function devicePath(id) {
  return `/console/devices/${encodeURIComponent(id)}`;
}

const pad = (n) => String(n).padStart(2, '0');

/** Epoch seconds -> "2026-11-26 19:40:12" in the browser's time zone. */
export function fmtTime(epoch) {
  if (epoch === null || epoch === undefined) return '—';
  const d = new Date(epoch * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** Epoch seconds -> "42 s ago", "3 min ago", "5 h ago", "2 d ago". */
export function fmtAgo(epoch, now = Date.now() / 1000) {
  if (epoch === null || epoch === undefined) return 'never';
  const s = Math.max(0, now - epoch);
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

/** A time with its age as a tooltip-free two-part text. */
export function when(epoch) {
  if (epoch === null || epoch === undefined) return h('span', {class: 'muted'}, 'never');
  return h('span', {class: 'when', title: fmtTime(epoch)}, fmtAgo(epoch));
}

export function fmtNum(v, digits = 0) {
  if (v === null || v === undefined) return '—';
  return Number(v).toLocaleString('en-US', {maximumFractionDigits: digits, minimumFractionDigits: digits});
}

export function fmtUnit(v, unit, digits = 1) {
  return v === null || v === undefined ? null : `${fmtNum(v, digits)} ${unit}`;
}

export function fmtBool(v, yes, no) {
  return v === null || v === undefined ? null : (v ? yes : no);
}

/** Minor units + ISO currency -> "€1.50" using the currency's own decimals. */
export function fmtMoney(minor, currency) {
  if (minor === null || minor === undefined) return null;
  try {
    const f = new Intl.NumberFormat('en-US', {style: 'currency', currency});
    return f.format(minor / 10 ** f.resolvedOptions().maximumFractionDigits);
  } catch {
    return `${minor} ${currency} (minor units)`;
  }
}

/** Compact one-line JSON, shortened for table cells. */
export function brief(value, max = 160) {
  const s = JSON.stringify(value);
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

const SVG = 'http://www.w3.org/2000/svg';

function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

/** A small line chart: series [{label, cls, points: [[t, v], ...]}] on shared axes. */
export function sparkline(series, {width = 320, height = 70, unit = ''} = {}) {
  const pts = series.flatMap((s) => s.points);
  if (pts.length < 2) return null;
  const [t0, t1] = [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0]))];
  const [v0, v1] = [Math.min(...pts.map((p) => p[1])), Math.max(...pts.map((p) => p[1]))];
  const pad = 4;
  const x = (t) => pad + ((t - t0) / (t1 - t0 || 1)) * (width - 2 * pad);
  const y = (v) => height - pad - ((v - v0) / (v1 - v0 || 1)) * (height - 2 * pad);
  const chart = svg('svg', {viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: 'none', class: 'spark', role: 'img'},
    svg('title', {}, `${series.map((s) => s.label).join(', ')}: ${fmtNum(v0, 1)}–${fmtNum(v1, 1)} ${unit}`),
    ...series.filter((s) => s.points.length).map((s) => svg('polyline', {
      class: s.cls, fill: 'none', 'stroke-width': 1.5,
      points: s.points.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(' ')})));
  return h('figure', {class: 'spark-box'}, chart, h('figcaption', {class: 'muted small'},
    series.filter((s) => s.points.length).map((s) => h('span', {class: `legend ${s.cls}`}, s.label)),
    ` ${fmtNum(v0, 1)} to ${fmtNum(v1, 1)} ${unit} · ${fmtTime(t0)} – ${fmtTime(t1).slice(11)}`));
}
