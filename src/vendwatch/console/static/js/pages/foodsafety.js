// Food-safety record: every episode a refrigerated machine spent above its limit, laid out
// to be printed and handed to an inspector (GET /v1/reports/food-safety).

import {api, download, qs} from '../api.js';
import {h, replace} from '../dom.js';

const COLUMNS = [
  ['Site', (r) => r.site_id || '—'],
  ['Machine', (r) => r.device_id],
  ['Limit', (r) => `${r.limit_c} °C`],
  ['Start (UTC)', (r) => r.start],
  ['End (UTC)', (r) => r.end || 'still above at last reading'],
  ['Minutes', (r) => String(r.duration_min)],
  ['Peak', (r) => `${r.peak_c} °C / ${r.peak_f} °F`],
  ['Door', (r) => r.door],
  ['After service visit', (r) => (r.after_service_visit ? `yes (${r.visit_at})` : 'no')],
  ['Incident / ticket', (r) => [r.incident_id, r.ticket].filter(Boolean).join(' / ') || 'none'],
  ['Sales during', (r) => String(r.sales_during)],
];

function rowsOf(res) {
  const cols = res.columns || [];
  return (res.rows || []).map((r) => (Array.isArray(r) ? Object.fromEntries(cols.map((c, i) => [c, r[i]])) : r));
}

export async function render(main, page) {
  const q = page.query;
  const params = {since: q.get('since') || '', until: q.get('until') || '', site: q.get('site') || ''};
  const since = h('input', {type: 'date', value: params.since, 'aria-label': 'From'});
  const until = h('input', {type: 'date', value: params.until, 'aria-label': 'To'});
  const site = h('input', {type: 'text', value: params.site, placeholder: 'all sites', 'aria-label': 'Site'});
  const form = h('form', {class: 'filters no-print'}, 'From ', since, ' to ', until, ' site ', site,
    h('button', {type: 'submit', class: 'primary'}, 'Show'),
    h('button', {type: 'button', onclick: () => window.print()}, 'Print'),
    h('button', {type: 'button', onclick: () => download(`/v1/reports/food-safety${qs({...params, format: 'csv'})}`,
      'food-safety.csv').catch((e) => replace(out, h('pre', {class: 'error'}, e.message)))}, 'CSV'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    page.navigate(`/console/food-safety${qs({since: since.value, until: until.value, site: site.value.trim()})}`);
  });
  const out = h('div', {id: 'food-safety-out'});
  const period = `${params.since || 'first record'} to ${params.until || 'today'}${params.site ? `, site ${params.site}` : ', all sites'}`;
  main.append(h('div', {class: 'page-head'}, h('h1', null, 'Food-safety temperature record')),
    h('p', {class: 'print-only'}, `Period: ${period}. Printed ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC.`),
    form, out);
  replace(out, h('p', {class: 'muted'}, 'Loading…'));
  const res = await api(`/v1/reports/food-safety${qs(params)}`);
  const rows = rowsOf(res);
  replace(out,
    h('p', null, rows.length
      ? `${rows.length} episode${rows.length === 1 ? '' : 's'} above the limit (5 °C / 41 °F unless set per machine), ${period}.`
      : `No episode above the limit, ${period}.`),
    h('table', {class: 'grid print-table', 'data-testid': 'food-safety'},
      h('thead', null, h('tr', null, COLUMNS.map(([label]) => h('th', null, label)))),
      h('tbody', null, rows.map((r) => h('tr', null, COLUMNS.map(([, cell]) => h('td', null, cell(r))))))),
    h('p', {class: 'muted small'}, 'An episode runs from the first reading above the limit to the first reading back at or below it; '
      + 'listed are the episodes that stayed above it for 15 minutes or more with the door closed (a door opened for loading warms the cabinet by design). "Sales during" counts vends while the products were above the limit.'));
}
