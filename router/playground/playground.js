// playground.js -- the ddm playground: builds a job request from the form, submits it
// (POST /v1/jobs), reads its Server-Sent Events (fetch, so that a token can be sent;
// resumes with Last-Event-ID when the stream drops), shows progress, previews, the
// routing heat map and expert calls, and the final grid. API errors are shown as the
// server sent them. No framework, nothing loaded from elsewhere.
'use strict';

const $ = (id) => document.getElementById(id);

// What the page has seen, also read by the browser test (tests/browser/playground.mjs).
const state = {
  experts: null,      // GET /v1/experts
  job: null,          // id of the job being watched
  status: 'idle',
  evaluations: 0,     // evaluations per image of the current job
  n: 0,
  steps: 0,           // step events received
  previews: 0,        // preview events received
  weights: [],        // [evaluation][image][expert] weight (0 when not selected)
  calls: [],          // [expert] selections seen in step events
  callsFinal: null,   // calls_by_expert of the result
  abort: null,        // AbortController of the event stream
};
window.ddmPlayground = state;

function authHeaders(extra) {
  const h = Object.assign({}, extra || {});
  const tok = $('token').value.trim();
  if (tok) h.Authorization = 'Bearer ' + tok;
  return h;
}

function setStatus(s, detail) {
  state.status = s;
  $('status').textContent = detail ? `${s} — ${detail}` : s;
  document.body.dataset.status = s;
}

function showError(status, text, statusText) {
  const box = $('error');
  let msg = text;
  try {
    const j = JSON.parse(text);
    if (j && j.error && j.error.message) msg = `${j.error.code}: ${j.error.message}`;
  } catch (e) { /* not JSON: show it as it is */ }
  box.textContent = `HTTP ${status}${statusText ? ' ' + statusText : ''}: ${msg}\n${text}`;
  box.hidden = false;
}

function clearError() {
  $('error').hidden = true;
  $('error').textContent = '';
}

async function api(method, path, opts) {
  opts = opts || {};
  const resp = await fetch(path, {
    method,
    headers: authHeaders(opts.headers),
    body: opts.body,
    signal: opts.signal,
  });
  return resp;
}

// ---- form -----------------------------------------------------------------------------

function fillStrategies(K) {
  const sel = $('strategy');
  sel.textContent = '';
  const names = [];
  for (let k = 1; k <= K; k++) names.push(`top-${k}`);
  names.push('full', 'threshold', 'nucleus', 'sample', 'uniform');
  for (let k = 0; k < K; k++) names.push(`expert:${k}`);
  for (const n of names) {
    const o = document.createElement('option');
    o.textContent = n;
    if (n === (K >= 2 ? 'top-2' : 'expert:0')) o.selected = true;
    sel.appendChild(o);
  }
  strategyChanged();
}

function strategyChanged() {
  const s = $('strategy').value;
  $('param-threshold').hidden = !(s === 'threshold' || s === 'nucleus');
  $('param-temperature').hidden = s !== 'sample';
}

function fillLabels(info) {
  const sel = $('label');
  sel.textContent = '';
  const un = document.createElement('option');
  un.value = '';
  un.textContent = 'unconditional';
  sel.appendChild(un);
  const names = Array.isArray(info.class_names) ? info.class_names : null;
  for (let c = 0; c < (info.num_classes || 0); c++) {
    const o = document.createElement('option');
    o.value = String(c);
    o.textContent = names && names[c] ? `${names[c]} (${c})` : String(c);
    sel.appendChild(o);
  }
  sel.disabled = !info.num_classes;
}

async function loadExperts() {
  try {
    const resp = await api('GET', '/v1/experts');
    const text = await resp.text();
    if (!resp.ok) {
      showError(resp.status, text, resp.statusText);
      fillStrategies(2);
      return;
    }
    clearError(); /* e.g. the 401 shown before a token was given */
    state.experts = JSON.parse(text);
    fillStrategies(state.experts.num_experts);
    fillLabels(state.experts);
    document.body.dataset.ready = '1';
  } catch (e) {
    showError(0, String(e));
  }
}

