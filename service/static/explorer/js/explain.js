// The Explain tab: an image, a model, a method, a layer and a target -> the map over the image at
// once; alpha is applied in the browser (the same blend the service uses), colormap, boxes and
// faithfulness are asked of the service. A grid compares several methods on the same image and target.
// An explanation over the inline budget comes back as 202 + a job, which is followed to its result.

import { ProblemError, followJob, getJSON, isAbort, multipart, request } from './api.js';
import {
  firstRegionClass, isSegmenter, labelMapTargets, offeredMethods, outlineRegion, regionParams, regionRows,
} from './regions.js';
import { schemaForm } from './schema-form.js';
import { labelOf, layerChoices, on, state } from './state.js';
import { sweepParams, sweepToggle, sweepView } from './sweep.js';
import {
  clear, dataUrl, debounce, el, fmt, heatView, imagePicker, lineChart, option, pct, problemBox,
  progressBar, setAlpha, showError, toast,
} from './ui.js';

// 'auto': the colormap of the method's kind of map (positive: jet, unsigned: hot, signed: seismic).
const COLORMAPS = ['auto', 'jet', 'turbo', 'viridis', 'inferno', 'magma', 'hot', 'gray', 'coolwarm', 'seismic', 'rdbu', 'bwr'];
const SHARED = ['target', 'targets', 'top_k', 'unit', 'region', 'layer', 'layers', 'output', 'localization', 'faithfulness'];
const COMPARE_DEFAULT = ['gradcam', 'gradcampp', 'layercam', 'eigencam', 'saliency'];
const FAMILY = { cam: 'Class activation maps', gradient: 'Gradients', perturbation: 'Perturbation' };

const s = {
  file: null, baseUrl: null, width: 0, height: 0,
  predictions: [], custom: [], target: null, segmentation: null,
  method: 'gradcam', layer: '', sweep: false, alpha: 0.5, colormap: 'auto', normalize: 'auto', asJob: false,
  boxes: false, boxMethod: 'otsu', fraction: 0.5, faith: false, faithSteps: 16,
  methodForm: null, abort: null, compareAbort: null, last: null,
};

let ui = {};

