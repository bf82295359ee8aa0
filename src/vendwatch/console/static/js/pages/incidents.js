// Incidents list, plus the incident widgets used by the overview and device pages.
// The incident API is a separate part (vendwatch.incidents); when it is not running the
// pages say so instead of failing.

import {api, ApiError, qs} from '../api.js';
import {badge, devicePath, fmtNum, h, replace, snowState, table, when, words} from '../dom.js';

export const SEVERITIES = ['critical', 'major', 'minor', 'warning', 'info']; // most severe first
const STATES = [['active', 'Open + acknowledged'], ['open', 'Open'], ['acknowledged', 'Acknowledged'],
  ['resolved', 'Resolved'], ['absorbed', 'Absorbed by a site incident'], ['all', 'All']];

const ACTIVE_CAP = 1000; // the API's largest page; counts above it are shown as "N+"

export const UNAVAILABLE = 'Incident service not available: this vendwatch does not serve /v1/incidents.';

/** The list of incidents in a GET /v1/incidents answer. */
export const incidentsOf = (body) => body.incidents;
export const incidentPath = (i) => `/console/incidents/${encodeURIComponent(i.incident_id)}`;

const rank = (i) => (SEVERITIES.includes(i.severity) ? SEVERITIES.indexOf(i.severity) : SEVERITIES.length);

/** Sort in place: most severe first, then the most recently active. */
export function bySeverity(list) {
  return list.sort((a, b) => rank(a) - rank(b) || b.last_seen_at - a.last_seen_at);
}

export function unavailable(e) {
  if (e instanceof ApiError && e.missing) return h('p', {class: 'notice', 'data-testid': 'incidents-unavailable'}, UNAVAILABLE);
  throw e;
}

export function statusBadge(status) {
  return badge(words(status), {open: 'offline', acknowledged: 'stale', resolved: 'online'}[status] || 'neutral');
}

export function severityBadge(sev) {
  return badge(sev || 'unknown', `sev-${sev}`);
}

export const COLUMNS = [
  {label: 'Severity', cell: (i) => severityBadge(i.severity), sort: (i) => rank(i)},
  {label: 'Incident', cell: (i) => h('a', {href: incidentPath(i)}, i.summary || i.incident_id)},
  {label: 'Status', cell: (i) => statusBadge(i.status)},
  {label: 'Rule', cell: (i) => h('span', {class: 'id'}, i.rule_id || '—')},
  {label: 'Device / site', cell: (i) => (i.device_id ? h('a', {href: devicePath(i.device_id), class: 'id'}, i.device_id) : i.site_id || '—')},
  // two clocks: when vendwatch opened it, and the device time of the newest signal
  {label: 'Opened (server time)', cell: (i) => when(i.opened_at)},
  {label: 'Last signal (device time)', cell: (i) => when(i.last_seen_at)},
  {label: 'Count', class: 'num', cell: (i) => fmtNum(i.occurrences), sort: (i) => i.occurrences},
];

/** Overview widget: active incidents counted by severity, newest few listed. */
export async function incidentSummary() {
  let list;
  try {
    list = incidentsOf(await api(`/v1/incidents${qs({status: 'active', limit: ACTIVE_CAP})}`));
  } catch (e) {
    return unavailable(e);
  }
  const counts = Object.fromEntries(SEVERITIES.map((s) => [s, 0]));
  for (const i of list) counts[i.severity] = (counts[i.severity] || 0) + 1;
  bySeverity(list);
  const capped = list.length >= ACTIVE_CAP;
  return h('div', null,
    await pausedDeliveries(),
    capped ? h('p', {class: 'notice'}, `More than ${ACTIVE_CAP} active incidents: counts cover the newest ${ACTIVE_CAP}.`) : null,
    h('div', {class: 'sev-counts', 'data-testid': 'incident-counts'},
      SEVERITIES.map((s) => h('a', {class: `sev-count sev-${s}`, href: `/console/incidents${qs({status: 'active', severity: s})}`},
        h('span', {class: 'kpi-value', 'data-testid': `incidents-${s}`}, fmtNum(counts[s])), h('span', null, s)))),
    table(COLUMNS.slice(0, 2).concat(COLUMNS[4], COLUMNS[6]), list.slice(0, 8), {empty: 'No open incident.'}),
    list.length > 8 ? h('a', {href: '/console/incidents'}, `All ${list.length} active incidents →`) : null);
}

/** A notice per outbound target whose deliveries are paused (e.g. ServiceNow refusing our credentials). */
async function pausedDeliveries() {
  let targets;
  try {
    targets = (await api('/v1/deliveries')).targets;
  } catch (e) {
    return null; // an older server without the endpoint: nothing to say
  }
  const paused = targets.filter((t) => t.paused);
  if (!paused.length) return null;
  return h('div', {'data-testid': 'deliveries-paused'}, paused.map((t) => h('p', {class: 'notice'},
    t.reason === 'credentials'
      ? `Deliveries to ${t.target} are paused: its credentials are refused (HTTP 401). ${fmtNum(t.queued)} waiting; vendwatch retries by itself and resumes once the credentials work.`
      : `Deliveries to ${t.target} are paused after repeated failures. ${fmtNum(t.queued)} waiting; vendwatch retries by itself.`)));
}

