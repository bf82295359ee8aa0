// Read-only SQL over the lake (POST /v1/sql, served by vendwatch.lake when it runs).

import {api, ApiError, download} from '../api.js';
import {fmtNum, h, replace} from '../dom.js';

const EXAMPLE = 'SELECT device_id, count(*) AS events\nFROM raw.events\nGROUP BY device_id\nORDER BY events DESC\nLIMIT 20';
const DRAFT_KEY = 'vendwatch.sql-draft';

/** Render a query answer {columns, rows} (rows as arrays or objects) as a table. */
export function resultTable(res, testid = 'sql-result') {
  const rows = res.rows || [];
  const columns = res.columns || (rows.length && !Array.isArray(rows[0]) ? Object.keys(rows[0]) : []);
  const cell = (v) => {
    if (v === null || v === undefined) return h('span', {class: 'muted'}, 'NULL');
    return typeof v === 'object' ? JSON.stringify(v) : String(v);
  };
  const first = rows.length ? (Array.isArray(rows[0]) ? rows[0] : columns.map((c) => rows[0][c])) : [];
  return h('div', {class: 'scroll'}, h('table', {class: 'grid', 'data-testid': testid},
    h('thead', null, h('tr', null, columns.map((c, k) => h('th', {class: typeof first[k] === 'number' ? 'num' : null}, c)))),
    h('tbody', null, rows.map((r) => h('tr', null,
      (Array.isArray(r) ? r : columns.map((c) => r[c])).map((v) => h('td', {class: typeof v === 'number' ? 'num' : null}, cell(v))))))));
}

export function resultNote(res, ms) {
  const n = (res.rows || []).length;
  return h('p', {class: 'muted small'}, `${fmtNum(n)} row${n === 1 ? '' : 's'}`,
    res.truncated ? ' (truncated: add a LIMIT or narrow the query)' : '', ms === undefined ? '' : ` in ${fmtNum(ms)} ms`);
}

export async function render(main) {
  const editor = h('textarea', {id: 'sql', rows: 8, spellcheck: 'false', 'aria-label': 'SQL query'});
  editor.value = sessionStorage.getItem(DRAFT_KEY) || EXAMPLE;
  const out = h('div', {id: 'sql-out'});
  const run = h('button', {type: 'submit', class: 'primary', id: 'run-sql'}, 'Run (Ctrl+Enter)');
  const csv = h('button', {type: 'button', id: 'sql-csv'}, 'Download CSV');
  const form = h('form', {class: 'sql card'}, editor, h('div', {class: 'actions'}, run, csv,
    h('span', {class: 'muted small'}, ' Read-only: SELECT over the lake tables (raw.events, analytics.*); results are capped. Needs an operator token.')));
  main.append(h('div', {class: 'page-head'}, h('h1', null, 'SQL')), form, out);

  async function execute() {
    const sql = editor.value.trim();
    if (!sql) return;
    sessionStorage.setItem(DRAFT_KEY, editor.value);
    run.disabled = true;
    replace(out, h('p', {class: 'muted'}, 'Running…'));
    const t0 = performance.now();
    try {
      const res = await api('/v1/sql', {method: 'POST', body: {sql}});
      replace(out, resultNote(res, performance.now() - t0), resultTable(res));
    } catch (e) {
      replace(out, e instanceof ApiError && e.missing
        ? h('p', {class: 'notice', 'data-testid': 'sql-unavailable'}, 'SQL service not available: this vendwatch does not serve /v1/sql (the lake is not running).')
        : h('pre', {class: 'error', 'data-testid': 'sql-error'}, e.message));
    } finally {
      run.disabled = false;
    }
  }
  form.addEventListener('submit', (ev) => { ev.preventDefault(); execute(); });
  csv.addEventListener('click', () => {
    const sql = editor.value.trim();
    if (sql) download('/v1/sql', 'query.csv', {method: 'POST', body: {sql, format: 'csv'}}).catch((e) => replace(out, h('pre', {class: 'error'}, e.message)));
  });
  editor.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); execute(); }
  });
  editor.focus();
}
