// The Trust tab: which explanation method can you trust on your images? Upload a labelled collection
// (a ZIP and its labels file, as `cnnviz samples` writes them) or name one, pick methods, run an
// `evaluate` job, and read the summary table, the cascading-randomization grid and the curves.

import { TERMINAL, blobUrl, followJob, getJSON, isAbort, request } from './api.js';
import { on, state } from './state.js';
import { clear, el, problemBox, progressBar, showError, statusPill } from './ui.js';

const DEFAULT_METHODS = ['gradcam', 'guided_backprop', 'saliency'];
const ui = {};
let current = null;

export function mountTrust(root) {
  ui.zip = el('input#trust-zip', { type: 'file', accept: '.zip,application/zip' });
  ui.labels = el('input#trust-labels', { type: 'file', accept: '.json,application/json' });
  ui.cid = el('input#trust-collection', { type: 'text', placeholder: 'or an existing collection id',
    spellcheck: 'false' });
  ui.methods = el('div.trust-methods');
  ui.classes = el('textarea#trust-classes', { rows: 2, spellcheck: 'false',
    placeholder: '{"cat": "tabby", "rocket": "missile"}' });
  ui.classes.value = '{"cat": "tabby", "rocket": "missile"}';
  ui.steps = el('input#trust-steps', { type: 'number', min: 2, max: 64, value: 16 });
  ui.size = el('input#trust-size', { type: 'number', min: 32, max: 512, placeholder: 'model default' });
  ui.random = el('select#trust-randomization', ['both', 'cascading', 'independent', 'none']
    .map((v) => el('option', { value: v }, v)));
  ui.problem = el('div.form-problem');
  ui.run = el('button#trust-run', { type: 'submit', text: 'Evaluate' });
  ui.cancel = el('button.secondary', { type: 'button', text: 'Cancel', hidden: true, on: { click: () => cancel() } });
  ui.bar = progressBar();
  ui.status = el('div.trust-status');
  ui.result = el('div.trust-result#trust-result', el('div.placeholder',
    'Run an evaluation: faithfulness (deletion / insertion against a random order), pointing games against '
    + 'the centre, and the randomization test of Adebayo et al. per method.'));
  const field = (label, input, hint = '') => el('div.field', el('label', { for: input.id }, label), input,
    hint ? el('small.muted', hint) : null);
  const form = el('form.trust-form', { novalidate: true, on: { submit: (e) => { e.preventDefault(); submit(); } } },
    field('Images (ZIP)', ui.zip, 'labelled.zip from `cnnviz samples`'),
    field('Labels and boxes (JSON)', ui.labels, '{"labels": [...], "boxes": [...]}, in image order'),
    field('Collection', ui.cid),
    el('div.field', el('span.label', 'Methods'), ui.methods),
    field('Classes', ui.classes, 'collection label -> model class (label or index)'),
    el('div.row', field('Steps', ui.steps), field('Size (px)', ui.size), field('Randomization', ui.random)),
    ui.problem, el('div.row.actions', ui.cancel, ui.run));
  clear(root, el('div.jobs-layout',
    el('section.card', el('h2', 'Which map can I trust?'), form),
    el('section.card.detail-card', el('h2', 'Evaluation'), ui.bar.element, ui.status, ui.result)));
  on('catalog', () => fillMethods());
  on('model', () => fillMethods());
  if (state.methods.length) fillMethods();
}

function fillMethods() {
  // Only the methods that answer for the chosen model (GET /v1/models/{m} lists them): no D-RISE for a
  // classifier, no attention rollout for a convnet.
  const answers = state.detail?.methods;
  const offered = answers ? state.methods.filter((m) => answers.includes(m.name)) : state.methods;
  clear(ui.methods, offered.map((m) => el('label.check', el('input', { type: 'checkbox', value: m.name,
    checked: DEFAULT_METHODS.includes(m.name), dataset: { method: m.name } }), ` ${m.name}`)));
}

async function collectionId() {
  if (ui.zip.files?.[0]) {
    const meta = ui.labels.files?.[0] ? JSON.parse(await ui.labels.files[0].text()) : {};
    const fd = new FormData();
    fd.append('zip', ui.zip.files[0], ui.zip.files[0].name);
    fd.append('params', JSON.stringify({ labels: meta.labels, boxes: meta.boxes }));
    const rec = await (await request('/v1/collections', { method: 'POST', body: fd })).json();
    ui.cid.value = rec.id;
    return rec.id;
  }
  const cid = ui.cid.value.trim();
  if (!cid) throw new Error('Choose a ZIP of images (with its labels file) or give a collection id');
  return cid;
}

