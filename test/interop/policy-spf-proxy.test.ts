/**
 * Debian's postfix-policyd-spf-python through Postern (issue 11): Postern as its own process
 * (`postern --config`, test/helpers/postern-process.ts) on 127.0.0.1, with
 * `checks.policy: [{ server: tcp:127.0.0.1:PORT }]` naming a real policyd-spf (spawn(8) style, one
 * process per connection, test/helpers/policy-servers.ts) that resolves through a private dnsmasq on
 * loopback serving the test's SPF records. The client comes from 127.0.0.1, so policyd-spf's
 * skip_addresses is narrowed to ::1: its SPF checks really run for 127.0.0.1.
 * - SPF pass (the sender's domain lists 127.0.0.1): the back-end gets the RCPT and the message, byte
 *   for byte; policyd-spf's `PREPEND Received-SPF: Pass` is logged and not applied (session mode).
 * - SPF fail (`-all` excludes 127.0.0.1): the client gets policyd-spf's `550 5.7.23 … SPF fail`
 *   text, PST_POLICY_REFUSED is logged, the back-end never sees that MAIL/RCPT, and the session goes
 *   on: after RSET the same connection sends a passing sender, which is delivered.
 * - HELO check (HELO_reject = Fail): a client whose EHLO name's SPF record excludes it is refused
 *   with the HELO form of the reply, even with a passing sender; nothing reaches the back-end.
 * Peers missing → the test throws (never skips), in CI and out of it, as in policy.test.ts.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { FakeBackend } from '../helpers/fake-backend.js';
import { spawnPolicydSpf, startDnsmasq, type Dnsmasq, type PolicydSpf } from '../helpers/policy-servers.js';
import type { LogRecord } from '../helpers/postern.js';
import { startPosternProcess, type PosternProcess } from '../helpers/postern-process.js';
import { SmtpClient } from '../helpers/smtp-client.js';

const STEP_MS = 10_000;

/** Resolves once `done()` holds, polled every 25 ms; throws `what` after `timeoutMs`. */
async function until(done: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await sleep(25);
  }
}