export function mountExplain(root) {
  const picker = imagePicker({ label: 'Image', onChange: (f) => setImage(f), name: 'explain-image' });
  ui.method = el('select#method', { on: { change: () => { s.method = ui.method.value; methodChanged(); } } });
  ui.layer = el('select#layer', { on: { change: () => { s.layer = ui.layer.value; run(); } } });
  ui.layerNote = el('div.help');
  ui.sweep = sweepToggle((on) => { s.sweep = on; ui.layer.disabled = on || !currentMethod()?.uses_layer; run(); });
  ui.methodParams = el('div.method-params');
  ui.asJob = el('input#as-job', { type: 'checkbox', on: { change: () => { s.asJob = ui.asJob.checked; run(); } } });
  ui.targets = el('div.targets#targets', el('div.muted', 'Choose an image to see its top classes.'));
  ui.search = el('input#class-search', { type: 'search', placeholder: 'Any class by name, e.g. “tabby”…',
    autocomplete: 'off', on: { input: () => searchClasses() } });
  ui.matches = el('div.matches');
  ui.alpha = el('input#alpha', { type: 'range', min: 0, max: 1, step: 0.01, value: s.alpha,
    on: { input: () => { s.alpha = Number(ui.alpha.value); ui.alphaOut.textContent = s.alpha.toFixed(2);
      setAlpha(root, s.alpha); } } });
  ui.alphaOut = el('output', s.alpha.toFixed(2));
  ui.colormap = el('select#colormap', { on: { change: () => { s.colormap = ui.colormap.value; run(); markStale(); } } },
    COLORMAPS.map((c) => option(c, c === 'auto' ? 'by kind' : c, c === s.colormap)));
  ui.normalize = el('select#normalize', { on: { change: () => { s.normalize = ui.normalize.value; run(); markStale(); } } },
    option('auto', 'by kind of map', true), option('minmax', 'min–max'), option('max', 'divide by the max'), option('signed', 'signed (around 0)'),
    option('none', 'none (raw values)'));
  ui.boxes = el('input#boxes', { type: 'checkbox', on: { change: () => { s.boxes = ui.boxes.checked; syncToggles(); run(); } } });
  ui.boxMethod = el('select', { on: { change: () => { s.boxMethod = ui.boxMethod.value; syncToggles(); run(); } } },
    option('otsu', 'Otsu threshold', true), option('fraction', 'fraction of the peak'));
  ui.fraction = el('input', { type: 'number', min: 0.05, max: 0.95, step: 0.05, value: s.fraction,
    on: { change: () => { s.fraction = Number(ui.fraction.value); run(); } } });
  ui.faith = el('input#faithfulness', { type: 'checkbox',
    on: { change: () => { s.faith = ui.faith.checked; syncToggles(); run(); } } });
  ui.faithSteps = el('input', { type: 'number', min: 2, max: 128, step: 1, value: s.faithSteps,
    on: { change: () => { s.faithSteps = Number(ui.faithSteps.value); run(); } } });
  ui.boxOpts = el('div.sub', ui.boxMethod, el('label.inline', 'fraction ', ui.fraction));
  ui.faithOpts = el('div.sub', el('label.inline', 'steps ', ui.faithSteps));

  ui.result = el('div.result#explain-result', el('div.placeholder', 'The explanation appears here.'));
  ui.meta = el('div.meta');
  ui.download = el('button.secondary', { type: 'button', text: 'Download PNG', disabled: true,
    on: { click: () => downloadComposite() } });
  ui.compareChecks = el('div.compare-checks');
  ui.compareBtn = el('button#compare-run', { type: 'button', text: 'Compare selected methods',
    on: { click: () => runCompare() } });
  ui.grid = el('div.grid#compare-grid');
  ui.compareNote = el('span.muted');

  clear(root,
    el('aside.sidebar',
      el('section.card', picker.element),
      el('section.card', el('h3', 'Method'),
        el('div.field', el('label', { for: 'method' }, 'Method'), ui.method),
        el('div.field', el('label', { for: 'layer' }, 'Layer'), ui.layer, ui.layerNote),
        ui.sweep.element,
        ui.methodParams,
        el('div.field.check', { title: 'Sends Prefer: respond-async; the service answers 202 and a job' }, ui.asJob,
          el('label', { for: 'as-job' }, 'Run as a job (stored, with progress)'))),
      el('section.card', el('h3', 'Target class'), ui.targets,
        el('div.field', ui.search, ui.matches)),
      el('section.card', el('h3', 'Display'),
        el('div.field', el('label', { for: 'alpha' }, 'Heatmap opacity ', ui.alphaOut), ui.alpha),
        el('div.row', el('div.field.grow', el('label', { for: 'colormap' }, 'Colormap'), ui.colormap),
          el('div.field.grow', el('label', { for: 'normalize' }, 'Normalization'), ui.normalize)),
        el('div.field.check', ui.boxes, el('label', { for: 'boxes' }, 'Localization boxes')), ui.boxOpts,
        el('div.field.check', ui.faith, el('label', { for: 'faithfulness' }, 'Faithfulness (deletion / insertion)')),
        ui.faithOpts)),
    el('div.main',
      el('section.card',
        el('div.card-head', el('h2', 'Explanation'), ui.download),
        el('div.explain-layout', ui.result, ui.meta)),
      el('section.card',
        el('div.card-head', el('h2', 'Compare methods'), el('div.row', ui.compareNote, ui.compareBtn)),
        el('p.muted', 'Same image, target and colormap; the opacity slider applies to every cell. Methods over the '
          + 'inline budget run as jobs and fill in when done.'),
        ui.compareChecks, ui.grid)));
  syncToggles();
  on('catalog', () => fillMethods());
  on('model', () => {
    const seg = isSegmenter(state.detail);  // a segmenter offers only the methods that explain its regions
    if (seg !== Boolean(s.segmenterMethods) && state.methods.length) { s.segmenterMethods = seg; fillMethods(); }
    fillLayers(); s.predictions = []; s.custom = []; if (s.file) setImage(s.file);
  });
  // Bundled sample on first visit, so the tab is never empty.
  root.addEventListener('explorer:show', () => { if (!s.file && !s.loadingSample) loadFirstSample(picker); },
    { once: true });
}

