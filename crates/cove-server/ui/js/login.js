// The login form: an API key, checked against the API before it is kept.

import { call, setApiKey } from './api.js';
import { fill, h, say } from './dom.js';

export function render(main, onDone) {
  const input = h('input', {
    id: 'api-key', name: 'api-key', type: 'password', autocomplete: 'off', required: true,
    spellcheck: 'false',
  });
  const button = h('button', { type: 'submit', class: 'primary' }, 'Log in');
  const form = h('form', { 'aria-labelledby': 'login-title' },
    h('label', { for: 'api-key' }, 'API key', input),
    h('p', { class: 'hint' },
      'The key is kept in this tab only (session storage) and sent in the X-API-KEY header. ',
      'Make one with ', h('code', {}, 'cove keys create'), '.'),
    button);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    button.disabled = true;
    try {
      await call('/v2/sandboxes?limit=1', { key });
      setApiKey(key);
      say('');
      onDone();
    } catch (err) {
      say(err.status === 401 ? 'That key is not valid.' : `Cannot log in: ${err.message}`);
      input.focus();
    } finally {
      button.disabled = false;
    }
  });
  fill(main, h('section', { class: 'login panel' }, h('h1', { id: 'login-title' }, 'Log in to Cove'), form));
  input.focus();
  return () => {};
}