function numberField(id, body, name) {
  const v = $(id).value.trim();
  if (v !== '') body[name] = Number(v);
}

function buildRequest() {
  const body = { strategy: $('strategy').value, sampler: $('sampler').value };
  numberField('steps', body, 'steps');
  numberField('n', body, 'n');
  numberField('guidance', body, 'guidance');
  numberField('priority', body, 'priority');
  numberField('preview_every', body, 'preview_every');
  if (!$('param-threshold').hidden) numberField('threshold', body, 'threshold');
  if (!$('param-temperature').hidden) numberField('temperature', body, 'temperature');
  const seed = $('seed').value.trim();
  if (seed !== '') body.seed = /^[0-9]+$/.test(seed) && seed.length > 15 ? seed : Number(seed);
  const label = $('label').value;
  if (label !== '') body.label = Number(label);
  return body;
}

// ---- drawing ----------------------------------------------------------------------------

async function drawPng(canvasId, blob) {
  const bmp = await createImageBitmap(blob);
  const c = $(canvasId);
  const scale = Math.max(1, Math.floor(Math.min(280 / bmp.width, 280 / bmp.height)));
  c.width = bmp.width * scale;
  c.height = bmp.height * scale;
  const g = c.getContext('2d');
  g.imageSmoothingEnabled = false;
  g.drawImage(bmp, 0, 0, c.width, c.height);
  bmp.close();
}

function b64ToBlob(b64, type) {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new Blob([bytes], { type });
}

