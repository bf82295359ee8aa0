// Canned reports (GET /v1/reports lists them, GET /v1/reports/NAME runs one), from the lake.

import {api, ApiError} from '../api.js';
import {h, replace} from '../dom.js';
import {resultNote, resultTable} from './sql.js';

const UNAVAILABLE = 'Reports not available: this vendwatch does not serve /v1/reports (the lake is not running).';

/** Report names and descriptions from the list answer, whatever its exact shape. */
function reportsOf(body) {
  const list = Array.isArray(body) ? body : body.reports || [];
  return list.map((r) => (typeof r === 'string' ? {name: r} : r));
}

export async function render(main, page) {
  const list = h('div', {class: 'report-list'});
  const out = h('div', {id: 'report-out'});
  main.append(h('div', {class: 'page-head'}, h('h1', null, 'Reports')), list, out);
  let reports;
  try {
    reports = reportsOf(await api('/v1/reports'));
  } catch (e) {
    if (!(e instanceof ApiError && e.missing)) throw e;
    replace(list, h('p', {class: 'notice', 'data-testid': 'reports-unavailable'}, UNAVAILABLE));
    return;
  }
  const selected = page.query.get('name');
  replace(list, reports.length ? h('ul', null, reports.map((r) => h('li', {class: r.name === selected ? 'active' : null},
    h('a', {href: `/console/reports?name=${encodeURIComponent(r.name)}`}, r.title || r.name),
    r.description ? h('span', {class: 'muted'}, ` — ${r.description}`) : null))) : h('p', {class: 'muted'}, 'No report defined.'));
  if (!selected) return;
  replace(out, h('p', {class: 'muted'}, 'Running…'));
  const t0 = performance.now();
  try {
    const res = await api(`/v1/reports/${encodeURIComponent(selected)}`);
    replace(out, h('h2', null, selected), resultNote(res, performance.now() - t0), resultTable(res, 'report-result'));
  } catch (e) {
    replace(out, h('pre', {class: 'error'}, e.message));
  }
}
