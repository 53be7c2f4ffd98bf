// A terminal in the sandbox: xterm.js over the server's WebSocket bridge to a shell on a
// PTY. The key goes as a subprotocol (never in the URL). The terminal follows the size of
// its box; copy and paste work with the browser's own keys and menu, and with Ctrl+Shift+C
// and Ctrl+Shift+V as in terminal emulators.

import { Terminal } from '../vendor/xterm.mjs';
import { FitAddon } from '../vendor/addon-fit.mjs';
import { apiKey } from './api.js';
import { h } from './dom.js';

const PROTOCOL = 'cove.terminal.v1';

// xterm.js's styles come with it, when a terminal is first opened, not with every page.
document.head.append(h('link', { rel: 'stylesheet', href: 'vendor/xterm.css' }));

function base64url(text) {
  const bytes = new TextEncoder().encode(text);
  let binary = '';
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

export function open(container, sandboxId, onClosed) {
  const box = h('div', { class: 'terminal', id: 'terminal' });
  container.append(box);
  const term = new Terminal({
    cursorBlink: true,
    fontFamily: 'ui-monospace, "DejaVu Sans Mono", monospace',
    fontSize: 14,
    scrollback: 5000,
    screenReaderMode: false,
  });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(box);
  fit.fit();

  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const query = new URLSearchParams({ cols: String(term.cols), rows: String(term.rows) });
  const url = `${scheme}://${location.host}/cove/sandboxes/${encodeURIComponent(sandboxId)}/terminal?${query}`;
  const socket = new WebSocket(url, [PROTOCOL, `cove.key.${base64url(apiKey() || '')}`]);
  socket.binaryType = 'arraybuffer';
  const encoder = new TextEncoder();
  const send = (data) => {
    if (socket.readyState === WebSocket.OPEN) socket.send(encoder.encode(data));
  };

  socket.addEventListener('open', () => term.focus());
  socket.addEventListener('message', (event) => {
    if (event.data instanceof ArrayBuffer) term.write(new Uint8Array(event.data));
  });
  socket.addEventListener('close', (event) => {
    const why = event.reason || (event.code === 1006 ? 'the connection was refused or lost' : `code ${event.code}`);
    term.write(`\r\n\x1b[2m[terminal closed: ${why}]\x1b[0m\r\n`);
    if (onClosed) onClosed(why);
  });
  term.onData(send);
  term.onResize(({ cols, rows }) => {
    if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: 'resize', cols, rows }));
  });
  term.attachCustomKeyEventHandler((event) => {
    if (event.type !== 'keydown' || !event.ctrlKey || !event.shiftKey) return true;
    if (event.code === 'KeyC' && term.hasSelection()) {
      navigator.clipboard.writeText(term.getSelection()).catch(() => {});
      return false;
    }
    if (event.code === 'KeyV') {
      navigator.clipboard.readText().then((text) => term.paste(text)).catch(() => {});
      return false;
    }
    return true;
  });
  const resized = new ResizeObserver(() => {
    try {
      fit.fit();
    } catch {
      // Not laid out (hidden): nothing to fit.
    }
  });
  resized.observe(box);

  return () => {
    resized.disconnect();
    socket.close();
    term.dispose();
    box.remove();
  };
}
