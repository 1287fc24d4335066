// The demo purchase page (GET /) in headless Chromium: a customer buys the
// Compliance Pack through the development fallback (Stripe.js unreachable),
// and the page learns about it from the live stream.
//
// Run through tests/browser/run.sh, which starts the server and sets:
//   BASE_URL             the running server, e.g. http://127.0.0.1:41234
//   PLAYWRIGHT_CORE_DIR  the installed playwright-core package
//   CHROMIUM_PATH        the browser (default /usr/bin/chromium)
//   SCREENSHOT_DIR       where the screenshots go (default target/screenshots)
//   BROWSER_TMP          where the throw-away browser profile goes
//
// The steps run in order on one page and build on each other; after a failed
// step the rest are skipped (their failure would only repeat the first), and a
// screenshot of the moment of failure is saved as failure-<step>.png.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

const env = (name, fallback) => {
  const v = process.env[name] || fallback;
  if (!v) throw new Error(`${name} is not set (run this through tests/browser/run.sh)`);
  return v;
};
const BASE_URL = env('BASE_URL').replace(/\/$/, '');
const CHROMIUM_PATH = env('CHROMIUM_PATH', '/usr/bin/chromium');
const SCREENSHOT_DIR = env('SCREENSHOT_DIR', path.resolve('target/screenshots'));
const { chromium } = createRequire(import.meta.url)(env('PLAYWRIGHT_CORE_DIR', 'playwright-core'));

const SKU = 'compliance-pack';
const PRODUCT = 'Compliance Pack';
const PRICE = '$999.00'; // 99900 minor units of USD, in the browser's en-US locale
const STEP_TIMEOUT_MS = 30_000; // a bound for each step as a whole
const WAIT_MS = 10_000; // a bound for each single wait inside a step
const STRIPE_FALLBACK_WAIT_MS = 15_000; // the page gives Stripe.js 3 s, then falls back

const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

// Installed before any page script: records, in one ordered log, every stream
// event the page receives (before the page's own handlers see it) and every
// change of the modal's state and of a card's entitlement. The order in that
// log is what shows that success and the badge flip came from the stream.
function instrumentPage() {
  const log = [];
  Object.defineProperty(window, '__testLog', { value: log });
  const Native = window.EventSource;
  window.EventSource = class extends Native {
    constructor(...args) {
      super(...args);
      for (const type of ['org.entitlements.snapshot', 'org.entitlements.changed', 'org.payment.failed']) {
        this.addEventListener(type, (ev) => {
          let data = null;
          try { data = JSON.parse(ev.data); } catch { /* recorded as null */ }
          log.push({ what: 'sse', type, id: ev.lastEventId, data });
        });
      }
    }
  };
  document.addEventListener('DOMContentLoaded', () => {
    new MutationObserver((records) => {
      for (const r of records) {
        const el = r.target;
        if (r.attributeName === 'data-state' && el.id === 'payment-modal') {
          log.push({ what: 'modal', state: el.getAttribute('data-state') });
        } else if (r.attributeName === 'data-entitled' && el.dataset.sku) {
          log.push({ what: 'entitled', sku: el.dataset.sku, value: el.getAttribute('data-entitled') });
        }
      }
    }).observe(document.body, { subtree: true, attributes: true, attributeFilter: ['data-state', 'data-entitled'] });
  });
}

// Runs in the page: for each selector (first match), the WCAG contrast ratio of
// its text colour against the first opaque background behind it; returns those
// below `min`. Translucent layers are ignored, which is fine for this page.
function measureContrast(selectors, min = 4.5) {
  const rgb = (c) => {
    const m = c.match(/rgba?\(([^)]+)\)/);
    if (!m) return null;
    const [r, g, b, a = 1] = m[1].split(/[ ,/]+/).filter(Boolean).map(Number);
    return { r, g, b, a };
  };
  const lum = ({ r, g, b }) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const low = [];
  for (const sel of selectors) {
    const el = document.querySelector(sel);
    if (!el) { low.push(`${sel}: not found`); continue; }
    const style = getComputedStyle(el);
    const fg = rgb(style.color);
    let bg = null;
    for (let n = el; n && !bg; n = n.parentElement) {
      const c = rgb(getComputedStyle(n).backgroundColor);
      if (c && c.a >= 0.99) bg = c;
    }
    bg ||= { r: 255, g: 255, b: 255 };
    if (!fg) { low.push(`${sel}: colour ${style.color} not measured`); continue; }
    const [hi, lo] = [lum(fg), lum(bg)].sort((x, y) => y - x);
    const ratio = (hi + 0.05) / (lo + 0.05);
    const opacity = Number(style.opacity);
    if (ratio < min || opacity < 1) low.push(`${sel}: ${ratio.toFixed(2)}:1 (${style.color} on rgb(${bg.r}, ${bg.g}, ${bg.b}), opacity ${opacity})`);
  }
  return low;
}

