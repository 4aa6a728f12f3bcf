// Forms generated from a JSON schema (pydantic's): numbers with their bounds, enums as selects,
// booleans as checkboxes, optional (nullable) fields left blank for the service default, tuples as
// rows of inputs, lists as comma-separated text, layer names as a select over the layer table.
// read() returns only what differs from the defaults, so a request stays as small as the user's intent.

import { el, option } from './ui.js';
import { labelOf, layerChoices } from './state.js';

function resolver(root) {
  const defs = root.$defs || {};
  return function resolve(s) {
    let cur = s;
    for (let i = 0; i < 8 && cur; i += 1) {
      if (cur.$ref) cur = { ...defs[cur.$ref.split('/').pop()], ...Object.fromEntries(
        Object.entries(cur).filter(([k]) => k !== '$ref')) };
      else if (cur.allOf?.length === 1) cur = { ...cur.allOf[0], ...Object.fromEntries(
        Object.entries(cur).filter(([k]) => k !== 'allOf')) };
      else break;
    }
    return cur || {};
  };
}

function unwrapNullable(s, resolve) {
  const alts = s.anyOf || s.oneOf;
  if (!alts) return { schema: resolve(s), nullable: false };
  const rest = alts.filter((a) => a.type !== 'null');
  const nullable = rest.length < alts.length;
  if (rest.length === 1) {
    const inner = resolve(rest[0]);
    return { schema: { ...inner, title: s.title, description: s.description, default: s.default }, nullable };
  }
  return { schema: s, nullable };
}

const isLayerField = (name) => /(^|_)layer$/.test(name);
const isLayerList = (name) => /(^|_)layers$/.test(name);
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

function titleOf(name, s) {
  const t = s.title || name;
  return t.replace(/_/g, ' ').replace(/^\w/, (c) => c.toUpperCase());
}

function numberAttrs(s) {
  const a = { type: 'number', step: s.type === 'integer' ? 1 : 'any' };
  if (s.minimum !== undefined) a.min = s.minimum;
  else if (s.exclusiveMinimum !== undefined) a.min = s.type === 'integer' ? s.exclusiveMinimum + 1 : s.exclusiveMinimum;
  if (s.maximum !== undefined) a.max = s.maximum;
  else if (s.exclusiveMaximum !== undefined) a.max = s.type === 'integer' ? s.exclusiveMaximum - 1 : s.exclusiveMaximum;
  return a;
}

function bounds(s) {
  const lo = s.minimum ?? s.exclusiveMinimum;
  const hi = s.maximum ?? s.exclusiveMaximum;
  if (lo === undefined && hi === undefined) return '';
  return `${lo ?? '…'} – ${hi ?? '…'}`;
}

