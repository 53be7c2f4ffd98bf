// Building elements without innerHTML (nothing a sandbox or a user named is ever parsed as
// HTML), and formatting numbers.

/** `h('button', {type: 'button', onclick: f}, 'Kill')`. */
export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on')) element.addEventListener(name.slice(2), value);
    else if (name === 'class') element.className = value;
    else if (name === 'dataset') Object.assign(element.dataset, value);
    else element.setAttribute(name, value === true ? '' : value);
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces what `element` holds. */
export function fill(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

/** The line under the header that says what went wrong (or what happened). */
export function say(message, kind = 'error') {
  const status = document.getElementById('status');
  status.className = `status ${kind}`;
  status.textContent = message || '';
}

export function bytes(n) {
  if (n === undefined || n === null || Number.isNaN(n)) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let unit = 0;
  while (n >= 1024 && unit < units.length - 1) {
    n /= 1024;
    unit += 1;
  }
  return `${n.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

/** Seconds as `3h 02m`, `4m 05s`, `12s`. */
export function duration(seconds) {
  if (!Number.isFinite(seconds)) return '–';
  const negative = seconds < 0;
  let s = Math.floor(Math.abs(seconds));
  const d = Math.floor(s / 86400); s -= d * 86400;
  const hh = Math.floor(s / 3600); s -= hh * 3600;
  const mm = Math.floor(s / 60); s -= mm * 60;
  const pad = (n) => String(n).padStart(2, '0');
  const text = d ? `${d}d ${pad(hh)}h` : hh ? `${hh}h ${pad(mm)}m` : mm ? `${mm}m ${pad(s)}s` : `${s}s`;
  return negative ? `-${text}` : text;
}

export function percent(p) {
  return Number.isFinite(p) ? `${p.toFixed(1)} %` : '–';
}