async function loadFirstSample(picker) {
  s.loadingSample = true;
  picker.element.querySelector('[data-sample="chelsea"]')?.click();
}

function syncToggles() {
  ui.boxOpts.hidden = !s.boxes;
  ui.faithOpts.hidden = !s.faith;
  ui.fraction.closest('label').hidden = s.boxMethod !== 'fraction';
}

function currentMethod() {
  return state.methods.find((m) => m.name === s.method) || state.methods[0];
}

function fillMethods() {
  const fams = Object.fromEntries(Object.keys(FAMILY).map((f) => [f, []]));  // the families in a fixed order
  for (const m of offeredMethods(state.methods, state.detail)) (fams[m.family] ||= []).push(m);
  for (const f of Object.keys(fams)) if (!fams[f].length) delete fams[f];
  clear(ui.method, Object.entries(fams).map(([fam, ms]) => el('optgroup', { label: FAMILY[fam] || fam },
    ms.map((m) => option(m.name, m.inline ? m.title : `${m.title} — runs as a job`, m.name === s.method)))));
  clear(ui.compareChecks, Object.entries(fams).map(([fam, ms]) => el('fieldset.compare-family',
    el('legend', FAMILY[fam] || fam),
    ms.map((m) => el('label.chip', el('input', { type: 'checkbox', value: m.name,
      checked: COMPARE_DEFAULT.includes(m.name), dataset: { method: m.name } }),
    ` ${m.title}`, m.inline ? null : el('span.tag', 'job'))))));
  methodChanged(false);
}

function fillLayers() {
  const m = currentMethod();
  const layers = layerChoices({ spatialOnly: true });
  const keep = layers.some((l) => l.name === s.layer) ? s.layer : '';
  s.layer = keep;
  clear(ui.layer, option('', `default — ${state.detail?.default_layer || ''}`, keep === ''),
    layers.map((l) => option(l.name, l.isDefault ? `${l.text}  (default)` : l.text, l.name === keep)));
  ui.layer.disabled = !m?.uses_layer || (s.sweep && m?.family === 'cam');
  ui.sweep.enable(m?.family === 'cam' && m?.uses_layer);
  ui.layerNote.textContent = m?.uses_layer ? '' : `${m?.title || 'This method'} does not use a layer.`;
}

function methodChanged(rerun = true) {
  const m = currentMethod();
  if (!m) return;
  s.method = m.name;
  fillLayers();
  const props = Object.keys(m.params_schema?.properties || {}).filter((k) => !SHARED.includes(k));
  s.methodForm = props.length ? schemaForm(m.params_schema, { omit: SHARED, basic: 0 }) : null;
  clear(ui.methodParams, s.methodForm ? s.methodForm.element : null);
  if (s.methodForm) {
    const more = s.methodForm.element.querySelector('summary');
    if (more) more.textContent = `${m.title} parameters`;
    s.methodForm.element.addEventListener('change', debounce(() => run(), 300));
  }
  if (rerun) run();
}

async function setImage(file) {
  s.file = file;
  if (s.baseUrl) URL.revokeObjectURL(s.baseUrl);
  s.baseUrl = file ? URL.createObjectURL(file) : null;
  s.predictions = [];
  s.custom = [];
  s.target = null;
  s.segmentation = null;
  if (!file) {
    clear(ui.targets, el('div.muted', 'Choose an image to see its top classes.'));
    clear(ui.result, el('div.placeholder', 'The explanation appears here.'));
    return;
  }
  clear(ui.targets, el('div.muted.loading', 'Classifying…'));
  try {
    const body = multipart([file], { top_k: 5 });
    const res = await getJSON(`/v1/models/${encodeURIComponent(state.model)}/predict`, { method: 'POST', body });
    const img = res.images[0];
    s.width = img.width;
    s.height = img.height;
    s.predictions = img.predictions;
    s.segmentation = isSegmenter(state.detail) ? img.segmentation : null;
    s.target = s.segmentation ? firstRegionClass(s.segmentation, state.detail?.labels)
      : s.predictions[0]?.index ?? null;
    renderTargets();
    run();
  } catch (err) {
    showError(ui.targets, err, { compact: true });
    clear(ui.result, problemBox(err));
  }
}

