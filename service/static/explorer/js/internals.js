// The Internals tab: first-layer filters, activation maps of any layer for an image, and
// collections (upload, then top patches / neighbours / embedding map views run as jobs; hover a
// point of the map to see its image).

import { ProblemError, blobUrl, followJob, getJSON, isAbort, multipart } from './api.js';
import { schemaForm } from './schema-form.js';
import { componentSchema, layerChoices, on, state } from './state.js';
import {
  SAMPLES, clear, dataUrl, el, fmt, imagePicker, option, pct, problemBox, progressBar, sampleFile, showError,
  statusPill, svg, toast,
} from './ui.js';

const ui = {};
const COLORMAPS = ['viridis', 'inferno', 'magma', 'turbo', 'jet', 'hot', 'gray', 'coolwarm'];
// Which CollectionViewParams fields each view uses (the rest would be ignored or refused).
const VIEW_FIELDS = {
  top_patches: ['layer', 'size', 'top_channels', 'k', 'projection', 'channels'],
  neighbours: ['layer', 'size', 'k', 'metric'],
  embedding_map: ['layer', 'size', 'method', 'seed', 'map_size'],
  calibrate: ['layer', 'size', 'head'],
};
const VIEW_TITLES = { top_patches: 'Top activating patches', neighbours: 'Nearest neighbours',
  embedding_map: 'Embedding map', calibrate: 'Threshold calibration' };

const coll = { info: null, files: [], labels: null };

export function mountInternals(root) {
  // Filters
  ui.fLayer = el('select#filters-layer');
  ui.fPer = el('input#filters-per', { type: 'checkbox', checked: true });
  ui.fOut = el('div.inspect-out#filters-out', el('div.placeholder', 'First-layer filters appear here.'));
  const filtersCard = el('section.card',
    el('div.card-head', el('h2', 'Filters'), el('button#filters-run', { type: 'button', text: 'Show filters',
      on: { click: () => runFilters() } })),
    el('p.muted', 'The weights of a convolution, one tile per filter (RGB for the first layer).'),
    el('div.row.wrap', el('div.field', el('label', { for: 'filters-layer' }, 'Layer'), ui.fLayer),
      el('div.field.check', ui.fPer, el('label', { for: 'filters-per' }, 'normalize each filter'))),
    ui.fOut);

  // Activations
  ui.aPicker = imagePicker({ label: 'Image', compact: true, name: 'activations-image',
    onChange: (f) => { if (f) runActivations(); } });
  ui.aLayer = el('select#activations-layer');
  ui.aTop = el('input#activations-top', { type: 'number', min: 1, max: 256, value: 16 });
  ui.aRank = el('select', option('mean', 'mean', true), option('max', 'max'));
  ui.aCmap = el('select', COLORMAPS.map((c) => option(c, c, c === 'viridis')));
  ui.aOut = el('div.inspect-out#activations-out', el('div.placeholder', 'Pick an image to see the strongest channels.'));
  const actsCard = el('section.card',
    el('div.card-head', el('h2', 'Activations'), el('button#activations-run', { type: 'button', text: 'Show activations',
      on: { click: () => runActivations() } })),
    el('div.acts-layout', ui.aPicker.element,
      el('div', el('div.row.wrap',
        el('div.field.grow', el('label', { for: 'activations-layer' }, 'Layer'), ui.aLayer),
        el('div.field', el('label', { for: 'activations-top' }, 'Channels'), ui.aTop),
        el('div.field', el('label', 'Rank by'), ui.aRank),
        el('div.field', el('label', 'Colormap'), ui.aCmap)), ui.aOut)));

  // Collections
  ui.cFiles = el('input#collection-files', { type: 'file', multiple: true, accept: 'image/*,.zip',
    on: { change: () => { addFiles([...ui.cFiles.files]); ui.cFiles.value = ''; } } });
  ui.cLabels = el('input#collection-labels', { type: 'text', placeholder: 'optional: one label per image, comma-separated' });
  ui.cThumbs = el('div.coll-thumbs');
  ui.cInfo = el('div.coll-info');
  ui.cUpload = el('button#collection-upload', { type: 'button', text: 'Upload collection',
    on: { click: () => uploadCollection() } });
  ui.vView = el('select#view-type', { on: { change: () => buildViewForm() } },
    Object.entries(VIEW_TITLES).map(([k, t]) => option(k, t, k === 'embedding_map')));
  ui.vForm = el('div.view-form');
  ui.vQuery = imagePicker({ label: 'Query image', compact: true, name: 'neighbours-query' });
  ui.vRun = el('button#view-run', { type: 'button', text: 'Run view', disabled: true, on: { click: () => runView() } });
  ui.vProblem = el('div');
  ui.views = el('div.views#views');
  const collCard = el('section.card',
    el('h2', 'Collections'),
    el('p.muted', 'A set of images uploaded once, then viewed through the network: the patches that excite '
      + 'a layer\'s channels most, a query\'s nearest neighbours, a 2-D map of the features.'),
    el('div.coll-layout',
      el('div',
        el('h4', '1 · Images'),
        el('div.row.wrap', el('label.button.secondary', { for: 'collection-files' }, 'Choose images or a ZIP…'),
          ui.cFiles,
          el('button.secondary#collection-samples', { type: 'button', text: 'Add the sample photos',
            on: { click: () => addSamples() } }),
          el('button.link', { type: 'button', text: 'clear', on: { click: () => { coll.files = []; renderThumbs(); } } })),
        ui.cThumbs,
        el('div.field', el('label', { for: 'collection-labels' }, 'Labels'), ui.cLabels),
        el('div.row', ui.cUpload), ui.cInfo),
      el('div',
        el('h4', '2 · View'),
        el('div.field', el('label', { for: 'view-type' }, 'View'), ui.vView),
        ui.vQuery.element, ui.vForm, ui.vProblem, el('div.row', ui.vRun))),
    ui.views);

  clear(root, el('div.internals-top', filtersCard, actsCard), collCard);
  on('model', () => { fillLayers(); buildViewForm(); });
  on('catalog', () => buildViewForm());
  root.addEventListener('explorer:show', () => {
    if (!ui.fOut.querySelector('img')) runFilters();
    if (!ui.aPicker.get()) sampleFile('chelsea').then((f) => ui.aPicker.set(f)).catch(() => {});
  });
  renderThumbs();
}

