// The Jobs tab: a form per job type generated from its parameter schema, submit, then a live view
// of the job over SSE (progress bar, previews, objective curve, event log), cancel, the result,
// and the list of your jobs.

import { ProblemError, TERMINAL, blobUrl, followJob, getJSON, isAbort, multipart, request } from './api.js';
import { schemaForm } from './schema-form.js';
import { on, state } from './state.js';
import {
  clear, el, fmt, imagePicker, lineChart, option, problemBox, progressBar, showError, statusPill, toast,
} from './ui.js';

// The images each job type takes, in order (the service checks the counts).
const JOB_IMAGES = {
  deepdream: [{ label: 'Start image', optional: true }],
  class_viz: [],
  adversarial: [{ label: 'Image to perturb' }],
  inversion: [{ label: 'Image to invert' }],
  texture: [{ label: 'Texture source' }],
  texture_nn: [{ label: 'Texture source' }],
  style: [{ label: 'Content image' }, { label: 'Style image' }],
  fast_style: [{ label: 'Style image' }, { label: 'Preview content', optional: true }],
  triplet_head: [],
};
// "Small & quick" values for a CPU: a few steps on a small image.
const QUICK = {
  deepdream: { octaves: 2, steps: 5, size: 96, preview_every: 2 },
  class_viz: { steps: 24, size: 96, preview_every: 4 },
  adversarial: { steps: 5, size: 96, preview_every: 1 },
  inversion: { steps: 30, size: 96, preview_every: 5 },
  texture: { steps: 20, size: 64, preview_every: 4 },
  texture_nn: { size: 24 },
  style: { steps: 20, size: 96, preview_every: 4 },
  fast_style: { steps: 40, size: 64, batch_size: 2, eval_every: 10, checkpoint_every: 0 },
  triplet_head: { steps: 40, eval_every: 10 },
};

const NAMES = {
  deepdream: 'DeepDream', class_viz: 'Class or channel visualization', adversarial: 'Adversarial example',
  inversion: 'Feature inversion', texture: 'Texture synthesis (Gram matrices)',
  texture_nn: 'Texture synthesis (Efros–Leung)', style: 'Neural style transfer',
  fast_style: 'Train a fast style network', triplet_head: 'Train an embedding head (triplet loss)',
};

const ui = {};
let current = null;   // {id, abort}
let listTimer = null;

function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
}

export function mountJobs(root) {
  ui.type = el('select#job-type', { on: { change: () => buildForm() } });
  ui.typeInfo = el('p.muted.type-info');
  ui.images = el('div.job-images');
  ui.form = el('div.job-params');
  ui.problem = el('div.form-problem');
  ui.submit = el('button#job-submit', { type: 'submit', text: 'Submit job' });
  ui.quick = el('button.secondary', { type: 'button', text: 'Small & quick', title: 'Few steps on a small image',
    on: { click: () => applyQuick() } });
  // novalidate: out-of-range values are reported by read() with the field's name, in the page.
  const form = el('form.job-form', { novalidate: true, on: { submit: (e) => { e.preventDefault(); submit(); } } },
    el('div.field', el('label', { for: 'job-type' }, 'Job type'), ui.type), ui.typeInfo,
    ui.images, ui.form, ui.problem, el('div.row.actions', ui.quick, ui.submit));
  ui.detail = el('div.job-detail#job-detail', el('div.placeholder', 'Submit a job or open one from the list.'));
  ui.list = el('div.job-list#job-list');
  ui.refresh = el('button.secondary', { type: 'button', text: 'Refresh', on: { click: () => refreshList() } });
  clear(root,
    el('div.jobs-layout',
      el('section.card', el('h2', 'New job'), form),
      el('section.card.detail-card', el('h2', 'Job'), ui.detail)),
    el('section.card', el('div.card-head', el('h2', 'Your jobs'), ui.refresh), ui.list));
  on('catalog', () => fillTypes());
  on('model', () => buildForm());
  root.addEventListener('explorer:show', () => refreshList());
}