let browser, context, page, watcher, profileDir;
const pageErrors = [];
const consoleErrors = [];
const stripeRequests = [];
const blockedRequests = [];
let failedStep = null;

// One step of the story. Skips itself after an earlier failure; on its own
// failure saves a screenshot of the page as it was.
function step(name, fn) {
  test(name, { timeout: STEP_TIMEOUT_MS }, async (t) => {
    if (failedStep) return t.skip(`an earlier step failed: ${failedStep}`);
    try {
      await fn(t);
    } catch (e) {
      failedStep = name;
      const file = path.join(SCREENSHOT_DIR, `failure-${name.replace(/[^a-z0-9]+/gi, '-').slice(0, 60)}.png`);
      try {
        await page?.screenshot({ path: file, fullPage: true, timeout: 5000 });
        t.diagnostic(`screenshot of the failure: ${file}`);
      } catch { /* the page may be gone */ }
      try {
        const log = await page?.evaluate(() => window.__testLog);
        t.diagnostic(`page event log: ${JSON.stringify(log)}`);
      } catch { /* idem */ }
      throw e;
    }
  });
}

const shot = async (name, opts = {}) => {
  const file = path.join(SCREENSHOT_DIR, `${name}.png`);
  await page.screenshot({ path: file, timeout: WAIT_MS, animations: 'disabled', ...opts });
  return file;
};
const card = () => page.locator(`.card[data-sku="${SKU}"]`);
const modal = () => page.locator('#payment-modal');
const testLog = () => page.evaluate(() => window.__testLog);

async function newPage() {
  const p = await context.newPage();
  p.setDefaultTimeout(WAIT_MS);
  p.setDefaultNavigationTimeout(WAIT_MS);
  return p;
}

async function apiGet(token, pathAndQuery) {
  const res = await fetch(`${BASE_URL}${pathAndQuery}`, {
    headers: { Authorization: `Bearer ${token}`, Accept: 'application/json' },
    signal: AbortSignal.timeout(WAIT_MS),
  });
  const body = await res.json();
  assert.equal(res.status, 200, `GET ${pathAndQuery}: HTTP ${res.status} ${JSON.stringify(body)}`);
  return body;
}

