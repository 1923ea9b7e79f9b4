// The credits console in a real browser (Debian's Chromium, driven by
// playwright-core), on a phone-sized screen, as a person uses it. Called by
// tests/integration/console.sh:
//   node console_browser.mjs <console url> <ana's JWT> <LNbits url> <payer admin key> <screenshot dir>
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const require = createRequire(fileURLToPath(new URL('../../examples/credits-console/package.json', import.meta.url)));
const { chromium } = require('playwright-core');
const [url, token, lnbits, payKey, shots] = process.argv.slice(2);

// (polled from here: page.waitForFunction evaluates strings, which the
// console's Content-Security-Policy forbids, as it should)
async function until(cond, what) {
  for (let i = 0; i < 200; i++) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}
const text = (sel) => page.locator(sel).textContent();
const amount = async (sel) => Number((await text(sel)).replace(/,/g, ''));

function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
  console.log(`  ok: ${what}`);
}

const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu'] });
const page = await browser.newPage({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 1 });
const errors = [];
page.on('pageerror', (e) => errors.push(e.message));
// (a refused request is logged by the browser as "Failed to load resource": expected once)
page.on('console', (m) => m.type() === 'error' && !m.text().startsWith('Failed to load resource') && errors.push(m.text()));
page.setDefaultTimeout(20000);
try {
  await page.goto(url);
  await page.getByLabel('Your access token (JWT)').fill(token);
  await page.getByRole('button', { name: 'Sign in' }).click();

  // acme is chosen first (ana owns it); its 300 credits, less eleven months of use
  await until(async () => (await text('#available')) !== '–', 'the balance');
  check(await page.locator('#org').inputValue() === 'acme', 'the first organisation is chosen');
  const before = await amount('#available');
  check(before === 184, `acme's available credits: 300 less 116 used (${before})`);
  check((await page.locator('#expiry').textContent()).startsWith('Next expiry:'), 'the next expiry is shown');
  const bandwidth = page.locator('#usage tr[data-metric="bandwidth"]');
  check((await bandwidth.textContent()).includes('40 of 50 (80 %)'), 'bandwidth usage against the plan');
  await page.waitForSelector('#chart svg rect.bar');
  check(await page.locator('#chart svg rect.bar').count() === 12, 'twelve months in the chart');
  check(await page.locator('#history tbody tr').count() === 12, 'and in the table');
  check(await page.locator('#packages li').count() === 3, 'three packages on sale');
  await page.screenshot({ path: `${shots}/1-credits.png`, fullPage: true });

  // buy once: the invoice (text and QR code), paid from another LNbits wallet
  await page.locator('li[data-package="credits-100"] button').click();
  await until(async () => (await page.locator('#invoice').inputValue()).startsWith('lnbc'), 'the invoice');
  const bolt11 = await page.locator('#invoice').inputValue();
  check(await page.locator('#qr svg').count() === 1, 'a QR code of the invoice');
  check((await page.locator('#pay-status').textContent()).includes('50 sat'), 'the amount to pay');
  await page.screenshot({ path: `${shots}/2-invoice.png`, fullPage: true });
  const paid = await fetch(`${lnbits}/api/v1/payments`, {
    method: 'POST', headers: { 'X-Api-Key': payKey, 'Content-Type': 'application/json' },
    body: JSON.stringify({ out: true, bolt11 }) });
  check(paid.ok, `LNbits paid the invoice (${paid.status})`);
  await until(async () => (await text('#pay-status')).startsWith('Paid'), 'the payment seen');
  await until(async () => (await amount('#available')) === before + 100, 'the credits');
  check(true, 'paid, and 100 more credits, without a reload');
  await page.screenshot({ path: `${shots}/3-paid.png`, fullPage: true });

  // another organisation, per request: globex, where ana may only look
  await page.locator('#org').selectOption('globex');
  await until(async () => (await text('#available')) === '0', "globex's balance");
  check(true, "globex's credits (all used) after switching");
  await until(async () => (await text('#usage tr[data-metric="storage"]')).includes('100 of 5 (2,000 %)'), "globex's storage");
  check((await text('#usage tr[data-metric="storage"]')).includes('Blocked'), "globex's storage shown blocked");
  check(!(await text('#usage tr[data-metric="bandwidth"]')).includes('Blocked'), 'its bandwidth not');
  check(await page.locator('li[data-package="credits-100"] button').isDisabled(), "a read-only member's buy buttons are off");
  check(await page.locator('#read-only-note').isVisible(), 'and the page says why');
  // (and the database refuses the purchase itself, whatever the page does)
  const refused = await page.evaluate(async () => {
    const token = sessionStorage.getItem('payledger.token');
    const r = await fetch('/rest/v1/rpc/buy_credits', { method: 'POST', body: JSON.stringify({ package: 'credits-100' }),
      headers: { Authorization: `Bearer ${token}`, 'X-Org-Id': 'globex', 'Content-Type': 'application/json',
                 'Content-Profile': 'payledger', 'Accept-Profile': 'payledger' } });
    return `${r.status} ${(await r.json()).code}`;
  });
  check(/^4\d\d 42501$/.test(refused), `a read-only member's purchase is refused by the database (${refused})`);
  await page.screenshot({ path: `${shots}/4-read-only.png`, fullPage: true });

  await page.getByRole('button', { name: 'Sign out' }).click();
  check(await page.getByLabel('Your access token (JWT)').isVisible(), 'signed out');
  check(errors.length === 0, `no script errors (${errors.join('; ')})`);
} catch (e) {
  await page.screenshot({ path: `${shots}/failure.png`, fullPage: true }).catch(() => {});
  console.error(e.message, errors);
  process.exitCode = 1;
} finally {
  await browser.close();
}