function renderTargets() {
  ui.search.closest('.field').hidden = Boolean(s.segmentation);  // a segmenter's classes are its map's
  if (s.segmentation) {  // a segmenter: its label map, where a click picks the region to explain
    clear(ui.targets, labelMapTargets({ baseUrl: s.baseUrl, segmentation: s.segmentation, width: s.width,
      height: s.height, selected: s.target, labelOf,
      onPick: (cls) => { s.target = cls; renderTargets(); run(); } }));
    return;
  }
  const rows = [...s.predictions.map((p) => ({ ...p, custom: false })),
    ...s.custom.filter((c) => !s.predictions.some((p) => p.index === c.index))];
  clear(ui.targets, rows.map((p) => el(`label.target${p.index === s.target ? '.selected' : ''}`,
    { dataset: { index: p.index } },
    el('input', { type: 'radio', name: 'target', value: p.index, checked: p.index === s.target,
      on: { change: () => { s.target = p.index; renderTargets(); run(); } } }),
    el('span.t-label', el('span.t-index', `${p.index}`), ` ${p.label}`),
    el('span.t-bar', el('span', { style: `width:${(100 * (p.probability || 0)).toFixed(1)}%` })),
    el('span.t-prob', p.probability === undefined || p.probability === null ? 'chosen' : pct(p.probability)))));
}

function searchClasses() {
  const q = ui.search.value.trim().toLowerCase();
  const labels = state.detail?.labels || [];
  if (!q) { clear(ui.matches); return; }
  const hits = [];
  const asNumber = /^\d+$/.test(q) ? Number(q) : null;
  if (asNumber !== null && labels[asNumber]) hits.push(asNumber);
  labels.forEach((l, i) => { if (hits.length < 8 && i !== asNumber && l.toLowerCase().includes(q)) hits.push(i); });
  clear(ui.matches, hits.length ? hits.map((i) => el('button.match', { type: 'button', on: { click: () => {
    s.custom = [...s.custom.filter((c) => c.index !== i), { index: i, label: labels[i], probability: null }];
    s.target = i;
    ui.search.value = '';
    clear(ui.matches);
    renderTargets();
    run();
  } } }, el('span.t-index', String(i)), ` ${labels[i]}`)) : el('div.muted', 'No class matches.'));
}

function explainParams(method, { withLayer = true } = {}) {
  const m = state.methods.find((x) => x.name === method);
  const output = { raw: false, overlay: false, heatmap: true, format: 'png' };
  if (s.colormap !== 'auto') output.colormap = s.colormap;  // else the service picks the kind's own
  if (s.normalize !== 'auto') output.normalize = s.normalize;
  const params = { output };
  if (s.target !== null) Object.assign(params, s.segmentation ? regionParams(s.target) : { target: s.target });
  if (withLayer && m?.uses_layer && s.layer) params.layer = s.layer;
  if (s.boxes) params.localization = s.boxMethod === 'fraction' ? { method: 'fraction', fraction: s.fraction }
    : { method: 'otsu' };
  if (s.faith) params.faithfulness = { steps: s.faithSteps };
  if (withLayer && s.sweep && m?.family === 'cam' && m?.uses_layer) sweepParams(params);
  return params;
}

/** POST an explanation; follow a 202 hand-off to its job. Resolves to the ExplainResponse. */
async function explainOnce(method, params, { signal, onJob, preferAsync = false } = {}) {
  const body = multipart([s.file], params);
  const headers = preferAsync ? { Prefer: 'respond-async' } : {};
  const res = await request(`/v1/models/${encodeURIComponent(state.model)}/explain/${method}`,
    { method: 'POST', body, signal, headers });
  if (res.status !== 202) return res.json();
  const job = await res.json();
  onJob?.(job);
  const rec = await followJob(job.id, {
    progress: (p) => onJob?.({ ...job, status: 'running', progress: { ...p, fraction: p.total ? p.step / p.total : 0 } }),
    status: (r) => onJob?.(r),
  }, { signal });
  if (rec.status !== 'succeeded') {
    throw new ProblemError({ title: `The explanation job ${rec.status}`, type: rec.error?.type || 'about:blank',
      detail: rec.error ? rec.error.detail || rec.error.type : '' });
  }
  const answer = await getJSON(`/v1/jobs/${job.id}/result`, { signal });
  return { ...answer, job: job.id };
}

