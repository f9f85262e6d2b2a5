/**
 * Rate limits through Postern: connections per period per client refused with 421 4.7.0 at
 * accept, recipients per period answered 452 4.7.1 with the session going on; and with
 * `limits.store: { redis }`, two Postern instances sharing one real redis-server enforce one
 * limit together, while Redis stopped keeps both serving (each counting in memory, one line).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { AuthStub } from '../helpers/auth-stub.js';
import { FakeBackend } from '../helpers/fake-backend.js';
import { startPostern } from '../helpers/postern.js';
import { startRedis } from '../helpers/redis.js';
import { SmtpClient } from '../helpers/smtp-client.js';

async function greeting(port: number): Promise<string> {
  const c = await SmtpClient.connect(port);
  const r = await c.reply();
  c.close();
  return `${r.code} ${r.lines.join(' ')}`;
}

describe('limits', () => {
  it('connection_rate: over it, 421 4.7.0 at accept; recipient_rate: over it, 452 4.7.1 and the session goes on', async () => {
    const backend = await FakeBackend.start();
    const p = await startPostern({ route: { static: `127.0.0.1:${backend.port}` }, proxy_mode: 'transaction', limits: { connection_rate: { max: 2, per: '60s' }, recipient_rate: { max: 2, per: '60s' } } });
    try {
      const c = await SmtpClient.connect(p.port);
      await c.reply();
      await c.cmd('EHLO client.test');
      await c.cmd('MAIL FROM:<s@x.test>');
      assert.equal(await c.cmd('RCPT TO:<a@y.test>'), '250 2.1.5 Ok');
      assert.equal(await c.cmd('RCPT TO:<b@y.test>'), '250 2.1.5 Ok');
      assert.equal(await c.cmd('RCPT TO:<c@y.test>'), '452 4.7.1 Error: too many recipients from 127.0.0.1');
      assert.equal(await c.data('Subject: l\r\n\r\nhi\r\n'), '250 2.0.0 Ok: queued');
      c.close();
      // The verdict is in the session's access record.
      const rec = await p.waitForLog((l) => l.type === 'access' && (l.checks as { refused?: string[] } | undefined)?.refused !== undefined);
      assert.deepEqual((rec.checks as { refused: string[] }).refused, ['PST_RATE_RECIPIENTS: 452']);
      assert.match(await greeting(p.port), /^220 /);
      assert.equal(await greeting(p.port), '421 4.7.0 proxy.test Error: too many connections from 127.0.0.1');
      await p.waitForLog((l) => l.code === 'PST_RATE_CONNECTIONS');
    } finally {
      await p.stop();
      await backend.stop();
    }
  });

  it('store: redis — two instances enforce one limit together; Redis stopped, both keep serving', async () => {
    const redis = await startRedis();
    const backend = await FakeBackend.start();
    const cfg = { route: { static: `127.0.0.1:${backend.port}` }, limits: { store: { redis: `127.0.0.1:${redis.port}` }, connection_rate: { max: 3, per: '60s' } } };
    const a = await startPostern(cfg);
    const b = await startPostern(cfg);
    try {
      const seen = [await greeting(a.port), await greeting(b.port), await greeting(a.port), await greeting(b.port)];
      assert.deepEqual(seen.map((s) => s.slice(0, 3)), ['220', '220', '220', '421'], 'the fourth connection, to either instance, is over the shared limit');
      await redis.stop();
      const t0 = Date.now();
      assert.match(await greeting(a.port), /^220 /, 'Redis down: counted in memory, served');
      assert.ok(Date.now() - t0 < 3000, 'nothing waits on Redis');
      await a.waitForLog((l) => l.code === 'PSW_LIMITS_STORE_DOWN');
    } finally {
      await a.stop();
      await b.stop();
      await backend.stop();
      await redis.close();
    }
  });

  it('store: redis — refused logins count across instances (auth.max_failures_per_client)', async () => {
    const redis = await startRedis();
    const stub = await AuthStub.start({ 'Auth-Status': 'Invalid login or password', 'Auth-Error-Code': '535 5.7.8' });
    const cfg = {
      listen: [{ address: '127.0.0.1:0', smtp_auth: ['plain'], auth_plaintext: true }],
      route: { auth_http: { url: stub.url } },
      auth: { max_failures_per_client: 2 },
      limits: { store: { redis: `127.0.0.1:${redis.port}` } },
    };
    const a = await startPostern(cfg);
    const b = await startPostern(cfg);
    const login = async (port: number): Promise<string> => {
      const c = await SmtpClient.connect(port);
      await c.reply();
      await c.cmd('EHLO client.test');
      const r = await c.cmd(`AUTH PLAIN ${Buffer.from('\0alice\0wrong').toString('base64')}`);
      c.close();
      return r;
    };
    try {
      assert.equal(await login(a.port), '535 5.7.8 Invalid login or password');
      assert.equal(await login(b.port), '535 5.7.8 Invalid login or password');
      assert.equal(await login(a.port), '421 4.7.0 proxy.test Too many authentication failures', 'two failures, one on each instance, reach the shared cap');
      assert.equal(stub.requests.length, 2, 'the third login never reached the auth service');
    } finally {
      await a.stop();
      await b.stop();
      await stub.stop();
      await redis.close();
    }
  });
});
