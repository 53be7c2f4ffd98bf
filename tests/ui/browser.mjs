// Debian's Chromium, headless, driven by playwright-core; the dashboard logged in.

import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

export async function launch() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Root (as in CI) cannot use Chromium's own sandbox; the pages come from our server only.
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
}

/** A page of `server`'s dashboard with the key already in session storage. */
export async function loggedIn(browser, server, viewport = { width: 1400, height: 900 }) {
  const context = await browser.newContext({ viewport });
  await context.addInitScript((key) => sessionStorage.setItem('cove.apiKey', key), server.apiKey);
  return { context, page: await context.newPage() };
}
