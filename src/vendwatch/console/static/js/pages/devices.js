// Devices: search and filter the fleet; rows coloured by how recently each machine was heard.

import {api, qs} from '../api.js';
import {badge, devicePath, fmtNum, fmtUnit, h, replace, table, when, words} from '../dom.js';

const STATUSES = [['', 'Any status'], ['online', 'Online'], ['stale', 'Stale'], ['offline', 'Offline'],
  ['never', 'Never seen'], ['disabled', 'Disabled']];

const COLUMNS = [
  {label: 'Device', cell: (d) => h('a', {href: devicePath(d.device_id), class: 'device-link id'}, d.device_id)},
  {label: 'Site', cell: (d) => (d.site_id ? h('a', {href: `/console/devices${qs({site_id: d.site_id})}`, class: 'id'}, d.site_id) : '—')},
  {label: 'Status', cell: (d) => badge(d.connectivity), sort: (d) => ['offline', 'stale', 'never', 'online', 'disabled'].indexOf(d.connectivity)},
  // server time: when the collector last received anything from the machine
  {label: 'Last heard (server time)', cell: (d) => when(d.last_seen_at)},
  {label: 'Cabinet', class: 'num', cell: (d) => fmtUnit(d.cabinet_temp_c, '°C') || '—', sort: (d) => d.cabinet_temp_c},
  {label: 'Fridge', class: 'num', cell: (d) => fmtUnit(d.refrigeration_temp_c, '°C') || '—', sort: (d) => d.refrigeration_temp_c},
  {label: 'Faults', cell: (d) => (d.faults.length ? d.faults.map((f) => badge(words(f), 'fault')) : '—'), sort: (d) => -d.faults.length},
  {label: 'Stock', sort: (d) => -(d.slots_out * 1000 + d.slots_low), cell: (d) => [d.slots_out ? badge(`${d.slots_out} out`, 'out') : null,
    d.slots_low ? badge(`${d.slots_low} low`, 'low') : null, !d.slots_out && !d.slots_low ? '—' : null]},
  {label: 'Firmware', cell: (d) => d.firmware_version || '—'},
  {label: 'Model', cell: (d) => d.model || '—'},
];

export async function render(main, page) {
  const q = page.query;
  const filters = {
    q: q.get('q') || '', site_id: q.get('site_id') || '', status: q.get('status') || '',
    faulted: q.get('faulted') === '1',
  };
  const search = h('input', {type: 'search', name: 'q', value: filters.q, placeholder: 'id, serial, model, location', 'aria-label': 'Search'});
  const site = h('select', {name: 'site_id', 'aria-label': 'Site', id: 'site-filter'},
    h('option', {value: ''}, 'Any site'),
    filters.site_id ? h('option', {value: filters.site_id, selected: true}, filters.site_id) : null);
  const status = h('select', {name: 'status', 'aria-label': 'Status'},
    STATUSES.map(([v, label]) => h('option', {value: v, selected: v === filters.status}, label)));
  const faulted = h('input', {type: 'checkbox', name: 'faulted', checked: filters.faulted, id: 'faulted'});
  const form = h('form', {class: 'filters', id: 'device-filters'},
    search, site, status, h('label', {for: 'faulted', class: 'check'}, faulted, ' with active faults'),
    h('button', {type: 'submit', class: 'primary'}, 'Filter'),
    h('a', {href: '/console/devices', class: 'button'}, 'Clear'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    page.navigate(`/console/devices${qs({q: search.value.trim(), site_id: site.value, status: status.value, faulted: faulted.checked})}`);
  });
  const results = h('div');
  main.append(h('div', {class: 'page-head'}, h('h1', null, 'Devices'), h('span', {class: 'muted small'}, 'press / to search')), form, results);
  const focusSearch = (ev) => {
    if (ev.key === '/' && !['INPUT', 'SELECT', 'TEXTAREA'].includes(document.activeElement.tagName)) {
      ev.preventDefault();
      search.focus();
    }
  };
  document.addEventListener('keydown', focusSearch);
  page.onLeave(() => document.removeEventListener('keydown', focusSearch));

  // every site, so the filter is a choice, not a guess
  api('/v1/fleet/sites').then((body) => {
    if (!page.live()) return;
    replace(site, h('option', {value: ''}, 'Any site'), body.sites.map((x) => h('option',
      {value: x.site_id, selected: x.site_id === filters.site_id}, `${x.site_id} (${fmtNum(x.devices)})`)));
  }).catch(() => {});

  const after = q.get('after') || '';
  const knownTotal = q.get('total'); // counted on the first page, carried along by the pager
  async function refresh() {
    const body = await api(`/v1/fleet/devices${qs({...filters, after, limit: 100})}`);
    if (!page.live()) return;
    const total = body.total ?? (knownTotal === null ? null : Number(knownTotal));
    const n = body.devices.length;
    const countText = total === null || (total === n && !after)
      ? `${fmtNum(n)} device${n === 1 ? '' : 's'}${body.next ? ' on this page' : ''}`
      : `${fmtNum(n)} of ${fmtNum(total)} device${total === 1 ? '' : 's'}${after ? ' (a later page)' : ''}`;
    replace(results,
      h('p', {class: 'muted small', 'data-testid': 'device-count'}, countText,
        n > 1 ? h('span', null, ' · click a column header to sort this page') : null),
      table(COLUMNS, body.devices, {testid: 'devices', rowClass: (d) => `conn-${d.connectivity}`, empty: 'No device matches.'}),
      h('div', {class: 'pager'},
        after ? h('a', {href: `/console/devices${qs(filters)}`}, '← First page') : null,
        body.next ? h('a', {href: `/console/devices${qs({...filters, after: body.next, total: total ?? ''})}`}, 'Next page →') : null));
  }
  await page.every(refresh);
}