function fillTypes() {
  const keep = ui.type.value || 'deepdream';
  clear(ui.type, state.jobTypes.map((j) => option(j.name, `${NAMES[j.name] || j.name} · ${j.name}`, j.name === keep)));
  buildForm();
}

function buildForm() {
  const j = state.jobTypes.find((x) => x.name === ui.type.value);
  if (!j) return;
  ui.typeInfo.textContent = j.title.replace(/``/g, '') + (j.cost_hint ? ` · default cost ≈ ${fmt(j.cost_hint, 0)} `
    + 'forward passes' : '');
  const slots = JOB_IMAGES[j.name] ?? [{ label: 'Image 1', optional: true }, { label: 'Image 2', optional: true }];
  ui.pickers = slots.map((slot, i) => imagePicker({ ...slot, compact: true, name: `job-image-${i}` }));
  clear(ui.images, ui.pickers.map((p) => p.element));
  ui.params = schemaForm(j.params_schema, { basic: 8 });
  clear(ui.form, el('h4', 'Parameters'), ui.params.element);
  clear(ui.problem);
  ui.quick.hidden = !QUICK[j.name];
}

function applyQuick() {
  const preset = QUICK[ui.type.value] || {};
  for (const [k, v] of Object.entries(preset)) ui.params.set(k, v);
  toast('Set a few steps on a small image.', 'info');
}

async function submit() {
  clear(ui.problem);
  const type = ui.type.value;
  let params;
  try {
    params = ui.params.read();
  } catch (err) {
    clear(ui.problem, problemBox(new ProblemError({ title: 'Check the parameters', detail: err.message })));
    return;
  }
  const slots = JOB_IMAGES[type] ?? [];
  const images = ui.pickers.map((p) => p.get());
  const missing = slots.filter((slot, i) => !slot.optional && !images[i]).map((slot) => slot.label);
  if (missing.length) {
    clear(ui.problem, problemBox(new ProblemError({ title: 'Images missing', detail: missing.join(', ') })));
    return;
  }
  const job = { type, model: state.model, params };
  const given = images.filter(Boolean);
  ui.submit.disabled = true;
  try {
    const body = given.length ? multipart(given, job) : { params: job };
    const res = await request('/v1/jobs', { method: 'POST', body, headers: { 'Idempotency-Key': uuid() } });
    const rec = await res.json();
    toast(`Job ${rec.id.slice(0, 8)} queued.`, 'ok');
    openJob(rec.id);
    refreshList();
  } catch (err) {
    showError(ui.problem, err);
  } finally {
    ui.submit.disabled = false;
  }
}

