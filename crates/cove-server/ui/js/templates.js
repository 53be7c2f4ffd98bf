// Templates and their builds: the list, and one build's status with its log as it grows.

import { get } from './api.js';
import { fill, h, say } from './dom.js';

const LIST_MS = 3000;
const BUILD_MS = 1000;

export function render(main) {
  let stopped = false;
  let timer = null;
  const body = h('tbody', { id: 'template-rows' });
  fill(main,
    h('h1', {}, 'Templates'),
    h('p', { class: 'hint' }, 'Build one with ', h('code', {}, 'cove template build'), ' or an E2B SDK\u2019s Template.build; its log shows here as it runs.'),
    h('table', {},
      h('caption', { class: 'visually-hidden' }, 'Templates'),
      h('thead', {}, h('tr', {},
        h('th', { scope: 'col' }, 'Template'), h('th', { scope: 'col' }, 'Names'),
        h('th', { scope: 'col' }, 'Latest build'), h('th', { scope: 'col' }, 'Status'),
        h('th', { scope: 'col', class: 'num' }, 'Resources'), h('th', { scope: 'col', class: 'num' }, 'Builds'),
        h('th', { scope: 'col', class: 'num' }, 'Sandboxes started'), h('th', { scope: 'col' }, 'Updated'))),
      body));

  async function refresh() {
    try {
      const templates = await get('/templates');
      fill(body, ...templates.map((t) => h('tr', { dataset: { id: t.templateID } },
        h('td', { class: 'mono' }, t.templateID),
        h('td', {}, [...new Set([...(t.names || []), ...(t.aliases || [])])].map((n) => h('span', { class: 'meta' }, n))),
        // `base` is built into the server from the host's files: it has no build to show.
        h('td', {}, t.buildID && t.templateID !== 'base'
          ? h('a', { class: 'mono', href: `#/templates/${encodeURIComponent(t.templateID)}/builds/${encodeURIComponent(t.buildID)}` }, t.buildID)
          : (t.buildID || '–')),
        h('td', {}, h('span', { class: `pill ${t.buildStatus}` }, t.buildStatus)),
        h('td', { class: 'num' }, `${t.cpuCount} CPU, ${t.memoryMB} MiB`),
        h('td', { class: 'num' }, String(t.buildCount)),
        h('td', { class: 'num' }, String(t.spawnCount)),
        h('td', {}, t.updatedAt ? new Date(t.updatedAt).toLocaleString() : '–'))));
    } catch (err) {
      say(`Cannot list templates: ${err.message}`);
    }
    if (!stopped) timer = setTimeout(refresh, LIST_MS);
  }
  refresh();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

export function renderBuild(main, templateId, buildId) {
  let stopped = false;
  let timer = null;
  let offset = 0;
  const status = h('span', { class: 'pill', id: 'build-status' }, '…');
  const reason = h('p', { class: 'hint', id: 'build-reason' });
  const log = h('pre', { class: 'log', id: 'build-log', tabindex: '0', 'aria-label': 'Build log' });
  fill(main,
    h('p', {}, h('a', { href: '#/templates' }, '← All templates')),
    h('h1', {}, 'Build ', h('span', { class: 'mono' }, buildId)),
    h('p', {}, 'Template ', h('span', { class: 'mono' }, templateId), ': ', status),
    reason,
    log);

  async function poll() {
    let finished = false;
    try {
      const query = new URLSearchParams({ logsOffset: String(offset), limit: '100' });
      const info = await get(`/templates/${encodeURIComponent(templateId)}/builds/${encodeURIComponent(buildId)}/status?${query}`);
      status.textContent = info.status;
      status.className = `pill ${info.status}`;
      const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      for (const entry of info.logEntries || []) {
        const step = entry.step ? ` [${entry.step}]` : '';
        log.append(h('span', { class: entry.level }, `${entry.timestamp}${step} ${entry.message}\n`));
      }
      offset += (info.logEntries || []).length;
      if (atBottom) log.scrollTop = log.scrollHeight;
      const why = info.reason && (info.reason.message || JSON.stringify(info.reason));
      reason.textContent = why ? `Reason: ${why}` : '';
      // A finished build has written all its log; read on while a page came back full.
      finished = (info.status === 'ready' || info.status === 'error') && (info.logEntries || []).length < 100;
    } catch (err) {
      say(`Cannot read the build: ${err.message}`);
    }
    if (!stopped && !finished) timer = setTimeout(poll, BUILD_MS);
  }
  poll();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