function fillLayers() {
  const convs = layerChoices({ spatialOnly: true, kinds: ['Conv'] });
  clear(ui.fLayer, option('', `first convolution${convs[0] ? ` — ${convs[0].name}` : ''}`, true),
    convs.map((l) => option(l.name, l.text)));
  const all = layerChoices({ spatialOnly: true });
  const def = state.detail?.default_layer;
  clear(ui.aLayer, all.map((l) => option(l.name, l.isDefault ? `${l.text}  (default)` : l.text, l.name === def)));
  ui.fOut.replaceChildren(el('div.placeholder', 'First-layer filters appear here.'));
}

async function runFilters() {
  if (!state.model) return;
  const params = { per_filter: ui.fPer.checked };
  if (ui.fLayer.value) params.layer = ui.fLayer.value;
  clear(ui.fOut, el('div.placeholder.loading', 'Loading filters…'));
  try {
    const r = await getJSON(`/v1/models/${encodeURIComponent(state.model)}/inspect/filters`,
      { method: 'POST', body: { params } });
    clear(ui.fOut, el('figure', el('img.pixelated#filters-grid', { src: dataUrl(r.grid_png), alt: 'filters' }),
      el('figcaption.muted', `${r.layer} · weights ${r.shape.join('×')}`)));
  } catch (err) {
    showError(ui.fOut, err);
  }
}

