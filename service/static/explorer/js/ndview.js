// Signals and volumes (models declared input = "signal" | "volume"): a file picker, a method, and the
// answer drawn as the service draws it (a signal plot; three slices and a montage), plus a slice viewer
// with a slider over the map's own values (output.raw) for a volume. When such a model is chosen this
// panel replaces the image form of the Explain tab, which stays as it was for image models.

import { request } from './api.js';
import { on, state } from './state.js';
import { clear, dataUrl, el, option, showError } from './ui.js';

const ACCEPT = {
  signal: '.npy,.csv,.json,.zip,.txt',
  volume: '.nii,.gz,.npy,.npz,.zip',
};

// A small perceptual ramp (inferno's ends and middle) for the slice viewer's canvas.
const RAMP = [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]];
function rampColor(t) {
  const x = Math.min(1, Math.max(0, t)) * (RAMP.length - 1);
  const i = Math.min(RAMP.length - 2, Math.floor(x));
  const f = x - i;
  return RAMP[i].map((c, k) => Math.round(c + f * (RAMP[i + 1][k] - c)));
}

function sliceViewer(map) {
  const [d, h, w] = map.shape;
  const values = map.values;
  const lo = map.min;
  const span = (map.max - map.min) || 1;
  const canvas = el('canvas.nd-slice', { width: w, height: h });
  canvas.style.width = `${Math.max(256, w * 8)}px`;
  canvas.style.imageRendering = 'pixelated';
  const out = el('output');
  const slider = el('input#nd-slice-slider', { type: 'range', min: 0, max: d - 1, step: 1, value: map.peak[0],
    'aria-label': 'axial slice' });
  const draw = () => {
    const k = Number(slider.value);
    const ctx = canvas.getContext('2d');
    const img = ctx.createImageData(w, h);
    for (let r = 0; r < h; r++) {
      for (let c = 0; c < w; c++) {
        const v = values[(k * h + r) * w + c];
        const [R, G, B] = rampColor((v - lo) / span);
        const o = ((h - 1 - r) * w + c) * 4; // row 0 at the bottom, as the service's pictures
        img.data[o] = R; img.data[o + 1] = G; img.data[o + 2] = B; img.data[o + 3] = 255;
      }
    }
    ctx.putImageData(img, 0, 0);
    out.textContent = `axial slice ${k} of ${d}${k === map.peak[0] ? ' (the peak)' : ''}`;
  };
  slider.addEventListener('input', draw);
  draw();
  return el('div.nd-viewer', el('label', 'Slice ', slider, ' ', out), canvas);
}

export function mountNdView(tab) {
  const file = el('input#nd-file', { type: 'file' });
  const method = el('select#nd-method');
  const go = el('button#nd-run', { type: 'button' }, 'Explain');
  const result = el('div.nd-result');
  const panel = el('section#nd-view.card', { hidden: true },
    el('h2', 'Signal or volume'),
    el('p.help', 'This model takes a file, not a photo: a signal (.npy, CSV, JSON, a WFDB record as a ZIP) or a ',
      'volume (NIfTI, a DICOM series as a ZIP, .npy/.npz).'),
    el('label', 'File ', file), ' ', el('label', 'Method ', method), ' ', go, result);
  tab.prepend(panel);

  const run = async () => {
    const f = file.files?.[0];
    if (!f) return;
    const kind = state.detail.input;
    clear(result, el('div.muted', 'computing…'));
    const fd = new FormData();
    fd.append('file', f, f.name);
    fd.append('params', JSON.stringify(kind === 'volume' ? { output: { raw: true } } : {}));
    try {
      const res = await request(`/v1/models/${encodeURIComponent(state.model)}/explain/${method.value}`,
        { method: 'POST', body: fd });
      const body = await res.json();
      const e = body.inputs[0].explanations[0];
      const t = e.target;
      const head = el('p', `${body.method} · ${t.label ?? t.index} (p = ${t.probability?.toFixed(3)}) · peak at `,
        el('b', e.map.peak.join(', ')), e.map.peak_seconds != null ? ` (${e.map.peak_seconds.toFixed(2)} s)` : '',
        e.map.peak_mm ? ` (${e.map.peak_mm.join(', ')} mm)` : '');
      const pics = ['signal_png', 'slices_png', 'montage_png'].filter((k) => e[k])
        .map((k) => el('img.nd-picture', { src: dataUrl(e[k]), alt: k.replace('_png', '') }));
      clear(result, head, kind === 'volume' && e.map.values ? sliceViewer(e.map) : '', ...pics);
    } catch (err) {
      showError(result, err);
    }
  };
  go.addEventListener('click', run);

  const hiddenByUs = new Set(); // the image form's parts this panel hid; only those are shown again
  on('model', (d) => {
    const nd = d.input === 'signal' || d.input === 'volume';
    panel.hidden = !nd;
    if (nd) {
      for (const child of tab.children) {
        if (child !== panel && !child.hidden) { child.hidden = true; hiddenByUs.add(child); }
      }
    } else {
      hiddenByUs.forEach((child) => { child.hidden = false; });
      hiddenByUs.clear();
      return;
    }
    file.accept = ACCEPT[d.input];
    clear(method, d.methods.filter((m) => m !== 'attention_rollout')
      .map((m) => option(m, m, m === 'gradcam')));
    clear(result);
  });
}
