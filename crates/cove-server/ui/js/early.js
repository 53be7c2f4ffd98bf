// The dashboard mostly opens on the sandbox list. index.html runs this module first, so the
// list is asked for while the rest of the dashboard is still loading; the list's page takes
// the answer for its first draw (a failure there is retried by the page, which reports it).

import { apiKey, listSandboxes } from './api.js';

const onList = ['', '#', '#/', '#/sandboxes', '#/sandboxes/'].includes(location.hash);
let early = apiKey() && onList ? listSandboxes().catch(() => null) : null;

/** The list asked for at page load, once (null when there was none or it failed). */
export async function takeEarlyList() {
  const taken = early;
  early = null;
  return taken ? taken : null;
}
