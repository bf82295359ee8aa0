// Canned reports from the lake: GET /v1/reports lists them, GET /v1/reports/NAME runs one
// (optional since/until dates and limit; format=csv|parquet for a download).

import {api, ApiError, download, qs} from '../api.js';
import {card, fmtTime, h, replace, table, when} from '../dom.js';
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

const every = (s) => (s >= 120 ? `${Math.round(s / 60)} min` : `${s} s`);

/** When the analytics tables (what reports read) were last refreshed, and when next. */
async function freshness() {
  let body;
  try {
    body = await api('/v1/lake/jobs');
  } catch {
    return null; // an older server: no schedule to show
  }
  const etl = body.jobs.etl;
  if (!body.scheduled || !etl.interval_s) {
    return h('p', {class: 'notice', 'data-testid': 'etl-status'}, 'The analytics tables are not refreshed on a schedule by this server: '
      + 'run `vendwatch etl run` (or the lake-jobs role) to fill them.');
  }
  const parts = [`Analytics tables refresh every ${every(etl.interval_s)} (lake.etl_interval_s). `];
  if (etl.last_ok_at) parts.push('Last refreshed ', when(etl.last_ok_at), '. ');
  else parts.push('Not refreshed yet. ');
  if (etl.last_error) parts.push(h('span', {class: 'error'}, `Last run failed: ${etl.last_error}. `));
  if (etl.next_at) parts.push(`Next run at ${fmtTime(etl.next_at).slice(11)}.`);
  return h('p', {class: 'muted small', 'data-testid': 'etl-status'}, parts);
}

export async function render(main, page) {
  const list = h('div', {class: 'report-list'});
  const out = h('div', {id: 'report-out'});
  const fresh = h('div');
  main.append(h('div', {class: 'page-head'}, h('h1', null, 'Reports')), fresh, list, out);
  freshness().then((node) => { if (node && page.live()) replace(fresh, node); });
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
