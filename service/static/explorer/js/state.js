// Shared catalog state: the models, the chosen model's layer table and labels, the methods with
// their parameter schemas, and the job types (from /v1/methods, plus any job request models the
// OpenAPI document names that /v1/methods does not list, such as deepdream).

import { getJSON } from './api.js';

const bus = new EventTarget();
export const state = {
  models: [],
  model: null,          // name of the chosen model
  detail: null,         // GET /v1/models/{model}
  methods: [],          // kind=explain
  jobTypes: [],         // [{name, title, family, params_schema, cost_hint}]
  inlineBudget: 0,
  openapi: null,
};

export function on(name, fn) { bus.addEventListener(name, (e) => fn(e.detail)); }
export function emit(name, detail) { bus.dispatchEvent(new CustomEvent(name, { detail })); }

const details = new Map();
export async function modelDetail(name) {
  if (!details.has(name)) {
    const p = getJSON(`/v1/models/${encodeURIComponent(name)}`);
    details.set(name, p);
    p.catch(() => details.delete(name));
  }
  return details.get(name);
}

export async function loadCatalog() {
  const [models, methods] = await Promise.all([getJSON('/v1/models'), getJSON('/v1/methods')]);
  state.models = models.models;
  state.inlineBudget = methods.inline_budget;
  state.methods = methods.methods.filter((m) => m.kind === 'explain');
  // explain and collection jobs are made by the Explain and Collections panels, not the job form
  state.jobTypes = methods.methods.filter((m) => m.kind === 'job' && !['explain', 'collection'].includes(m.family));
  try {
    state.openapi = await getJSON('/openapi.json');
  } catch {
    state.openapi = null;
  }
  addOpenApiJobTypes();
  const saved = sessionStorage.getItem('cnnviz.model');
  const chosen = state.models.find((m) => m.name === saved) ? saved : models.default;
  await selectModel(chosen);
  emit('catalog', state);
}

/** Job request models in the OpenAPI document ({type: const/enum, params: $ref}) missing from /v1/methods. */
function addOpenApiJobTypes() {
  const schemas = state.openapi?.components?.schemas || {};
  const known = new Set(state.jobTypes.map((j) => j.name));
  for (const [name, s] of Object.entries(schemas)) {
    if (!name.endsWith('Job') || !s.properties?.type || !s.properties?.params) continue;
    const t = s.properties.type;
    const type = t.const ?? (Array.isArray(t.enum) && t.enum.length === 1 ? t.enum[0] : null);
    if (!type || known.has(type) || type === 'explain' || type === 'collection') continue;
    const ref = s.properties.params.$ref || s.properties.params.allOf?.[0]?.$ref;
    const params = ref ? schemas[ref.split('/').pop()] : null;
    if (!params) continue;
    state.jobTypes.push({ name: type, title: (params.description || type).split('\n')[0], family: 'synthesis',
      params_schema: { ...params, $defs: schemas }, cost_hint: null });
    known.add(type);
  }
  const order = ['deepdream', 'class_viz', 'adversarial', 'inversion', 'texture', 'texture_nn', 'style',
    'fast_style', 'triplet_head'];
  state.jobTypes.sort((a, b) => ((order.indexOf(a.name) + 1 || 99) - (order.indexOf(b.name) + 1 || 99)));
}

/** An OpenAPI component schema by name, with the components as $defs for resolving refs. */
export function componentSchema(name) {
  const schemas = state.openapi?.components?.schemas || {};
  return schemas[name] ? { ...schemas[name], $defs: schemas } : null;
}

export async function selectModel(name) {
  state.model = name;
  sessionStorage.setItem('cnnviz.model', name);
  state.detail = await modelDetail(name);
  emit('model', state.detail);
}

export function labelOf(index) {
  return state.detail?.labels?.[index] ?? null;
}

/** Layers for a select: [{name, text, isDefault}]; spatial only by default. */
export function layerChoices({ spatialOnly = true, kinds = null } = {}) {
  const d = state.detail;
  if (!d) return [];
  return d.layers
    .filter((l) => (!spatialOnly || l.spatial) && (!kinds || kinds.some((k) => l.kind.includes(k))))
    .map((l) => ({
      name: l.name,
      isDefault: l.name === d.default_layer,
      text: `${l.name} · ${l.kind}${l.output_shape ? ` · ${l.output_shape.join('×')}` : ''}`,
    }));
}