async function runActivations() {
  const f = ui.aPicker.get();
  if (!f) { toast('Pick an image first.', 'warn'); return; }
  const params = { layer: ui.aLayer.value || undefined, top: Number(ui.aTop.value) || 16, rank_by: ui.aRank.value,
    colormap: ui.aCmap.value, tile: 96 };
  clear(ui.aOut, el('div.placeholder.loading', 'Running the network…'));
  try {
    const r = await getJSON(`/v1/models/${encodeURIComponent(state.model)}/inspect/activations`,
      { method: 'POST', body: multipart([f], params) });
    clear(ui.aOut,
      el('figure', el('img#activations-grid', { src: dataUrl(r.grid_png), alt: 'activation maps' }),
        el('figcaption.muted', `${r.layer} · output ${r.shape.join('×')} · strongest ${r.channels.length} channels`
          + ` by ${params.rank_by}`)),
      el('details', el('summary', 'Channel statistics'), el('table.compact',
        el('thead', el('tr', ['channel', 'mean', 'max', 'active'].map((h) => el('th', h)))),
        el('tbody', r.channels.map((c) => el('tr', el('td', String(c.channel)), el('td', fmt(c.mean)),
          el('td', fmt(c.max)), el('td', pct(c.active_fraction))))))));
  } catch (err) {
    showError(ui.aOut, err);
  }
}

function addFiles(files) {
  for (const f of files) coll.files.push({ file: f, url: f.type.startsWith('image/') ? URL.createObjectURL(f) : null });
  renderThumbs();
}

async function addSamples() {
  const files = await Promise.all(SAMPLES.map((s) => sampleFile(s.name)));
  addFiles(files);
  if (!ui.cLabels.value) ui.cLabels.value = SAMPLES.map((s) => s.name).join(', ');
}

function renderThumbs() {
  clear(ui.cThumbs, coll.files.length ? coll.files.map((x, i) => el('figure.thumb', x.url
    ? el('img', { src: x.url, alt: x.file.name }) : el('div.zip', 'ZIP'), el('figcaption', `#${i} ${x.file.name}`)))
    : el('div.muted', 'No images yet.'));
  ui.cUpload.disabled = !coll.files.length;
}

async function uploadCollection() {
  const labels = ui.cLabels.value.split(',').map((x) => x.trim()).filter(Boolean);
  const images = coll.files.filter((x) => x.url).map((x) => x.file);
  const zips = coll.files.filter((x) => !x.url).map((x) => x.file);
  const fd = multipart(images, labels.length ? { labels } : {});
  for (const z of zips) fd.append('zip', z, z.name);
  ui.cUpload.disabled = true;
  clear(ui.cInfo, el('div.muted.loading', 'Uploading…'));
  try {
    const info = await getJSON('/v1/collections', { method: 'POST', body: fd });
    coll.info = info;
    coll.local = zips.length ? [] : coll.files.map((x) => x.url);
    coll.labels = info.labels;
    clear(ui.cInfo, el('div.note.ok', el('strong', 'Collection '), el('code#collection-id', info.id),
      ` · ${info.count} images · ${Math.round(info.bytes / 1024)} KB · kept ${Math.round(info.ttl_s / 3600)} h`));
    ui.vRun.disabled = false;
  } catch (err) {
    showError(ui.cInfo, err, { compact: true });
  } finally {
    ui.cUpload.disabled = !coll.files.length;
  }
}

function buildViewForm() {
  const view = ui.vView.value;
  const schema = componentSchema('CollectionViewParams');
  ui.vQuery.element.hidden = view !== 'neighbours';
  if (!schema) { clear(ui.vForm, el('div.muted', 'No schema for collection views.')); return; }
  const keep = VIEW_FIELDS[view] || [];
  const omit = Object.keys(schema.properties || {}).filter((k) => !keep.includes(k));
  const preset = view === 'embedding_map' ? { map_size: 512 } : view === 'top_patches' ? { top_channels: 4, k: 4 }
    : {};
  ui.viewForm = schemaForm(schema, { omit, basic: 4, preset });
  clear(ui.vForm, ui.viewForm.element);
}

