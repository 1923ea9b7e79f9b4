// Serves the console and, like Supabase's gateway, passes /rest/v1/* on to a
// PostgREST-compatible server. On Supabase, host the static files anywhere
// and set config.js's api to https://<project>.supabase.co/rest/v1 (and its
// anon key as apikey).
//   PAYLEDGER_REST_URL=http://127.0.0.1:3000 PORT=8080 node server.mjs
import http from 'node:http';
import { readFile } from 'node:fs/promises';
import { extname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(new URL('.', import.meta.url));
const rest = new URL(process.env.PAYLEDGER_REST_URL || 'http://127.0.0.1:3000');
const port = Number(process.env.PORT || 8080);
const host = process.env.HOST || '127.0.0.1';
const files = {
  '/': 'index.html', '/index.html': 'index.html', '/app.js': 'app.js', '/style.css': 'style.css',
  '/vendor/qrcode.js': 'node_modules/qrcode-generator/qrcode.js',
};
const types = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8' };
const configJs = `window.PAYLEDGER_CONFIG = ${JSON.stringify({ api: '/rest/v1', apikey: process.env.PAYLEDGER_APIKEY || null })};\n`;

function proxy(req, res) {
  const target = new URL(req.url.slice('/rest/v1'.length) || '/', rest);
  const headers = { ...req.headers, host: target.host };
  const up = http.request(target, { method: req.method, headers }, (r) => {
    res.writeHead(r.statusCode, r.headers);
    r.pipe(res);
  });
  up.on('error', (e) => { res.writeHead(502, { 'content-type': 'application/json' }); res.end(JSON.stringify({ message: e.message })); });
  req.pipe(up);
}

http.createServer(async (req, res) => {
  const path = req.url.split('?')[0];
  if (path.startsWith('/rest/v1/')) return proxy(req, res);
  if (path === '/config.js') {
    res.writeHead(200, { 'content-type': types['.js'], 'cache-control': 'no-store' });
    return res.end(configJs);
  }
  const file = files[path];
  if (!file || req.method !== 'GET') { res.writeHead(404); return res.end('not found'); }
  try {
    const body = await readFile(join(here, file));
    res.writeHead(200, { 'content-type': types[extname(file)], 'cache-control': 'no-store',
                         'content-security-policy': "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:" });
    res.end(body);
  } catch (e) {
    res.writeHead(500);
    res.end(String(e.message));
  }
}).listen(port, host, () => console.log(`credits console on http://${host}:${port}/ (API ${rest})`));