const run = debounce(() => { runMain().catch((err) => console.error('explain view:', err)); }, 120);

async function runMain() {
  if (!s.file || s.target === null || !state.model) return;
  s.abort?.abort();
  const ctl = new AbortController();
  s.abort = ctl;
  const m = currentMethod();
  let params;
  try {
    params = { ...(s.methodForm ? s.methodForm.read() : {}), ...explainParams(m.name) };
  } catch (err) {
    clear(ui.result, problemBox(new Error(err.message)));
    return;
  }
  ui.result.classList.add('busy');
  const bar = progressBar();
  const jobBox = el('div.job-note');
  if (!ui.result.querySelector('.heatview')) clear(ui.result, el('div.placeholder.loading', 'Computing…'));
  try {
    const answer = await explainOnce(m.name, params, {
      signal: ctl.signal,
      preferAsync: s.asJob,
      onJob: (job) => {
        if (!jobBox.isConnected) clear(ui.result, jobBox);
        clear(jobBox, el('div', `Over the inline budget: running as job ${job.id.slice(0, 8)}… (${job.status})`),
          bar.element);
        bar.set(job.progress?.fraction || 0, job.progress?.total ? `${job.progress.step}/${job.progress.total}` : '');
      },
    });
    if (ctl.signal.aborted) return;
    s.last = { answer, method: m };
    renderAnswer(answer, m);
  } catch (err) {
    if (isAbort(err)) return;
    clear(ui.result, problemBox(err));
    clear(ui.meta);
    ui.download.disabled = true;
  } finally {
    if (s.abort === ctl) ui.result.classList.remove('busy');
  }
}

function renderAnswer(answer, m) {
  const img = answer.images[0];
  const exp = img.explanations[0];
  const view = answer.layers ? sweepView(answer) : heatView({ baseUrl: s.baseUrl, heatUrl: dataUrl(exp.heatmap_png), width: img.width,
    height: img.height, alpha: s.alpha, regions: exp.regions, label: m.title });
  clear(ui.result, view);
  if (exp.region && s.segmentation) outlineRegion(view, s.segmentation, exp.target.index);
  ui.download.disabled = false;
  const t = exp.target;
  const rows = [
    ['Method', m.title],
    ['Layer', answer.layers ? answer.layers.join(', ') : answer.layer || '—'],
    ['Target', `${t.index} · ${t.label ?? labelOf(t.index) ?? ''}`],
    ['Probability', pct(t.probability)],
    ['Score (logit)', fmt(t.score)],
    ['Input', `${answer.input_size.join('×')} px`],
    ['Time', `${fmt(answer.timings.total_ms, 0)} ms`],
  ];
  if (answer.job) rows.push(['Job', el('a', { href: `#jobs/${answer.job}`, text: answer.job.slice(0, 12) })]);
  if (exp.regions) rows.push(['Regions', String(exp.regions.length)]);
  rows.push(...regionRows(exp));
  const parts = [el('dl.kv', rows.map(([k, v]) => [el('dt', k), el('dd', v)]))];
  const f = exp.faithfulness;
  if (f) {
    parts.push(el('h4', 'Faithfulness'), el('dl.kv#faithfulness-numbers',
      el('dt', 'Deletion AUC'), el('dd', `${fmt(f.deletion_auc)} `, el('span.muted', '(lower is better)')),
      el('dt', 'Insertion AUC'), el('dd', `${fmt(f.insertion_auc)} `, el('span.muted', '(higher is better)')),
      f.pointing_hit !== null && f.pointing_hit !== undefined ? [el('dt', 'Pointing game'),
        el('dd', f.pointing_hit ? 'hit' : 'miss')] : null));
    const curve = (ys) => (ys || []).map((y, i) => [i / Math.max(1, ys.length - 1), y]);
    if (f.deletion_curve || f.insertion_curve) {
      parts.push(lineChart([{ points: curve(f.deletion_curve), label: 'deletion', cls: 'c2' },
        { points: curve(f.insertion_curve), label: 'insertion', cls: 'c1' }],
      { width: 320, height: 160, xLabel: 'fraction of pixels', yRange: [0, 1] }));
    }
  }
  if (answer.warnings?.length) parts.push(el('ul.warnings', answer.warnings.map((w) => el('li', w))));
  clear(ui.meta, parts);
}

