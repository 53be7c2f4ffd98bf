// A real `cove serve` for the browser tests and the benchmark: a free port, a temporary
// state directory, a random API key (given by environment, so it does not show in `ps`);
// stopped with SIGTERM (`--kill-on-exit` ends its sandboxes) and its directory removed.

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const REPO = resolve(import.meta.dirname, '../..');
const START_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 60_000;

function freePort() {
  return new Promise((done, fail) => {
    const probe = createServer();
    probe.once('error', fail);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => done(port));
    });
  });
}

/** Polls `check` until it returns something truthy, or fails after `ms` saying `what`. */
export async function waitUntil(check, what, ms) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export async function startServer(extraArgs = []) {
  const cove = process.env.COVE_BIN || join(REPO, 'target/debug/cove');
  const stateDir = mkdtempSync(join(tmpdir(), 'cove-ui-test-'));
  const port = await freePort();
  const apiKey = `e2b_${randomBytes(20).toString('hex')}`;
  const logPath = join(stateDir, '..', `${stateDir.split('/').pop()}.log`);
  const log = createWriteStream(logPath);
  const child = spawn(cove, ['serve', '--listen', `127.0.0.1:${port}`, '--state-dir', stateDir,
    '--kill-on-exit', ...extraArgs], {
    env: { ...process.env, COVE_API_KEY: apiKey },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout.pipe(log);
  child.stderr.pipe(log);
  let exited = null;
  const exit = new Promise((done) => child.once('exit', (code, signal) => {
    exited = { code, signal };
    done(exited);
  }));
  const url = `http://127.0.0.1:${port}`;
  const server = {
    url,
    apiKey,
    stateDir,
    logPath,
    /** A REST call with the server's key. */
    async api(method, path, body, key = apiKey) {
      const response = await fetch(url + path, {
        method,
        headers: { 'X-API-KEY': key, ...(body ? { 'Content-Type': 'application/json' } : {}) },
        body: body ? JSON.stringify(body) : undefined,
      });
      const text = await response.text();
      return { status: response.status, headers: response.headers, body: text ? JSON.parse(text) : null };
    },
    /** Every sandbox the server lists, over all pages. */
    async sandboxIds() {
      const ids = [];
      let token = null;
      do {
        const query = new URLSearchParams({ limit: '100', ...(token ? { nextToken: token } : {}) });
        const answer = await server.api('GET', `/v2/sandboxes?${query}`);
        ids.push(...answer.body.map((s) => s.sandboxID));
        token = answer.headers.get('x-next-token');
      } while (token);
      return ids;
    },
    /** Stops the server as an operator would; its sandboxes end with it. */
    async stop() {
      if (!exited) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
        await exit;
        clearTimeout(timer);
      }
      log.end();
      const clean = exited.code === 0 || exited.signal === 'SIGTERM';
      // Never remove a directory something is still mounted under (a sandbox's root holds
      // the host's /usr read-only): say so instead.
      const mounts = readFileSync('/proc/mounts', 'utf8').split('\n').filter((m) => m.includes(stateDir));
      if (mounts.length) {
        throw new Error(`mounts under ${stateDir} outlived cove serve: ${mounts.join('; ')}`);
      }
      rmSync(stateDir, { recursive: true, force: true });
      if (!clean) {
        throw new Error(`cove serve exited with ${JSON.stringify(exited)}; its log: ${logPath}`);
      }
      rmSync(logPath, { force: true });
    },
    log() {
      return readFileSync(logPath, 'utf8');
    },
  };
  try {
    await waitUntil(async () => {
      if (exited) throw new Error(`cove serve exited at once (${JSON.stringify(exited)}): ${server.log()}`);
      try {
        return (await fetch(`${url}/health`)).ok;
      } catch {
        return false;
      }
    }, 'cove serve to answer /health', START_TIMEOUT_MS);
  } catch (err) {
    await server.stop().catch(() => {});
    throw err;
  }
  return server;
}
