// Devices: search and filter the fleet; rows coloured by how recently each machine was heard.

import {api, qs} from '../api.js';
import {badge, devicePath, fmtUnit, h, replace, table, when} from '../dom.js';

const STATUSES = [['', 'Any status'], ['online', 'Online'], ['stale', 'Stale'], ['offline', 'Offline'],
  ['never', 'Never seen'], ['disabled', 'Disabled']];

const COLUMNS = [
  {label: 'Device', cell: (d) => h('a', {href: devicePath(d.device_id), class: 'device-link'}, d.device_id)},
  {label: 'Site', cell: (d) => (d.site_id ? h('a', {href: `/console/devices${qs({site_id: d.site_id})}`}, d.site_id) : '—')},
  {label: 'Status', cell: (d) => badge(d.connectivity)},
  {label: 'Last seen', cell: (d) => when(d.last_seen_at)},
  {label: 'Cabinet', class: 'num', cell: (d) => fmtUnit(d.cabinet_temp_c, '°C') || '—'},
  {label: 'Fridge', class: 'num', cell: (d) => fmtUnit(d.refrigeration_temp_c, '°C') || '—'},
  {label: 'Faults', cell: (d) => (d.faults.length ? d.faults.map((f) => badge(f, 'fault')) : '—')},
  {label: 'Stock', cell: (d) => [d.slots_out ? badge(`${d.slots_out} out`, 'out') : null,
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
  const sites = h('datalist', {id: 'known-sites'});
  const site = h('input', {type: 'text', name: 'site_id', value: filters.site_id, placeholder: 'site id', 'aria-label': 'Site', list: 'known-sites'});
  const status = h('select', {name: 'status', 'aria-label': 'Status'},
    STATUSES.map(([v, label]) => h('option', {value: v, selected: v === filters.status}, label)));
  const faulted = h('input', {type: 'checkbox', name: 'faulted', checked: filters.faulted, id: 'faulted'});
  const form = h('form', {class: 'filters', id: 'device-filters'},
    search, site, sites, status, h('label', {for: 'faulted', class: 'check'}, faulted, ' with active faults'),
    h('button', {type: 'submit', class: 'primary'}, 'Filter'),
    h('a', {href: '/console/devices', class: 'button'}, 'Clear'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    page.navigate(`/console/devices${qs({q: search.value.trim(), site_id: site.value.trim(), status: status.value, faulted: faulted.checked})}`);
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

  // offer the busiest sites as suggestions (the overview ranks them; this is a hint only)
  api('/v1/stats').then((st) => replace(sites, st.sites.filter((x) => x.site_id).map((x) => h('option', {value: x.site_id})))).catch(() => {});

  const after = q.get('after') || '';
  async function refresh() {
    const body = await api(`/v1/fleet/devices${qs({...filters, after, limit: 100})}`);
    if (!page.live()) return;
    replace(results,
      h('p', {class: 'muted small', 'data-testid': 'device-count'},
        `${body.devices.length} device${body.devices.length === 1 ? '' : 's'}${body.next ? ' on this page' : ''}`),
      table(COLUMNS, body.devices, {testid: 'devices', rowClass: (d) => `conn-${d.connectivity}`, empty: 'No device matches.'}),
      h('div', {class: 'pager'},
        after ? h('a', {href: `/console/devices${qs(filters)}`}, '← First page') : null,
        body.next ? h('a', {href: `/console/devices${qs({...filters, after: body.next})}`}, 'Next page →') : null));
  }
  await page.every(refresh);
}
