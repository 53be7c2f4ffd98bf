// The dashboard end to end: a real `cove serve`, real sandboxes, Debian's headless Chromium.
// Log in, see a sandbox created through the API appear, type `echo hi` in its terminal and
// read `hi`, upload a file by drag and drop and see (and download) it in the tree, follow a
// template build's log, kill the sandbox and see it go. Screenshots of each page go to
// $COVE_UI_SCREENSHOTS (docs/ui to refresh the README's) or target/ui-screenshots.

import assert from 'node:assert/strict';
import { mkdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { after, before, test } from 'node:test';

import { launch } from './browser.mjs';
import { tinyLayoutTar } from './oci.mjs';
import { startServer, waitUntil } from './server.mjs';

const REPO = resolve(import.meta.dirname, '../..');
const SHOTS = resolve(REPO, process.env.COVE_UI_SCREENSHOTS || 'target/ui-screenshots');
// Waits for things that take real work (a sandbox, a shell, a build), and every other wait of
// the page: generous, as CI runs this suite beside the others on two cores.
const SLOW_MS = 90_000;

let server;
let browser;
let page;
const violations = [];
const pageErrors = [];

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  server = await startServer();
  browser = await launch();
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 }, acceptDownloads: true });
  page = await context.newPage();
  page.setDefaultTimeout(SLOW_MS);
  page.on('dialog', (dialog) => dialog.accept());
  page.on('pageerror', (err) => pageErrors.push(err.message));
  page.on('console', (message) => {
    if (message.type() === 'error' && /Content.Security.Policy/i.test(message.text())) violations.push(message.text());
  });
});

after(async () => {
  try {
    if (browser) await browser.close();
    if (server) {
      const left = await server.sandboxIds();
      for (const id of left) await server.api('DELETE', `/sandboxes/${id}`);
      assert.deepEqual(left, [], 'every test ends its own sandboxes');
    }
  } finally {
    if (server) await server.stop();
  }
});

async function shot(name) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

test('the pages carry a strict Content-Security-Policy and no inline script', async () => {
  const response = await fetch(`${server.url}/ui/`);
  assert.equal(response.status, 200);
  const csp = response.headers.get('content-security-policy');
  assert.match(csp, /script-src 'self';/);
  assert.doesNotMatch(csp, /script-src[^;]*unsafe/);
  assert.match(csp, /frame-ancestors 'none'/);
  assert.match(csp, /connect-src 'self'/);
  const html = await response.text();
  assert.doesNotMatch(html, /<script(?![^>]*\bsrc=)[^>]*>/);
  const missing = await fetch(`${server.url}/ui/nothing.js`);
  assert.equal(missing.status, 404);
  assert.equal((await missing.json()).code, 404);
});

test('a wrong key is refused and the right one logs in', async () => {
  await page.goto(`${server.url}/ui`);
  await page.getByLabel('API key').waitFor();
  await shot('login');
  await page.getByLabel('API key').fill('e2b_not_a_key');
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.getByText('That key is not valid.').waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.getItem('cove.apiKey')), null);
  // By keyboard: the field has focus again; type the key and press Enter.
  await page.keyboard.press('Control+A');
  await page.keyboard.type(server.apiKey);
  await page.keyboard.press('Enter');
  await page.getByRole('heading', { name: 'Sandboxes' }).waitFor();
  assert.ok(!page.url().includes(server.apiKey), 'the key is never in the URL');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('cove.apiKey')), server.apiKey);
});

let sandboxId;