// weight 0..1 -> a dark blue .. yellow ramp
function heatColor(w) {
  const stops = [[13, 8, 135], [126, 3, 168], [204, 71, 120], [248, 149, 64], [240, 249, 33]];
  const x = Math.max(0, Math.min(1, w)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(x));
  const f = x - i;
  const c = stops[i].map((v, k) => Math.round(v + f * (stops[i + 1][k] - v)));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

function drawHeatmap() {
  const c = $('heatmap');
  const g = c.getContext('2d');
  const K = state.experts ? state.experts.num_experts : 1;
  const E = Math.max(1, state.evaluations);
  const left = 56, top = 6, w = c.width - left - 8, h = c.height - top - 22;
  g.fillStyle = '#fff';
  g.fillRect(0, 0, c.width, c.height);
  g.fillStyle = '#f0f1f5';
  g.fillRect(left, top, w, h);
  const which = $('heat-image').value;
  const rowH = h / K, colW = w / E;
  const cell = (per, k) => {
    if (which !== 'avg') return (per[Number(which)] || [])[k] || 0;
    let v = 0;
    for (const img of per) v += img[k] || 0;
    return v / (per.length || 1);
  };
  let max = 0; // the brightest colour is the largest weight shown
  for (const per of state.weights)
    if (per) for (let k = 0; k < K; k++) max = Math.max(max, cell(per, k));
  for (let e = 0; e < state.weights.length; e++) {
    const per = state.weights[e];
    if (!per) continue;
    for (let k = 0; k < K; k++) {
      g.fillStyle = heatColor(max > 0 ? cell(per, k) / max : 0);
      g.fillRect(left + e * colW, top + k * rowH, Math.ceil(colW), Math.ceil(rowH));
    }
  }
  $('heat-scale').textContent = max > 0 ? `(brightest = weight ${max.toFixed(2)})` : '';
  g.fillStyle = '#5d6677';
  g.font = '11px system-ui, sans-serif';
  g.textBaseline = 'middle';
  for (let k = 0; k < K; k++) g.fillText(`expert ${k}`, 2, top + (k + 0.5) * rowH);
  g.textBaseline = 'top';
  g.fillText('t = 1', left, top + h + 5);
  g.fillText('t = 0', left + w - 28, top + h + 5);
}

function drawCalls() {
  const c = $('calls');
  const g = c.getContext('2d');
  const counts = state.callsFinal || state.calls;
  const K = counts.length;
  g.fillStyle = '#fff';
  g.fillRect(0, 0, c.width, c.height);
  if (!K) return;
  const max = Math.max(1, ...counts.map((x) => x || 0));
  const left = 10, top = 16, bottom = c.height - 18, bw = (c.width - 2 * left) / K;
  g.font = '11px system-ui, sans-serif';
  g.textAlign = 'center';
  for (let k = 0; k < K; k++) {
    const bh = (bottom - top) * (counts[k] || 0) / max;
    g.fillStyle = '#2f6fdf';
    g.fillRect(left + k * bw + 4, bottom - bh, bw - 8, bh);
    g.fillStyle = '#1d2330';
    g.textBaseline = 'bottom';
    g.fillText(String(counts[k] || 0), left + (k + 0.5) * bw, bottom - bh - 2);
    g.fillStyle = '#5d6677';
    g.textBaseline = 'top';
    g.fillText(`expert ${k}`, left + (k + 0.5) * bw, bottom + 3);
  }
  g.textAlign = 'start';
}

function fillImageChoice(n) {
  const sel = $('heat-image');
  sel.textContent = '';
  const avg = document.createElement('option');
  avg.value = 'avg';
  avg.textContent = 'all images (mean)';
  sel.appendChild(avg);
  for (let i = 0; i < n; i++) {
    const o = document.createElement('option');
    o.value = String(i);
    o.textContent = `image ${i}`;
    sel.appendChild(o);
  }
}

// ---- events -----------------------------------------------------------------------------

function onStep(d) {
  const K = state.experts ? state.experts.num_experts : 0;
  state.evaluations = d.evaluations;
  const per = d.images.map((im) => {
    const row = new Array(K).fill(0);
    im.experts.forEach((k, j) => { row[k] = im.weights[j]; state.calls[k] = (state.calls[k] || 0) + 1; });
    return row;
  });
  state.weights[d.index] = per;
  state.steps++;
  $('progress').max = d.evaluations;
  $('progress').value = d.index + 1;
  setStatus('running', `step ${d.step + 1} of ${Math.ceil(d.evaluations / ($('sampler').value === 'heun' ? 2 : 1))}, t = ${d.t.toFixed(3)}`);
  drawHeatmap();
  drawCalls();
}

async function onPreview(d) {
  state.previews++;
  $('preview-step').textContent = `(step ${d.step}, t = ${d.t.toFixed(2)})`;
  await drawPng('preview', b64ToBlob(d.png, 'image/png'));
  document.body.dataset.previews = String(state.previews);
}

async function onFinal(kind, d) {
  const id = state.job;
  if (kind === 'error' || d.status === 'failed') {
    setStatus('failed');
    if (d.error) showError(d.error.http_status || 500, JSON.stringify({ error: { code: d.error.code, message: d.error.message } }));
  } else if (d.status === 'cancelled') {
    setStatus('cancelled', `at step ${d.step} of ${d.steps}`);
  } else {
    await showResult(id);
  }
  $('cancel').disabled = true;
  $('submit').disabled = false;
}

async function showResult(id) {
  const png = await api('GET', `/v1/jobs/${id}`, { headers: { Accept: 'image/png' } });
  if (!png.ok) {
    showError(png.status, await png.text(), png.statusText);
    setStatus('failed');
    return;
  }
  await drawPng('result', await png.blob());
  const st = await api('GET', `/v1/jobs/${id}`, { headers: { Accept: 'application/json' } });
  const text = await st.text();
  if (st.ok) {
    const j = JSON.parse(text);
    if (j.result) {
      state.callsFinal = j.result.calls_by_expert;
      const t = j.result.timings;
      $('timing').textContent = `(${j.result.expert_calls} expert calls, ${(t.total_ms / 1000).toFixed(2)} s)`;
    }
    $('progress').value = $('progress').max;
    drawCalls();
  }
  setStatus('succeeded');
}

// Reads the job's events until the final one; resumes after a dropped stream.
async function watch(id) {
  let lastId = null;
  const ctl = new AbortController();
  state.abort = ctl;
  for (let attempt = 0; attempt < 30; attempt++) {
    const headers = { Accept: 'text/event-stream' };
    if (lastId !== null) headers['Last-Event-ID'] = lastId;
    let resp;
    try {
      resp = await api('GET', `/v1/jobs/${id}/events`, { headers, signal: ctl.signal });
    } catch (e) {
      if (ctl.signal.aborted) return;
      await new Promise((r) => setTimeout(r, 1000));
      continue;
    }
    if (!resp.ok) {
      showError(resp.status, await resp.text(), resp.statusText);
      setStatus('failed');
      return;
    }
    const reader = resp.body.getReader();
    const dec = new TextDecoder();
    let buf = '';
    let ev = { event: 'message', data: [], id: null };
    let finished = false;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let nl;
        while ((nl = buf.indexOf('\n')) >= 0) {
          let line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (line.endsWith('\r')) line = line.slice(0, -1);
          if (line === '') {
            if (ev.data.length) {
              if (ev.id !== null) lastId = ev.id;
              const d = JSON.parse(ev.data.join('\n'));
              if (ev.event === 'queued') setStatus('queued', `position ${d.position}`);
              else if (ev.event === 'step') onStep(d);
              else if (ev.event === 'preview') await onPreview(d);
              else if (ev.event === 'done' || ev.event === 'error') {
                finished = true;
                await onFinal(ev.event, d);
              }
            }
            ev = { event: 'message', data: [], id: null };
          } else if (line[0] !== ':') {
            const c = line.indexOf(':');
            const f = c < 0 ? line : line.slice(0, c);
            let v = c < 0 ? '' : line.slice(c + 1);
            if (v[0] === ' ') v = v.slice(1);
            if (f === 'event') ev.event = v;
            else if (f === 'data') ev.data.push(v);
            else if (f === 'id') ev.id = v;
          }
        }
      }
    } catch (e) {
      if (ctl.signal.aborted) return;
    }
    if (finished) return;
    await new Promise((r) => setTimeout(r, 500)); // dropped: resume after lastId
  }
}

