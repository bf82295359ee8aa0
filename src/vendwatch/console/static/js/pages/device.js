// One machine: health, temperatures, firmware, connectivity, stock, faults, sales, events.

import {api, qs} from '../api.js';
import {
  badge, card, facts, pairs, wideCard, fmtBool, fmtMoney, fmtNum, fmtTime, fmtUnit, h, replace, table, when,
} from '../dom.js';
import {timeChart} from '../chart.js';
import {deviceIncidents} from './incidents.js';
import {silenceCard} from './silences.js';

const EVENT_TYPES = ['heartbeat', 'telemetry', 'transaction', 'refund', 'inventory', 'stock_alert', 'refill',
  'fault', 'security', 'config', 'connectivity', 'log'];

function sensor(v) {
  return v ? badge(v, v === 'ok' ? 'online' : v === 'degraded' ? 'stale' : 'offline') : null;
}

const TEMP_FIELDS = {cabinet_temp_c: ['cabinet', 's-cabinet'], refrigeration_temp_c: ['refrigeration', 's-fridge']};
const OPS = {gt: '>', ge: '≥', lt: '<', le: '≤'};

/** Points [[t, v]] in device-time order (the API answers in log order, which a batch or a
 * replayed backlog can mix up). */
const pointsOf = (events, fn) => events.map((e) => [e.occurred_at, fn(e)]).filter(([, v]) => typeof v === 'number')
  .sort((a, b) => a[0] - b[0]);

function markersOf(events) {
  return events.filter((e) => e.type === 'security' || e.type === 'refill').map((e) => (e.type === 'refill'
    ? {t: e.occurred_at, label: `service visit (refill ${e.data.phase || 'completed'})`, short: 'S', cls: 'm-service'}
    : {t: e.occurred_at, label: (e.data.kind || 'security').replace(/_/g, ' '), short: 'D', cls: 'm-door'}));
}

/** Temperatures with the rules' thresholds, door/security and service markers; sales and stock. */
function chartsCard(telemetry, others, thresholds) {
  const temps = timeChart({
    series: Object.entries(TEMP_FIELDS).map(([f, [label, cls]]) => ({label, cls, points: pointsOf(telemetry, (e) => e.data[f])})),
    thresholds: thresholds.filter((t) => TEMP_FIELDS[t.field]).map((t) => ({value: t.value, cls: `th-${t.severity || 'major'}`,
      label: `${TEMP_FIELDS[t.field][0]} ${OPS[t.op] || t.op} ${t.value} °C (${t.rule_id})`})),
    markers: markersOf(others), unit: '°C', testid: 'chart-temperature', height: 200,
    empty: 'No temperature reported recently.'});
  const sales = others.filter((e) => e.type === 'transaction' && e.data.payment_status === 'success' && e.data.vend_status === 'success');
  const perHour = new Map();
  for (const e of sales) {
    const hour = Math.floor(e.occurred_at / 3600) * 3600;
    perHour.set(hour, (perHour.get(hour) || 0) + 1);
  }
  const salesChart = timeChart({
    series: [{label: 'sales per hour', cls: 's-sales', bars: true, step: 3600, points: [...perHour.entries()].sort((a, b) => a[0] - b[0])}],
    unit: 'sales', testid: 'chart-sales', height: 140, empty: 'No sale in the recent events.'});
  const stock = timeChart({
    series: [{label: 'units in the machine', cls: 's-stock', points: pointsOf(others.filter((e) => e.type === 'inventory'),
      (e) => (e.data.slots || []).reduce((n, x) => n + (x.count || 0), 0))}],
    markers: markersOf(others).filter((m) => m.cls === 'm-service'), unit: 'units', testid: 'chart-stock', height: 140,
    empty: 'No inventory count in the recent events.'});
  return wideCard('Trends (device time, shown in your time zone)',
    h('div', {class: 'chart-cols'},
      h('div', null, h('h3', null, 'Temperatures'), temps),
      h('div', null, h('h3', null, 'Sales'), salesChart, h('h3', null, 'Stock'), stock)));
}

function healthCard(st) {
  const x = st.health || {};
  return card('Health',
    h('div', {class: 'temps'},
      h('div', {class: 'temp'}, h('div', {class: 'kpi-label'}, 'Cabinet'),
        h('div', {class: 'kpi-value', 'data-testid': 'cabinet-temp'}, fmtUnit(x.cabinet_temp_c, '°C') || '—')),
      h('div', {class: 'temp'}, h('div', {class: 'kpi-label'}, 'Refrigeration'),
        h('div', {class: 'kpi-value', 'data-testid': 'fridge-temp'}, fmtUnit(x.refrigeration_temp_c, '°C') || '—'))),
    facts([
      ['Power', fmtBool(x.power_on, 'on', badge('OFF', 'offline'))],
      ['Voltage', fmtUnit(x.voltage_v, 'V')],
      ['Door', fmtBool(x.door_open, badge('open', 'stale'), 'closed')],
      ['Motor', x.motor_status && badge(x.motor_status, x.motor_status === 'jammed' ? 'offline' : 'neutral')],
      ['Coin sensor', sensor(x.coin_sensor)],
      ['Bill validator', sensor(x.bill_validator)],
      ['Product sensor', sensor(x.product_sensor)],
      ['CPU', fmtUnit(x.cpu_pct, '%', 0)],
      ['Memory', fmtUnit(x.mem_pct, '%', 0)],
      ['Disk', fmtUnit(x.disk_pct, '%', 0)],
      ['Uptime', x.uptime_s === undefined ? null : `${fmtNum(x.uptime_s / 3600, 1)} h`],
      ['Reported', x.at && when(x.at)],
    ], 'health'));
}

