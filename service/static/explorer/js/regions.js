// A segmenter in the Explain tab: its label map over the image with each class's share, and a click on
// the map picks the class under the pointer, whose predicted region is then explained (a region target:
// the class's logit summed over its mask, Seg-Grad-CAM). The explanation shows the region's outline.
//
// The service sends the label map as a palette PNG in PASCAL VOC's colours (cnnviz/render/regions.py);
// a browser decodes it to colours, so the class under a pixel is read back through the same palette.

import { dataUrl, el, pct } from './ui.js';

export function isSegmenter(detail) {
  return detail?.task === 'segmentation';
}

/** The methods to offer for a model: a segmenter's own list (GET /v1/models/{m} names those that explain its
 * regions); a classifier's are all of them, as before. */
export function offeredMethods(methods, detail) {
  if (!isSegmenter(detail) || !detail.methods) return methods;
  return methods.filter((m) => detail.methods.includes(m.name));
}

/** PASCAL VOC's colour of class i (0 black, 1 dark red, 2 dark green, ...), as the service draws label maps. */
export function vocColor(i) {
  let c = i; let r = 0; let g = 0; let b = 0;
  for (let bit = 0; bit < 8; bit += 1) {
    r |= (c & 1) << (7 - bit);
    g |= ((c >> 1) & 1) << (7 - bit);
    b |= ((c >> 2) & 1) << (7 - bit);
    c >>= 3;
  }
  return [r, g, b];
}

const PALETTE = new Map(Array.from({ length: 256 }, (_, i) => [vocColor(i).join(','), i]));

/** Pixels of a decoded label map, once: { width, height, classAt(x, y), mask(cls) }. */
function readLabels(img) {
  const c = document.createElement('canvas');
  c.width = img.naturalWidth;
  c.height = img.naturalHeight;
  const g = c.getContext('2d', { willReadFrequently: true });
  g.drawImage(img, 0, 0);
  const data = g.getImageData(0, 0, c.width, c.height).data;
  const classAt = (x, y) => {
    const k = 4 * (y * c.width + x);
    return PALETTE.get(`${data[k]},${data[k + 1]},${data[k + 2]}`) ?? null;
  };
  return { width: c.width, height: c.height, classAt };
}

/** A canvas the size of the label map with the border of class `cls` drawn white (dark inner edge). */
function outlineCanvas(labels, cls) {
  const { width: w, height: h } = labels;
  const c = el('canvas.lm-outline', { width: w, height: h });
  const g = c.getContext('2d');
  const out = g.createImageData(w, h);
  const inside = (x, y) => x >= 0 && y >= 0 && x < w && y < h && labels.classAt(x, y) === cls;
  const band = Math.max(1, Math.round(Math.max(w, h) / 250));
  for (let y = 0; y < h; y += 1) {
    for (let x = 0; x < w; x += 1) {
      if (!inside(x, y)) continue;
      let edge = false;
      for (let d = 1; d <= band + 1 && !edge; d += 1) {
        if (!inside(x - d, y) || !inside(x + d, y) || !inside(x, y - d) || !inside(x, y + d)) edge = d;
      }
      if (!edge) continue;
      const k = 4 * (y * w + x);
      const v = edge <= band ? 255 : 20;
      out.data.set([v, v, v, 255], k);
    }
  }
  g.putImageData(out, 0, 0);
  return c;
}

/**
 * The targets card of a segmenter: the label map over the image (a click picks the class under the pointer)
 * and every predicted class with its share of the image, the chosen one selected.
 */
export function labelMapTargets({ baseUrl, segmentation, width, height, selected, labelOf, onPick }) {
  const map = el('img.lm-map', { src: dataUrl(segmentation.label_map_png), alt: 'predicted label map' });
  const view = el('div.labelmap', { title: 'Click a region to explain it', style: `aspect-ratio:${width}/${height}` },
    el('img.lm-base', { src: baseUrl, alt: 'image' }), map);
  let labels = null;
  const ready = () => { labels = readLabels(map); };
  if (map.complete && map.naturalWidth) ready(); else map.addEventListener('load', ready, { once: true });
  view.addEventListener('click', (e) => {
    if (!labels) return;
    const r = view.getBoundingClientRect();
    const x = Math.min(labels.width - 1, Math.floor(((e.clientX - r.left) / r.width) * labels.width));
    const y = Math.min(labels.height - 1, Math.floor(((e.clientY - r.top) / r.height) * labels.height));
    const cls = labels.classAt(x, y);
    if (cls !== null) onPick(cls);
  });
  const rows = segmentation.classes.map((c) => el(`label.target.region-class${c.index === selected ? '.selected' : ''}`,
    { dataset: { index: c.index } },
    el('input', { type: 'radio', name: 'target', value: c.index, checked: c.index === selected,
      on: { change: () => onPick(c.index) } }),
    el('span.t-label', el('span.swatch', { style: `background:rgb(${vocColor(c.index).join(',')})` }),
      el('span.t-index', `${c.index}`), ` ${c.label ?? labelOf(c.index) ?? ''}`),
    el('span.t-bar', el('span', { style: `width:${(100 * c.fraction).toFixed(1)}%` })),
    el('span.t-prob', pct(c.fraction))));
  return el('div.segmentation', view, el('p.muted', 'Click a region of the map, or a class, to explain its region.'),
    rows);
}

/** The class the tab starts on: the largest predicted class that is not the background. */
export function firstRegionClass(segmentation, labels) {
  const isBg = (i) => /^_*(background|bg)_*$/i.test(labels?.[i] || '');
  return (segmentation.classes.find((c) => !isBg(c.index)) || segmentation.classes[0])?.index ?? null;
}

/** The request's region target for class `cls` (its predicted mask). */
export function regionParams(cls) {
  return { region: { target: cls } };
}

/** The explanation's region outlined over its view (from the label map the targets card decoded). */
export function outlineRegion(view, segmentation, cls) {
  const img = new Image();
  img.onload = () => {
    const canvas = outlineCanvas(readLabels(img), cls);
    view.append(canvas);
  };
  img.src = dataUrl(segmentation.label_map_png);
}

/** Rows for the answer's facts: the region and the pointing games inside it. */
export function regionRows(exp) {
  const r = exp.region;
  if (!r) return [];
  const rows = [['Region', `${r.source} · ${r.area} px (${pct(r.fraction)} of the image)`],
    ['Predicted there', pct(r.predicted_fraction)]];
  const f = exp.faithfulness;
  if (f?.energy_in_region !== null && f?.energy_in_region !== undefined) {
    rows.push(['Pointing game', f.pointing_hit ? 'hit' : 'miss'], ['Energy in region', pct(f.energy_in_region)]);
  }
  return rows;
}
