// The credits console: plain JavaScript over the PostgREST protocol, so that
// the same page runs against PostgREST, Supabase's /rest/v1, or any server
// that speaks it. Everything it shows comes from payledger's end-user views
// and functions; the organisation is chosen per request (X-Org-Id), and the
// database checks the membership on every statement.

const config = Object.assign({ api: '/rest/v1', apikey: null, schema: 'payledger', pollMs: 1500 },
                             window.PAYLEDGER_CONFIG || {});
const $ = (id) => document.getElementById(id);
const state = { token: sessionStorage.getItem('payledger.token'), org: sessionStorage.getItem('payledger.org'), roles: {},
                poll: null };

// --- the API -------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super(body && body.message ? body.message : `HTTP ${status}`);
    this.status = status;
    this.code = body && body.code;
  }
}

async function api(path, { method = 'GET', body } = {}) {
  const headers = { Accept: 'application/json', 'Accept-Profile': config.schema,
                    Authorization: `Bearer ${state.token}` };
  if (config.apikey) headers.apikey = config.apikey;
  if (state.org) headers['X-Org-Id'] = state.org;
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    headers['Content-Profile'] = config.schema;
  }
  const res = await fetch(config.api + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  const json = text ? JSON.parse(text) : null;
  if (!res.ok) throw new ApiError(res.status, json);
  return json;
}

// --- formatting ----------------------------------------------------------

const num = (x, digits = 2) => Number(x).toLocaleString('en', { maximumFractionDigits: digits });

function price(asset, amount) {
  if (asset === 'msat') return `${num(amount / 1000, 3)} sat`;
  if (asset === 'usd') return `$${(amount / 100).toFixed(2)}`;
  return `${num(amount)} ${asset}`;
}

// PostgreSQL's intervals as PostgREST sends them ("1 mon", "3 mons", "7 days")
const period = (p) => String(p).replace(/^1 mon$/, 'month').replace(/mons?\b/, 'months').replace(/^1 (\w+)s$/, '$1');

const day = (t) => new Date(t).toLocaleDateString('en', { year: 'numeric', month: 'short', day: 'numeric' });
const monthLabel = (d) => new Date(`${d}T00:00:00Z`).toLocaleDateString('en', { month: 'short', timeZone: 'UTC' });

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v; else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function showError(e) {
  const box = $('error');
  if (!e) { box.hidden = true; return; }
  box.textContent = e.code ? `${e.message} (${e.code})` : e.message;
  box.hidden = false;
}

