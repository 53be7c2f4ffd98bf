// One sandbox: its details and actions, charts of its metrics history, its log, its files
// and a terminal.

import { call, get } from './api.js';
import { lineChart } from './chart.js';
import { bytes, duration, fill, h, percent, say } from './dom.js';
import * as files from './files.js';

const DETAILS_MS = 2000;
const METRICS_MS = 5000;
const LOGS_MS = 2000;

export function render(main, id) {
  let stopped = false;
  let sandbox = null;
  const loops = [];
  let closeTerminal = null;
  const path = `/sandboxes/${encodeURIComponent(id)}`;

  const facts = h('dl', { class: 'facts' });
  const actions = h('div', { class: 'toolbar' });
  const cpu = h('figure', { class: 'chart panel', id: 'chart-cpu' });
  const memory = h('figure', { class: 'chart panel', id: 'chart-memory' });
  const disk = h('figure', { class: 'chart panel', id: 'chart-disk' });
  const log = h('pre', { class: 'log', id: 'sandbox-log', tabindex: '0', 'aria-label': 'Sandbox log' });
  const fileBox = h('div', { id: 'files' });
  const termBox = h('div', { id: 'terminal-box' });
  const termButton = h('button', { type: 'button', class: 'primary', id: 'open-terminal' }, 'Open terminal');

  fill(main,
    h('p', {}, h('a', { href: '#/sandboxes' }, '← All sandboxes')),
    h('h1', {}, 'Sandbox ', h('span', { class: 'mono' }, id)),
    h('section', { class: 'panel', 'aria-label': 'Details' }, actions, facts),
    h('h2', {}, 'Terminal'),
    h('section', { class: 'panel' }, termBox, termButton),
    h('h2', {}, 'Metrics'),
    h('div', { class: 'grid' }, cpu, memory, disk),
    h('div', { class: 'grid' },
      h('section', {}, h('h2', {}, 'Files'), h('div', { class: 'panel' }, fileBox)),
      h('section', {}, h('h2', {}, 'Log'), log)));

  function every(ms, work) {
    const loop = {};
    loops.push(loop);
    const run = async () => {
      await work();
      if (!stopped) loop.timer = setTimeout(run, ms);
    };
    run();
  }

  function fact(name, value) {
    return [h('dt', {}, name), h('dd', {}, value)];
  }

  async function details() {
    try {
      const fresh = await get(path);
      const first = !sandbox;
      sandbox = fresh;
      const now = Date.now();
      fill(facts,
        fact('Template', sandbox.alias ? `${sandbox.alias} (${sandbox.templateID})` : sandbox.templateID),
        fact('State', h('span', { class: `state-${sandbox.state}`, id: 'sandbox-state' }, sandbox.state)),
        fact('Started', `${new Date(sandbox.startedAt).toLocaleString()} (${duration((now - Date.parse(sandbox.startedAt)) / 1000)} ago)`),
        fact('Time left', sandbox.state === 'paused' ? '–' : duration((Date.parse(sandbox.endAt) - now) / 1000)),
        fact('Resources', `${sandbox.cpuCount} CPU, ${sandbox.memoryMB} MiB memory, ${sandbox.diskSizeMB} MiB disk`),
        fact('Metadata', Object.entries(sandbox.metadata || {}).map(([k, v]) => h('span', { class: 'meta' }, `${k}=${v}`))),
        fact('Internet', sandbox.allowInternetAccess ? 'allowed' : 'off'));
      drawActions();
      if (first) {
        files.render(fileBox, sandbox);
        metrics();
      }
    } catch (err) {
      if (err.status === 404) {
        stopped = true;
        say(`Sandbox ${id} is gone: ${err.message}`);
        fill(actions);
      } else {
        say(`Cannot read the sandbox: ${err.message}`);
      }
    }
  }

  function drawActions() {
    const paused = sandbox.state === 'paused';
    fill(actions,
      h('button', { type: 'button', onclick: () => act('Extended by 5 minutes', () => {
        const left = Math.max(0, Math.round((Date.parse(sandbox.endAt) - Date.now()) / 1000));
        return call(`${path}/timeout`, { method: 'POST', body: { timeout: left + 300 } });
      }) }, '+5 min'),
      paused
        ? h('button', { type: 'button', onclick: () => act('Resumed', () => call(`/v2${path}/connect`, { method: 'POST', body: { timeout: 300 } })) }, 'Resume')
        : h('button', { type: 'button', onclick: () => act('Paused', () => call(`${path}/pause`, { method: 'POST' })) }, 'Pause'),
      h('button', { type: 'button', class: 'danger', onclick: () => {
        if (!confirm(`Kill sandbox ${id}? Its files and processes are lost.`)) return;
        act('Killed', () => call(path, { method: 'DELETE' })).then(() => { location.hash = '#/sandboxes'; });
      } }, 'Kill'));
  }

  async function act(what, work) {
    try {
      await work();
      say(`${what}: ${id}`, 'info');
    } catch (err) {
      say(`${what} failed: ${err.message}`);
    }
    if (!stopped) await details();
  }

  async function metrics() {
    if (!sandbox) return;
    try {
      const start = Math.floor(Date.parse(sandbox.startedAt) / 1000);
      const samples = await get(`${path}/metrics?start=${start}&end=${Math.ceil(Date.now() / 1000)}`);
      const points = (pick) => samples.map((s) => ({ t: s.timestampUnix * 1000, v: pick(s) }));
      const last = samples[samples.length - 1];
      fill(cpu, h('figcaption', {}, `CPU (${last ? percent(last.cpuUsedPct) : '–'})`),
        lineChart({ title: 'CPU used', points: points((s) => s.cpuUsedPct), max: 100, format: (v) => `${Math.round(v)}%` }));
      fill(memory, h('figcaption', {}, `Memory (${last ? `${bytes(last.memUsed)} of ${bytes(last.memTotal)}` : '–'})`),
        lineChart({ title: 'Memory used', points: points((s) => s.memUsed), max: last ? last.memTotal : 0, format: bytes }));
      fill(disk, h('figcaption', {}, `Disk (${last ? `${bytes(last.diskUsed)} of ${bytes(last.diskTotal)}` : '–'})`),
        lineChart({ title: 'Disk used', points: points((s) => s.diskUsed), max: last ? last.diskTotal : 0, format: bytes }));
    } catch (err) {
      if (err.status !== 404) say(`Cannot read metrics: ${err.message}`);
    }
  }

  let cursor = 0;
  async function logs() {
    try {
      const query = new URLSearchParams({ cursor: String(cursor), direction: 'forward', limit: '1000' });
      const answer = await get(`/v2${path}/logs?${query}`);
      const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      for (const entry of answer.logs || []) {
        const at = Date.parse(entry.timestamp);
        if (at + 1 > cursor) cursor = at + 1;
        const fields = Object.entries(entry.fields || {}).map(([k, v]) => ` ${k}=${v}`).join('');
        log.append(h('span', { class: entry.level }, `${entry.timestamp} ${entry.level.toUpperCase()} ${entry.message}${fields}\n`));
      }
      if (atBottom) log.scrollTop = log.scrollHeight;
    } catch (err) {
      if (err.status !== 404) say(`Cannot read the log: ${err.message}`);
    }
  }

  termButton.addEventListener('click', async () => {
    if (closeTerminal) {
      closeTerminal();
      closeTerminal = null;
      termButton.textContent = 'Open terminal';
      return;
    }
    // xterm.js is loaded when a terminal is first opened, not with every page.
    const terminal = await import('./terminal.js');
    if (stopped || closeTerminal) return;
    closeTerminal = terminal.open(termBox, id);
    termButton.textContent = 'Close terminal';
  });

  every(DETAILS_MS, details);
  // The first metrics come with the first details (they need its start time).
  setTimeout(() => every(METRICS_MS, metrics), METRICS_MS);
  every(LOGS_MS, logs);
  return () => {
    stopped = true;
    loops.forEach((loop) => clearTimeout(loop.timer));
    if (closeTerminal) closeTerminal();
  };
}
