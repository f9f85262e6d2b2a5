/**
 * The status page in a real headless Chromium (Debian `chromium`, driven by playwright-core):
 * served by Postern as a process, it shows the server blocks and the pools with their health,
 * and its counters change in place as more mail goes through (no reload). A screenshot is kept
 * in test-artifacts/. In CI (CI=true) a missing Chromium is a failure, not a skip.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { chromium } from 'playwright-core';
import { FakeBackend } from '../helpers/fake-backend.js';
import { get } from '../helpers/metrics.js';
import { startPosternProcess } from '../helpers/postern-process.js';
import { SmtpClient } from '../helpers/smtp-client.js';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const ARTIFACTS = path.resolve(import.meta.dirname, '../../test-artifacts');

async function deliver(port: number): Promise<void> {
  const c = await SmtpClient.connect(port);
  try {
    await c.reply();
    await c.cmd('EHLO client.test');
    await c.cmd('MAIL FROM:<s@x.test>');
    assert.match(await c.cmd('RCPT TO:<r@y.test>'), /^250/);
    assert.match(await c.data('Subject: page\r\n\r\nhi\r\n'), /^250/);
    await c.cmd('QUIT');
    await c.waitClosed();
  } finally {
    c.close();
  }
}

describe('status page in Chromium', () => {
  it('shows servers and pools, and refreshes a counter in place', { timeout: 20_000 }, async (t) => {
    if (!existsSync(CHROMIUM)) {
      if (process.env.CI === 'true') throw new Error(`${CHROMIUM} is missing (Debian package chromium; see .ci/run)`);
      return t.skip(`${CHROMIUM} is not installed (apt-get install chromium)`);
    }
    const backend = await FakeBackend.start();
    const p = await startPosternProcess({
      server_name: 'status.test',
      pools: { mx: { servers: [`127.0.0.1:${backend.port}`], health: { interval: '300ms', timeout: '500ms' } } },
      route: { static: 'mx' },
      metrics: { listen: '127.0.0.1:0' },
    });
    // As root (CI containers) Chromium needs --no-sandbox.
    const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, timeout: 10_000, args: process.getuid?.() === 0 ? ['--no-sandbox'] : [] });
    try {
      const mport = Number(String((await p.waitForLog((r) => r.msg === 'metrics listening')).metrics).split(':').pop());
      await deliver(p.port);
      const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
      page.setDefaultTimeout(5_000);
      const errors: string[] = [];
      page.on('pageerror', (e) => errors.push(e.message));
      page.on('console', (m) => void (m.type() === 'error' && errors.push(m.text())));
      const res = await page.goto(`http://127.0.0.1:${mport}/?refresh=250`);
      assert.equal(res?.status(), 200);
      assert.match(res?.headers()['content-security-policy'] ?? '', /default-src 'none'/);

      // Servers: the listener, its name and route; pools: the server and its health.
      const servers = page.locator('#servers tbody tr');
      await servers.first().waitFor();
      assert.match(await servers.first().innerText(), /127\.0\.0\.1:0\s+status\.test\s+static pool mx\s+session/);
      await page.locator('#bound', { hasText: `127.0.0.1:${p.port}` }).waitFor();
      const pool = page.locator('#pools tbody tr', { hasText: `127.0.0.1:${backend.port}` });
      await pool.waitFor();
      assert.match(await pool.innerText(), /^mx\s+127\.0\.0\.1:\d+\s+up/);
      await page.locator('#ready', { hasText: /^ready$/ }).waitFor();
      await page.locator('#t-sessions', { hasText: /^1$/ }).waitFor();

      // More mail: the counter changes in place, the page is the same document (no reload).
      await page.evaluate(() => ((window as unknown as { marker: number }).marker = 42));
      await deliver(p.port);
      await deliver(p.port);
      await page.locator('#t-sessions', { hasText: /^3$/ }).waitFor();
      assert.equal(await page.evaluate(() => (window as unknown as { marker?: number }).marker), 42);
      const outcomes = await page.locator('#outcomes tbody').innerText();
      assert.match(outcomes, /relayed\s+3/);
      assert.equal(JSON.parse((await get(mport, '/status.json')).body).totals.sessions, 3);
      mkdirSync(ARTIFACTS, { recursive: true });
      await page.screenshot({ path: path.join(ARTIFACTS, 'status-page.png'), fullPage: true });
      assert.deepEqual(errors, [], 'no script errors');
    } finally {
      await browser.close();
      await p.stop();
      await backend.stop();
    }
  });
});
