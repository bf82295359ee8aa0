// Maintenance silences of one machine (the incident service's /v1/silences): while a
// silence is active, new incidents for the machine are suppressed.

import {api} from '../api.js';
import {card, fmtTime, h, replace, table, when} from '../dom.js';
import {unavailable} from './incidents.js';

const DURATIONS = [[3600, '1 hour'], [4 * 3600, '4 hours'], [8 * 3600, '8 hours'], [24 * 3600, '24 hours']];

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

  async function end(id) {
    replace(message);
    try {
      await api(`/v1/silences/${encodeURIComponent(id)}`, {method: 'DELETE'});
    } catch (e) {
      replace(message, e.message);
    }
    await load();
  }

  add.addEventListener('click', async () => {
    replace(message);
    try {
      await api('/v1/silences', {method: 'POST', body: {
        device_id: device.device_id, duration_s: Number(duration.value), reason: reason.value.trim()}});
      reason.value = '';
    } catch (e) {
      replace(message, e.message);
    }
    await load();
  });

  return {node: card('Maintenance silence', body, form, message), load};
}
