// The dashboard's router: `#/sandboxes`, `#/sandboxes/{id}`, `#/templates`,
// `#/templates/{id}/builds/{build}`. Each page returns a function that stops what it started
// (polls, sockets) when the user leaves it.

import { apiKey, forgetApiKey } from './api.js';
import { say } from './dom.js';
import * as login from './login.js';
import * as sandboxes from './sandboxes.js';
import * as sandbox from './sandbox.js';
import * as templates from './templates.js';

const main = document.getElementById('main');
const nav = document.getElementById('nav');
let leave = () => {};

function route() {
  leave();
  leave = () => {};
  say('');
  if (!apiKey()) {
    nav.hidden = true;
    leave = login.render(main, () => {
      if (location.hash === '' || location.hash === '#/login') location.hash = '#/sandboxes';
      else route();
    });
    return;
  }
  nav.hidden = false;
  const path = location.hash.replace(/^#/, '') || '/sandboxes';
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  for (const link of nav.querySelectorAll('a')) {
    const current = path.startsWith(link.getAttribute('href').slice(1));
    if (current) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  if (parts[0] === 'sandboxes' && parts[1]) leave = sandbox.render(main, parts[1]);
  else if (parts[0] === 'templates' && parts[1] && parts[2] === 'builds' && parts[3]) {
    leave = templates.renderBuild(main, parts[1], parts[3]);
  } else if (parts[0] === 'templates') leave = templates.render(main);
  else leave = sandboxes.render(main);
  document.title = `Cove – ${parts[0] || 'sandboxes'}${parts[1] ? ` ${parts[1]}` : ''}`;
}

document.getElementById('logout').addEventListener('click', () => {
  forgetApiKey();
  location.hash = '#/login';
  route();
});

window.addEventListener('cove:unauthorized', () => {
  forgetApiKey();
  route();
  say('The key was refused: log in again.');
});
window.addEventListener('hashchange', () => {
  route();
  main.focus();
});
route();