function firmwareCard(st) {
  const fw = st.firmware || {};
  const flags = fw.feature_flags ? Object.entries(fw.feature_flags) : [];
  return card('Firmware & configuration', facts([
    ['Firmware', fw.firmware_version],
    ['Config version', fw.config_version],
    ['Update', fw.update_status && badge(fw.update_status, fw.update_status === 'failure' ? 'offline' : 'neutral')],
    ['Target version', fw.target_version],
    ['Last update', fw.last_update_at],
    ['Update error', fw.error],
    ['Feature flags', flags.length ? flags.map(([k, v]) => badge(`${k}: ${v ? 'on' : 'off'}`, 'neutral')) : null],
    ['Reported', fw.at && when(fw.at)],
  ], 'firmware'));
}

function connectivityCard(st) {
  const c = st.connectivity || {};
  return card('Connectivity', facts([
    ['Network', c.network],
    ['Signal', fmtUnit(c.signal_dbm, 'dBm', 0)],
    ['Latency', fmtUnit(c.latency_ms, 'ms', 0)],
    ['Location', c.location_id],
    ['GPS', c.gps ? `${fmtNum(c.gps.lat, 5)}, ${fmtNum(c.gps.lon, 5)}` : null],
    ['Reported', c.at && when(c.at)],
  ], 'connectivity'));
}

function stockCard(stock) {
  const low = stock.filter((s) => s.level === 'low').length;
  const out = stock.filter((s) => s.level === 'out').length;
  // a planogram: one tile per slot in slot order, coloured by level
  return wideCard('Stock',
    h('p', {class: 'small'}, `${stock.length} slots`, out ? [' · ', badge(`${out} out`, 'out')] : null,
      low ? [' · ', badge(`${low} low`, 'low')] : null,
      stock.length ? [' · updated ', when(Math.max(...stock.map((s) => s.at || 0)))] : null),
    stock.length ? h('div', {class: 'planogram', 'data-testid': 'stock'}, stock.map((s, i) => h('div', {
      class: `slot level-${s.level}${i && shelf(s.slot) !== shelf(stock[i - 1].slot) ? ' shelf-start' : ''}`,
      'data-slot': s.slot, title: `updated ${fmtTime(s.at)}`},
    h('div', {class: 'slot-head'}, h('strong', null, s.slot), badge(s.level, s.level === 'ok' ? 'online' : s.level)),
    h('div', {class: 'slot-product'}, s.product_id || '—'),
    h('div', {class: 'slot-count'}, s.count === undefined ? '—' : fmtNum(s.count),
      s.capacity === undefined ? '' : h('span', {class: 'muted'}, ` / ${fmtNum(s.capacity)}`)),
    fill(s)))) : h('p', {class: 'muted', 'data-testid': 'stock-empty'}, 'No inventory reported yet.'));
}

// the shelf of a slot is its letter prefix (A1..A6 are shelf A): each shelf starts a new row
const shelf = (slot) => (slot.match(/^[^0-9]*/) || [''])[0];

function fill(s) {
  if (s.count === undefined || !s.capacity) return null;
  const pct = Math.max(0, Math.min(100, Math.round((100 * s.count) / s.capacity)));
  // the meter turns amber at the slot's own low threshold
  const low = s.low_threshold === undefined ? 25 : (100 * s.low_threshold) / s.capacity + 0.5;
  return h('meter', {min: 0, max: 100, low, optimum: 100, value: pct, title: `${pct}%`}, `${pct}%`);
}

function faultsCard(st) {
  const faults = Object.entries(st.active_faults || {}).sort((a, b) => b[1] - a[1]);
  return card('Active faults', table([
    {label: 'Fault', cell: ([code]) => badge(code.replace(/_/g, ' '), 'fault')},
    {label: 'Since', cell: ([, at]) => [fmtTime(at), ' (', when(at), ')']},
  ], faults, {testid: 'faults', empty: 'No active fault.'}));
}