function claims(token) {
  try {
    return JSON.parse(atob(token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')));
  } catch {
    return null;
  }
}

// --- the views -----------------------------------------------------------

async function loadBalance() {
  const [b] = await api('/rpc/my_total_credits', { method: 'POST', body: {} });
  $('available').textContent = b ? num(b.available, 6) : '0';
  $('expiry').textContent = b && b.next_expiry ? `Next expiry: ${day(b.next_expiry)}` : 'No credit expires soon.';
  const list = $('by-metric');
  list.replaceChildren(...Object.entries((b && b.by_metric) || {}).map(([m, v]) =>
    el('li', {}, `${m === '*' ? 'any metric' : m}: ${num(v, 6)}`)));
}

async function loadUsage() {
  const rows = await api('/my_plan_usage?order=metric');
  $('usage').tBodies[0].replaceChildren(...rows.map((r) => {
    const pct = r.percent === null ? 0 : Number(r.percent);
    const meter = el('meter', { min: 0, max: 100, value: Math.min(pct, 100), 'aria-label': `${r.metric} used` });
    return el('tr', { 'data-metric': r.metric, class: r.blocked ? 'blocked' : '' },
      el('th', { scope: 'row' }, r.metric),
      el('td', {}, meter, ` ${num(r.usage)} of ${num(r.monthly_limit)} (${num(pct, 1)} %)`),
      el('td', {}, r.blocked ? el('strong', { class: 'badge' }, 'Blocked: out of credits')
                             : (pct >= 100 ? 'Over plan, paid by credits' : 'OK')));
  }));
  if (!rows.length) $('usage').tBodies[0].append(el('tr', {}, el('td', { colspan: 3 }, 'No plan.')));
}

async function loadHistory() {
  const rows = await api('/my_credit_history?select=month,metric,credits_used,expired,closing_balance&order=month');
  const months = new Map();
  for (const r of rows) {
    const m = months.get(r.month) || { used: 0, expired: 0, balance: 0 };
    m.used += Number(r.credits_used);
    m.expired += Number(r.expired);
    if (r.metric === '*') m.balance = Number(r.closing_balance);
    months.set(r.month, m);
  }
  const data = [...months.entries()];
  $('history').tBodies[0].replaceChildren(...data.map(([month, m]) =>
    el('tr', {}, el('th', { scope: 'row' }, month.slice(0, 7)), el('td', {}, num(m.used, 6)),
       el('td', {}, num(m.expired, 6)), el('td', {}, num(m.balance, 6)))));
  // an SVG bar chart, drawn here: no chart library
  const w = 360, h = 160, pad = 22, bw = (w - pad) / Math.max(data.length, 1);
  const max = Math.max(1, ...data.map(([, m]) => m.used));
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', `0 0 ${w} ${h}`);
  data.forEach(([month, m], i) => {
    const bh = ((h - 2 * pad) * m.used) / max;
    const bar = document.createElementNS(ns, 'rect');
    Object.entries({ x: pad + i * bw + 2, y: h - pad - bh, width: bw - 4, height: bh, class: 'bar' })
      .forEach(([k, v]) => bar.setAttribute(k, v));
    const tip = document.createElementNS(ns, 'title');
    tip.textContent = `${month.slice(0, 7)}: ${num(m.used, 6)} credits`;
    bar.append(tip);
    const label = document.createElementNS(ns, 'text');
    Object.entries({ x: pad + i * bw + bw / 2, y: h - 6, 'text-anchor': 'middle' }).forEach(([k, v]) => label.setAttribute(k, v));
    label.textContent = monthLabel(month);
    svg.append(bar, label);
  });
  $('chart').replaceChildren(svg);
}

// (the database refuses a read-only member's purchase anyway: this only
// says so before the click)
const mayBuy = () => ['owner', 'admin', 'member'].includes(state.roles[state.org]);

async function loadPackages() {
  const rows = await api('/my_credit_packages?order=price');
  const buyButton = (p) => {
    const b = el('button', { type: 'button', onclick: () => buy(p, p.recurring) }, p.recurring ? 'Subscribe' : 'Buy once');
    if (!mayBuy()) { b.disabled = true; b.setAttribute('aria-describedby', 'read-only-note'); }
    return b;
  };
  $('packages').replaceChildren(...rows.map((p) => el('li', { 'data-package': p.name },
    el('h3', {}, p.name),
    el('p', {}, `${num(p.credits, 6)} credits${p.metric ? ` for ${p.metric}` : ''}, ${price(p.price_asset, p.price)}`
               + (p.recurring ? ` every ${period(p.period)}` : '')),
    buyButton(p))));
  $('read-only-note').hidden = mayBuy();
}

async function loadSubscriptions() {
  const rows = await api('/my_subscriptions?payin_type=eq.CREDIT_PACKAGE&order=created_at.desc');
  $('subscriptions').replaceChildren(...rows.map((s) => el('li', {},
    `${price(s.asset, s.amount)} every ${period(s.period)}: ${s.status}`
    + (s.status === 'active' ? `, next ${day(s.next_renewal_at)}` : ''))));
  if (!rows.length) $('subscriptions').append(el('li', {}, 'None.'));
}

async function refresh() {
  try {
    showError(null);
    await Promise.all([loadBalance(), loadUsage(), loadHistory(), loadPackages(), loadSubscriptions()]);
  } catch (e) {
    showError(e);
  }
}

// --- buying --------------------------------------------------------------

async function buy(pkg, recurring) {
  showError(null);
  clearInterval(state.poll);
  try {
    const rail = pkg.price_asset === 'msat' ? 'invoice' : 'card';
    const [p] = await api('/rpc/buy_credits', { method: 'POST', body: {
      package: pkg.name, recurring, rail, idempotency_key: `console-${crypto.randomUUID()}` } });
    $('checkout').hidden = false;
    $('invoice').value = '';
    $('qr').replaceChildren();
    $('pay-status').textContent = 'Creating the invoice…';
    $('checkout').classList.remove('paid');
    $('checkout').scrollIntoView({ behavior: 'smooth', block: 'start' });
    state.poll = setInterval(() => watch(p.payin_id), config.pollMs);
    watch(p.payin_id);
  } catch (e) {
    showError(e);
  }
}

// The invoice appears when the worker has issued it; the pay-in turns PAID
// when the worker or a webhook sees the payment: polled, no reload.
async function watch(payinId) {
  try {
    const [inv] = await api(`/my_invoices?payin_id=eq.${payinId}&select=status,payment_request,amount,asset,expires_at`);
    const [p] = await api(`/my_payins?id=eq.${payinId}&select=state,failure_reason`);
    if (inv && inv.payment_request && !$('invoice').value) {
      $('invoice').value = inv.payment_request;
      if (inv.asset === 'msat' && window.qrcode) {
        const qr = window.qrcode(0, 'L');
        qr.addData(inv.payment_request.toUpperCase(), 'Alphanumeric');
        qr.make();
        $('qr').innerHTML = qr.createSvgTag({ cellSize: 4, margin: 4, scalable: true, alt: 'Lightning invoice QR code' });
      }
    }
    if (p && p.state === 'PAID') {
      clearInterval(state.poll);
      $('pay-status').textContent = 'Paid. Your credits are here.';
      $('checkout').classList.add('paid');
      await refresh();
    } else if (p && (p.state === 'FAILED' || p.state === 'CANCELLED')) {
      clearInterval(state.poll);
      $('pay-status').textContent = `Not paid: ${(p.failure_reason || p.state).toLowerCase().replace(/_/g, ' ')}.`;
    } else if (inv && inv.payment_request) {
      $('pay-status').textContent = `Waiting for your payment of ${price(inv.asset, inv.amount)}…`;
    }
  } catch (e) {
    showError(e);
  }
}

// --- session -------------------------------------------------------------

async function start() {
  const c = claims(state.token || '');
  if (!c) { signOut(); return; }
  $('signin').hidden = true;
  $('who').hidden = false;
  $('console').hidden = false;
  $('user').textContent = c.email || c.sub;
  try {
    const orgs = await api('/my_org_memberships?order=org_id');
    state.roles = Object.fromEntries(orgs.map((o) => [o.org_id, o.role]));
    if (!orgs.some((o) => o.org_id === state.org)) state.org = orgs.length ? orgs[0].org_id : null;
    $('org').replaceChildren(...orgs.map((o) => el('option', { value: o.org_id }, `${o.org_id} (${o.role.replace('_', '-')})`)));
    $('org').value = state.org || '';
    if (state.org) sessionStorage.setItem('payledger.org', state.org);
    if (!orgs.length) showError(new Error('You belong to no organisation.'));
  } catch (e) {
    showError(e);
    return;
  }
  await refresh();
}

function signOut() {
  clearInterval(state.poll);
  sessionStorage.clear();
  Object.assign(state, { token: null, org: null });
  $('signin').hidden = false;
  $('who').hidden = true;
  $('console').hidden = true;
  $('checkout').hidden = true;
}

$('signin').addEventListener('submit', (ev) => {
  ev.preventDefault();
  state.token = $('token').value.trim();
  sessionStorage.setItem('payledger.token', state.token);
  $('token').value = '';
  start();
});
$('signout').addEventListener('click', signOut);
$('org').addEventListener('change', () => {
  state.org = $('org').value;
  sessionStorage.setItem('payledger.org', state.org);
  clearInterval(state.poll);
  $('checkout').hidden = true;
  // (nothing of the previous organisation stays on screen while the next loads)
  $('available').textContent = '–';
  for (const id of ['by-metric', 'chart', 'packages', 'subscriptions']) $(id).replaceChildren();
  for (const id of ['usage', 'history']) $(id).tBodies[0].replaceChildren();
  refresh();
});
$('copy').addEventListener('click', () => navigator.clipboard && navigator.clipboard.writeText($('invoice').value));

// a link may carry the token in its fragment (#token=…): taken, then dropped from the address bar
const fragment = new URLSearchParams(location.hash.slice(1));
if (fragment.get('token')) {
  state.token = fragment.get('token');
  sessionStorage.setItem('payledger.token', state.token);
  history.replaceState(null, '', location.pathname + location.search);
}
if (state.token) start();
