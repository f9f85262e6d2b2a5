/**
 * Postfix policy servers in front of routing, through Postern: a real postgrey greylists the
 * first attempt (its 450, the session stays open) and lets the retry through after its delay; a
 * scripted server's REJECT refuses one recipient with Postfix's text while the others go on; a
 * server that is down gives the configured default (451 4.3.5, or go on), never a hang; the
 * attributes sent are Postfix's, with the verified client name.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { closedPort, FakeBackend } from '../helpers/fake-backend.js';
import { scriptedPolicyServer, startPostgrey } from '../helpers/policy-servers.js';
import { startPostern } from '../helpers/postern.js';
import { SmtpClient } from '../helpers/smtp-client.js';

async function open(port: number): Promise<SmtpClient> {
  const c = await SmtpClient.connect(port);
  await c.reply();
  await c.cmd('EHLO client.test');
  await c.cmd('MAIL FROM:<s@x.test>');
  return c;
}

describe('policy servers at RCPT', () => {
  it('postgrey: the first attempt is greylisted (450, the session goes on), the retry after the delay passes', async () => {
    const grey = await startPostgrey({ delay: 1 });
    const backend = await FakeBackend.start();
    const p = await startPostern({ route: { static: `127.0.0.1:${backend.port}` }, checks: { policy: [{ server: grey.address }] } });
    try {
      const c = await open(p.port);
      const first = await c.cmd('RCPT TO:<b@y.test>');
      assert.match(first, /^450 4\.2\.0 <b@y\.test>: Recipient address rejected: Greylisted/);
      assert.equal(await c.cmd('NOOP'), '250 2.0.0 OK', 'a refused recipient does not end the session');
      await c.cmd('QUIT');
      c.close();
      assert.equal(backend.sessions.length, 0, 'the back-end never saw the greylisted attempt');
      await new Promise((r) => setTimeout(r, 2100));
      const again = await open(p.port);
      assert.equal(await again.cmd('RCPT TO:<b@y.test>'), '250 2.1.5 Ok');
      assert.equal(await again.data('Subject: g\r\n\r\nhi\r\n'), '250 2.0.0 Ok: queued');
      again.close();
      assert.equal(backend.accepted.length, 1);
    } finally {
      await p.stop();
      await backend.stop();
      await grey.stop();
    }
  });

  it('a REJECT refuses that recipient with Postfix\'s text; the attributes are Postfix\'s', async () => {
    const srv = await scriptedPolicyServer((req, s) => s.write(req.attrs.get('recipient') === 'bad@y.test' ? 'action=REJECT No such user\n\n' : 'action=DUNNO\n\n'));
    const backend = await FakeBackend.start();
    const p = await startPostern({ proxy_mode: 'transaction', route: { static: `127.0.0.1:${backend.port}` }, checks: { policy: [{ server: srv.address }] } });
    try {
      const c = await open(p.port);
      assert.equal(await c.cmd('RCPT TO:<bad@y.test>'), '554 5.7.1 <bad@y.test>: Recipient address rejected: No such user');
      assert.equal(await c.cmd('RCPT TO:<good@y.test>'), '250 2.1.5 Ok');
      assert.equal(await c.data('Subject: r\r\n\r\nhi\r\n'), '250 2.0.0 Ok: queued');
      c.close();
      const a = srv.requests[0]!.attrs;
      assert.equal(a.get('request'), 'smtpd_access_policy');
      assert.equal(a.get('protocol_state'), 'RCPT');
      assert.equal(a.get('protocol_name'), 'ESMTP');
      assert.equal(a.get('helo_name'), 'client.test');
      assert.equal(a.get('sender'), 's@x.test');
      assert.equal(a.get('client_address'), '127.0.0.1');
      assert.equal(a.get('client_name'), 'unknown');
      assert.equal(srv.connections, 1, 'one kept-alive connection for both requests');
      await p.waitForLog((l) => l.code === 'PST_POLICY_REFUSED' && /REJECT/.test(String(l.detail)));
    } finally {
      await p.stop();
      await backend.stop();
      await srv.close();
    }
  });

  it('a policy server that is down: 451 4.3.5 by default, or go on with default: dunno', async () => {
    const dead = `tcp:127.0.0.1:${await closedPort()}`;
    const backend = await FakeBackend.start();
    const p = await startPostern({ route: { static: `127.0.0.1:${backend.port}` }, checks: { policy: [{ server: dead, timeout: '2s' }] } });
    const q = await startPostern({ route: { static: `127.0.0.1:${backend.port}` }, checks: { policy: [{ server: dead, default: 'dunno', timeout: '2s' }] } });
    try {
      const c = await open(p.port);
      assert.equal(await c.cmd('RCPT TO:<b@y.test>'), '451 4.3.5 <b@y.test>: Recipient address rejected: Server configuration problem');
      c.close();
      await p.waitForLog((l) => l.code === 'PSW_POLICY_FAILED');
      const d = await open(q.port);
      assert.equal(await d.cmd('RCPT TO:<b@y.test>'), '250 2.1.5 Ok');
      d.close();
    } finally {
      await p.stop();
      await q.stop();
      await backend.stop();
    }
  });
});
