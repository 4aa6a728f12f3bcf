// Boot: the API-key field, the model picker, the tabs (#explain, #jobs, #internals, #trust, #jobs/<id>),
// the service status, and the first load of the catalog.

import { getKey, onProblem, setKey } from './api.js';
import { mountExplain } from './explain.js';
import { mountInternals } from './internals.js';
import { mountJobs, openJob } from './jobs.js';
import { mountNdView } from './ndview.js';
import { loadCatalog, on, selectModel, state } from './state.js';
import { mountTrust } from './trust.js';
import { $, clear, el, option, problemBox, showError } from './ui.js';

const TABS = ['explain', 'jobs', 'internals', 'trust'];

function showTab(name) {
  const tab = TABS.includes(name) ? name : 'explain';
  for (const t of TABS) {
    const panel = $(`#tab-${t}`);
    panel.hidden = t !== tab;
    $(`#tabbtn-${t}`).setAttribute('aria-selected', String(t === tab));
  }
  if (state.detail) {
    $(`#tab-${tab}`).dispatchEvent(new Event('explorer:show'));
  }
  return tab;
}

function route() {
  const [tab, arg] = location.hash.replace(/^#/, '').split('/');
  const t = showTab(tab);
  if (t === 'jobs' && arg && state.detail) openJob(arg);
}

function setupKey() {
  const input = $('#api-key');
  const toggle = $('#api-key-show');
  input.value = getKey();
  const apply = () => {
    const v = input.value.trim();
    if (v === getKey()) return;
    setKey(v);
    $('#key-box').classList.remove('needed');
    boot();
  };
  input.addEventListener('change', apply);
  input.addEventListener('keydown', (e) => { if (e.key === 'Enter') { e.preventDefault(); apply(); } });
  toggle.addEventListener('click', () => {
    input.type = input.type === 'password' ? 'text' : 'password';
    toggle.textContent = input.type === 'password' ? 'show' : 'hide';
  });
  onProblem((p) => { if (p.status === 401) $('#key-box').classList.add('needed'); });
}

async function pollHealth() {
  const dot = $('#health');
  try {
    const r = await fetch(new URL('../readyz', document.baseURI), { cache: 'no-store' });
    const body = await r.json();
    const workers = body.checks?.workers;
    const plural = workers === 1 ? '' : 's';
    dot.className = `health ${body.ready ? 'ok' : 'warn'}`;
    dot.title = body.ready ? `ready${workers !== undefined ? ` · ${workers} worker${plural} on every queue` : ''}`
      : `not ready: ${(body.missing || []).join('; ') || 'starting'}`;
    clear(dot, body.ready ? 'ready' : 'not ready', body.ready && workers !== undefined ? ` · ${workers} worker${plural}`
      : '');
  } catch {
    dot.className = 'health bad';
    clear(dot, 'offline');
  }
  setTimeout(pollHealth, 15000);
}

let booting = null;
let healthStarted = false;
async function boot() {
  const banner = $('#banner');
  clear(banner);
  const mine = (booting = Symbol('boot'));
  try {
    await loadCatalog();
    if (mine !== booting) return;
    const sel = $('#model');
    clear(sel, state.models.map((m) => option(m.name, `${m.name}${m.default ? ' (default)' : ''}`, m.name === state.model)));
    sel.disabled = false;
    document.body.classList.add('ready');
    route();
    if (!healthStarted) { healthStarted = true; pollHealth(); }
  } catch (err) {
    if (mine !== booting) return;
    clear(banner, problemBox(err));
  }
}

function init() {
  setupKey();
  $('#model').addEventListener('change', async (e) => {
    try {
      await selectModel(e.target.value);
      route();
    } catch (err) {
      showError($('#banner'), err);
    }
  });
  for (const t of TABS) {
    $(`#tabbtn-${t}`).addEventListener('click', () => { location.hash = t; });
  }
  window.addEventListener('hashchange', route);
  mountExplain($('#tab-explain'));
  mountNdView($('#tab-explain'));
  mountJobs($('#tab-jobs'));
  mountInternals($('#tab-internals'));
  mountTrust($('#tab-trust'));
  on('model', (d) => {
    clear($('#layer-names'), d.layers.map((l) => el('option', { value: l.name })));
  });
  window.addEventListener('unhandledrejection', (e) => {
    // Aborted requests are expected (a newer one replaced them); anything else is shown, not thrown.
    if (e.reason?.name === 'AbortError') { e.preventDefault(); return; }
    e.preventDefault();
    showError($('#banner'), e.reason);
  });
  boot();
}

init();