describe('policyd-spf through Postern (DNS: private dnsmasq)', { timeout: 30_000 }, () => {
  let dns: Dnsmasq;
  let spf: PolicydSpf;
  let backend: FakeBackend;
  let p: PosternProcess;

  before(async () => {
    dns = await startDnsmasq({
      'pass.test': 'v=spf1 ip4:127.0.0.1 -all',
      'fail.test': 'v=spf1 ip4:192.0.2.0/24 -all',
      'badhelo.test': 'v=spf1 ip4:192.0.2.0/24 -all',
    });
    spf = await spawnPolicydSpf({ dnsPort: dns.port, tcp: true, skipAddresses: '::1' });
    backend = await FakeBackend.start();
    p = await startPosternProcess({
      route: { static: `127.0.0.1:${backend.port}` },
      checks: { policy: [{ server: spf.address, timeout: '5s' }] },
    }, 15_000);
  }, { timeout: 20_000 });

  after(async () => {
    await p?.stop();
    await backend?.stop();
    await spf?.stop();
    await dns?.stop();
  }, { timeout: 15_000 });

  /** Connected, greeted and past EHLO. */
  async function client(helo: string): Promise<SmtpClient> {
    const c = await SmtpClient.connect(p.port);
    assert.equal((await c.reply()).code, 220);
    assert.match(await c.cmd(`EHLO ${helo}`), /^250 /);
    return c;
  }

  /** A failure's context: what policyd-spf, dnsmasq and Postern said. */
  const context = (): string => `\npolicyd-spf: ${spf.log()}\ndnsmasq: ${dns.log().slice(-2000)}\npostern: ${JSON.stringify(p.logs.slice(-8))}${p.output()}`;

  it('SPF pass: the RCPT reaches the back-end and the message is delivered unchanged; the Received-SPF PREPEND is logged, not applied', { timeout: STEP_MS }, async () => {
    const sessionsBefore = backend.sessions.length;
    const acceptedBefore = backend.accepted.length;
    const body = 'From: alice@pass.test\r\nTo: bob@y.test\r\nSubject: spf pass\r\n\r\nhello through postern\r\n';
    const c = await client('client.test');
    try {
      assert.equal(await c.cmd('MAIL FROM:<alice@pass.test>'), '250 2.1.0 OK');
      assert.equal(await c.cmd('RCPT TO:<bob@y.test>'), '250 2.1.5 Ok', context());
      assert.equal(await c.data(body), '250 2.0.0 Ok: queued');
      assert.match(await c.cmd('QUIT'), /^221 /);
    } finally {
      c.close();
    }
    await until(() => backend.accepted.length === acceptedBefore + 1, 'the back-end accepting the message');
    const delivered = backend.accepted[acceptedBefore]!;
    assert.equal(delivered.toString('latin1'), body, 'the back-end received the message byte for byte');
    assert.equal(delivered.length, Buffer.byteLength(body, 'latin1'));
    assert.equal(backend.sessions.length, sessionsBefore + 1);
    const cmds = backend.sessions[sessionsBefore]!.commands;
    assert.ok(cmds.some((l) => /^XCLIENT .*ADDR=127\.0\.0\.1/.test(l)), JSON.stringify(cmds));
    assert.ok(cmds.includes('MAIL FROM:<alice@pass.test>') && cmds.includes('RCPT TO:<bob@y.test>'), JSON.stringify(cmds));

    const prepend = await p.waitForLog((r) => r.msg === 'policy PREPEND not applied' && /envelope-from=alice@pass\.test/.test(String(r.header)), 5_000);
    assert.equal(prepend.server, spf.address);
    assert.match(String(prepend.header),
      /^Received-SPF: Pass \(mailfrom\) identity=mailfrom; client-ip=127\.0\.0\.1; helo=client\.test; envelope-from=alice@pass\.test; receiver=\S+/);
    assert.doesNotMatch(delivered.toString('latin1'), /Received-SPF/i, 'session mode: Postern does not change the message');
    assert.match(dns.log(), /query\[TXT\] pass\.test from 127\.0\.0\.1/);
    assert.ok(!p.logs.some((r) => r.code === 'PSW_POLICY_FAILED' || r.code === 'PSW_POLICY_UNSUPPORTED'), context());
  });

  it('SPF fail: policyd-spf\'s 550 5.7.23 reaches the client, PST_POLICY_REFUSED is logged, the back-end never sees it; the session goes on', { timeout: STEP_MS }, async () => {
    const sessionsBefore = backend.sessions.length;
    const acceptedBefore = backend.accepted.length;
    const body = 'Subject: after rset\r\n\r\nsecond try, honest sender\r\n';
    const c = await client('client.test');
    try {
      assert.equal(await c.cmd('MAIL FROM:<mallory@fail.test>'), '250 2.1.0 OK');
      c.send('RCPT TO:<bob@y.test>');
      const r = await c.reply(STEP_MS - 2_000);
      assert.equal(r.code, 550, `${r.lines.join('\n')}${context()}`);
      assert.equal(r.lines.length, 1);
      assert.equal(r.lines[0],
        '5.7.23 <bob@y.test>: Recipient address rejected: Message rejected due to: SPF fail - not authorized. '
        + 'Please see http://www.openspf.net/Why?s=mfrom;id=mallory@fail.test;ip=127.0.0.1;r=y.test');
      assert.equal(await c.cmd('NOOP'), '250 2.0.0 OK', 'a refused recipient does not end the session');
      assert.equal(backend.sessions.length, sessionsBefore, 'no back-end connection for the refused recipient');

      // The same connection, an honest sender: checked again, and delivered.
      assert.match(await c.cmd('RSET'), /^250 /);
      assert.equal(await c.cmd('MAIL FROM:<alice@pass.test>'), '250 2.1.0 OK');
      assert.equal(await c.cmd('RCPT TO:<bob@y.test>'), '250 2.1.5 Ok', context());
      assert.equal(await c.data(body), '250 2.0.0 Ok: queued');
      assert.match(await c.cmd('QUIT'), /^221 /);
    } finally {
      c.close();
    }
    await until(() => backend.accepted.length === acceptedBefore + 1, 'the back-end accepting the second message');
    assert.equal(backend.accepted[acceptedBefore]!.toString('latin1'), body);
    assert.equal(backend.sessions.length, sessionsBefore + 1, 'one back-end session: the accepted transaction\'s');
    const cmds = backend.sessions[sessionsBefore]!.commands;
    assert.ok(!cmds.some((l) => /fail\.test/i.test(l)), `the back-end never saw the refused sender: ${JSON.stringify(cmds)}`);
    assert.deepEqual(cmds.filter((l) => /^(MAIL|RCPT) /i.test(l)), ['MAIL FROM:<alice@pass.test>', 'RCPT TO:<bob@y.test>']);

    const logged: LogRecord = await p.waitForLog((l) => l.code === 'PST_POLICY_REFUSED' && /mallory@fail\.test/.test(String(l.reply)), 5_000);
    assert.equal(logged.client, '127.0.0.1');
    assert.ok(String(logged.detail).startsWith(`policy ${spf.address}`) && String(logged.detail).endsWith(': 550'), String(logged.detail));
    assert.match(String(logged.reply), /^550 5\.7\.23 <bob@y\.test>: .*SPF fail/);
    const access = await p.waitForLog((l) => l.type === 'access' && Array.isArray((l.checks as { refused?: unknown } | undefined)?.refused), 5_000);
    assert.deepEqual((access.checks as { refused: string[] }).refused, ['PST_POLICY_REFUSED: 550']);
    assert.match(dns.log(), /query\[TXT\] fail\.test from 127\.0\.0\.1/);
  });

  it('HELO check: an EHLO name whose SPF record excludes the client is refused with the HELO reply, even with a passing sender', { timeout: STEP_MS }, async () => {
    const sessionsBefore = backend.sessions.length;
    const c = await client('badhelo.test');
    try {
      assert.equal(await c.cmd('MAIL FROM:<alice@pass.test>'), '250 2.1.0 OK');
      c.send('RCPT TO:<bob@y.test>');
      const r = await c.reply(STEP_MS - 2_000);
      assert.equal(r.code, 550, `${r.lines.join('\n')}${context()}`);
      assert.match(r.lines[0]!, /^5\.7\.\d+ <bob@y\.test>: Recipient address rejected: Message rejected due to: SPF fail - not authorized\. Please see http:\/\/www\.openspf\.net\/Why\?s=helo;id=badhelo\.test;ip=127\.0\.0\.1;/);
      assert.equal(await c.cmd('NOOP'), '250 2.0.0 OK');
      assert.match(await c.cmd('QUIT'), /^221 /);
    } finally {
      c.close();
    }
    await p.waitForLog((l) => l.code === 'PST_POLICY_REFUSED' && /s=helo;id=badhelo\.test/.test(String(l.reply)), 5_000);
    assert.equal(backend.sessions.length, sessionsBefore, 'the back-end never saw the refused client');
    assert.match(dns.log(), /query\[TXT\] badhelo\.test from 127\.0\.0\.1/);
  });
});
