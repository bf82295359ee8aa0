// Console shell: client-side routing under /console/, sign-in, periodic refresh.

import {api, ApiError, clearToken, token} from './api.js';
import {h, replace} from './dom.js';
import * as device from './pages/device.js';
import * as devices from './pages/devices.js';
import * as foodsafety from './pages/foodsafety.js';
import * as incident from './pages/incident.js';
import * as incidents from './pages/incidents.js';
import * as login from './pages/login.js';
import * as overview from './pages/overview.js';
import * as reports from './pages/reports.js';
import * as silences from './pages/silences.js';
import * as sql from './pages/sql.js';

const REFRESH_MS = 10000;

// [path pattern, page module, nav section]
const ROUTES = [
  [/^\/console\/?$/, overview, 'overview'],
  [/^\/console\/devices\/?$/, devices, 'devices'],
  [/^\/console\/devices\/([^/]+)\/?$/, device, 'devices'],
  [/^\/console\/incidents\/?$/, incidents, 'incidents'],
  [/^\/console\/incidents\/([^/]+)\/?$/, incident, 'incidents'],
  [/^\/console\/silences\/?$/, silences, 'silences'],
  [/^\/console\/sql\/?$/, sql, 'sql'],
  [/^\/console\/reports\/?$/, reports, 'reports'],
  [/^\/console\/food-safety\/?$/, foodsafety, 'food-safety'],
  [/^\/console\/login\/?$/, login, null],
];

const main = document.getElementById('main');
let user = null; // {name, role} of the signed-in token
let current = null; // {timers: [], gen}
let generation = 0;

/** Go to a console path (adds a history entry unless replace is set). */
export function navigate(path, {replace: rep = false} = {}) {
  if (rep) history.replaceState(null, '', path);
  else history.pushState(null, '', path);
  render();
}

const banner = document.getElementById('banner');

function setBanner(text) {
  banner.hidden = !text;
  replace(banner, text || '');
}

function stopPage() {
  if (current) {
    current.timers.forEach((t) => clearInterval(t));
    current.cleanups.forEach((fn) => fn());
  }
  current = null;
}

async function ensureUser() {
  if (user) return user;
  if (!token()) return null;
  try {
    user = await api('/v1/whoami');
  } catch (e) {
    if (!(e instanceof ApiError) || e.status !== 401) throw e;
    user = null;
  }
  return user;
}

function showChrome(section) {
  const signedIn = Boolean(user);
  document.getElementById('nav').hidden = !signedIn;
  document.getElementById('who').hidden = !signedIn;
  if (signedIn) replace(document.getElementById('who-name'), `${user.name} (${user.role})`);
  for (const a of document.querySelectorAll('#nav a')) {
    a.classList.toggle('active', a.dataset.section === section);
  }
}

async function render() {
  stopPage();
  setBanner(null);
  const gen = ++generation;
  const path = location.pathname;
  const match = ROUTES.map(([re, mod, section]) => [path.match(re), mod, section]).find(([m]) => m);
  if (!match) {
    showChrome(null);
    replace(main, h('h1', null, 'Not found'), h('p', null, 'No console page here. ', h('a', {href: '/console/'}, 'Go to the overview.')));
    return;
  }
  const [m, mod, section] = match;
  let who;
  try {
    who = mod === login ? null : await ensureUser();
  } catch (e) {
    replace(main, h('p', {class: 'error'}, e.message));
    return;
  }
  if (gen !== generation) return; // the operator navigated on while the token was checked
  if (mod !== login && !who) {
    navigate(`/console/login?next=${encodeURIComponent(path + location.search)}`, {replace: true});
    return;
  }
  showChrome(section);
  const page = {
    params: m.slice(1).map((s) => decodeURIComponent(s)),
    query: new URLSearchParams(location.search),
    user,
    timers: [],
    cleanups: [],
    navigate,
    /** Run fn when the operator leaves this page (remove document-level listeners). */
    onLeave(fn) { this.cleanups.push(fn); },
    /** Run fn now and every REFRESH_MS while this page is shown and the tab visible. */
    every(fn) {
      const timer = setInterval(() => {
        if (document.hidden || gen !== generation) return;
        // keep the last good data on screen and say the refresh failed (server restarting, network)
        Promise.resolve().then(fn).then(() => setBanner(null), (e) => setBanner(`Refresh failed: ${e.message}`));
      }, REFRESH_MS);
      this.timers.push(timer);
      // a page that cannot load at all (unknown device) is not refreshed
      return Promise.resolve().then(fn).catch((e) => { clearInterval(timer); throw e; });
    },
    /** True while this page is still the one on screen (ignore late answers otherwise). */
    live: () => gen === generation,
    signedIn(who2) { user = who2; },
  };
  current = page;
  replace(main);
  try {
    await mod.render(main, page);
  } catch (e) {
    if (gen === generation) main.append(h('p', {class: 'error'}, `This page failed: ${e.message}`));
  }
}

document.addEventListener('click', (ev) => {
  const a = ev.target.closest('a[href]');
  if (!a || ev.defaultPrevented || ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.altKey) return;
  const href = a.getAttribute('href');
  if (!href.startsWith('/console') || href.startsWith('/console/static') || a.target) return;
  ev.preventDefault();
  navigate(href);
});

window.addEventListener('popstate', render);
window.addEventListener('vw:unauthorized', () => {
  user = null;
  if (!location.pathname.startsWith('/console/login')) {
    navigate(`/console/login?next=${encodeURIComponent(location.pathname + location.search)}`, {replace: true});
  }
});
document.getElementById('sign-out').addEventListener('click', () => {
  clearToken();
  user = null;
  navigate('/console/login');
});

render();
