// One incident: facts, timeline, severity history, external tickets, acknowledge / resolve.

import {api} from '../api.js';
import {badge, card, devicePath, facts, fmtNum, fmtTime, h, pairs, replace, snowState, table, whenFull, words} from '../dom.js';
import {severityBadge, statusBadge, unavailable} from './incidents.js';

const ACTIVE = ['open', 'acknowledged'];

export async function render(main, page) {
  const [id] = page.params;
  const head = h('div', {class: 'page-head'});
  const actions = h('div', {class: 'actions'});
  const message = h('p', {role: 'status', 'data-testid': 'action-message'});
  const body = h('div', {class: 'cards'});
  const timeline = h('div');
  main.append(head, actions, message, body, card('Timeline', timeline));
  const canAct = page.user && page.user.role !== 'viewer';
  const path = `/v1/incidents/${encodeURIComponent(id)}`;

  // only a resolve carries a note (the incident API records it in the timeline)
  const note = h('input', {type: 'text', id: 'resolve-note', placeholder: 'resolution note (optional)', 'aria-label': 'Resolution note', maxlength: 2000});

  async function act(verb) {
    const done = verb === 'ack' ? 'Acknowledged.' : 'Resolved.';
    try {
      const text = verb === 'resolve' ? note.value.trim() : '';
      await api(`${path}/${verb}`, {method: 'POST', body: text ? {note: text} : {}});
      if (verb === 'resolve') note.value = '';
      replace(message, done);
      message.className = 'notice';
    } catch (e) {
      replace(message, `Could not ${verb === 'ack' ? 'acknowledge' : 'resolve'}: ${e.message}`);
      message.className = 'error';
    }
    await refresh();
  }

  let shownStatus = null;
  async function refresh() {
    let inc;
    try {
      inc = await api(path);
    } catch (e) {
      if (e.status === 404 && e.code !== 'no_route') {
        replace(main, h('h1', null, 'Unknown incident'), h('p', null, `No incident ${id}. `, h('a', {href: '/console/incidents'}, 'Back to incidents.')));
        return;
      }
      replace(main, h('h1', null, 'Incident'), unavailable(e));
      return;
    }
    if (!page.live()) return;
    const i = inc;
    const status = i.status;
    replace(head, h('h1', null, i.summary || id), severityBadge(i.severity), statusBadge(status));
    const active = ACTIVE.includes(status);
    // rebuild the buttons only when the status changes, so a note being typed keeps focus
    if (status !== shownStatus) replace(actions,
      h('button', {type: 'button', class: 'primary', id: 'ack', disabled: !canAct || status !== 'open', onclick: () => act('ack')}, 'Acknowledge'),
      canAct && active ? note : null,
      h('button', {type: 'button', id: 'resolve', disabled: !canAct || !active, onclick: () => act('resolve')}, 'Resolve'),
      canAct ? null : h('span', {class: 'muted small'}, ' Acknowledge and resolve need an operator token.'));
    shownStatus = status;
    const refs = inc.external_refs || [];
    const sevHistory = inc.severity_history || [];
    replace(body,
      card('Incident', facts([
        ['Id', i.incident_id || id],
        ['Rule', i.rule_id],
        ['Dedupe key', i.dedupe_key],
        ['Scope', i.scope],
        ['Device', i.device_id && h('a', {href: devicePath(i.device_id)}, i.device_id)],
        ['Site', i.site_id],
        ['Opened (server time)', i.opened_at && whenFull(i.opened_at)],
        ['Last signal (device time)', i.last_seen_at && whenFull(i.last_seen_at)],
        ['Occurrences', i.occurrences !== undefined ? fmtNum(i.occurrences) : null],
        ['Reopened', i.reopen_count ? `${i.reopen_count} times` : null],
        ['Acknowledged', i.acknowledged_at && [fmtTime(i.acknowledged_at), ' by ', i.acknowledged_by || '?']],
        ['Resolved', i.resolved_at && [fmtTime(i.resolved_at), ' by ', i.resolved_by || '?']],
        ['Resolves at', i.resolve_due_at && fmtTime(i.resolve_due_at)],
        ['Parent', i.parent_id && h('a', {href: `/console/incidents/${encodeURIComponent(i.parent_id)}`}, i.parent_id)],
      ], 'incident')),
      card('Severity history', table([
        {label: 'At', cell: (s) => fmtTime(s.at)},
        {label: 'From', cell: (s) => (s.from ? severityBadge(s.from) : '—')},
        {label: 'To', cell: (s) => severityBadge(s.to)},
        {label: 'By', cell: (s) => s.actor || '—'},
      ], sevHistory, {empty: 'Severity never changed.'})),
      card('External tickets', table([
        {label: 'System', cell: (r) => r.system},
        {label: 'Number', cell: (r) => r.number || r.ref_id},
        {label: 'State', cell: (r) => r.state_name || snowState(r.state)},
        {label: 'Link', class: 'data', cell: (r) => r.url || '—'},
      ], refs, {empty: 'Not sent to any external system.'})));
    replace(timeline, table([
      {label: 'At (server time)', cell: (e) => fmtTime(e.at), sort: (e) => e.at},
      {label: 'What', cell: (e) => badge(words(e.kind), 'neutral')},
      {label: 'Who', cell: (e) => e.actor || '—'},
      {label: 'Detail', class: 'data', cell: (e) => [e.note || '', e.detail && Object.keys(e.detail).length ? ` ${pairs(e.detail)}` : '']},
    ], inc.timeline || [], {testid: 'timeline', empty: 'No timeline entry.'}));
  }
  await page.every(refresh);
}
