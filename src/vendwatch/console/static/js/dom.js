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

// sort order per table (by testid), kept across the page's periodic refreshes
const sortState = new Map();

/** What a cell sorts by: its node's data-sort (times, numbers), else its number, else its text. */
function sortKey(cell) {
  const nodes = (Array.isArray(cell) ? cell.flat(Infinity) : [cell]).filter((x) => x !== null && x !== undefined && x !== false);
  for (const n of nodes) {
    if (!(n instanceof Element)) continue;
    const marked = n.dataset.sort !== undefined ? n : n.querySelector('[data-sort]');
    if (marked) {
      const v = marked.dataset.sort;
      return v === '' ? null : Number.isNaN(Number(v)) ? v : Number(v);
    }
  }
  const text = nodes.map((n) => (n instanceof Node ? n.textContent : String(n))).join(' ').trim();
  if (text === '' || text === '—' || text === '-') return null;
  const num = Number(text.replace(/,/g, '').replace(/\s*(°C|%|s|ms)$/, ''));
  return Number.isNaN(num) ? text.toLowerCase() : num;
}

function compare(a, b) {
  if (a === b) return 0;
  if (a === null) return 1; // empty cells last, whichever the direction
  if (b === null) return -1;
  if (typeof a === typeof b) return a < b ? -1 : 1;
  return typeof a === 'number' ? -1 : 1;
}

/**
 * A table from column specs {label, cell(row) -> node|text, class?, sort?} and rows.
 * Headers sort the rows shown (click again to reverse); a column sorts by sort(row)
 * when given, sort: false turns it off. The order survives refreshes (keyed by testid).
 */
export function table(columns, rows, {rowClass, empty = 'Nothing to show.', testid, sortable = true} = {}) {
  if (!rows.length) return h('p', {class: 'muted', 'data-testid': testid && `${testid}-empty`}, empty);
  const built = rows.map((r, n) => {
    const cells = columns.map((c) => c.cell(r));
    const keys = columns.map((c, i) => (typeof c.sort === 'function' ? c.sort(r) ?? null : sortKey(cells[i])));
    const tr = h('tr', {class: rowClass ? rowClass(r) : null}, cells.map((cell, i) => h('td', {class: columns[i].class}, cell)));
    return {tr, keys, n};
  });
  const tbody = h('tbody');
  const ths = [];
  const apply = () => {
    const st = sortState.get(testid || '') || null;
    const order = [...built];
    if (st && st.i < columns.length) {
      order.sort((a, b) => {
        const k = compare(a.keys[st.i], b.keys[st.i]);
        const c = a.keys[st.i] === null || b.keys[st.i] === null ? k : k * st.dir;
        return c || a.n - b.n;
      });
    }
    tbody.replaceChildren(...order.map((x) => x.tr));
    ths.forEach((th, i) => {
      if (!th.dataset.sortable) return;
      th.setAttribute('aria-sort', st && st.i === i ? (st.dir > 0 ? 'ascending' : 'descending') : 'none');
    });
  };
  const sortBy = (i) => {
    const st = sortState.get(testid || '');
    sortState.set(testid || '', {i, dir: st && st.i === i ? -st.dir : 1});
    apply();
  };
  columns.forEach((c, i) => {
    const can = sortable && c.sort !== false;
    ths.push(h('th', {class: c.class, scope: 'col', dataset: can ? {sortable: '1'} : null},
      can ? h('button', {type: 'button', class: 'sort', onclick: () => sortBy(i), title: `Sort by ${c.label}`}, c.label) : c.label));
  });
  const el = h('table', {class: 'grid', 'data-testid': testid}, h('thead', null, h('tr', null, ths)), tbody);
  apply();
  return el;
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
  if (epoch === null || epoch === undefined) return h('span', {class: 'muted', 'data-sort': ''}, 'never');
  return h('span', {class: 'when', title: fmtTime(epoch), 'data-sort': epoch, 'data-epoch': epoch}, fmtAgo(epoch));
}

/** A time as "2026-11-26 19:40:12 (3 min ago)": both, for where the exact moment matters. */
export function whenFull(epoch) {
  if (epoch === null || epoch === undefined) return h('span', {class: 'muted', 'data-sort': ''}, 'never');
  return h('span', {class: 'when', 'data-sort': epoch, 'data-epoch': epoch}, fmtTime(epoch), h('span', {class: 'muted'}, ` (${fmtAgo(epoch)})`));
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

/** A payload as readable "key: value" pairs (nested values compact), never a JSON blob. */
export function pairs(obj, max = 240) {
  if (obj === null || obj === undefined) return '';
  if (typeof obj !== 'object') return String(obj);
  const text = Object.entries(obj).filter(([, v]) => v !== null && v !== undefined && v !== '')
    .map(([k, v]) => `${k.replace(/_/g, ' ')}: ${typeof v === 'object' ? brief(v, 60) : v}`).join(' · ');
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/** A state code in words: "cooling_failure" -> "cooling failure". */
export function words(code) {
  return code === null || code === undefined ? '—' : String(code).replace(/_/g, ' ');
}

// ServiceNow incident states (the Table API's numeric codes) by name
const SNOW_STATES = {1: 'New', 2: 'In Progress', 3: 'On Hold', 6: 'Resolved', 7: 'Closed', 8: 'Canceled'};

export function snowState(code) {
  if (code === null || code === undefined || code === '') return '—';
  return SNOW_STATES[code] ? `${SNOW_STATES[code]} (${code})` : String(code);
}