/** Show one job live (or finished) in the detail panel. */
export async function openJob(id) {
  current?.abort.abort();
  const abort = new AbortController();
  current = { id, abort };
  if (location.hash !== `#jobs/${id}`) history.replaceState(null, '', `#jobs/${id}`);
  const pill = el('span', statusPill('…'));
  const bar = progressBar();
  const stage = el('div.muted.stage');
  const cancel = el('button.danger#job-cancel', { type: 'button', text: 'Cancel', disabled: true,
    on: { click: () => cancelJob(id, cancel) } });
  const chartBox = el('div.chart-box', lineChart([], { empty: 'objective: waiting for the first steps' }));
  const preview = el('div.preview-main#job-preview', el('div.placeholder', 'Previews appear here.'));
  const strip = el('div.preview-strip');
  const result = el('div.job-result#job-result');
  const log = el('ol.event-log#job-events');
  const points = [];
  let lastDraw = 0;
  const draw = (force = false) => {
    if (!force && performance.now() - lastDraw < 250) return;
    lastDraw = performance.now();
    clear(chartBox, lineChart([{ points, cls: 'c1' }], { yLabel: 'objective', empty: 'no objective reported' }));
  };
  const addLog = (text, kind = '') => {
    log.append(el(`li${kind ? `.${kind}` : ''}`, el('time', new Date().toLocaleTimeString()), ' ', text));
    while (log.childElementCount > 200) log.firstChild.remove();
  };
  clear(ui.detail,
    el('div.job-head', el('code.job-id', id), pill, cancel),
    el('div.job-type-line.muted'),
    bar.element, stage,
    el('div.job-panels',
      el('div', el('h4', 'Preview / result'), preview, strip),
      el('div', el('h4', 'Objective'), chartBox)),
    result,
    el('details.events', { open: true }, el('summary', 'Events'), log));
  const typeLine = ui.detail.querySelector('.job-type-line');
  const setStatus = (rec) => {
    clear(pill, statusPill(rec.status));
    pill.dataset.status = rec.status;
    typeLine.textContent = [rec.type, rec.model, rec.created_at && new Date(rec.created_at).toLocaleString(),
      rec.queue_position !== null && rec.queue_position !== undefined ? `queue position ${rec.queue_position}` : null]
      .filter(Boolean).join(' · ');
    cancel.disabled = TERMINAL.has(rec.status);
    if (rec.progress) setProgress(rec.progress);
  };
  const setProgress = (p) => {
    const frac = p.total ? p.step / p.total : 0;
    bar.set(frac, p.total ? `${p.step} / ${p.total}` : '');
    stage.textContent = [p.stage, p.message, p.objective !== undefined && p.objective !== null
      ? `objective ${fmt(p.objective, 4)}` : null].filter(Boolean).join(' · ');
  };
  const showPicture = async (path, caption) => {
    try {
      const url = await blobUrl(path, { signal: abort.signal });
      const img = el('img', { src: url, alt: caption });
      const name = `${id.slice(0, 8)}-${path.split('/').pop()}`;
      clear(preview, el('figure', img, el('figcaption.muted', caption, ' · ',
        el('a', { href: url, download: name.endsWith('.png') ? name : `${name}.png`, text: 'download' }))));
      return url;
    } catch (err) {
      if (!isAbort(err)) addLog(`could not load ${caption}: ${err.title || err.message}`, 'bad');
      return null;
    }
  };
  try {
    const rec = await followJob(id, {
      status: (r) => setStatus(r),
      event: (ev) => {
        const d = ev.data || {};
        if (ev.event === 'progress') {
          addLog(`progress ${d.step}/${d.total}${d.stage ? ` · ${d.stage}` : ''}${d.objective !== undefined
            ? ` · objective ${fmt(d.objective, 4)}` : ''}`, 'progress');
        } else if (ev.event === 'preview') addLog(`preview at step ${d.step}`, 'preview');
        else if (ev.event === 'status') addLog(`status → ${d.status}`, d.status);
        else if (ev.event === 'done') addLog(`done: ${d.status}${d.error ? ` (${d.error.type})` : ''}`, d.status);
        else addLog(`${ev.event}: ${typeof d === 'object' ? JSON.stringify(d) : d}`);
      },
      progress: (p) => {
        setProgress(p);
        if (p.objective !== undefined && p.objective !== null) { points.push([p.step, p.objective]); draw(); }
      },
      preview: async (p) => {
        const url = await showPicture(`/v1/jobs/${id}/artifacts/${p.name}`, `preview, step ${p.step}`);
        if (url) strip.append(el('img', { src: url, alt: `step ${p.step}`, title: `step ${p.step}` }));
      },
    }, { signal: abort.signal });
    draw(true);
    await showOutcome(id, rec, { result, chartBox, abort, showPicture });
    refreshList();
  } catch (err) {
    if (!isAbort(err)) showError(result, err);
  }
}