async function submit() {
  clear(ui.problem);
  if (current) current.abort.abort();
  try {
    const methods = [...ui.methods.querySelectorAll('input:checked')].map((i) => ({ method: i.value }));
    const params = { collection: await collectionId(), methods, steps: Number(ui.steps.value) || 16,
      randomization: ui.random.value };
    if (ui.size.value) params.size = Number(ui.size.value);
    if (ui.classes.value.trim()) params.classes = JSON.parse(ui.classes.value);
    const rec = await (await request('/v1/jobs', { method: 'POST',
      body: { params: { type: 'evaluate', model: state.model, params } } })).json();
    follow(rec.id);
  } catch (err) {
    showError(ui.problem, err);
  }
}

async function cancel() {
  if (current) await request(`/v1/jobs/${current.id}`, { method: 'DELETE' }).catch(() => {});
}

async function follow(id) {
  const abort = new AbortController();
  current = { id, abort };
  ui.cancel.hidden = false;
  ui.bar.set(0, 'queued');
  clear(ui.result);
  const show = (rec) => {
    clear(ui.status, statusPill(rec.status), ` job ${id}`);
    const p = rec.progress;
    if (p?.total) ui.bar.set(p.step / p.total, `${p.step} / ${p.total} forwards`);
  };
  try {
    const rec = await followJob(id, { status: show, progress: (p) => show({ status: 'running', progress: p }) },
      { signal: abort.signal });
    show(rec);
    if (rec.status === 'succeeded') {
      ui.bar.set(1, 'done');
      await showResult(id, abort.signal);
    } else if (TERMINAL.has(rec.status)) {
      clear(ui.result, problemBox({ title: `The evaluation ${rec.status}`, detail: rec.error?.message || '' }));
    }
  } catch (err) {
    if (!isAbort(err)) showError(ui.result, err);
  } finally {
    ui.cancel.hidden = true;
  }
}

const f3 = (s) => (s ? s.mean.toFixed(3) : '—');
const ci = (s, pct = false) => {
  if (!s) return '—';
  const k = pct ? 100 : 1;
  const d = pct ? 0 : 3;
  const m = `${(s.mean * k).toFixed(d)}${pct ? '%' : ''}`;
  return s.n > 1 ? `${m} (${(s.low * k).toFixed(d)}–${(s.high * k).toFixed(d)})` : m;
};

async function showResult(id, signal) {
  const res = await getJSON(`/v1/jobs/${id}/artifacts/result.json`, { signal });
  const head = ['method', 'deletion AUC ↓', 'insertion AUC ↑', 'pointing', 'energy', 'Spearman |·| all randomized',
    'SSIM randomized', 'flagged', 's / image'];
  const rows = res.methods.map((m) => {
    const s = m.summary;
    const full = s.fully_randomized || {};
    return el(`tr${m.flagged ? '.flagged' : ''}`, el('th', m.name), el('td', ci(s.deletion_auc)),
      el('td', ci(s.insertion_auc)), el('td', ci(s.pointing, true)), el('td', ci(s.energy)),
      el('td', ci(full.spearman_abs)), el('td', ci(full.ssim)),
      el('td', m.flagged === null ? '—' : (m.flagged ? 'yes' : 'no')), el('td', m.seconds_per_image.toFixed(2)));
  });
  const r = res.random.summary;
  rows.push(el('tr.floor', el('th', 'random pixel order'), el('td', ci(r.deletion_auc)), el('td', ci(r.insertion_auc)),
    ...Array(6).fill(0).map(() => el('td', '—'))));
  if (res.centre) {
    rows.push(el('tr.floor', el('th', 'centre baseline'), el('td', '—'), el('td', '—'),
      el('td', ci(res.centre.summary.pointing, true)), el('td', f3(res.centre.summary.energy)),
      ...Array(4).fill(0).map(() => el('td', '—'))));
  }
  const table = el('table.trust-table', el('thead', el('tr', head.map((h) => el('th', h)))), el('tbody', rows));
  const pics = [];
  for (const name of ['grid.png', 'curves.png']) {
    try {
      pics.push(el('img.trust-picture', { src: await blobUrl(`/v1/jobs/${id}/artifacts/${name}`, { signal }),
        alt: name, dataset: { artifact: name } }));
    } catch (err) {
      if (isAbort(err)) throw err;
    }
  }
  clear(ui.result, el('p.muted', `${res.model}, ${res.count} images at ${res.input_size} px, ${res.steps} steps; `
    + `flagged: Spearman of |map| to the original, averaged over the cascading randomization, ≥ ${res.flag_threshold}. `
    + 'Mean (95% interval) over images.'),
  table, ...pics);
}
