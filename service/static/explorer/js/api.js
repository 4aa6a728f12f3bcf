// The HTTP side of the explorer: the API key, fetch with problem+json errors, SSE over fetch,
// following a job to its end, and artifacts as object URLs (an <img src> could not send the key).

const KEY_STORAGE = 'cnnviz.apiKey';
export const TERMINAL = new Set(['succeeded', 'failed', 'canceled']);

// The page is served at <root>/ui/; the API lives at <root>/. Relative URLs keep a proxy prefix working.
const API_BASE = new URL('../', new URL('.', document.baseURI));

export function apiUrl(path) {
  return new URL(String(path).replace(/^\//, ''), API_BASE).toString();
}

export function getKey() {
  try { return localStorage.getItem(KEY_STORAGE) || ''; } catch { return ''; }
}

export function setKey(key) {
  try {
    if (key) localStorage.setItem(KEY_STORAGE, key); else localStorage.removeItem(KEY_STORAGE);
  } catch { /* storage disabled: the key lives for this page only */ }
  memoryKey = key || '';
}
let memoryKey = getKey();

/** An RFC 9457 problem answer, or a transport failure presented the same way. */
export class ProblemError extends Error {
  constructor({ status = 0, type = 'about:blank', title = 'Request failed', detail = '', ...extra } = {}) {
    super(detail ? `${title}: ${detail}` : title);
    this.name = 'ProblemError';
    this.status = status;
    this.type = type;
    this.title = title;
    this.detail = detail;
    this.extra = extra;
  }

  get slug() { return String(this.type).split('/').pop(); }
}

export function isAbort(err) {
  return err && (err.name === 'AbortError' || err.code === 20);
}

async function problemFrom(res) {
  const ctype = res.headers.get('content-type') || '';
  if (ctype.includes('json')) {
    try {
      const body = await res.json();
      if (body && typeof body === 'object' && (body.title || body.type)) {
        return new ProblemError({ ...body, status: body.status || res.status });
      }
    } catch { /* not JSON after all */ }
  }
  // Never show a body that is not a problem: it may be an HTML error page or a stack trace.
  return new ProblemError({ status: res.status, title: `HTTP ${res.status} ${res.statusText || ''}`.trim(),
    detail: res.status >= 500 ? 'The service failed to answer this request.' : '' });
}

const listeners = new Set();
/** Called with every ProblemError (e.g. to point at the API-key field on a 401). */
export function onProblem(fn) { listeners.add(fn); }

/** fetch() under the API base with the key; throws ProblemError for any non-2xx answer. */
export async function request(path, { method = 'GET', body, headers = {}, signal, accept } = {}) {
  const h = new Headers(headers);
  if (memoryKey) h.set('X-API-Key', memoryKey);
  if (accept) h.set('Accept', accept);
  let payload = body;
  if (body !== undefined && !(body instanceof FormData) && !(body instanceof Blob) && typeof body !== 'string') {
    payload = JSON.stringify(body);
    h.set('Content-Type', 'application/json');
  }
  let res;
  try {
    res = await fetch(apiUrl(path), { method, body: payload, headers: h, signal, cache: 'no-store' });
  } catch (err) {
    if (isAbort(err)) throw err;
    const p = new ProblemError({ title: 'The service cannot be reached', detail: String(err.message || err) });
    listeners.forEach((fn) => fn(p));
    throw p;
  }
  if (!res.ok) {
    const p = await problemFrom(res);
    listeners.forEach((fn) => fn(p));
    throw p;
  }
  return res;
}

export async function getJSON(path, opts) {
  const res = await request(path, opts);
  return res.json();
}

/** multipart/form-data in the service's envelope: repeated ``image`` files and a ``params`` JSON field. */
export function multipart(images, params, extra = {}) {
  const fd = new FormData();
  for (const img of images) {
    if (img) fd.append('image', img, img.name || 'image.png');
  }
  for (const [k, v] of Object.entries(extra)) fd.append(k, v, v.name || k);
  fd.append('params', JSON.stringify(params || {}));
  return fd;
}

const blobCache = new Map();
/** An object URL for an artifact (fetched with the key); cached, since artifacts never change. */
export async function blobUrl(path, { signal } = {}) {
  if (blobCache.has(path)) return blobCache.get(path);
  const res = await request(path, { signal });
  const url = URL.createObjectURL(await res.blob());
  blobCache.set(path, url);
  return url;
}

export async function fetchArtifactJSON(path, opts) {
  return getJSON(path, opts);
}

/** Server-sent events read with fetch (EventSource cannot send X-API-Key); yields {id, event, data}. */
export async function* sse(path, { signal, lastEventId } = {}) {
  const headers = {};
  if (lastEventId) headers['Last-Event-ID'] = lastEventId;
  const res = await request(path, { headers, signal, accept: 'text/event-stream' });
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  let ev = { id: null, event: 'message', data: [] };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl).replace(/\r$/, '');
        buf = buf.slice(nl + 1);
        if (line === '') {
          if (ev.data.length) {
            let data = ev.data.join('\n');
            try { data = JSON.parse(data); } catch { /* plain text data */ }
            yield { id: ev.id, event: ev.event, data };
          }
          ev = { id: ev.id, event: 'message', data: [] };
          continue;
        }
        if (line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        const val = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
        if (field === 'event') ev.event = val;
        else if (field === 'data') ev.data.push(val);
        else if (field === 'id') ev.id = val;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

const sleep = (ms, signal) => new Promise((resolve, reject) => {
  const t = setTimeout(resolve, ms);
  signal?.addEventListener('abort', () => { clearTimeout(t); reject(new DOMException('aborted', 'AbortError')); },
    { once: true });
});

/**
 * Follow a job to its end: its status first, then the SSE stream (resumed with Last-Event-ID when
 * the server closes it), falling back to long-polling. Handlers: status(rec), progress(data),
 * preview(data), metrics(data), event(ev). Resolves with the final status record.
 */
export async function followJob(id, handlers = {}, { signal } = {}) {
  const call = (name, arg) => { try { handlers[name]?.(arg); } catch (err) { console.warn(err); } };
  let rec = await getJSON(`/v1/jobs/${id}`, { signal });
  call('status', rec);
  let lastId = null;
  let failures = 0;
  while (!TERMINAL.has(rec.status)) {
    let sawDone = false;
    try {
      for await (const ev of sse(`/v1/jobs/${id}/events`, { signal, lastEventId: lastId })) {
        if (ev.id) lastId = ev.id;
        failures = 0;
        call('event', ev);
        if (ev.event === 'progress') call('progress', ev.data);
        else if (ev.event === 'preview') call('preview', ev.data);
        else if (ev.event === 'metrics') call('metrics', ev.data);
        else if (ev.event === 'status') call('status', { ...rec, status: ev.data.status });
        else if (ev.event === 'done') { sawDone = true; break; }
      }
    } catch (err) {
      if (isAbort(err)) throw err;
      failures += 1;
      if (err instanceof ProblemError && err.status === 404) throw err;
      if (failures > 3) {  // the stream keeps failing: long-poll instead
        rec = await getJSON(`/v1/jobs/${id}?wait=10`, { signal });
        call('status', rec);
        continue;
      }
      await sleep(500 * failures, signal);
    }
    rec = await getJSON(`/v1/jobs/${id}${sawDone ? '' : '?wait=1'}`, { signal });
    call('status', rec);
  }
  return rec;
}