describe('demo purchase page', { timeout: 5 * 60_000 }, () => {
  before(async () => {
    await mkdir(SCREENSHOT_DIR, { recursive: true });
    profileDir = await mkdtemp(path.join(process.env.BROWSER_TMP || os.tmpdir(), 'chromium-profile-'));
    browser = await chromium.launchPersistentContext(profileDir, {
      executablePath: CHROMIUM_PATH,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 1280, height: 800 },
      locale: 'en-US',
      timezoneId: 'UTC',
      colorScheme: 'light',
      timeout: 30_000,
    });
    context = browser; // a persistent context is its own browser

    // Nothing leaves this machine. The server is the only host the page may
    // reach; Stripe.js is held unanswered, as on a network where js.stripe.com
    // never answers, so the page's own 3 s timeout is what brings the fallback.
    await context.route((url) => !url.href.startsWith(`${BASE_URL}/`), (route) => {
      const url = route.request().url();
      if (new URL(url).hostname === 'js.stripe.com') {
        stripeRequests.push(url); // never answered: held until the browser closes
      } else {
        blockedRequests.push(url);
        route.abort('internetdisconnected').catch(() => {});
      }
    });
    await context.addInitScript(instrumentPage);
    for (const p of context.pages()) await p.close(); // the blank start page
    page = await newPage();
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  });

  after(async () => {
    await browser?.close().catch(() => {});
    if (profileDir) await rm(profileDir, { recursive: true, force: true }).catch(() => {});
  });

  step('the page loads with the Compliance Pack not purchased', async () => {
    const res = await page.goto(`${BASE_URL}/`, { waitUntil: 'domcontentloaded' });
    assert.equal(res.status(), 200);
    assert.match(res.headers()['content-type'] || '', /^text\/html/);
    assert.equal(await page.title(), 'Plans & billing');

    await card().waitFor();
    assert.equal(await card().getAttribute('data-entitled'), 'false');
    assert.equal((await card().locator('.entitlement-badge').textContent()).trim(), 'Not purchased');
    assert.equal((await card().locator('h3').textContent()).trim(), PRODUCT);
    assert.equal((await card().locator('.price').textContent()).trim(), PRICE);
    const upgrade = card().locator('button.upgrade-button');
    assert.equal((await upgrade.textContent()).trim(), 'Upgrade');
    assert.equal(await upgrade.isEnabled(), true);

    assert.equal((await page.locator('#org-id').textContent()).trim(), 'demo');
    assert.equal(await page.locator('#env-badge').isVisible(), true, 'the Development badge is shown');
    assert.equal(await page.locator('#no-token').isVisible(), false);
    assert.equal(await page.locator('#modal-backdrop').isVisible(), false);
  });

  step('the live-update indicator connects and the feed is empty', async () => {
    const status = page.locator('#connection-status');
    await page.locator('#connection-status[data-status="connected"]').waitFor();
    assert.equal((await status.locator('.label').textContent()).trim(), 'Live');
    await page.locator('#activity-feed > li.empty', { hasText: 'No activity yet.' }).waitFor();
    assert.equal(await page.locator('#activity-feed > li.activity-item').count(), 0);

    const snapshots = (await testLog()).filter((e) => e.what === 'sse' && e.type === 'org.entitlements.snapshot');
    assert.ok(snapshots.length >= 1, 'the stream opened with a snapshot');
    assert.equal(snapshots[0].data.orgId, 'demo');
    assert.equal(snapshots[0].data.entitlements[SKU], false);
    await shot('purchase-initial');
  });

  step('a second tab of the same org is open and live', async () => {
    // It only watches: its card must flip by the stream alone, with no reload.
    watcher = await newPage();
    watcher.on('pageerror', (e) => pageErrors.push(`second tab: ${e}`));
    await watcher.goto(`${BASE_URL}/`, { waitUntil: 'domcontentloaded' });
    await watcher.locator('#connection-status[data-status="connected"]').waitFor();
    assert.equal(await watcher.locator(`.card[data-sku="${SKU}"]`).getAttribute('data-entitled'), 'false');
    await page.bringToFront();
  });

  step('Upgrade opens the checkout; without Stripe.js it offers the development fallback', async () => {
    await card().locator('button.upgrade-button').click();
    const backdrop = page.locator('#modal-backdrop');
    await backdrop.waitFor({ state: 'visible' });
    assert.equal(await modal().getAttribute('role'), 'dialog');
    assert.equal(await modal().getAttribute('aria-modal'), 'true');
    assert.equal((await page.locator('#modal-title').textContent()).trim(), `Upgrade to ${PRODUCT}`);
    assert.equal((await page.locator('#modal-price').textContent()).trim(), PRICE);

    // While Stripe.js is awaited the customer sees that something is happening.
    const states = () => testLog().then((l) => l.filter((e) => e.what === 'modal').map((e) => e.state));
    assert.equal((await states())[0], 'loading');

    await page.locator('#payment-modal[data-state="ready"]').waitFor({ timeout: STRIPE_FALLBACK_WAIT_MS });
    assert.ok(stripeRequests.length >= 1, 'the page tried to load Stripe.js');
    assert.deepEqual(await states(), ['loading', 'ready']);

    const notice = page.locator('#stripe-unavailable');
    assert.equal(await notice.isVisible(), true, 'the Stripe-unavailable notice is shown');
    assert.match(await notice.textContent(), /Stripe\.js could not be loaded/);
    const simulate = page.locator('#simulate-button');
    assert.equal(await simulate.isVisible(), true, 'the development fallback is offered');
    assert.equal(await simulate.isEnabled(), true);
    assert.equal(await page.locator('#simulate-hint').isVisible(), true);
    assert.equal(await page.locator('#pay-button').isVisible(), false, 'no Pay button without Stripe');
    assert.equal(await page.locator('#modal-error').isVisible(), false);
    assert.equal(await page.locator('#modal-spinner').isVisible(), false);
    // Keyboard users land inside the dialog, and the page behind is inert.
    assert.equal(await page.evaluate(() => document.getElementById('payment-modal').contains(document.activeElement)), true);
    assert.equal(await page.evaluate(() => document.getElementById('app').inert), true);
    await shot('purchase-modal');
  });

  step('Shift+Enter simulates the payment and the stream turns the checkout to success', async () => {
    const simulated = page.waitForResponse(
      (r) => r.url() === `${BASE_URL}/v1/billing/simulate-success` && r.request().method() === 'POST',
      { timeout: WAIT_MS },
    );
    await page.keyboard.press('Shift+Enter');
    const res = await simulated;
    assert.equal(res.status(), 200, `simulate-success: HTTP ${res.status()} ${await res.text()}`);
    assert.deepEqual(res.request().postDataJSON(), { sku: SKU });
    assert.equal((await res.json()).entitlements?.[SKU], true);

    await page.locator('#payment-modal[data-state="success"]').waitFor();
    assert.equal((await page.locator('#modal-title').textContent()).trim(), 'You’re all set');
    assert.equal((await page.locator('#modal-status-text').textContent()).trim(),
      `${PRODUCT} is now active for your organization.`);
    assert.equal(await page.locator('#modal-success-mark').isVisible(), true);
    assert.equal(await page.locator('#done-button').isVisible(), true);
    for (const hidden of ['#simulate-button', '#simulate-hint', '#stripe-unavailable', '#pay-button', '#retry-button', '#modal-error', '#modal-spinner']) {
      assert.equal(await page.locator(hidden).isVisible(), false, `${hidden} is hidden on success`);
    }

    // Success came from the stream: the page ignores the simulate-success body,
    // and the log shows the `changed` event (cause "simulated") arriving first.
    const log = await testLog();
    const changedAt = log.findIndex((e) => e.what === 'sse' && e.type === 'org.entitlements.changed');
    const successAt = log.findIndex((e) => e.what === 'modal' && e.state === 'success');
    assert.ok(changedAt >= 0, `an org.entitlements.changed event arrived: ${JSON.stringify(log)}`);
    const changed = log[changedAt].data;
    assert.equal(changed.sku, SKU);
    assert.equal(changed.cause, 'simulated');
    assert.equal(changed.orgId, 'demo');
    assert.equal(changed.entitlements[SKU], true);
    assert.equal(typeof changed.actionId, 'string');
    assert.equal(String(changed.seq), log[changedAt].id, 'the event id is its seq');
    assert.ok(successAt > changedAt, `success follows the stream event: ${JSON.stringify(log)}`);
    const states = log.filter((e) => e.what === 'modal').map((e) => e.state);
    assert.equal(states.filter((s) => s === 'success').length, 1);
    assert.ok(!states.includes('failure'), `no failure on the way: ${states}`);
    await shot('purchase-success');
  });

  step('the card flips to entitled through the stream, in both tabs', async () => {
    await page.locator(`.card[data-sku="${SKU}"][data-entitled="true"]`).waitFor();
    assert.equal((await card().locator('.entitlement-badge').textContent()).trim(), 'Active');
    const log = await testLog();
    const changedAt = log.findIndex((e) => e.what === 'sse' && e.type === 'org.entitlements.changed');
    const flippedAt = log.findIndex((e) => e.what === 'entitled' && e.sku === SKU && e.value === 'true');
    assert.ok(flippedAt > changedAt && changedAt >= 0, `the badge flipped after the stream event: ${JSON.stringify(log)}`);

    const other = watcher.locator(`.card[data-sku="${SKU}"]`);
    await watcher.locator(`.card[data-sku="${SKU}"][data-entitled="true"]`).waitFor();
    assert.equal((await other.locator('.entitlement-badge').textContent()).trim(), 'Active');
    assert.equal(await watcher.locator('#modal-backdrop').isVisible(), false, 'the other tab opened no modal');
    await watcher.locator('#activity-feed > li.activity-item[data-kind="payment"]').waitFor();
    await watcher.close();
    watcher = null;
  });

  step('the activity feed shows the delivered payment, tagged simulated', async () => {
    const item = page.locator('#activity-feed > li.activity-item[data-kind="payment"][data-status="delivered"]');
    await item.waitFor();
    assert.equal(await page.locator('#activity-feed > li.activity-item').count(), 1, 'exactly one action');
    const text = (await item.innerText()).replace(/\s+/g, ' ');
    assert.match(text, /Payment/);
    assert.match(text, new RegExp(PRODUCT));
    assert.match(text, /Delivered/);
    assert.match(text, /\$999\.00/);
    assert.match(text, /just now/);
    assert.equal((await item.locator('.tag-simulated').textContent()).trim(), 'simulated');
    const changed = (await testLog()).find((e) => e.what === 'sse' && e.type === 'org.entitlements.changed');
    assert.equal(await item.getAttribute('data-action-id'), changed.data.actionId);
  });

  step('Done closes the checkout; an owned product shows Owned and is not sold again', async () => {
    await page.locator('#done-button').click();
    await page.locator('#modal-backdrop').waitFor({ state: 'hidden' });
    assert.equal(await modal().getAttribute('data-state'), null);
    assert.equal(await page.evaluate(() => document.getElementById('app').inert), false);

    const upgrade = card().locator('button.upgrade-button');
    assert.equal((await upgrade.textContent()).trim(), 'Owned');
    assert.equal(await upgrade.isDisabled(), true);
    // Focus went back to the card, since its button is now disabled.
    assert.equal(await page.evaluate((sku) => document.activeElement?.dataset?.sku, SKU), SKU);

    // A real click on the disabled button opens nothing.
    const billingPosts = [];
    const onRequest = (r) => { if (r.method() === 'POST' && r.url().includes('/v1/billing/')) billingPosts.push(r.url()); };
    page.on('request', onRequest);
    await upgrade.click({ force: true });
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)))); // let a handler run
    assert.equal(await page.locator('#modal-backdrop').isVisible(), false, 'no checkout for an owned product');
    await shot('purchase-owned', { fullPage: true });

    // Should the checkout open anyway (a script's synthetic click reaches the
    // listener of a disabled button), it goes straight to success: nothing to buy.
    const before = (await testLog()).length;
    await upgrade.dispatchEvent('click');
    await page.locator('#payment-modal[data-state="success"]').waitFor();
    const states = (await testLog()).slice(before).filter((e) => e.what === 'modal').map((e) => e.state);
    assert.deepEqual(states, ['success'], 'no loading or payment step for an owned product');
    assert.equal(await page.locator('#simulate-button').isVisible(), false);
    assert.equal(await page.locator('#stripe-unavailable').isVisible(), false);
    await page.keyboard.press('Escape');
    await page.locator('#modal-backdrop').waitFor({ state: 'hidden' });
    page.off('request', onRequest);
    assert.deepEqual(billingPosts, [], 'no payment-intent or simulate-success request for an owned product');
  });

  step('the API agrees: the org is entitled, with one simulated payment', async () => {
    const token = await page.locator('meta[name="entitlements-token"]').getAttribute('content');
    assert.ok(token && token.split('.').length === 3, 'the development page embeds a JWT');

    const ent = await apiGet(token, '/v1/entitlements');
    assert.equal(ent.orgId, 'demo');
    assert.equal(ent.entitlements[SKU], true);
    assert.ok(Number.isInteger(ent.seq) && ent.seq >= 1, `seq ${ent.seq}`);

    const { products } = await apiGet(token, '/v1/billing/products');
    assert.equal(products.find((p) => p.sku === SKU)?.entitled, true);

    const { actions } = await apiGet(token, '/v1/actions?limit=50');
    assert.equal(actions.length, 1, `one action, not one per key press: ${JSON.stringify(actions)}`);
    const [a] = actions;
    assert.equal(a.kind, 'payment');
    assert.equal(a.status, 'delivered');
    assert.equal(a.sku, SKU);
    assert.equal(a.simulated, true);
    assert.equal(a.amount, 99900);
    assert.equal(a.currency, 'usd');
    assert.equal(a.seq, ent.seq);
    const feedId = await page.locator('#activity-feed > li.activity-item').first().getAttribute('data-action-id');
    assert.equal(a.id, feedId, 'the feed shows the action the API lists');

    // A token is for its own org only: without one the API refuses.
    const anon = await fetch(`${BASE_URL}/v1/entitlements`, { signal: AbortSignal.timeout(WAIT_MS) });
    assert.equal(anon.status, 401);
  });

  step('after a reload the product is still owned', async () => {
    await page.reload({ waitUntil: 'domcontentloaded' });
    await page.locator(`.card[data-sku="${SKU}"][data-entitled="true"]`).waitFor();
    assert.equal((await card().locator('.entitlement-badge').textContent()).trim(), 'Active');
    assert.equal((await card().locator('button.upgrade-button').textContent()).trim(), 'Owned');
    await page.locator('#activity-feed > li.activity-item[data-kind="payment"] .tag-simulated').waitFor();
    await page.locator('#connection-status[data-status="connected"]').waitFor();
    const snap = (await testLog()).find((e) => e.what === 'sse' && e.type === 'org.entitlements.snapshot');
    assert.equal(snap?.data?.entitlements?.[SKU], true);
    await shot('purchase-after-reload');
  });

  step('on a phone-sized screen nothing overflows sideways', async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    await page.locator('#connection-status[data-status="connected"]').waitFor();
    const { scrollWidth, clientWidth } = await page.evaluate(() => ({
      scrollWidth: document.documentElement.scrollWidth, clientWidth: document.documentElement.clientWidth,
    }));
    assert.ok(scrollWidth <= clientWidth, `page is ${scrollWidth}px wide in a ${clientWidth}px viewport`);
    await shot('purchase-mobile', { fullPage: true });
    await page.setViewportSize({ width: 1280, height: 800 });
  });

  step('text is readable (WCAG AA contrast) in light and dark mode', async () => {
    // A button.primary like the checkout's, added for the measurement only.
    await page.evaluate(() => {
      const b = document.createElement('button');
      b.className = 'primary'; b.id = 'contrast-probe'; b.textContent = 'Pay';
      document.querySelector('#products').append(b);
    });
    try {
      for (const scheme of ['light', 'dark']) {
        await page.emulateMedia({ colorScheme: scheme });
        const low = await page.evaluate(measureContrast, [
          'h1', '.sub', '.card h3', '.card .sku', '.card .price', '.entitlement-badge', '.upgrade-button',
          '#contrast-probe', '#connection-status .label', '#env-badge', '#org-id', '.activity-item strong',
          '.activity-item .status-delivered', '.activity-item .tag-simulated', '.activity-item .act-meta',
        ]);
        assert.deepEqual(low, [], `${scheme} mode: text below 4.5:1 contrast`);
        if (scheme === 'dark') {
          await page.evaluate(() => document.getElementById('contrast-probe').remove());
          await shot('purchase-dark', { fullPage: true });
        }
      }
    } finally {
      await page.evaluate(() => document.getElementById('contrast-probe')?.remove());
      await page.emulateMedia({ colorScheme: 'light' });
    }
  });

  step('no script errors, and no request left this machine except the held Stripe.js', async () => {
    assert.deepEqual(pageErrors, []);
    // The held Stripe.js request is dropped when its <script> is removed; anything else is a bug.
    const unexpected = consoleErrors.filter((m) => !/js\.stripe\.com|ERR_INTERNET_DISCONNECTED/.test(m));
    assert.deepEqual(unexpected, []);
    assert.deepEqual(blockedRequests, [], 'the page requested only the server and Stripe.js');
  });
});
