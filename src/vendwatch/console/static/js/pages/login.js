// Sign-in: the operator pastes a token (vendwatch tokens add NAME --role viewer|operator|admin).

import {api, ApiError, setToken} from '../api.js';
import {h, replace} from '../dom.js';

export async function render(main, page) {
  const input = h('input', {
    type: 'password', id: 'token', name: 'token', autocomplete: 'off', spellcheck: 'false',
    placeholder: 'vwo_…', required: true, 'aria-label': 'Operator token',
  });
  const message = h('p', {class: 'error', role: 'alert', id: 'login-error'});
  const form = h('form', {class: 'login card', id: 'login-form'},
    h('h1', null, 'Sign in'),
    h('p', null, 'Paste an operator token. It is kept in this browser tab only (session storage) and sent in the Authorization header.'),
    h('label', {for: 'token'}, 'Operator token'),
    input,
    h('button', {type: 'submit', class: 'primary'}, 'Sign in'),
    message,
    h('p', {class: 'muted small'}, 'Create one with: ', h('code', null, 'vendwatch tokens add NAME --role operator')));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const t = input.value.trim();
    replace(message);
    try {
      const who = await api('/v1/whoami', {tokenOverride: t});
      setToken(t);
      page.signedIn(who);
      const next = page.query.get('next') || '/console/';
      // only paths inside the console: a crafted link cannot send the operator elsewhere
      page.navigate(next.startsWith('/console/') && !next.startsWith('/console/login') ? next : '/console/');
    } catch (e) {
      replace(message, e instanceof ApiError && e.status === 401 ? 'That token is not valid (unknown or revoked).' : e.message);
    }
  });
  main.append(form);
  input.focus();
}