async function runView() {
  if (!coll.info) return;
  const view = ui.vView.value;
  clear(ui.vProblem);
  let params;
  try {
    params = { collection: coll.info.id, view, ...ui.viewForm.read() };
  } catch (err) {
    clear(ui.vProblem, problemBox(new ProblemError({ title: 'Check the parameters', detail: err.message })));
    return;
  }
  const job = { type: 'collection', model: state.model, params };
  const query = ui.vQuery.get();
  if (view === 'neighbours' && !query) {
    clear(ui.vProblem, problemBox(new ProblemError({ title: 'A query image is needed',
      detail: 'Neighbours are found for one query image.' })));
    return;
  }
  const bar = progressBar();
  const pill = el('span', statusPill('queued'));
  const body = el('div.view-body', bar.element);
  const panel = el('article.view-panel', { dataset: { view } },
    el('div.card-head', el('h3', VIEW_TITLES[view], ' ', el('span.muted', `· ${coll.info.count} images`)), pill),
    body);
  ui.views.prepend(panel);
  const mapDefault = componentSchema('CollectionViewParams')?.properties?.map_size?.default ?? 768;
  const snapshot = { local: coll.local || [], labels: coll.labels, query: query ? ui.vQuery.url() : null,
    mapSize: params.map_size ?? mapDefault };
  try {
    const req = view === 'neighbours' ? multipart([query], job) : { params: job };
    const rec0 = await getJSON('/v1/jobs', { method: 'POST', body: req });
    const rec = await followJob(rec0.id, {
      status: (r) => { clear(pill, statusPill(r.status)); if (r.progress?.total) bar.set(r.progress.step / r.progress.total); },
      progress: (p) => bar.set(p.total ? p.step / p.total : 0, `${p.step}/${p.total} ${p.stage || ''}`),
    });
    clear(pill, statusPill(rec.status));
    if (rec.status !== 'succeeded') {
      clear(body, problemBox(new ProblemError({ title: `The view ${rec.status}`, type: rec.error?.type || 'about:blank',
        detail: rec.error?.detail || '' })));
      return;
    }
    const summary = await getJSON(`/v1/jobs/${rec.id}/artifacts/result.json`);
    await renderView(body, rec, summary, snapshot);
  } catch (err) {
    if (!isAbort(err)) showError(body, err);
  }
}

async function renderView(body, rec, summary, snap) {
  const pic = (rec.artifacts || []).find((a) => a.media_type === 'image/png');
  const url = pic ? await blobUrl(pic.href) : null;
  const thumb = (i) => (snap.local[i] ? el('img', { src: snap.local[i], alt: `#${i}` }) : el('div.zip', `#${i}`));
  const name = (i) => `#${i}${snap.labels?.[i] ? ` ${snap.labels[i]}` : ''}`;
  if (summary.view === 'embedding_map') {
    clear(body, embeddingMap(url, summary, snap), el('p.muted', `${summary.method.toUpperCase()} of the features of `
      + `${summary.count} images · hover a point to see its image.`));
  } else if (summary.view === 'neighbours') {
    const row = (title, idx, dist) => el('div.nb-row', el('div.nb-title', title), idx.map((i, j) => el('figure.thumb',
      { title: `${name(i)} · distance ${fmt(dist[j], 4)}` }, thumb(i), el('figcaption', name(i)),
      el('figcaption.dist', `d = ${fmt(dist[j], 3)}`))));
    clear(body, el('div.nb-query', el('div.nb-title', 'Query'), snap.query ? el('img', { src: snap.query, alt: 'query' })
      : null), row(`Feature space (${summary.layer}, ${summary.metric})`, summary.feature_indices,
      summary.feature_distances), row('Pixel space', summary.pixel_indices, summary.pixel_distances),
    url ? el('details', el('summary', 'As one picture'), el('img.full', { src: url, alt: 'neighbours' })) : null);
  } else if (summary.view === 'top_patches') {
    clear(body, url ? el('img.full#patches-grid', { src: url, alt: 'top patches' }) : null,
      el('table.compact', el('thead', el('tr', ['channel', 'score', 'patches from images'].map((h) => el('th', h)))),
        el('tbody', (summary.channels || []).map((c) => el('tr', el('td', String(c.channel)), el('td', fmt(c.score)),
          el('td', c.patches.map((p) => name(p.image)).join(', ')))))));
  } else {
    clear(body, el('dl.kv', Object.entries(summary).filter(([, v]) => typeof v !== 'object')
      .map(([k, v]) => [el('dt', k), el('dd', typeof v === 'number' ? fmt(v) : String(v))])));
  }
}

