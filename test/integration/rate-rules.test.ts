/**
 * limits.rates through a real Postern on loopback, in memory: messages per sender (450 4.7.1 at
 * MAIL, the session goes on, another sender passes), recipients per recipient domain (452 4.7.1
 * … to <domain>), connections per client network (421 4.7.0 at accept, clients bound to
 * 127.0.0.x source addresses of one /24), refused logins per user across addresses, and the
 * burst allowance. Each refusal is logged under its code and listed in the access record.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { AuthStub } from '../helpers/auth-stub.js';
import { FakeBackend } from '../helpers/fake-backend.js';
import { startPostern, type LogRecord, type RunningPostern } from '../helpers/postern.js';
import { SmtpClient, replyText } from '../helpers/smtp-client.js';

const refusedOf = (r: LogRecord): string[] | undefined => (r.checks as { refused?: string[] } | undefined)?.refused;

async function session(port: number, from = '127.0.0.1'): Promise<SmtpClient> {
  const c = await SmtpClient.connect(port, '127.0.0.1', from);
  assert.match(replyText(await c.reply()), /^220 /);
  assert.match(await c.cmd('EHLO client.test'), /^250 /);
  return c;
}

async function withPostern(overrides: Record<string, unknown>, f: (p: RunningPostern, backend: FakeBackend) => Promise<void>): Promise<void> {
  const backend = await FakeBackend.start();
  const p = await startPostern({ route: { static: `127.0.0.1:${backend.port}` }, ...overrides });
  try {
    await f(p, backend);
  } finally {
    await p.stop();
    await backend.stop();
  }
}

describe('limits.rates', () => {
  it('messages per sender: 450 4.7.1 at MAIL, the session goes on, another sender passes (transaction mode)', async () => {
    await withPostern({ proxy_mode: 'transaction', limits: { rates: [{ count: 'messages', key: 'sender', max: 2, per: '60s' }] } }, async (p, backend) => {
      const c = await session(p.port);
      for (const from of ['a@x.test', 'A@X.test']) {
        assert.equal(await c.cmd(`MAIL FROM:<${from}>`), '250 2.1.0 OK');
        assert.equal(await c.cmd('RCPT TO:<r@y.test>'), '250 2.1.5 Ok');
        assert.equal(await c.data('Subject: m\r\n\r\nhi\r\n'), '250 2.0.0 Ok: queued');
      }
      assert.equal(await c.cmd('MAIL FROM:<a@x.test>'), '450 4.7.1 Error: too much mail from <a@x.test>', 'the third from the same sender (case aside)');
      assert.equal(await c.cmd('RCPT TO:<r@y.test>'), '503 5.5.1 Need MAIL command', 'the refused MAIL opened no transaction');
      assert.equal(await c.cmd('MAIL FROM:<b@x.test>'), '250 2.1.0 OK');
      assert.equal(await c.cmd('RCPT TO:<r@y.test>'), '250 2.1.5 Ok');
      assert.equal(await c.data('Subject: m\r\n\r\nhi\r\n'), '250 2.0.0 Ok: queued');
      assert.equal(await c.cmd('QUIT'), '221 2.0.0 Bye');
      assert.equal(backend.accepted.length, 3);
      const line = await p.waitForLog((r) => r.code === 'PST_RATE_MESSAGES');
      assert.equal(line.detail, 'limits.rates.0 (sender <a@x.test>)');
      const rec = await p.waitForLog((r) => r.type === 'access' && refusedOf(r) !== undefined);
      assert.deepEqual(refusedOf(rec), ['PST_RATE_MESSAGES: 450']);
    });
  });

  it('messages, session mode: the refused first MAIL leaves the session to Postern; a later sender is relayed', async () => {
    await withPostern({ limits: { rates: [{ count: 'messages', key: 'sender', max: 1, per: '60s' }] } }, async (p, backend) => {
      const first = await session(p.port);
      assert.equal(await first.cmd('MAIL FROM:<a@x.test>'), '250 2.1.0 OK');
      first.close();
      const c = await session(p.port);
      assert.equal(await c.cmd('MAIL FROM:<a@x.test>'), '450 4.7.1 Error: too much mail from <a@x.test>');
      assert.equal(await c.cmd('MAIL FROM:<>'), '250 2.1.0 OK', 'the null sender is a sender of its own');
      assert.equal(await c.cmd('RCPT TO:<r@y.test>'), '250 2.1.5 Ok');
      assert.equal(await c.data('Subject: m\r\n\r\nhi\r\n'), '250 2.0.0 Ok: queued');
      c.close();
      assert.equal(backend.accepted.length, 1);
      assert.ok(backend.commands.includes('MAIL FROM:<>'));
      assert.ok(!backend.commands.includes('MAIL FROM:<a@x.test>'), 'the back-end never saw the refused sender');
    });
  });

  it('recipients per recipient domain: 452 4.7.1 … to <domain>, other domains go on', async () => {
    await withPostern({ proxy_mode: 'transaction', limits: { rates: [{ count: 'recipients', key: 'rcpt_domain', max: 2, per: '60s' }] } }, async (p, backend) => {
      const c = await session(p.port);
      assert.equal(await c.cmd('MAIL FROM:<s@x.test>'), '250 2.1.0 OK');
      assert.equal(await c.cmd('RCPT TO:<a@big.test>'), '250 2.1.5 Ok');
      assert.equal(await c.cmd('RCPT TO:<b@BIG.test>'), '250 2.1.5 Ok');
      assert.equal(await c.cmd('RCPT TO:<c@big.test>'), '452 4.7.1 Error: too many recipients to big.test');
      assert.equal(await c.cmd('RCPT TO:<d@small.test>'), '250 2.1.5 Ok');
      assert.equal(await c.data('Subject: r\r\n\r\nhi\r\n'), '250 2.0.0 Ok: queued');
      // Another client, same domain: the domain's count is shared.
      const d = await session(p.port, '127.0.0.9');
      assert.equal(await d.cmd('MAIL FROM:<t@x.test>'), '250 2.1.0 OK');
      assert.equal(await d.cmd('RCPT TO:<e@big.test>'), '452 4.7.1 Error: too many recipients to big.test');
      c.close();
      d.close();
      assert.equal(backend.commands.filter((l) => l.startsWith('RCPT')).length, 3);
      const line = await p.waitForLog((r) => r.code === 'PST_RATE_RECIPIENTS');
      assert.equal(line.detail, 'limits.rates.0 (rcpt_domain big.test)');
      const rec = await p.waitForLog((r) => r.type === 'access' && refusedOf(r) !== undefined);
      assert.deepEqual(refusedOf(rec), ['PST_RATE_RECIPIENTS: 452']);
    });
  });

  it('connections per client network: the /24 shares one count (421 4.7.0 at accept); another /24 is greeted', async () => {
    await withPostern({ limits: { rates: [{ count: 'connections', key: 'client_net', max: 2, per: '60s' }] } }, async (p) => {
      const greet = async (from: string): Promise<string> => {
        const c = await SmtpClient.connect(p.port, '127.0.0.1', from);
        const r = replyText(await c.reply());
        if (r.startsWith('421')) assert.ok(await c.waitClosed(), 'closed after the 421');
        c.close();
        return r;
      };
      assert.match(await greet('127.0.0.2'), /^220 /);
      assert.match(await greet('127.0.0.3'), /^220 /);
      assert.equal(await greet('127.0.0.4'), '421 4.7.0 proxy.test Error: too many connections from 127.0.0.4');
      assert.match(await greet('127.0.1.5'), /^220 /, 'another /24');
      const line = await p.waitForLog((r) => r.code === 'PST_RATE_CONNECTIONS');
      assert.equal(line.detail, 'limits.rates.0 (client_net 127.0.0.4)');
    });
  });

  it('refused logins per user: the user is refused from any address before the auth service is asked', async () => {
    const stub = await AuthStub.start({ 'Auth-Status': 'Invalid login or password', 'Auth-Error-Code': '535 5.7.8' });
    const p = await startPostern({
      listen: [{ address: '127.0.0.1:0', smtp_auth: ['plain'], auth_plaintext: true }],
      route: { auth_http: { url: stub.url } },
      limits: { rates: [{ count: 'auth_failures', key: 'user', max: 2, per: '10m' }] },
    });
    const login = async (user: string, from: string): Promise<string> => {
      const c = await session(p.port, from);
      const r = await c.cmd(`AUTH PLAIN ${Buffer.from(`\0${user}\0wrong`).toString('base64')}`);
      c.close();
      return r;
    };
    try {
      assert.equal(await login('alice@example.com', '127.0.0.2'), '535 5.7.8 Invalid login or password');
      assert.equal(await login('Alice@Example.com', '127.0.1.3'), '535 5.7.8 Invalid login or password');
      assert.equal(await login('alice@example.com', '127.0.2.4'), '421 4.7.0 proxy.test Too many authentication failures');
      assert.equal(stub.requests.length, 2, 'the third login never reached the auth service');
      assert.equal(await login('bob@example.com', '127.0.2.4'), '535 5.7.8 Invalid login or password', 'another user from the same address is asked');
      assert.equal(stub.requests.length, 3);
      const line = await p.waitForLog((r) => r.code === 'PST_AUTH_TOO_MANY');
      assert.equal(line.detail, 'limits.rates.0 (user alice@example.com)');
      const rec = await p.waitForLog((r) => r.type === 'access' && refusedOf(r)?.includes('PST_AUTH_TOO_MANY: 421') === true);
      assert.equal(rec.outcome, 'quit');
    } finally {
      await p.stop();
      await stub.stop();
    }
  });

  it('burst: one more over the steady rate, then refused', async () => {
    await withPostern({ proxy_mode: 'transaction', limits: { rates: [{ count: 'messages', key: 'client', max: 1, per: '60s', burst: 1 }] } }, async (p) => {
      const c = await session(p.port);
      assert.equal(await c.cmd('MAIL FROM:<a@x.test>'), '250 2.1.0 OK');
      assert.equal(await c.cmd('RSET'), '250 2.0.0 OK');
      assert.equal(await c.cmd('MAIL FROM:<b@x.test>'), '250 2.1.0 OK', 'from the burst allowance');
      assert.equal(await c.cmd('RSET'), '250 2.0.0 OK');
      assert.equal(await c.cmd('MAIL FROM:<c@x.test>'), '450 4.7.1 Error: too much mail from 127.0.0.1');
      c.close();
    });
  });
});
