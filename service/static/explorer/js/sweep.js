// The CAM panel's layer sweep: a CAM method at every block of the model in one request
// (layers: "blocks"), shown as the captioned row of overlays the service draws, one per layer.
// Kept apart from explain.js, which only asks for it and shows what comes back.

import { dataUrl, el } from './ui.js';

/** A checkbox for the Method card; ``onChange(checked)`` runs on every change. */
export function sweepToggle(onChange) {
  const box = el('input#layer-sweep', { type: 'checkbox', on: { change: () => onChange(box.checked) } });
  const note = el('div.help', 'Every block of the model, one forward and one backward: the row shows how the '
    + 'map sharpens onto the object as the network deepens.');
  const element = el('div.field', el('div.check', { title: 'layers: "blocks" — the model\'s main stages in one request' },
    box, el('label', { for: 'layer-sweep' }, ' Layer sweep (every block)')), note);
  return {
    element,
    /** Offered only where the method reads a layer (the CAM family). */
    enable(usable) { box.disabled = !usable; element.hidden = !usable; },
  };
}

/** The explain parameters of a sweep: the blocks instead of one layer, and the row as the figure. */
export function sweepParams(params) {
  delete params.layer;
  params.layers = 'blocks';
  params.output = { ...params.output, figure: true, heatmap: false, overlay: false, format: 'png' };
  return params;
}

/** The answer of a sweep: its figure, the captioned row (each layer's name and map resolution under it). */
export function sweepView(answer) {
  const exp = answer.images[0].explanations[0];
  return el('figure.sweep-row#sweep-row',
    el('img', { src: dataUrl(exp.figure_png), alt: `${exp.target.label || exp.target.index} at ${answer.layers.join(', ')}`,
      style: 'width: 100%; height: auto; display: block;' }));
}