async function submit(e) {
  e.preventDefault();
  clearError();
  if (state.abort) state.abort.abort();
  const body = buildRequest();
  Object.assign(state, { job: null, steps: 0, previews: 0, weights: [], calls: [], callsFinal: null,
                         evaluations: 0, n: body.n || 1 });
  $('progress').value = 0;
  $('preview-step').textContent = '';
  $('timing').textContent = '';
  fillImageChoice(state.n);
  drawHeatmap();
  drawCalls();
  let resp;
  try {
    resp = await api('POST', '/v1/jobs', { headers: { 'Content-Type': 'application/json' },
                                          body: JSON.stringify(body) });
  } catch (err) {
    showError(0, String(err));
    return;
  }
  const text = await resp.text();
  if (resp.status !== 202) {
    showError(resp.status, text, resp.statusText);
    setStatus('refused');
    return;
  }
  const j = JSON.parse(text);
  state.job = j.id;
  $('jobid').textContent = j.id;
  setStatus(j.status, j.queue_position !== undefined ? `position ${j.queue_position}` : '');
  $('cancel').disabled = false;
  $('submit').disabled = true;
  watch(j.id).catch((err) => showError(0, String(err)));
}

async function cancel() {
  if (!state.job) return;
  const resp = await api('DELETE', `/v1/jobs/${state.job}`);
  const text = await resp.text();
  if (!resp.ok) showError(resp.status, text, resp.statusText);
  // the stream's done event reports the cancellation
}

$('form').addEventListener('submit', submit);
$('cancel').addEventListener('click', cancel);
$('strategy').addEventListener('change', strategyChanged);
$('heat-image').addEventListener('change', drawHeatmap);
$('token').addEventListener('change', loadExperts);
loadExperts().then(() => { drawHeatmap(); drawCalls(); });
