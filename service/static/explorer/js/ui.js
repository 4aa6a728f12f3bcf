// Small DOM helpers shared by the tabs: element builder, problem messages, image pickers,
// the heatmap-over-image view, and inline SVG charts.

import { ProblemError, isAbort } from './api.js';

/** el('div.card#id', {attrs, on: {click}}, ...children) */
export function el(spec, attrs = {}, ...children) {
  const m = spec.match(/^([a-z0-9-]+)?((?:[.#][\w-]+)*)$/i);
  const node = document.createElement(m?.[1] || 'div');
  for (const part of (m?.[2] || '').match(/[.#][\w-]+/g) || []) {
    if (part[0] === '.') node.classList.add(part.slice(1)); else node.id = part.slice(1);
  }
  if (attrs instanceof Node || typeof attrs === 'string' || Array.isArray(attrs)) {
    children.unshift(attrs);
    attrs = {};
  }
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'on') for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else if (k === 'text') node.textContent = v;
    else if (k === 'html') node.innerHTML = v;
    else if (k in node && typeof v !== 'string') node[k] = v;
    else node.setAttribute(k, v === true ? '' : v);
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

export const $ = (sel, root = document) => root.querySelector(sel);

export function fmt(x, digits = 3) {
  if (x === null || x === undefined || Number.isNaN(x)) return '—';
  if (typeof x !== 'number') return String(x);
  if (Number.isInteger(x)) return String(x);
  const a = Math.abs(x);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return x.toExponential(2);
  return x.toFixed(digits).replace(/\.?0+$/, '') || '0';
}

export const pct = (p) => (p === null || p === undefined ? '—' : `${(100 * p).toFixed(p >= 0.1 ? 1 : 2)}%`);

/** A problem as its title and detail (plus validation messages); never a stack trace. */
export function problemBox(err, { compact = false } = {}) {
  if (!(err instanceof ProblemError)) {
    err = new ProblemError({ title: 'Something went wrong', detail: String(err?.message || err) });
  }
  const items = [];
  const errors = err.extra?.errors;
  if (Array.isArray(errors)) {
    for (const e of errors.slice(0, 6)) {
      const loc = (e.loc || []).filter((x) => x !== 'body').join('.');
      items.push(el('li', `${loc ? `${loc}: ` : ''}${e.msg || ''}`));
    }
  }
  const choices = err.extra?.choices;
  const hint = err.status === 401 ? 'Enter an API key in the field at the top right.' : null;
  return el(`div.problem${compact ? '.compact' : ''}`, { role: 'alert' },
    el('div.problem-title', err.title, err.status ? el('span.problem-status', String(err.status)) : null),
    err.detail ? el('div.problem-detail', err.detail) : null,
    items.length ? el('ul.problem-list', items) : null,
    Array.isArray(choices) ? el('div.problem-detail', `Valid: ${choices.slice(0, 20).join(', ')}`) : null,
    hint ? el('div.problem-hint', hint) : null,
    err.type && err.type !== 'about:blank' ? el('div.problem-type', err.slug) : null);
}

/** Show err in container unless it is an abort (a newer request replaced the old one). */
export function showError(container, err, opts) {
  if (isAbort(err)) return;
  clear(container, problemBox(err, opts));
}

let toastTimer = null;
export function toast(message, kind = 'info') {
  const host = $('#toast');
  clear(host, el(`div.toast.${kind}`, message));
  host.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { host.hidden = true; }, 3500);
}

export const SAMPLES = [
  { name: 'chelsea', title: 'Chelsea the cat' },
  { name: 'coffee', title: 'A cup of coffee' },
  { name: 'astronaut', title: 'Eileen Collins' },
  { name: 'rocket', title: 'A rocket on its pad' },
];

export async function sampleFile(name) {
  const res = await fetch(`samples/${name}.jpg`);
  const blob = await res.blob();
  return new File([blob], `${name}.jpg`, { type: 'image/jpeg' });
}

/**
 * A drop zone with a file input and the bundled sample photos.
 * onChange(file|null) is called whenever the image changes. Returns {element, get, set, clear}.
 */
export function imagePicker({ label = 'Image', optional = false, onChange = () => {}, compact = false,
  name = 'image' } = {}) {
  let file = null;
  let url = null;
  const input = el('input', { type: 'file', accept: 'image/*', name, dataset: { role: 'file' } });
  const preview = el('img.picker-preview', { alt: '' });
  const caption = el('div.picker-caption', optional ? 'optional — drop, choose or pick a sample' :
    'Drop an image here, choose a file, or pick a sample');
  const removeBtn = el('button.link', { type: 'button', text: 'remove', hidden: true,
    on: { click: () => set(null) } });
  const zone = el(`label.dropzone${compact ? '.compact' : ''}`, input, preview, caption);
  const samples = el('div.samples', SAMPLES.map((s) => el('button.sample', {
    type: 'button', title: s.title, dataset: { sample: s.name },
    on: { click: async () => set(await sampleFile(s.name)) },
  }, el('img', { src: `samples/${s.name}.jpg`, alt: s.title, loading: 'lazy' }))));

  function set(f) {
    file = f;
    if (url) URL.revokeObjectURL(url);
    url = f ? URL.createObjectURL(f) : null;
    if (url) preview.src = url; else preview.removeAttribute('src');
    zone.classList.toggle('has-image', !!f);
    caption.textContent = f ? `${f.name || 'image'} · ${Math.round((f.size || 0) / 1024)} KB` :
      (optional ? 'optional — drop, choose or pick a sample' : 'Drop an image here, choose a file, or pick a sample');
    removeBtn.hidden = !f || !optional;
    onChange(f);
  }

  input.addEventListener('change', () => { if (input.files?.[0]) set(input.files[0]); input.value = ''; });
  zone.addEventListener('dragover', (e) => { e.preventDefault(); zone.classList.add('drag'); });
  zone.addEventListener('dragleave', () => zone.classList.remove('drag'));
  zone.addEventListener('drop', (e) => {
    e.preventDefault();
    zone.classList.remove('drag');
    const f = [...(e.dataTransfer?.files || [])].find((x) => x.type.startsWith('image/'));
    if (f) set(f);
  });
  const element = el('div.picker', el('div.picker-head', el('span.label', label), removeBtn), zone, samples);
  return { element, get: () => file, url: () => url, set, clear: () => set(null) };
}

/** The image with a heatmap laid over it (alpha is CSS opacity: the server's own blend), plus regions. */
export function heatView({ baseUrl, heatUrl, width, height, alpha = 0.5, regions = null, label = '' }) {
  const base = el('img.hv-base', { src: baseUrl, alt: label ? `${label} (image)` : 'image' });
  const heat = el('img.hv-heat.overlay', { src: heatUrl, alt: label ? `${label} (heatmap)` : 'heatmap',
    style: `opacity:${alpha}` });
  const ratio = width / Math.max(1, height);
  const wrap = el('div.heatview', { style: `aspect-ratio:${width}/${height};width:min(100%, ${Math.round(620 * ratio)}px)` },
    base, heat);
  if (regions?.length) wrap.append(regionsSvg(regions, width, height));
  return wrap;
}

export function setAlpha(root, alpha) {
  for (const img of root.querySelectorAll('img.hv-heat')) img.style.opacity = alpha;
}

const SVG_NS = 'http://www.w3.org/2000/svg';
export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) node.setAttribute(k, v);
  for (const c of children.flat()) if (c) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function regionsSvg(regions, width, height) {
  const s = svg('svg', { class: 'hv-regions', viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: 'none' });
  const stroke = Math.max(1.5, Math.max(width, height) / 250);
  regions.forEach((r, i) => {
    const [x0, y0, x1, y1] = r.box;
    if (r.contour?.length > 2) {
      s.append(svg('polygon', { points: r.contour.map((p) => p.join(',')).join(' '), class: 'contour',
        'stroke-width': stroke, 'vector-effect': 'non-scaling-stroke' }));
    }
    s.append(svg('rect', { x: x0, y: y0, width: x1 - x0, height: y1 - y0, class: 'box',
      'stroke-width': stroke * 1.4, 'vector-effect': 'non-scaling-stroke' }));
    s.append(svg('text', { x: x0 + 4, y: y0 + Math.max(12, height / 22), class: 'box-label',
      'font-size': Math.max(11, height / 24) }, `${i + 1}`));
  });
  return s;
}

/** A line chart as inline SVG: series = [{points: [[x, y]...], label, cls}]. */
export function lineChart(series, { width = 460, height = 170, xLabel = 'step', yLabel = '', empty = 'no data yet',
  yRange = null } = {}) {
  const pts = series.flatMap((s) => s.points).filter((p) => Number.isFinite(p[0]) && Number.isFinite(p[1]));
  const hasLegend = series.length > 1 || !!series[0]?.label;
  const pad = { l: 52, r: 12, t: hasLegend ? 24 : 10, b: 30 };
  const root = svg('svg', { class: 'chart', viewBox: `0 0 ${width} ${height}`, role: 'img',
    'aria-label': yLabel || 'chart' });
  if (!pts.length) {
    root.append(svg('text', { x: width / 2, y: height / 2, class: 'chart-empty', 'text-anchor': 'middle' }, empty));
    return root;
  }
  let [x0, x1] = [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0]))];
  let [y0, y1] = yRange || [Math.min(...pts.map((p) => p[1])), Math.max(...pts.map((p) => p[1]))];
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1) { const d = Math.abs(y0) * 0.1 || 1; y0 -= d; y1 += d; }
  const X = (x) => pad.l + ((x - x0) / (x1 - x0)) * (width - pad.l - pad.r);
  const Y = (y) => height - pad.b - ((y - y0) / (y1 - y0)) * (height - pad.t - pad.b);
  const grid = svg('g', { class: 'chart-grid' });
  for (let i = 0; i <= 4; i += 1) {
    const yv = y0 + ((y1 - y0) * i) / 4;
    grid.append(svg('line', { x1: pad.l, x2: width - pad.r, y1: Y(yv), y2: Y(yv) }));
    grid.append(svg('text', { x: pad.l - 6, y: Y(yv) + 4, 'text-anchor': 'end' }, fmt(yv, 3)));
  }
  for (const xv of [x0, (x0 + x1) / 2, x1]) {
    grid.append(svg('text', { x: X(xv), y: height - pad.b + 16, 'text-anchor': 'middle' }, fmt(xv, 1)));
  }
  grid.append(svg('text', { x: width - pad.r, y: height - 4, 'text-anchor': 'end', class: 'axis-label' }, xLabel));
  root.append(grid);
  for (const s of series) {
    const p = s.points.filter((q) => Number.isFinite(q[0]) && Number.isFinite(q[1]));
    if (!p.length) continue;
    const d = p.map((q, i) => `${i ? 'L' : 'M'}${X(q[0]).toFixed(1)},${Y(q[1]).toFixed(1)}`).join('');
    root.append(svg('path', { d, class: `chart-line ${s.cls || ''}` }));
    if (p.length < 40) {
      for (const q of p) root.append(svg('circle', { cx: X(q[0]), cy: Y(q[1]), r: 2.5, class: `chart-dot ${s.cls || ''}` }));
    }
  }
  if (hasLegend) {
    const legend = svg('g', { class: 'chart-legend' });
    series.forEach((s, i) => {
      legend.append(svg('rect', { x: pad.l + i * 110, y: 4, width: 10, height: 10, class: `swatch ${s.cls || ''}` }));
      legend.append(svg('text', { x: pad.l + 14 + i * 110, y: 13 }, s.label || ''));
    });
    root.append(legend);
  }
  return root;
}

/** A progress bar: returns {element, set(fraction, text)}. */
export function progressBar() {
  const fill = el('div.bar-fill');
  const text = el('div.bar-text', '');
  const element = el('div.bar', { role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': 100 }, fill, text);
  return {
    element,
    set(fraction, label = '') {
      const f = Math.max(0, Math.min(1, fraction || 0));
      fill.style.width = `${(100 * f).toFixed(1)}%`;
      element.setAttribute('aria-valuenow', Math.round(100 * f));
      text.textContent = label;
    },
  };
}

export function statusPill(status) {
  return el(`span.pill.${status || 'unknown'}`, status || '…');
}

export function debounce(fn, ms) {
  let t = null;
  return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
}

export function dataUrl(b64, type = 'image/png') {
  return b64 ? `data:${type};base64,${b64}` : null;
}

export function option(value, text, selected = false) {
  const o = el('option', { value, text });
  if (selected) o.selected = true;
  return o;
}
