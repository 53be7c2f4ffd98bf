// A small line chart drawn as SVG: time along x, one value along y from 0 to `max`.

const NS = 'http://www.w3.org/2000/svg';
const W = 600;
const H = 160;
const PAD = { left: 44, right: 8, top: 8, bottom: 20 };

function el(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

/**
 * `points`: [{t: unix ms, v: number}], oldest first. `format` turns a value into a label.
 * The chart's title and a summary (last value, peak) are given to assistive technology.
 */
export function lineChart({ title, points, max, format }) {
  const last = points.length ? points[points.length - 1].v : undefined;
  const peak = points.reduce((m, p) => Math.max(m, p.v), 0);
  const top = Math.max(max ?? 0, peak, 1e-9);
  const svg = el('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', preserveAspectRatio: 'none' });
  const summary = points.length
    ? `${title}: now ${format(last)}, peak ${format(peak)}, ${points.length} samples`
    : `${title}: no samples yet`;
  svg.append(el('title', {}, summary));
  const x0 = PAD.left;
  const x1 = W - PAD.right;
  const y0 = H - PAD.bottom;
  const y1 = PAD.top;
  svg.append(el('line', { class: 'axis', x1: x0, y1: y0, x2: x1, y2: y0 }));
  svg.append(el('line', { class: 'axis', x1: x0, y1, x2: x0, y2: y0 }));
  for (const fraction of [0, 0.5, 1]) {
    const y = y0 - (y0 - y1) * fraction;
    svg.append(el('text', { x: x0 - 4, y: y + 3, 'text-anchor': 'end' }, format(top * fraction)));
  }
  if (points.length) {
    const tMin = points[0].t;
    const tMax = Math.max(points[points.length - 1].t, tMin + 1);
    const x = (t) => x0 + ((t - tMin) / (tMax - tMin)) * (x1 - x0);
    const y = (v) => y0 - (Math.min(v, top) / top) * (y0 - y1);
    const line = points.map((p, i) => `${i ? 'L' : 'M'}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(' ');
    svg.append(el('path', { class: 'area', d: `${line} L${x(tMax).toFixed(1)},${y0} L${x(tMin).toFixed(1)},${y0} Z` }));
    svg.append(el('path', { class: 'line', d: line }));
    const clock = (t) => new Date(t).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
    svg.append(el('text', { x: x0, y: H - 4 }, clock(tMin)));
    svg.append(el('text', { x: x1, y: H - 4, 'text-anchor': 'end' }, clock(tMax)));
  }
  return svg;
}
