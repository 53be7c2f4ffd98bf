// cove-bench's dashboard group (crates/cove-bench/src/dashboard.rs) runs this against a
// server it filled with live sandboxes: how long the dashboard's sandbox list takes, from
// the start of the page load to every row shown and laid out, beside the same Chromium
// showing a plain table of as many rows (no API, no script). Prints {"dashboard": [ms…], "plain": [ms…]}.
//
//   COVE_UI_URL=http://127.0.0.1:3000 COVE_UI_KEY=… COVE_UI_ROWS=1000 node bench.mjs

import { launch, loggedIn } from './browser.mjs';

const url = process.env.COVE_UI_URL;
const apiKey = process.env.COVE_UI_KEY;
const rows = Number(process.env.COVE_UI_ROWS);
const runs = Number(process.env.COVE_UI_RUNS || 5);
if (!url || !apiKey || !(rows > 0)) {
  console.error('set COVE_UI_URL, COVE_UI_KEY and COVE_UI_ROWS');
  process.exit(2);
}
const TIMEOUT_MS = 120_000;

function plainTable(n) {
  const row = (i) => `<tr><td>sandbox${String(i).padStart(14, '0')}</td><td>base</td><td>bench=dashboard n=${i}</td>`
    + `<td>1m 00s</td><td>59m 00s</td><td>running</td><td>0.1 %</td><td>4.0 MiB / 1.0 GiB</td>`
    + '<td><button>+5 min</button><button>Pause</button><button>Kill</button></td></tr>';
  return `<!doctype html><table><tbody>${Array.from({ length: n }, (_, i) => row(i)).join('')}</tbody></table>`;
}

const browser = await launch();
const found = { dashboard: [], plain: [] };
try {
  for (let run = 0; run < runs; run += 1) {
    const { context, page } = await loggedIn(browser, { apiKey });
    await page.goto(`${url}/ui/#/sandboxes`, { waitUntil: 'commit' });
    // Timed inside the page: performance.now() counts from the start of its navigation.
    // Once every row is in the table, its layout is forced before the time is taken, as the
    // plain table's is: rows laid out, not only added.
    const shown = await page.waitForFunction((n) => {
      if (document.querySelectorAll('#sandbox-rows tr').length < n) return false;
      void document.body.offsetHeight;
      return performance.now();
    }, rows, { polling: 'raf', timeout: TIMEOUT_MS });
    found.dashboard.push(await shown.jsonValue());
    await context.close();

    const plain = await browser.newPage();
    const began = performance.now();
    await plain.setContent(plainTable(rows), { waitUntil: 'load' });
    await plain.evaluate(() => new Promise((done) => requestAnimationFrame(() => done(document.body.offsetHeight))));
    found.plain.push(performance.now() - began);
    await plain.close();
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(found));
