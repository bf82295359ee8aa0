// Maintenance silences of one machine (the incident service's /v1/silences): while a
// silence is active, new incidents for the machine are suppressed.

import {api} from '../api.js';
import {card, devicePath, fmtTime, h, replace, table, when} from '../dom.js';
import {unavailable} from './incidents.js';

const DURATIONS = [[3600, '1 hour'], [4 * 3600, '4 hours'], [8 * 3600, '8 hours'], [24 * 3600, '24 hours']];

/** Call the silence API, show its error in message (if any), then reload the list. */
function mutate(message, load) {
  return async (path, options) => {
    replace(message);
    let ok = true;
    try {
      await api(path, options);
    } catch (e) {
      replace(message, e.message);
      ok = false;
    }
    await load();
    return ok;
  };
}

const endPath = (id) => `/v1/silences/${encodeURIComponent(id)}`;

/** The card, and a load() that (re)reads the silences that cover this device. */
export function silenceCard(page, device) {
  const body = h('div');
  const message = h('p', {class: 'error', role: 'alert'});
  const canAct = page.user && page.user.role !== 'viewer';
  const duration = h('select', {'aria-label': 'Silence duration', id: 'silence-duration'},
    DURATIONS.map(([s, label]) => h('option', {value: s}, label)));
  const reason = h('input', {type: 'text', id: 'silence-reason', placeholder: 'reason (e.g. refill visit)', maxlength: 500, 'aria-label': 'Reason'});
  const add = h('button', {type: 'button', id: 'silence-add'}, 'Silence this machine');
  const form = canAct ? h('div', {class: 'actions'}, duration, reason, add) : null;

  async function load() {
    let all;
    try {
      all = (await api('/v1/silences')).silences;
    } catch (e) {
      replace(body, unavailable(e));
      if (form) form.hidden = true;
      return;
    }
    if (!page.live()) return;
    const mine = all.filter((s) => s.active && (s.device_id === device.device_id
      || (!s.device_id && s.site_id && s.site_id === device.site_id)));
    replace(body, table([
      {label: 'Covers', cell: (s) => (s.device_id ? 'this machine' : `site ${s.site_id}`) + (s.rule_id ? ` · rule ${s.rule_id}` : '')},
      {label: 'Until', cell: (s) => fmtTime(s.expires_at)},
      {label: 'Reason', cell: (s) => s.reason || '—'},
      {label: 'By', cell: (s) => s.created_by},
      {label: 'Suppressed', class: 'num', cell: (s) => String(s.suppressed)},
      {label: '', cell: (s) => (canAct ? h('button', {type: 'button', class: 'end-silence', onclick: () => end(s.silence_id)}, 'End now') : '')},
    ], mine, {testid: 'silences', empty: 'No active silence: incidents for this machine are raised normally.'}),
    mine.length ? h('p', {class: 'muted small'}, 'Started ', when(mine[0].starts_at)) : null);
  }

  const call = mutate(message, load);
  const end = (id) => call(endPath(id), {method: 'DELETE'});

  add.addEventListener('click', async () => {
    if (await call('/v1/silences', {method: 'POST', body: {
      device_id: device.device_id, duration_s: Number(duration.value), reason: reason.value.trim()}})) reason.value = '';
  });

  return {node: card('Maintenance silence', body, form, message), load};
}

/** The /console/silences page: every silence (active first), ending one, silencing a site or machine. */
export async function render(main, page) {
  const canAct = page.user && page.user.role !== 'viewer';
  const body = h('div');
  const message = h('p', {role: 'alert', class: 'error'});
  const scope = h('select', {'aria-label': 'Scope', id: 'new-silence-scope'},
    h('option', {value: 'site_id'}, 'Site'), h('option', {value: 'device_id'}, 'Machine'));
  const target = h('input', {type: 'text', id: 'new-silence-target', placeholder: 'site or device id', 'aria-label': 'Site or device id', maxlength: 128});
  const duration = h('select', {'aria-label': 'Silence duration'}, DURATIONS.map(([s, label]) => h('option', {value: s}, label)));
  const reason = h('input', {type: 'text', placeholder: 'reason (e.g. site maintenance)', maxlength: 500, 'aria-label': 'Reason'});
  const add = h('button', {type: 'button', id: 'new-silence-add', class: 'primary'}, 'Add silence');
  main.append(h('div', {class: 'page-head'}, h('h1', null, 'Maintenance silences'),
    h('span', {class: 'muted small'}, 'While a silence is active, new incidents it covers are suppressed.')),
  canAct ? card('New silence', h('div', {class: 'actions'}, scope, target, duration, reason, add), message) : null,
  card('Silences', body));

  async function load() {
    let all;
    try {
      all = (await api('/v1/silences')).silences;
    } catch (e) {
      replace(body, unavailable(e));
      return;
    }
    if (!page.live()) return;
    all.sort((a, b) => Number(b.active) - Number(a.active) || b.expires_at - a.expires_at);
    const active = all.filter((s) => s.active).length;
    replace(body, h('p', {class: 'muted small', 'data-testid': 'silence-count'}, `${active} active of ${all.length} silences`),
      table([
        {label: 'State', cell: (s) => (s.active ? h('span', {class: 'badge badge-stale'}, 'active') : h('span', {class: 'badge badge-neutral'}, 'ended'))},
        {label: 'Covers', cell: (s) => [s.device_id ? ['machine ', h('a', {href: devicePath(s.device_id), class: 'id'}, s.device_id)] : s.site_id ? `site ${s.site_id}` : 'everything',
          s.rule_id ? ` · rule ${s.rule_id}` : '']},
        {label: 'From (server time)', cell: (s) => fmtTime(s.starts_at), sort: (s) => s.starts_at},
        {label: 'Until (server time)', cell: (s) => fmtTime(s.expires_at), sort: (s) => s.expires_at},
        {label: 'Reason', cell: (s) => s.reason || '—'},
        {label: 'By', cell: (s) => s.created_by},
        {label: 'Suppressed', class: 'num', cell: (s) => String(s.suppressed)},
        {label: '', sort: false, cell: (s) => (canAct && s.active ? h('button', {type: 'button', class: 'end-silence', onclick: () => end(s.silence_id)}, 'End now') : '')},
      ], all, {testid: 'all-silences', empty: 'No silence.'}));
  }

  const call = mutate(message, load);
  const end = (id) => call(endPath(id), {method: 'DELETE'});

  add.addEventListener('click', async () => {
    if (!target.value.trim()) {
      replace(message, 'Give the site or device id to silence.');
      return;
    }
    const body = {[scope.value]: target.value.trim(), duration_s: Number(duration.value), reason: reason.value.trim()};
    if (await call('/v1/silences', {method: 'POST', body})) {
      target.value = '';
      reason.value = '';
    }
  });
  await page.every(load);
}
