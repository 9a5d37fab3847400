// check.mjs -- validates the OpenAPI 3.1 document, then every recorded response
// (and Server-Sent Event) against it.
//   node tests/openapi/check.mjs OPENAPI.json [RECORDED.jsonl]
// RECORDED.jsonl: one object per line, {method, path, status, content_type, body
// [, headers: {lowercase name: value}]} for a response (headers recorded: the
// ones the document marks required must be there), {method, path, event, data}
// for an event (tests/support/apicheck.c).
// Exit 0 when everything fits; otherwise each misfit is printed and the exit is 1.
import fs from 'node:fs';
import { Validator } from '@seriousme/openapi-schema-validator';
import Ajv2020 from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';

const [docPath, recPath] = process.argv.slice(2);
if (!docPath) {
  console.error('usage: node tests/openapi/check.mjs OPENAPI.json [RECORDED.jsonl]');
  process.exit(2);
}
const doc = JSON.parse(fs.readFileSync(docPath, 'utf8'));

// 1. the document itself, against the OpenAPI 3.1 schema
const validator = new Validator();
const res = await validator.validate(doc);
if (!res.valid) {
  console.error(`${docPath}: not a valid OpenAPI ${doc.openapi} document:`);
  console.error(JSON.stringify(res.errors, null, 2));
  process.exit(1);
}
if (!String(doc.openapi).startsWith('3.1')) {
  console.error(`${docPath}: openapi is ${doc.openapi}, expected 3.1.x`);
  process.exit(1);
}
if (!recPath) {
  console.log(`openapi: ${docPath} is a valid OpenAPI ${doc.openapi} document`);
  process.exit(0);
}

// 2. responses: the document's schemas are JSON Schema 2020-12 (OpenAPI 3.1)
const ajv = new Ajv2020({ strict: false, allErrors: true });
addFormats(ajv);
ajv.addSchema(doc, 'openapi.json');
const compiled = new Map();
function validatorFor(pointer) {
  if (!compiled.has(pointer)) compiled.set(pointer, ajv.compile({ $ref: `openapi.json#${pointer}` }));
  return compiled.get(pointer);
}
const esc = (s) => s.replace(/~/g, '~0').replace(/\//g, '~1');
function deref(obj) {
  while (obj && obj.$ref) {
    const parts = obj.$ref.replace(/^#\//, '').split('/').map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));
    obj = parts.reduce((o, k) => o && o[k], doc);
  }
  return obj;
}
// the document path template a request path belongs to (exact ones first)
const templates = Object.keys(doc.paths).map((t) => ({
  t,
  re: new RegExp('^' + t.replace(/[.*+?^$()|[\]\\]/g, '\\$&').replace(/\\?\{[^}]+\\?\}/g, '[^/]+') + '$'),
  params: (t.match(/\{/g) || []).length,
})).sort((a, b) => a.params - b.params);
function templateOf(path) {
  const p = path.split('?')[0];
  const m = templates.find((x) => x.re.test(p));
  return m ? m.t : null;
}

const failures = [];
let checked = 0;
const lines = fs.readFileSync(recPath, 'utf8').split('\n').filter((l) => l.trim());
for (const line of lines) {
  const r = JSON.parse(line);
  const where = `${r.method} ${r.path}` + (r.event ? ` event "${r.event}"` : ` -> ${r.status}`);
  const tpl = templateOf(r.path);
  let schemaPtr = null;
  let media = null;
  if (r.event) {
    const op = tpl && doc.paths[tpl][r.method.toLowerCase()];
    const content = op && deref(op.responses['200'])?.content?.['text/event-stream'];
    const events = content && deref(content['x-events']);
    if (!events || !events[r.event]) {
      failures.push(`${where}: no such event in the document`);
      continue;
    }
    schemaPtr = events[r.event].$ref.replace(/^#/, '');
    media = 'application/json';
    r.body = r.data;
  } else {
    const method = r.method.toLowerCase() === 'head' ? 'get' : r.method.toLowerCase();
    const op = tpl && doc.paths[tpl][method];
    if (method === 'options' && r.status === 204 && !r.body) {
      checked++; // a CORS preflight: answered for any path, described in info.description
      continue;
    }
    if (!op) {
      // the server's own answers for unknown paths and methods: a JSON error
      if ((r.status === 404 && !tpl) || r.status === 405) {
        schemaPtr = '/components/schemas/Error';
        media = 'application/json';
      } else {
        failures.push(`${where}: ${tpl ? 'method' : 'path'} not in the document`);
        continue;
      }
    } else {
      const resp = deref(op.responses[String(r.status)] || op.responses[`${String(r.status)[0]}XX`] ||
                         op.responses.default);
      if (!resp) {
        failures.push(`${where}: status ${r.status} is not documented for ${method.toUpperCase()} ${tpl}`);
        continue;
      }
      const ctype = (r.content_type || '').split(';')[0].trim();
      const types = Object.keys(resp.content || {});
      if (!types.includes(ctype)) {
        failures.push(`${where}: content type "${ctype}" is not documented (${types.join(', ') || 'none'})`);
        continue;
      }
      media = ctype;
      // headers the document requires of this response (when they were recorded)
      if (r.headers) {
        const missing = Object.entries(resp.headers || {})
          .filter(([name, h]) => deref(h).required && !(name.toLowerCase() in r.headers))
          .map(([name]) => name);
        if (missing.length) {
          failures.push(`${where}: lacks the header(s) the document requires: ${missing.join(', ')}`);
          continue;
        }
      }
      const base = `/paths/${esc(tpl)}/${method}/responses/${r.status}`;
      const respRef = op.responses[String(r.status)].$ref;
      schemaPtr = (respRef ? respRef.replace(/^#/, '') : base) + `/content/${esc(ctype)}/schema`;
    }
  }
  checked++;
  if (!media.includes('json')) continue; // PNG, protobuf, text: the type was the check
  let body;
  try {
    body = JSON.parse(r.body);
  } catch (e) {
    failures.push(`${where}: body is not JSON: ${String(r.body).slice(0, 200)}`);
    continue;
  }
  const v = validatorFor(schemaPtr);
  if (!v(body)) {
    failures.push(`${where}: does not fit ${schemaPtr}: ${ajv.errorsText(v.errors)}\n  body: ${String(r.body).slice(0, 300)}`);
  }
}
if (failures.length) {
  console.error(`openapi: ${failures.length} of ${lines.length} responses do not fit the document:`);
  for (const f of failures) console.error('  ' + f);
  process.exit(1);
}
console.log(`openapi: the document is valid OpenAPI ${doc.openapi}; ${checked} responses and events fit it`);
