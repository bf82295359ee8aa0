// Canned reports from the lake: GET /v1/reports lists them, GET /v1/reports/NAME runs one
// (optional since/until dates and limit; format=csv|parquet for a download).

import {api, ApiError, download, qs} from '../api.js';
import {card, h, replace, table} from '../dom.js';
import {resultNote, resultTable} from './sql.js';

const UNAVAILABLE = 'Reports not available: this vendwatch does not serve /v1/reports (the lake is not running).';

function reportPath(name, params = {}) {
  return `/v1/reports/${encodeURIComponent(name)}${qs(params)}`;
}

function downloads(name, params, onError) {
  const get = (fmt) => download(reportPath(name, {...params, format: fmt}), `${name}.${fmt}`).catch(onError);
  return [h('button', {type: 'button', onclick: () => get('csv')}, 'CSV'),
    h('button', {type: 'button', onclick: () => get('parquet')}, 'Parquet')];
}

export async function render(main, page) {
  const list = h('div', {class: 'report-list'});
  const out = h('div', {id: 'report-out'});
  main.append(h('div', {class: 'page-head'}, h('h1', null, 'Reports')), list, out);
  let reports;
  try {
    reports = (await api('/v1/reports')).reports;
  } catch (e) {
    if (!(e instanceof ApiError && e.missing)) throw e;
    replace(list, h('p', {class: 'notice', 'data-testid': 'reports-unavailable'}, UNAVAILABLE));
    return;
  }
  const q = page.query;
  const selected = q.get('name');
  const params = {since: q.get('since') || '', until: q.get('until') || ''};
  const failed = (e) => replace(out, h('pre', {class: 'error'}, e.message));
  replace(list, card('Available reports', table([
    {label: 'Report', cell: (r) => h('a', {href: `/console/reports${qs({name: r.name, ...params})}`}, r.title || r.name)},
    {label: 'Name', cell: (r) => h('code', null, r.name)},
    {label: 'Download', cell: (r) => downloads(r.name, params, failed)},
  ], reports, {testid: 'reports', rowClass: (r) => (r.name === selected ? 'selected' : null), empty: 'No report defined.'})));
  if (!selected) return;

  const since = h('input', {type: 'date', value: params.since, 'aria-label': 'Since'});
  const until = h('input', {type: 'date', value: params.until, 'aria-label': 'Until'});
  const form = h('form', {class: 'filters'}, h('strong', null, selected), ' from ', since, ' to ', until,
    h('button', {type: 'submit', class: 'primary'}, 'Run'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    page.navigate(`/console/reports${qs({name: selected, since: since.value, until: until.value})}`);
  });
  const result = h('div');
  replace(out, card('Result', form, result));
  replace(result, h('p', {class: 'muted'}, 'Running…'));
  const t0 = performance.now();
  try {
    const res = await api(reportPath(selected, params));
    replace(result, resultNote(res, performance.now() - t0), resultTable(res, 'report-result'));
  } catch (e) {
    replace(result, h('pre', {class: 'error'}, e.message));
  }
}