async function showOutcome(id, rec, { result, chartBox, abort, showPicture }) {
  if (rec.status === 'failed') {
    clear(result, problemBox(new ProblemError({ title: 'The job failed', type: rec.error?.type || 'about:blank',
      detail: rec.error?.detail || rec.error?.type || '' })));
    return;
  }
  if (rec.status === 'canceled') {
    clear(result, el('div.note', 'The job was canceled; its artifacts were deleted.'));
    return;
  }
  const arts = rec.artifacts || [];
  const pictures = arts.filter((a) => a.media_type === 'image/png' && !a.name.startsWith('preview-'));
  const main = rec.links?.result;
  if (main && pictures.some((a) => a.href === main)) await showPicture(main, 'result');
  else if (pictures.length) await showPicture(pictures[0].href, pictures[0].name);
  const gallery = el('div.gallery');
  for (const a of pictures) {
    try {
      const url = await blobUrl(a.href, { signal: abort.signal });
      gallery.append(el('figure', el('a', { href: url, download: `${id.slice(0, 8)}-${a.name}` },
        el('img', { src: url, alt: a.name })), el('figcaption.muted', a.name)));
    } catch (err) {
      if (isAbort(err)) return;
    }
  }
  const parts = [];
  if (pictures.length > 1) parts.push(el('h4', 'Pictures (click to download)'), gallery);
  const summaryArt = arts.find((a) => a.name === 'result.json');
  if (summaryArt) {
    try {
      const summary = await getJSON(summaryArt.href, { signal: abort.signal });
      const curve = Array.isArray(summary.objective) ? summary.objective
        : Array.isArray(summary.history?.loss) ? summary.history.loss : null;
      if (curve?.length) {
        clear(chartBox, lineChart([{ points: curve.map((y, i) => [i + 1, y]), cls: 'c1',
          label: summary.objective ? 'objective per step' : 'training loss' }], { yLabel: 'objective' }));
      }
      parts.push(el('details.summary-json', el('summary', 'result.json'), el('pre', truncateJSON(summary))));
    } catch (err) {
      if (isAbort(err)) return;
    }
  }
  clear(result, parts);
}

function truncateJSON(value) {
  const short = JSON.stringify(value, (k, v) => (Array.isArray(v) && v.length > 24
    ? [...v.slice(0, 24), `… ${v.length - 24} more`] : v), 2);
  return short.length > 20000 ? `${short.slice(0, 20000)}\n…` : short;
}

async function cancelJob(id, button) {
  button.disabled = true;
  try {
    const res = await request(`/v1/jobs/${id}`, { method: 'DELETE' });
    const rec = await res.json();
    toast(rec.status === 'running' ? 'Cancel requested; the job stops within a step.' : `Job ${rec.status}.`, 'info');
  } catch (err) {
    button.disabled = false;
    showError(ui.detail.querySelector('.job-result'), err);
  }
}

export async function refreshList() {
  clearTimeout(listTimer);
  try {
    const { jobs } = await getJSON('/v1/jobs?limit=50');
    if (!jobs.length) {
      clear(ui.list, el('div.placeholder', 'No jobs yet.'));
      return;
    }
    clear(ui.list, el('table.jobs',
      el('thead', el('tr', ['Created', 'Type', 'Model', 'Status', 'Progress', 'Job'].map((h) => el('th', h)))),
      el('tbody', jobs.map((j) => el(`tr${current?.id === j.id ? '.current' : ''}`, {
        dataset: { id: j.id }, on: { click: () => openJob(j.id) }, title: 'Open this job',
      },
      el('td', new Date(j.created_at).toLocaleString()),
      el('td', j.type), el('td.muted', j.model || ''), el('td', statusPill(j.status)),
      el('td', j.progress.total ? `${j.progress.step}/${j.progress.total}` : ''),
      el('td', el('code', j.id.slice(0, 12))))))));
    const visible = !document.hidden && !document.getElementById('tab-jobs')?.hidden;
    if (jobs.some((j) => !TERMINAL.has(j.status)) && visible) {
      listTimer = setTimeout(() => refreshList(), 4000);
    }
  } catch (err) {
    showError(ui.list, err, { compact: true });
  }
}
