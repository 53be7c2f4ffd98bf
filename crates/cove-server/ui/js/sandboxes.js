// The live list of sandboxes: refreshed every second, filtered in the page, rows kept by id
// (so that focus stays on a button while the list refreshes under it).

import { call, latestMetrics, listSandboxes } from './api.js';
import { bytes, duration, fill, h, percent, say } from './dom.js';
import { takeEarlyList } from './early.js';

// A new sandbox shows within a second; past a few hundred the list is refreshed less often
// (each refresh reads every page of it).
const REFRESH_MS = 500;
const REFRESH_LARGE_MS = 2000;
const LARGE = 200;
const METRICS_MS = 5000;

export function render(main) {
  let stopped = false;
  let sandboxes = [];
  let metrics = {};
  let timer = null;
  let metricsTimer = null;
  const rows = new Map();

  const search = h('input', { id: 'filter-text', type: 'search', placeholder: 'id, template, metadata' });
  const state = h('select', { id: 'filter-state' },
    h('option', { value: '' }, 'any'), h('option', { value: 'running' }, 'running'),
    h('option', { value: 'paused' }, 'paused'));
  const template = h('select', { id: 'filter-template' }, h('option', { value: '' }, 'any'));
  const metadata = h('input', { id: 'filter-metadata', type: 'text', placeholder: 'key=value' });
  const count = h('span', { class: 'count', 'aria-live': 'polite' });
  const body = h('tbody', { id: 'sandbox-rows', role: 'rowgroup' });
  const column = (label, numeric) => h('th', { scope: 'col', role: 'columnheader', class: numeric ? 'num' : undefined }, label);
  const table = h('table', {
    'aria-describedby': 'sandbox-count',
    role: 'table',
    class: 'rows sandbox-list',
  },
  h('caption', { class: 'visually-hidden' }, 'Running and paused sandboxes'),
  h('thead', { role: 'rowgroup' }, h('tr', { role: 'row' },
    column('ID'), column('Template'), column('Metadata'), column('Age', true),
    column('Time left', true), column('State'), column('CPU', true), column('Memory', true),
    column('Actions'))),
  body);
  count.id = 'sandbox-count';
  for (const input of [search, state, template, metadata]) {
    input.addEventListener('input', () => draw());
  }

  fill(main,
    h('h1', {}, 'Sandboxes'),
    h('div', { class: 'filters', role: 'search' },
      h('label', { for: 'filter-text' }, 'Search', search),
      h('label', { for: 'filter-state' }, 'State', state),
      h('label', { for: 'filter-template' }, 'Template', template),
      h('label', { for: 'filter-metadata' }, 'Metadata', metadata),
      count),
    table);

  function matches(sandbox) {
    if (state.value && sandbox.state !== state.value) return false;
    if (template.value && sandbox.templateID !== template.value && sandbox.alias !== template.value) return false;
    const wanted = metadata.value.trim();
    if (wanted) {
      const [key, ...rest] = wanted.split('=');
      const value = rest.join('=');
      const have = (sandbox.metadata || {})[key.trim()];
      if (have === undefined || (rest.length && have !== value.trim())) return false;
    }
    const text = search.value.trim().toLowerCase();
    if (text) {
      const haystack = [sandbox.sandboxID, sandbox.templateID, sandbox.alias || '',
        ...Object.entries(sandbox.metadata || {}).map(([k, v]) => `${k}=${v}`)].join(' ').toLowerCase();
      if (!haystack.includes(text)) return false;
    }
    return true;
  }

  // Every row is a copy of this one (cloning is much cheaper than building 20 elements a
  // row), and one listener on the table body serves every row's buttons.
  const cell = (attrs = {}, ...children) => h('td', { role: 'cell', ...attrs }, ...children);
  const prototype = h('tr', { role: 'row' },
    cell({}, h('a', { class: 'mono' })),
    cell(), cell(), cell({ class: 'num' }), cell({ class: 'num' }), cell(),
    cell({ class: 'num' }), cell({ class: 'num' }),
    cell({ class: 'actions' },
      h('button', { type: 'button', dataset: { action: 'extend' } }, '+5 min'),
      h('button', { type: 'button', dataset: { action: 'pause' } }),
      h('button', { type: 'button', class: 'danger', dataset: { action: 'kill' } }, 'Kill')));
  body.addEventListener('click', (event) => {
    const button = event.target.closest('button[data-action]');
    const entry = button && rows.get(button.closest('tr').dataset.id);
    if (!entry) return;
    const action = { extend, pause: pauseOrResume, kill }[button.dataset.action];
    action(entry.sandbox);
  });

  function row(sandbox) {
    const id = sandbox.sandboxID;
    let entry = rows.get(id);
    if (entry) return entry;
    const tr = prototype.cloneNode(true);
    tr.dataset.id = id;
    const [idCell, templateCell, metadataCell, age, left, stateCell, cpu, memory, actions] = tr.children;
    const link = idCell.firstElementChild;
    link.href = `#/sandboxes/${encodeURIComponent(id)}`;
    link.textContent = id;
    const [extendButton, pause, killButton] = actions.children;
    extendButton.setAttribute('aria-label', `Extend ${id} by 5 minutes`);
    killButton.setAttribute('aria-label', `Kill ${id}`);
    const cells = {
      template: templateCell, metadata: metadataCell, age, left, state: stateCell, cpu, memory,
    };
    entry = { tr, cells, pause, shown: {} };
    rows.set(id, entry);
    return entry;
  }

  function set(entry, name, text) {
    if (entry.shown[name] !== text) {
      entry.shown[name] = text;
      entry.cells[name].textContent = text;
    }
  }

  function update(entry, sandbox, now) {
    entry.sandbox = sandbox;
    set(entry, 'template', sandbox.alias ? `${sandbox.alias} (${sandbox.templateID})` : sandbox.templateID);
    const meta = Object.entries(sandbox.metadata || {}).map(([k, v]) => `${k}=${v}`).join('\u0000');
    if (entry.shown.meta !== meta) {
      entry.shown.meta = meta;
      fill(entry.cells.metadata, ...Object.entries(sandbox.metadata || {}).map(([k, v]) => h('span', { class: 'meta' }, `${k}=${v}`)));
    }
    set(entry, 'age', duration((now - Date.parse(sandbox.startedAt)) / 1000));
    set(entry, 'left', sandbox.state === 'paused' ? '–' : duration((Date.parse(sandbox.endAt) - now) / 1000));
    if (entry.shown.stateName !== sandbox.state) {
      entry.shown.stateName = sandbox.state;
      entry.cells.state.textContent = sandbox.state;
      entry.cells.state.className = `state-${sandbox.state}`;
      entry.pause.textContent = sandbox.state === 'paused' ? 'Resume' : 'Pause';
      entry.pause.setAttribute('aria-label', `${sandbox.state === 'paused' ? 'Resume' : 'Pause'} ${sandbox.sandboxID}`);
    }
    const m = metrics[sandbox.sandboxID];
    set(entry, 'cpu', m ? percent(m.cpuUsedPct) : '–');
    set(entry, 'memory', m ? `${bytes(m.memUsed)} / ${bytes(m.memTotal)}` : `– / ${sandbox.memoryMB} MiB`);
  }

  function draw() {
    const now = Date.now();
    const shown = sandboxes.filter(matches);
    const order = [];
    for (const sandbox of shown) {
      const entry = row(sandbox);
      update(entry, sandbox, now);
      order.push(entry.tr);
    }
    if (!body.firstElementChild) {
      // The first fill: every row in one insertion.
      const all = document.createDocumentFragment();
      all.append(...order);
      body.append(all);
    }
    // Only rows out of place move: a button that has focus keeps it.
    let at = body.firstElementChild;
    for (const tr of order) {
      if (at === tr) at = at.nextElementSibling;
      else body.insertBefore(tr, at);
    }
    while (at) {
      const next = at.nextElementSibling;
      at.remove();
      at = next;
    }
    const live = new Set(sandboxes.map((s) => s.sandboxID));
    for (const id of rows.keys()) if (!live.has(id)) rows.delete(id);
    count.textContent = shown.length === sandboxes.length
      ? `${sandboxes.length} sandboxes`
      : `${shown.length} of ${sandboxes.length} sandboxes`;
    table.dataset.count = String(shown.length);
    const templates = [...new Set(sandboxes.map((s) => s.alias || s.templateID))].sort();
    const known = [...template.options].slice(1).map((o) => o.value);
    if (templates.join('\n') !== known.join('\n')) {
      const chosen = template.value;
      fill(template, h('option', { value: '' }, 'any'), ...templates.map((t) => h('option', { value: t }, t)));
      template.value = templates.includes(chosen) ? chosen : '';
    }
  }

  let first = true;
  async function refresh() {
    try {
      sandboxes = (await takeEarlyList()) || (await listSandboxes());
      draw();
      if (first) {
        first = false;
        // Metrics are asked for once the list is there (they cost the server more).
        metricsTimer = setTimeout(refreshMetrics, 0);
      }
    } catch (err) {
      say(`Cannot list sandboxes: ${err.message}`);
    }
    if (!stopped) timer = setTimeout(refresh, sandboxes.length > LARGE ? REFRESH_LARGE_MS : REFRESH_MS);
  }

  async function refreshMetrics() {
    const ids = sandboxes.filter((s) => s.state === 'running').map((s) => s.sandboxID);
    if (ids.length) {
      try {
        metrics = await latestMetrics(ids);
        draw();
      } catch (err) {
        say(`Cannot read metrics: ${err.message}`);
      }
    }
    if (!stopped) metricsTimer = setTimeout(refreshMetrics, METRICS_MS);
  }

  async function act(what, work) {
    try {
      await work();
      say(what, 'info');
    } catch (err) {
      say(`${what} failed: ${err.message}`);
    }
    clearTimeout(timer);
    refresh();
  }

  function kill(sandbox) {
    if (!confirm(`Kill sandbox ${sandbox.sandboxID}? Its files and processes are lost.`)) return;
    act(`Killed ${sandbox.sandboxID}`, () => call(`/sandboxes/${encodeURIComponent(sandbox.sandboxID)}`, { method: 'DELETE' }));
  }

  function extend(sandbox) {
    const left = Math.max(0, Math.round((Date.parse(sandbox.endAt) - Date.now()) / 1000));
    act(`Extended ${sandbox.sandboxID} by 5 minutes`, () => call(`/sandboxes/${encodeURIComponent(sandbox.sandboxID)}/timeout`, { method: 'POST', body: { timeout: left + 300 } }));
  }

  function pauseOrResume(sandbox) {
    const id = encodeURIComponent(sandbox.sandboxID);
    if (sandbox.state === 'paused') {
      act(`Resumed ${sandbox.sandboxID}`, () => call(`/v2/sandboxes/${id}/connect`, { method: 'POST', body: { timeout: 300 } }));
    } else {
      act(`Paused ${sandbox.sandboxID}`, () => call(`/sandboxes/${id}/pause`, { method: 'POST' }));
    }
  }

  refresh();
  return () => {
    stopped = true;
    clearTimeout(timer);
    clearTimeout(metricsTimer);
  };
}