/** One field: {name, element, read() -> {value, set: bool}, error?} */
function makeField(name, raw, required, resolve) {
  const { schema: s, nullable } = unwrapNullable(raw, resolve);
  const def = raw.default !== undefined ? raw.default : s.default;
  const id = `f-${name}-${Math.random().toString(36).slice(2, 8)}`;
  const help = [s.description, bounds(s)].filter(Boolean).join(' · ');
  let control;
  let read;

  if (s.const !== undefined) return null;
  if (Array.isArray(s.enum)) {
    control = el('select', { id, name, dataset: { field: name } },
      nullable || def === undefined ? option('', def === null || def === undefined ? '(default)' : '—') : null,
      s.enum.map((v) => option(String(v), String(v), same(v, def))));
    read = () => (control.value === '' ? undefined : s.enum.find((v) => String(v) === control.value));
  } else if (s.type === 'boolean') {
    control = el('input', { id, name, type: 'checkbox', checked: !!def, dataset: { field: name } });
    read = () => control.checked;
  } else if (s.type === 'integer' || s.type === 'number') {
    control = el('input', { id, name, ...numberAttrs(s), value: def ?? '', required: required || undefined,
      placeholder: def === null || def === undefined ? 'default' : '', dataset: { field: name } });
    read = () => (control.value === '' ? undefined : Number(control.value));
  } else if (s.type === 'string' && isLayerField(name)) {
    control = el('select', { id, name, dataset: { field: name } }, option('', '(default)'),
      layerChoices({ spatialOnly: true }).map((l) => option(l.name, l.isDefault ? `${l.text}  ★ model default` : l.text,
        l.name === def)));
    read = () => (control.value === '' ? undefined : control.value);
  } else if (s.type === 'string') {
    control = el('input', { id, name, type: 'text', value: def ?? '', required: required || undefined,
      maxlength: s.maxLength,
      placeholder: def === null || def === undefined ? (required ? 'required' : 'default') : '',
      dataset: { field: name } });
    // The pattern is checked here, not as an HTML pattern attribute (those use another regex dialect).
    const re = s.pattern ? new RegExp(s.pattern, 'u') : null;
    read = () => {
      const v = control.value.trim();
      if (v === '') return undefined;
      if (re && !re.test(v)) throw new Error(`does not match ${s.pattern}`);
      return v;
    };
  } else if (s.type === 'array' && Array.isArray(s.prefixItems)) {
    const parts = s.prefixItems.map((item, i) => el('input', { ...numberAttrs(resolve(item)),
      value: Array.isArray(def) ? def[i] : '', name: `${name}.${i}`, 'aria-label': `${name} ${i + 1}` }));
    control = el('div.tuple', { id, dataset: { field: name } }, parts);
    read = () => {
      if (parts.every((p) => p.value === '')) return undefined;
      return parts.map((p) => Number(p.value));
    };
  } else if (s.type === 'array') {
    const item = resolve(s.items || {});
    const numeric = item.type === 'integer' || item.type === 'number';
    control = el('input', { id, name, type: 'text', value: Array.isArray(def) ? def.join(', ') : '',
      placeholder: isLayerList(name) ? 'default — layer names, comma-separated' : 'default — comma-separated',
      dataset: { field: name } });
    if (isLayerList(name)) control.setAttribute('list', 'layer-names');
    read = () => {
      const v = control.value.split(',').map((x) => x.trim()).filter(Boolean);
      if (!v.length) return undefined;
      return numeric ? v.map(Number) : v;
    };
  } else {
    control = el('textarea', { id, name, rows: 2, placeholder: 'JSON', dataset: { field: name } },
      def !== undefined && def !== null ? JSON.stringify(def) : '');
    read = () => {
      if (!control.value.trim()) return undefined;
      return JSON.parse(control.value);
    };
  }

  let hint = null;
  if (name === 'target' && control.tagName === 'INPUT') {
    hint = el('span.field-hint');
    const update = () => {
      const lbl = control.value !== '' ? labelOf(Number(control.value)) : null;
      hint.textContent = lbl ? `= ${lbl}` : '';
    };
    control.addEventListener('input', update);
    update();
  }
  const isCheck = control.type === 'checkbox';
  const label = el('label', { for: id }, titleOf(name, s), required ? el('span.req', ' *') : null);
  const element = el(`div.field${isCheck ? '.check' : ''}`, { title: help || null },
    isCheck ? [control, label] : [label, control], hint,
    help && !isCheck ? el('div.help', help) : null);
  return {
    name, element, control, required,
    read() {
      const value = read();
      return { value, changed: value !== undefined && !same(value, def) };
    },
  };
}

/**
 * Build a form for schema's properties. Options: omit (names to leave out), basic (how many fields
 * to show before "More parameters"), preset (values to set over the defaults).
 */
export function schemaForm(schema, { omit = [], basic = 7, preset = {} } = {}) {
  const resolve = resolver(schema);
  const root = resolve(schema);
  const required = new Set(root.required || []);
  const fields = [];
  for (const [name, prop] of Object.entries(root.properties || {})) {
    if (omit.includes(name)) continue;
    const f = makeField(name, prop, required.has(name), resolve);
    if (f) fields.push(f);
  }
  // Required fields first, then declaration order (which the service keeps meaningful).
  fields.sort((a, b) => Number(b.required) - Number(a.required));
  const shown = fields.slice(0, basic);
  const more = fields.slice(basic);
  const element = el('div.schema-form',
    el('div.fields', shown.map((f) => f.element)),
    more.length ? el('details.more', el('summary', `More parameters (${more.length})`),
      el('div.fields', more.map((f) => f.element))) : null);
  const api = {
    element,
    fields,
    set(name, value) {
      const f = fields.find((x) => x.name === name);
      if (!f) return;
      if (f.control.type === 'checkbox') f.control.checked = !!value;
      else if (f.control.classList?.contains('tuple')) {
        [...f.control.querySelectorAll('input')].forEach((inp, i) => { inp.value = value?.[i] ?? ''; });
      } else f.control.value = Array.isArray(value) ? value.join(', ') : (value ?? '');
      f.control.dispatchEvent(new Event('input'));
    },
    /** {params} or throws Error with a readable message. */
    read() {
      const params = {};
      const missing = [];
      for (const f of fields) {
        for (const inp of f.element.querySelectorAll('input, select, textarea')) {
          if (!inp.checkValidity()) throw new Error(`${f.name}: ${inp.validationMessage}`);
        }
        let r;
        try {
          r = f.read();
        } catch (err) {
          throw new Error(`${f.name}: ${err.message}`);
        }
        if (r.value === undefined && f.required) missing.push(f.name);
        else if (r.changed || (f.required && r.value !== undefined)) params[f.name] = r.value;
      }
      if (missing.length) throw new Error(`Required: ${missing.join(', ')}`);
      return params;
    },
  };
  for (const [k, v] of Object.entries(preset)) api.set(k, v);
  return api;
}