/**
 * The map drawn here from the coordinates (one scale for both axes, y up), with the uploaded images
 * as markers; hovering a point shows its image, label and coordinates. The service's own picture
 * of the map is offered below it.
 */
function embeddingMap(url, summary, snap) {
  const size = 560;
  const coords = summary.coords || [];
  const n = coords.length;
  const thumb = Math.round(Math.min(96, Math.max(28, size / (1.5 * Math.sqrt(Math.max(n, 1)) + 1))));
  const lo = [0, 1].map((k) => Math.min(...coords.map((c) => c[k])));
  const hi = [0, 1].map((k) => Math.max(...coords.map((c) => c[k])));
  const span = Math.max(hi[0] - lo[0], hi[1] - lo[1]);
  const usable = size - thumb;
  const centres = coords.map((c) => {
    const u = [0, 1].map((k) => (span > 0 ? (c[k] - lo[k]) / span + (1 - (hi[k] - lo[k]) / span) / 2 : 0.5));
    return [thumb / 2 + u[0] * usable, thumb / 2 + (1 - u[1]) * usable];
  });
  const labels = [...new Set(snap.labels || [])];
  const hue = (i) => (snap.labels ? `hsl(${(labels.indexOf(snap.labels[i]) * 137.5) % 360} 70% 45%)` : '#4338ca');
  const tip = el('div.map-tip', { hidden: true });
  const plot = svg('svg', { class: 'map-svg', viewBox: `0 0 ${size} ${size}`, role: 'img',
    'aria-label': 'embedding map' });
  centres.forEach(([cx, cy], i) => {
    const g = svg('g', { class: 'map-point', 'data-index': i, tabindex: 0 });
    if (snap.local[i]) {
      g.append(svg('image', { href: snap.local[i], x: cx - thumb / 2, y: cy - thumb / 2, width: thumb, height: thumb,
        preserveAspectRatio: 'xMidYMid meet' }));
    }
    g.append(svg('rect', { x: cx - thumb / 2, y: cy - thumb / 2, width: thumb, height: thumb, rx: 5,
      class: 'map-frame', stroke: hue(i) }));
    g.append(svg('circle', { cx, cy: cy + thumb / 2, r: 4, fill: hue(i), class: 'map-dot' }));
    const show = () => {
      clear(tip, snap.local[i] ? el('img', { src: snap.local[i], alt: `#${i}` }) : null,
        el('div', el('strong', `#${i}`), snap.labels?.[i] ? ` ${snap.labels[i]}` : '',
          el('div.muted', `(${fmt(coords[i][0], 3)}, ${fmt(coords[i][1], 3)})`)));
      tip.hidden = false;
      tip.style.left = `${(100 * cx) / size}%`;
      tip.style.top = `${(100 * cy) / size}%`;
      tip.classList.toggle('left', cx > size * 0.55);
      plot.append(g);  // on top of its neighbours
    };
    g.addEventListener('mouseenter', show);
    g.addEventListener('focus', show);
    g.addEventListener('mouseleave', () => { tip.hidden = true; });
    g.addEventListener('blur', () => { tip.hidden = true; });
    plot.append(g);
  });
  const legend = labels.length ? el('div.map-legend', labels.map((l) => el('span', el('i', {
    style: `background:${hue(snap.labels.indexOf(l))}` }), l))) : null;
  const table = el('table.compact.map-table', el('thead', el('tr', ['#', 'label', 'x', 'y'].map((h) => el('th', h)))),
    el('tbody', coords.map((c, i) => el('tr', {
      on: { mouseenter: () => plot.querySelector(`[data-index="${i}"]`)?.dispatchEvent(new Event('mouseenter')),
        mouseleave: () => { tip.hidden = true; } },
    }, el('td', String(i)), el('td', snap.labels?.[i] || ''), el('td', fmt(c[0], 3)), el('td', fmt(c[1], 3))))));
  return el('div', el('div.map-layout', el('div.map-wrap', plot, tip), el('div.map-side', table)), legend,
    url ? el('details', el('summary', 'The service\'s picture of the map'), el('img.full.map-img', { src: url,
      alt: 'embedding map' })) : null);
}