// The list refreshes every 0.5 s, so a new sandbox shows within a second on a quiet machine;
// the wait allows for a loaded CI machine (speed is the benchmark's, never a test's).
test('a sandbox created through the API appears in the list', async () => {
  const created = await server.api('POST', '/v2/sandboxes', {
    templateID: 'base', timeout: 600, metadata: { purpose: 'ui-test', owner: 'playwright' },
  });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  sandboxId = created.body.sandboxID;
  await page.locator(`tr[data-id="${sandboxId}"]`).waitFor({ timeout: SLOW_MS });
  const row = page.locator(`tr[data-id="${sandboxId}"]`);
  assert.match(await row.innerText(), /base/);
  assert.match(await row.innerText(), /purpose=ui-test/);
  assert.match(await row.innerText(), /running/);
  // Filters: metadata that does not match hides it; matching shows it again.
  await page.getByLabel('Metadata').fill('purpose=other');
  await row.waitFor({ state: 'detached' });
  await page.getByLabel('Metadata').fill('purpose=ui-test');
  await row.waitFor();
  await page.getByLabel('Metadata').fill('');
  // The CPU and memory columns fill in from the metrics.
  await waitUntil(async () => /MiB \//.test(await row.innerText()), 'the memory column', SLOW_MS);
  await shot('sandboxes');
});

test('extend, pause and resume from the list', async () => {
  const endOf = async () => Date.parse((await server.api('GET', `/sandboxes/${sandboxId}`)).body.endAt);
  const before = await endOf();
  await page.getByRole('button', { name: `Extend ${sandboxId} by 5 minutes` }).click();
  await waitUntil(async () => (await endOf()) > before + 60_000, 'the timeout to grow', SLOW_MS);
  await page.getByRole('button', { name: `Pause ${sandboxId}` }).click();
  const row = page.locator(`tr[data-id="${sandboxId}"]`);
  await waitUntil(async () => /paused/.test(await row.innerText()), 'the row to say paused', SLOW_MS);
  await page.getByRole('button', { name: `Resume ${sandboxId}` }).click();
  await waitUntil(async () => /running/.test(await row.innerText()), 'the row to say running', SLOW_MS);
});

test('the terminal runs `echo hi` and shows `hi`', async () => {
  await page.getByRole('link', { name: sandboxId }).click();
  await page.getByRole('heading', { name: `Sandbox ${sandboxId}` }).waitFor();
  await page.getByRole('button', { name: 'Open terminal' }).click();
  const rows = page.locator('#terminal .xterm-rows');
  await rows.waitFor();
  // The shell's prompt shows that the bridge and the PTY are up.
  await waitUntil(async () => /\$\s*$/m.test(await rows.innerText()), 'the shell prompt', SLOW_MS);
  await page.keyboard.type('echo hi');
  await page.keyboard.press('Enter');
  await waitUntil(async () => (await rows.innerText()).split('\n').some((line) => line.trim() === 'hi'),
    'a line reading hi', SLOW_MS);
  // The terminal follows the window: a narrower page gives the shell fewer columns.
  const cols = async () => {
    await page.keyboard.type('tput cols');
    await page.keyboard.press('Enter');
  };
  await page.setViewportSize({ width: 700, height: 900 });
  await cols();
  await waitUntil(async () => {
    const lines = (await rows.innerText()).split('\n').map((l) => l.trim());
    return lines.some((l) => /^\d+$/.test(l) && Number(l) < 80);
  }, 'tput cols to report the narrower terminal', SLOW_MS);
  await page.setViewportSize({ width: 1400, height: 900 });
});

test('a file dropped on the tree is uploaded, listed and downloads again', async () => {
  const tree = page.locator('#file-drop');
  await page.locator('#file-drop ul[data-loaded="true"]').waitFor({ state: 'attached', timeout: SLOW_MS });
  const content = `dropped from the browser ${Date.now()}\n`;
  const transfer = await page.evaluateHandle((text) => {
    const data = new DataTransfer();
    data.items.add(new File([text], 'dropped.txt', { type: 'text/plain' }));
    return data;
  }, content);
  await tree.dispatchEvent('dragover', { dataTransfer: transfer });
  await tree.dispatchEvent('drop', { dataTransfer: transfer });
  const item = page.locator('[data-path="/home/user/dropped.txt"]');
  await item.waitFor({ timeout: SLOW_MS });
  // It is in the sandbox for real: the shell sees it.
  await page.locator('#terminal .xterm-helper-textarea').focus();
  await page.keyboard.type('cat ~/dropped.txt');
  await page.keyboard.press('Enter');
  const rows = page.locator('#terminal .xterm-rows');
  await waitUntil(async () => (await rows.innerText()).includes(content.trim()), 'cat to show the file', SLOW_MS);
  const [download] = await Promise.all([
    page.waitForEvent('download'),
    page.getByRole('button', { name: 'Download /home/user/dropped.txt' }).click(),
  ]);
  assert.equal(readFileSync(await download.path(), 'utf8'), content);
  await page.locator('#chart-cpu svg').waitFor({ timeout: SLOW_MS });
  await page.locator('#sandbox-log span').first().waitFor({ timeout: SLOW_MS });
  await shot('sandbox');
});

test('a template build shows on the templates page with its log', async () => {
  // A base to build on, imported from an OCI layout made here (no registry needed).
  const imported = await fetch(`${server.url}/cove/templates/import?name=ui-demo-base`, {
    method: 'POST', headers: { 'X-API-KEY': server.apiKey }, body: tinyLayoutTar('dashboard demo\n'),
  });
  const importedText = await imported.text();
  assert.equal(imported.status, 201, importedText);
  const base = JSON.parse(importedText);
  const requested = await server.api('POST', '/v3/templates', { name: 'ui-demo', cpuCount: 1, memoryMB: 512 });
  assert.equal(requested.status, 202, JSON.stringify(requested.body));
  const { templateID, buildID } = requested.body;
  const started = await server.api('POST', `/v2/templates/${templateID}/builds/${buildID}`, {
    fromTemplate: 'ui-demo-base',
    steps: [{ type: 'ENV', args: ['GREETING', 'from the dashboard'] }, { type: 'WORKDIR', args: ['/app'] }],
  });
  assert.equal(started.status, 202, JSON.stringify(started.body));
  await page.getByRole('link', { name: 'Templates', exact: true }).click();
  await page.getByRole('heading', { name: 'Templates' }).waitFor();
  for (const template of (await server.api('GET', '/templates')).body) {
    await page.locator(`tr[data-id="${template.templateID}"]`).waitFor();
  }
  await page.locator(`tr[data-id="${templateID}"]`).waitFor();
  await shot('templates');
  await page.getByRole('link', { name: buildID }).click();
  const log = page.locator('#build-log');
  await waitUntil(async () => /ENV GREETING=from the dashboard/.test(await log.innerText()), 'the ENV step in the log', SLOW_MS);
  await waitUntil(async () => (await page.locator('#build-status').innerText()) === 'ready', 'the build to be ready', SLOW_MS);
  assert.match(await log.innerText(), /WORKDIR \/app/);
  await shot('build');
  await page.getByRole('link', { name: '← All templates' }).click();
  for (const id of [templateID, base.templateID]) {
    assert.equal((await server.api('DELETE', `/templates/${id}`)).status, 204);
  }
});

test('a sandbox killed from the list goes away', async () => {
  await page.getByRole('link', { name: 'Sandboxes', exact: true }).click();
  const row = page.locator(`tr[data-id="${sandboxId}"]`);
  await row.waitFor();
  await page.getByRole('button', { name: `Kill ${sandboxId}` }).click();
  await row.waitFor({ state: 'detached', timeout: SLOW_MS });
  assert.equal((await server.api('GET', `/sandboxes/${sandboxId}`)).status, 404);
});

test('nothing broke the rules of the page', () => {
  assert.deepEqual(violations, [], 'no Content-Security-Policy violations');
  assert.deepEqual(pageErrors, [], 'no uncaught errors in the page');
});