/** Device page widget: that machine's incidents. */
export async function deviceIncidents(deviceId) {
  try {
    const list = incidentsOf(await api(`/v1/incidents${qs({device_id: deviceId, limit: 20})}`));
    return table(COLUMNS.filter((c) => c.label !== 'Device / site'), list, {testid: 'device-incidents', empty: 'No incident for this machine.'});
  } catch (e) {
    return unavailable(e);
  }
}

export async function render(main, page) {
  const q = page.query;
  const filters = {status: q.has('status') ? q.get('status') : 'active', severity: q.get('severity') || '',
    device_id: q.get('device_id') || '', site_id: q.get('site_id') || ''};
  const order = q.get('order') === 'newest' ? 'newest' : 'severity';
  const orderSel = h('select', {'aria-label': 'Order'},
    h('option', {value: 'severity', selected: order === 'severity'}, 'Most severe first'),
    h('option', {value: 'newest', selected: order === 'newest'}, 'Newest first'));
  const status = h('select', {'aria-label': 'Status'}, STATES.map(([v, l]) => h('option', {value: v, selected: v === filters.status}, l)));
  const severity = h('select', {'aria-label': 'Severity'}, h('option', {value: ''}, 'Any severity'),
    SEVERITIES.map((s) => h('option', {value: s, selected: s === filters.severity}, s)));
  const device = h('input', {type: 'text', placeholder: 'device id', value: filters.device_id, 'aria-label': 'Device'});
  const site = h('input', {type: 'text', placeholder: 'site id', value: filters.site_id, 'aria-label': 'Site'});
  const form = h('form', {class: 'filters'}, status, severity, device, site, orderSel, h('button', {type: 'submit', class: 'primary'}, 'Filter'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    page.navigate(`/console/incidents${qs({status: status.value || 'all', severity: severity.value, device_id: device.value.trim(), site_id: site.value.trim(), order: orderSel.value === 'newest' ? 'newest' : ''})}`);
  });
  const results = h('div');
  const message = h('p', {role: 'status', 'data-testid': 'bulk-message'});
  const canAct = page.user && page.user.role !== 'viewer';
  const selected = new Set();
  const ackSelected = h('button', {type: 'button', id: 'ack-selected', disabled: true}, 'Acknowledge selected');
  const bulk = canAct ? h('div', {class: 'actions'}, ackSelected, message) : null;
  const syncBulk = () => {
    ackSelected.disabled = selected.size === 0;
    replace(ackSelected, selected.size ? `Acknowledge ${selected.size} selected` : 'Acknowledge selected');
  };
  main.append(h('div', {class: 'page-head'}, h('h1', null, 'Incidents')), form, bulk, results);
  let refreshList = async () => {};
  ackSelected.addEventListener('click', async () => {
    const ids = [...selected];
    ackSelected.disabled = true;
    const failed = [];
    for (const id of ids) {
      try {
        await api(`/v1/incidents/${encodeURIComponent(id)}/ack`, {method: 'POST', body: {}});
      } catch (e) {
        failed.push(`${id}: ${e.message}`);
      }
    }
    selected.clear();
    replace(message, failed.length ? `Acknowledged ${ids.length - failed.length} of ${ids.length}; failed: ${failed.join('; ')}`
      : `Acknowledged ${ids.length} incident${ids.length === 1 ? '' : 's'}.`);
    message.className = failed.length ? 'error' : 'notice';
    syncBulk();
    await refreshList();
  });
  const pick = (i) => {
    if (i.status !== 'open') return '';
    const box = h('input', {type: 'checkbox', class: 'pick', 'aria-label': `Select ${i.incident_id}`, checked: selected.has(i.incident_id)});
    box.addEventListener('change', () => {
      if (box.checked) selected.add(i.incident_id);
      else selected.delete(i.incident_id);
      syncBulk();
    });
    return box;
  };
  refreshList = async () => {
    let node;
    try {
      const apiStatus = filters.status === 'all' ? '' : filters.status;
      const list = incidentsOf(await api(`/v1/incidents${qs({...filters, status: apiStatus, limit: 500})}`));
      if (order === 'severity') bySeverity(list); // the API answers newest first
      const refs = list.length ? await api(`/v1/fleet/incident-refs${qs({id: list.map((i) => i.incident_id)})}`).then((r) => r.refs, () => ({})) : {};
      const snow = {label: 'ServiceNow', cell: (i) => {
        const r = refs[i.incident_id];
        return r ? h('span', {class: 'id', title: snowState(r.state)}, r.number || r.ref_id, h('span', {class: 'muted small'}, ` ${snowState(r.state)}`)) : '—';
      }};
      for (const id of [...selected]) if (!list.some((i) => i.incident_id === id && i.status === 'open')) selected.delete(id);
      syncBulk();
      const cols = [...(canAct ? [{label: '', cell: pick, sort: false}] : []), ...COLUMNS, snow];
      node = [h('p', {class: 'muted small', 'data-testid': 'incident-count'},
        `${fmtNum(list.length)} incident${list.length === 1 ? '' : 's'}${list.length >= 500 ? ' (the newest 500)' : ''}`),
      table(cols, list, {testid: 'incidents', rowClass: (i) => `sev-row-${i.severity}`, empty: 'No incident matches.'})];
    } catch (e) {
      node = unavailable(e);
    }
    if (page.live()) replace(results, node);
  };
  await page.every(refreshList);
}