/** The view as one PNG: the image, the heatmap at the chosen opacity, and the boxes. */
async function downloadComposite() {
  const view = ui.result.querySelector('.heatview');
  if (!view || !s.last) return;
  const base = view.querySelector('img.hv-base');
  const heat = view.querySelector('img.hv-heat');
  const c = document.createElement('canvas');
  c.width = base.naturalWidth;
  c.height = base.naturalHeight;
  const g = c.getContext('2d');
  g.drawImage(base, 0, 0);
  g.globalAlpha = s.alpha;
  g.drawImage(heat, 0, 0, c.width, c.height);
  g.globalAlpha = 1;
  const outline = view.querySelector('canvas.lm-outline');  // a segmenter's explained region
  if (outline) g.drawImage(outline, 0, 0, c.width, c.height);
  const regions = s.last.answer.images[0].explanations[0].regions || [];
  g.strokeStyle = '#fff';
  g.lineWidth = Math.max(2, c.width / 200);
  for (const r of regions) g.strokeRect(r.box[0], r.box[1], r.box[2] - r.box[0], r.box[3] - r.box[1]);
  c.toBlob((blob) => {
    const a = el('a', { href: URL.createObjectURL(blob), download: `${s.method}-${s.target}.png` });
    document.body.append(a);
    a.click();
    setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  }, 'image/png');
}

function markStale() {
  if (ui.grid.childElementCount) ui.compareNote.textContent = 'Settings changed — compare again to update.';
}

async function runCompare() {
  if (!s.file || s.target === null) { toast('Choose an image first.', 'warn'); return; }
  const chosen = [...ui.compareChecks.querySelectorAll('input:checked')].map((i) => i.value);
  if (!chosen.length) { toast('Tick at least one method.', 'warn'); return; }
  s.compareAbort?.abort();
  const ctl = new AbortController();
  s.compareAbort = ctl;
  ui.compareNote.textContent = `${labelOf(s.target) || s.target}`;
  const cells = chosen.map((name) => {
    const m = state.methods.find((x) => x.name === name);
    const body = el('div.cell-body', el('div.placeholder.loading', 'waiting…'));
    const foot = el('div.cell-foot.muted', m.inline ? 'inline' : 'runs as a job');
    const cell = el('figure.cell', { dataset: { method: name } }, el('figcaption', m.title), body, foot);
    return { name, m, cell, body, foot };
  });
  clear(ui.grid, cells.map((c) => c.cell));
  const queue = [...cells];
  const worker = async () => {
    while (queue.length && !ctl.signal.aborted) {
      const c = queue.shift();
      clear(c.body, el('div.placeholder.loading', 'computing…'));
      const bar = progressBar();
      try {
        const answer = await explainOnce(c.name, explainParams(c.name), {
          signal: ctl.signal,
          onJob: (job) => {
            if (!bar.element.isConnected) clear(c.body, bar.element);
            bar.set(job.progress?.fraction || 0, job.status);
          },
        });
        const img = answer.images[0];
        const exp = img.explanations[0];
        clear(c.body, heatView({ baseUrl: s.baseUrl, heatUrl: dataUrl(exp.heatmap_png), width: img.width,
          height: img.height, alpha: s.alpha, regions: exp.regions, label: c.m.title }));
        const fa = exp.faithfulness;
        clear(c.foot, `${fmt(answer.timings.total_ms, 0)} ms`, answer.layer ? ` · ${answer.layer}` : '',
          fa ? ` · del ${fmt(fa.deletion_auc, 2)} / ins ${fmt(fa.insertion_auc, 2)}` : '');
      } catch (err) {
        if (isAbort(err)) return;
        clear(c.body, problemBox(err, { compact: true }));
        clear(c.foot);
      }
    }
  };
  await Promise.all([worker(), worker()]);
}