function salesCard(st) {
  const t = st.last_transaction;
  const sec = st.last_security;
  return card('Last transaction & security',
    t ? facts([
      ['Product', t.product_id],
      ['Slot', t.slot],
      ['Amount', fmtMoney(t.price_minor, t.currency)],
      ['Payment', `${t.payment_method} · ${t.payment_status}`],
      ['Vend', t.vend_status && badge(t.vend_status, t.vend_status === 'success' ? 'online' : 'offline')],
      ['Failure', t.failure_reason],
      ['At', when(t.at)],
    ], 'last-transaction') : h('p', {class: 'muted'}, 'No sale reported yet.'),
    sec ? h('div', {class: 'security'}, h('h3', null, 'Last security event'), facts([
      ['Kind', badge(sec.kind, 'offline')],
      ['Detail', sec.detail],
      ['Impact', sec.magnitude_g === undefined ? null : `${sec.magnitude_g} g`],
      ['At', when(sec.at)],
    ], 'last-security')) : null);
}

function eventsCard(page, deviceId) {
  const typeSel = h('select', {'aria-label': 'Event type'},
    h('option', {value: ''}, 'All types'), EVENT_TYPES.map((t) => h('option', {value: t}, t)));
  const body = h('div');
  const load = async (auto) => {
    // a periodic refresh must not collapse an event the operator opened
    if (auto === true && body.querySelector('details[open]')) return;
    const res = await api(`/v1/devices/${encodeURIComponent(deviceId)}/events${qs({limit: 50, type: typeSel.value})}`);
    if (!page.live()) return;
    replace(body,
      table([
        {label: 'Occurred (device time)', cell: (e) => fmtTime(e.occurred_at), sort: (e) => e.occurred_at},
        {label: 'Type', cell: (e) => [badge(e.type, 'neutral'), e.late ? badge('late', 'stale') : null]},
        {label: 'Data', class: 'data', cell: (e) => h('details', null, h('summary', null, pairs(e.data)),
          h('pre', null, JSON.stringify(e.data, null, 2)))},
        {label: 'Seq', class: 'num', cell: (e) => (e.seq === null || e.seq === undefined ? '' : String(e.seq))},
      ], res.events, {testid: 'events', empty: 'No recent event in the log.'}),
      h('p', {class: 'muted small'}, `Newest first; searched the last ${fmtNum(res.scanned)} records of partition ${res.partition}`,
        res.complete ? ' (the whole retained log).' : '. Older history is in the lake (SQL page).'));
  };
  typeSel.addEventListener('change', () => load(false));
  return {node: card('Recent events', h('div', {class: 'filters'}, typeSel), body), load};
}

export async function render(main, page) {
  const [deviceId] = page.params;
  const head = h('div', {class: 'page-head'});
  const grid = h('div', {class: 'cards'});
  const events = eventsCard(page, deviceId);
  const incidentsBox = h('div');
  const silenceBox = h('div');
  let silences = null; // built once the device's site is known
  main.append(head, grid, h('div', {class: 'cols'}, card('Incidents', incidentsBox), silenceBox), events.node);

  async function refresh() {
    const eventsOf = (types, limit) => api(`/v1/devices/${encodeURIComponent(deviceId)}/events${qs({type: types, limit})}`)
      .then((r) => r.events, () => []); // the trends are a nicety: the page stands without them
    const [d, telemetry, others, thresholds] = await Promise.all([
      api(`/v1/fleet/devices/${encodeURIComponent(deviceId)}`),
      eventsOf(['telemetry'], 200),
      eventsOf(['transaction', 'inventory', 'security', 'refill'], 200),
      api('/v1/fleet/thresholds').then((r) => r.thresholds, () => []),
    ]);
    if (!page.live()) return;
    const st = d.state || {};
    replace(head,
      h('h1', {'data-testid': 'device-id'}, d.device_id),
      badge(d.connectivity),
      d.status === 'disabled' ? badge('registry: disabled', 'disabled') : null,
      h('span', {class: 'muted'}, ' last heard ', when(d.last_seen_at), ' (server time)'));
    replace(grid,
      card('Machine', facts([
        ['Site', d.site_id && h('a', {href: `/console/devices?site_id=${encodeURIComponent(d.site_id)}`}, d.site_id)],
        ['Location', d.location],
        ['Model', d.model],
        ['Serial', d.serial],
        ['Heartbeat every', `${d.heartbeat_interval_s} s`],
        ['First heard (server time)', d.first_seen_at && fmtTime(d.first_seen_at)],
        ['Events received', fmtNum(d.events)],
        ['Last crash', st.last_crash_at && when(st.last_crash_at)],
        ['Last refill', st.last_refill_at && when(st.last_refill_at)],
      ], 'machine')),
      healthCard(st), chartsCard(telemetry, others, thresholds), firmwareCard(st), connectivityCard(st), faultsCard(st), salesCard(st), stockCard(d.stock));
    replace(incidentsBox, await deviceIncidents(deviceId));
    if (!silences) {
      silences = silenceCard(page, d);
      replace(silenceBox, silences.node);
    }
    await silences.load();
    await events.load(true);
  }
  try {
    await page.every(refresh);
  } catch (e) {
    if (e.status === 404 && e.code === 'not_found') {
      replace(main, h('h1', null, 'Unknown device'), h('p', null, `No registered device ${deviceId}. `,
        h('a', {href: '/console/devices'}, 'Back to the device list.')));
      return;
    }
    throw e;
  }
}
