// Fleet overview: connectivity counts, rates, open incidents, worst sites, faulted machines.

import {api, qs} from '../api.js';
import {badge, card, devicePath, fmtNum, fmtTime, h, replace, table, when} from '../dom.js';
import {timeChart} from '../chart.js';
import {fleetMap} from '../map.js';
import {incidentSummary} from './incidents.js';

const KPIS = [
  ['devices', 'Devices', null],
  ['online', 'Online', 'online'],
  ['stale', 'Stale', 'stale'],
  ['offline', 'Offline', 'offline'],
  ['never', 'Never seen', 'never'],
  ['disabled', 'Disabled', 'disabled'],
];

function kpi(id, label, value, {href, kind, note} = {}) {
  const body = [h('div', {class: 'kpi-label'}, label), h('div', {class: 'kpi-value', 'data-testid': `kpi-${id}`}, value),
    note ? h('div', {class: 'kpi-note'}, note) : null];
  const cls = `kpi${kind ? ` kpi-${kind}` : ''}`;
  return href ? h('a', {class: cls, href}, body) : h('div', {class: cls}, body);
}

const measured = (v) => v !== null && v !== undefined;
const rate = (v) => (measured(v) ? fmtNum(v, v < 10 ? 2 : 0) : '…');

function siteLink(site, status) {
  return `/console/devices${qs({site_id: site.site_id, status})}`;
}

const SITE_COLUMNS = [
  {label: 'Site', cell: (s) => (s.site_id ? h('a', {href: siteLink(s)}, s.site_id) : h('span', {class: 'muted'}, '(no site)'))},
  {label: 'Devices', class: 'num', cell: (s) => fmtNum(s.devices)},
  ...['online', 'stale', 'offline', 'never'].map((c) => ({
    label: c === 'never' ? 'Never seen' : c[0].toUpperCase() + c.slice(1),
    class: `num cnt-${c}`,
    cell: (s) => (s[c] && s.site_id ? h('a', {href: siteLink(s, c)}, fmtNum(s[c])) : fmtNum(s[c])),
  })),
  {label: 'Last heard (server time)', cell: (s) => when(s.last_seen_at)},
  {label: 'Events', class: 'num', cell: (s) => fmtNum(s.events)},
];

async function activityCharts() {
  const hist = await api('/v1/stats/history');
  const events = timeChart({
    series: [{label: 'events / s', cls: 's-events', points: hist.events.map(([t, v]) => [t, v])},
      {label: 'rejected / s', cls: 's-rejected', points: hist.events.filter(([, , r]) => r > 0).map(([t, , r]) => [t, r])}],
    unit: 'events per second', yMin: 0, testid: 'chart-events', height: 160,
    empty: `Measuring: a sample every ${hist.every_s} s, the first points appear within a minute.`});
  const incidents = timeChart({
    series: [{label: 'incidents opened per hour', cls: 's-incidents', bars: true, step: 3600, points: hist.incidents_opened}],
    unit: 'incidents', testid: 'chart-incidents', height: 160, empty: 'No incident data.'});
  return [h('h3', null, 'Events per second (sampled by this server, last hour)'), events,
    h('h3', null, 'Incidents opened per hour (server time, last 24 h)'), incidents];
}

async function mapView() {
  return fleetMap(await api('/v1/fleet/map'));
}

export async function render(main, page) {
  const stamp = h('span', {class: 'muted small', 'data-testid': 'updated'});
  const kpis = h('div', {class: 'kpis', 'data-testid': 'kpis'});
  const legend = h('p', {class: 'muted small legend-line'});
  const flow = h('div', {class: 'kpis kpis-flow'});
  const incidentsBox = h('div');
  const sites = h('div');
  const faulted = h('div');
  const stages = h('div');
  const charts = h('div', {'data-testid': 'activity'});
  const map = h('div');
  main.append(
    h('div', {class: 'page-head'}, h('h1', null, 'Fleet overview'), stamp),
    h('div', {class: 'kpi-row'}, kpis, flow),
    legend,
    h('div', {class: 'cols'},
      card('Open incidents', incidentsBox),
      card('Machines with active faults', faulted)),
    h('div', {class: 'cols'}, card('Activity', charts), card('Map (GPS positions, coloured by state)', map)),
    card('Sites (most problems first)', sites),
    card('Pipeline', stages),
  );

  async function refresh() {
    const [stats, faultedDevs] = await Promise.all([
      api('/v1/stats'),
      api(`/v1/fleet/devices${qs({faulted: true, limit: 10})}`),
    ]);
    if (!page.live()) return;
    const c = stats.connectivity;
    replace(kpis, KPIS.map(([id, label, kind]) => kpi(id, label, fmtNum(id === 'devices' ? stats.devices : c[id]),
      {kind, href: `/console/devices${qs({status: kind})}`})));
    replace(flow,
      kpi('events-per-s', 'Events / s', rate(stats.events_per_s), {note: measured(stats.events_per_s) ? `${fmtNum(stats.events_retained)} retained in the log` : 'measuring…'}),
      kpi('rejected-per-s', 'Rejected / s', rate(stats.rejected_per_s),
        {kind: stats.rejected_per_s > 0 ? 'stale' : null, note: `${fmtNum(stats.rejected_retained)} quarantined`}),
      kpi('sites', 'Sites', fmtNum(stats.sites_total)));
    replace(sites, table(SITE_COLUMNS, stats.sites, {testid: 'sites', empty: 'No devices registered yet.'}),
      stats.sites_total > stats.sites.length ? h('p', {class: 'muted small'}, `Showing ${stats.sites.length} of ${stats.sites_total} sites.`) : null);
    replace(faulted, table([
      {label: 'Device', cell: (d) => h('a', {href: devicePath(d.device_id)}, d.device_id)},
      {label: 'Site', cell: (d) => d.site_id || '—'},
      {label: 'Faults', cell: (d) => d.faults.map((f) => badge(f, 'fault'))},
      {label: 'Last seen', cell: (d) => when(d.last_seen_at)},
    ], faultedDevs.devices, {testid: 'faulted', empty: 'No machine reports an active fault.'}),
    faultedDevs.next ? h('a', {href: `/console/devices${qs({faulted: true})}`}, 'All faulted machines →') : null);
    replace(stages, table([
      {label: 'Stage', cell: (s) => s.stage},
      {label: 'Behind the log (records)', class: 'num', cell: (s) => fmtNum(s.lag_records)},
    ], stats.stages, {empty: 'No checkpointed stage has run yet.'}));
    replace(incidentsBox, await incidentSummary());
    const [chartNodes, mapNode] = await Promise.all([activityCharts(), mapView()]);
    if (!page.live()) return;
    replace(charts, chartNodes);
    replace(map, mapNode);
    replace(stamp, `updated ${fmtTime(stats.generated_at)} (your time zone)`);
    const r = stats.rules;
    replace(legend, `Online: heard from within ${r.online_intervals} heartbeat intervals; stale: within ${r.stale_intervals}; `
      + `offline: longer (interval as registered, ${r.default_heartbeat_s} s otherwise).`);
    // the tab title tells a NOC wall what is wrong without looking at the page
    const down = c.offline + c.stale;
    document.title = down ? `(${down} not reporting) vendwatch` : 'vendwatch console';
  }

  await page.every(refresh);
  // a rate needs two samples: take the second one soon instead of at the next refresh
  // (a failure here is reported by the periodic refresh that follows)
  setTimeout(() => { if (page.live()) refresh().catch(() => {}); }, 2000);
}
