// Pipeline: the NOC view of the platform itself. Per role: rate, lag (records and
// seconds), errors, restarts; latency per hop (p50/p99 over the last minutes); outbox,
// DLQ and circuit per delivery target; the last error lines. The figures come from the
// same metrics the Grafana pipeline dashboard queries (GET /v1/pipeline).

import {api} from '../api.js';
import {badge, card, fmtNum, h, replace, table} from '../dom.js';

const secs = (v) => {
  if (v === null || v === undefined) return '—';
  if (v < 1) return `${fmtNum(v * 1000, v < 0.01 ? 2 : 0)} ms`;
  if (v < 120) return `${fmtNum(v, 1)} s`;
  return `${fmtNum(v / 60, 1)} min`;
};
const rate = (v) => (v === null || v === undefined ? '—' : fmtNum(v, v < 10 ? 2 : 0));

const ROLE_COLUMNS = [
  {label: 'Role', cell: (r) => r.role},
  {label: 'Records / s', class: 'num', cell: (r) => rate(r.rate_per_s)},
  {label: 'Lag (records)', class: 'num', cell: (r) => (r.lag_records === null ? '—' : fmtNum(r.lag_records))},
  {label: 'Lag (time)', class: 'num', cell: (r) => (r.lag_seconds === null ? '—' : secs(r.lag_seconds))},
  {label: 'Errors', class: 'num', cell: (r) => (r.errors ? badge(fmtNum(r.errors), 'offline') : '0')},
  {label: 'Restarts', class: 'num', cell: (r) => (r.restarts ? badge(fmtNum(r.restarts), 'stale') : '0')},
];

const HOP_COLUMNS = [
  {label: 'Hop (into)', cell: (x) => x.hop},
  {label: 'Measured by', cell: (x) => x.role},
  {label: 'p50', class: 'num', cell: (x) => secs(x.p50_s)},
  {label: 'p99', class: 'num', cell: (x) => secs(x.p99_s)},
  {label: 'Event age p99', class: 'num', cell: (x) => secs(x.event_age_p99_s)},
  {label: 'Samples', class: 'num', cell: (x) => fmtNum(x.count)},
];

const CIRCUIT_KIND = {closed: 'online', 'half-open': 'stale', open: 'offline'};

const TARGET_COLUMNS = [
  {label: 'Target', cell: (t) => t.target},
  {label: 'Outbox', class: 'num', cell: (t) => fmtNum(t.outbox)},
  {label: 'DLQ', class: 'num', cell: (t) => (t.dlq ? badge(fmtNum(t.dlq), 'offline') : '0')},
  {label: 'Circuit', cell: (t) => badge(t.circuit, CIRCUIT_KIND[t.circuit] || null)},
  {label: 'Retries', class: 'num', cell: (t) => fmtNum(t.retries)},
  {label: 'Dead letters', class: 'num', cell: (t) => fmtNum(t.dead_letters)},
];

const ERROR_COLUMNS = [
  {label: 'Time', cell: (e) => e.ts},
  {label: 'Role', cell: (e) => e.role || '—'},
  {label: 'Logger', cell: (e) => e.logger},
  {label: 'Message', cell: (e) => h('span', {class: 'data'}, e.msg)},
];

export async function render(main, page) {
  const head = h('span', {class: 'muted small', 'data-testid': 'pipeline-window'});
  const roles = h('div');
  const hops = h('div');
  const targets = h('div');
  const ingest = h('p', {class: 'muted small'});
  const errors = h('div');
  main.append(
    h('div', {class: 'page-head'}, h('h1', null, 'Pipeline'), head),
    card('Roles', roles, ingest),
    card('Latency per hop', hops),
    card('Delivery targets', targets),
    card('Last errors', errors),
  );

  async function refresh() {
    const p = await api('/v1/pipeline');
    if (!page.live()) return;
    replace(head, `replica ${p.replica}, rates over the last ${fmtNum(p.window_s)} s`);
    replace(roles, table(ROLE_COLUMNS, p.roles, {testid: 'pipeline-roles'}));
    replace(ingest, `Collector: ${fmtNum(p.ingest.unavailable_503)} answered 503 (log unavailable),`
      + ` ${fmtNum(p.ingest.rate_limited_429)} answered 429 (rate limited) since start.`);
    replace(hops, table(HOP_COLUMNS, p.hops, {testid: 'pipeline-hops'}));
    replace(targets, table(TARGET_COLUMNS, p.targets, {testid: 'pipeline-targets', empty: 'No delivery target has been used yet.'}));
    replace(errors, table(ERROR_COLUMNS, p.last_errors, {testid: 'pipeline-errors', empty: 'No error logged since start.'}));
  }

  await page.every(refresh);
}
