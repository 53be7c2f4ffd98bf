// The REST API and the sandbox proxy, same-origin, with the key kept in sessionStorage
// (never in a URL, gone when the tab closes).

const KEY = 'cove.apiKey';

/** The agent's port inside a sandbox (envd). */
export const AGENT_PORT = 49983;

export function apiKey() {
  return sessionStorage.getItem(KEY);
}

export function setApiKey(key) {
  sessionStorage.setItem(KEY, key);
}

export function forgetApiKey() {
  sessionStorage.removeItem(KEY);
}

/** An error the server answered, with its status and message. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.message) message = body.message;
  } catch {
    // Not JSON: keep the status line.
  }
  if (response.status === 401) window.dispatchEvent(new CustomEvent('cove:unauthorized'));
  return new ApiError(response.status, message);
}

/** A REST call; the answer's JSON (null when empty) and its headers. */
export async function call(path, { method = 'GET', body, key = apiKey() } = {}) {
  const headers = { 'X-API-KEY': key || '' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store',
  });
  if (!response.ok) throw await failure(response);
  const text = await response.text();
  return { data: text ? JSON.parse(text) : null, headers: response.headers };
}

export async function get(path) {
  return (await call(path)).data;
}

/** Every sandbox a paged `GET /v2/sandboxes` with `filters` lists, following the pages. */
async function allPages(filters) {
  const all = [];
  let token = null;
  do {
    const query = new URLSearchParams({ limit: '100', ...filters });
    if (token) query.set('nextToken', token);
    const { data, headers } = await call(`/v2/sandboxes?${query}`);
    all.push(...data);
    token = headers.get('X-Next-Token');
  } while (token);
  return all;
}

/**
 * Every running and paused sandbox of the team, newest first. The running ones come in one
 * answer (`GET /sandboxes` is not paged), so a thousand cost one round trip, not ten; the
 * paused ones (`GET /v2/sandboxes?state=paused`) at the same time.
 */
export async function listSandboxes() {
  const [running, paused] = await Promise.all([get('/sandboxes'), allPages({ state: 'paused' })]);
  const all = running.concat(paused);
  all.sort((a, b) => Date.parse(b.startedAt) - Date.parse(a.startedAt) || a.sandboxID.localeCompare(b.sandboxID));
  return all;
}

/** The latest metrics of `ids`, 100 at a time (the API's limit per call). */
export async function latestMetrics(ids) {
  const found = {};
  for (let at = 0; at < ids.length; at += 100) {
    const chunk = ids.slice(at, at + 100);
    const query = new URLSearchParams({ sandbox_ids: chunk.join(',') });
    const data = await get(`/sandboxes/metrics?${query}`);
    Object.assign(found, data.sandboxes || {});
  }
  return found;
}

/** A request to a sandbox's agent through the proxy, with its access token. */
export async function agent(sandbox, path, init = {}) {
  const headers = new Headers(init.headers || {});
  headers.set('E2b-Sandbox-Id', sandbox.sandboxID);
  headers.set('E2b-Sandbox-Port', String(AGENT_PORT));
  if (sandbox.envdAccessToken) headers.set('X-Access-Token', sandbox.envdAccessToken);
  headers.set('Authorization', `Basic ${btoa('user:')}`);
  const response = await fetch(path, { ...init, headers, cache: 'no-store' });
  if (!response.ok) throw await failure(response);
  return response;
}

/** A unary Connect call (JSON codec) of the agent. */
export async function rpc(sandbox, method, message) {
  const response = await agent(sandbox, `/${method}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'Connect-Protocol-Version': '1' },
    body: JSON.stringify(message),
  });
  return response.json();
}
