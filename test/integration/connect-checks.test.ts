/**
 * The connect-time DNS checks end to end, with a DNS server of the test's own on loopback:
 * a client whose reverse name is forward-confirmed is named in Client-Host, in XCLIENT NAME and
 * in the access record; a PTR name that is not a host name (CR/LF inside) never reaches any of
 * them; a resolver that does not answer gives [TEMPUNAVAIL] within the deadline; a client on a
 * blocklist is refused with 554 before the greeting and no auth request or back-end connection
 * is made; an allowlisted one is let in.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { AuthStub, okAnswer } from '../helpers/auth-stub.js';
import { startCraftedDns, startSilentDns, type CraftedAnswer, type LoopbackDns, TYPE } from '../helpers/dns-servers.js';
import { FakeBackend } from '../helpers/fake-backend.js';
import { startPostern, type RunningPostern } from '../helpers/postern.js';
import { SmtpClient } from '../helpers/smtp-client.js';

const ZONE: Record<string, CraftedAnswer> = {
  // 127.0.0.1: a confirmed name.
  [`1.0.0.127.in-addr.arpa/${TYPE.PTR}`]: { ptr: ['mx.client.test'] },
  [`mx.client.test/${TYPE.A}`]: { a: ['127.0.0.1'] },
  // 127.0.0.4: a PTR whose label holds CR LF and a header.
  [`4.0.0.127.in-addr.arpa/${TYPE.PTR}`]: { ptr: [[Buffer.from('evil\r\nAuth-Status: OK'), Buffer.from('test')]] },
  // 127.0.0.3 is listed by bl.test; 127.0.0.5 by bl.test and by the allowlist wl.test.
  [`3.0.0.127.bl.test/${TYPE.A}`]: { a: ['127.0.0.2'] },
  [`5.0.0.127.bl.test/${TYPE.A}`]: { a: ['127.0.0.2'] },
  [`5.0.0.127.wl.test/${TYPE.A}`]: { a: ['127.0.0.2'] },
};

async function session(port: number, from: string): Promise<string> {
  const c = await SmtpClient.connect(port, '127.0.0.1', from);
  const greeting = await c.reply();
  if (greeting.code !== 220) {
    await c.waitClosed();
    return `${greeting.code} ${greeting.lines.join(' ')}`;
  }
  await c.cmd('EHLO client.test');
  await c.cmd('MAIL FROM:<s@x.test>');
  const r = await c.cmd('RCPT TO:<r@y.test>');
  await c.cmd('QUIT');
  c.close();
  return r;
}

describe('connect checks: reverse DNS and blocklists through the configured resolver', () => {
  let dns: LoopbackDns;
  let backend: FakeBackend;
  let stub: AuthStub;
  let p: RunningPostern;
  before(async () => {
    dns = await startCraftedDns((q, t) => ZONE[`${q}/${t}`]);
    backend = await FakeBackend.start();
    stub = await AuthStub.start(() => okAnswer(backend.port));
    p = await startPostern({
      resolver: { servers: [dns.server], timeout: '300ms', deadline: '1s' },
      checks: { reverse_dns: true, dnsbl: { lists: [{ zone: 'bl.test' }, { zone: 'wl.test', weight: -5, allow: true }] } },
      route: { auth_http: { url: stub.url } },
    });
  });
  after(async () => {
    await p.stop();
    await stub.stop();
    await backend.stop();
    await dns.close();
  });

  it('a forward-confirmed name reaches Client-Host, XCLIENT NAME and the access record', async () => {
    assert.equal(await session(p.port, '127.0.0.1'), '250 2.1.5 Ok');
    assert.equal(stub.requests.at(-1)!.get('Client-Host'), 'mx.client.test');
    assert.ok(backend.commands.some((l) => /^XCLIENT .*NAME=mx\.client\.test/.test(l)), backend.commands.join(' | '));
    await p.waitForLog((l) => l.type === 'access' && l.client_name === 'mx.client.test');
  });

  it('a PTR that is not a host name (CR LF inside) is no name at all', async () => {
    assert.equal(await session(p.port, '127.0.0.4'), '250 2.1.5 Ok');
    assert.equal(stub.requests.at(-1)!.get('Client-Host'), '[UNAVAILABLE]');
    assert.ok(!backend.commands.some((l) => /evil|Auth-Status/.test(l)));
    assert.ok(!p.logs.some((l) => JSON.stringify(l).includes('evil')), 'never in a log line');
  });

  it('a listed client is refused with 554 before the greeting; nothing is asked of the auth service or the back-end', async () => {
    const asked = stub.requests.length;
    const sessions = backend.sessions.length;
    assert.equal(await session(p.port, '127.0.0.3'), '554 5.7.1 Service unavailable; client host blocked by a DNS blocklist');
    assert.equal(stub.requests.length, asked);
    assert.equal(backend.sessions.length, sessions);
    const l = await p.waitForLog((r) => r.code === 'PST_DNSBL_LISTED');
    assert.match(String(l.detail), /bl\.test \(127\.0\.0\.2\)/);
  });

  it('an allowlisted client skips the blocklists', async () => {
    assert.equal(await session(p.port, '127.0.0.5'), '250 2.1.5 Ok');
  });
});

describe('connect checks: a resolver that does not answer', () => {
  it('gives [TEMPUNAVAIL] within the deadline and the session goes on', async () => {
    const silent = await startSilentDns();
    const backend = await FakeBackend.start();
    const stub = await AuthStub.start(() => okAnswer(backend.port));
    const p = await startPostern({ resolver: { servers: [silent.server], timeout: '200ms', deadline: '600ms' }, checks: { reverse_dns: true, dnsbl: { lists: [{ zone: 'bl.test' }] } }, route: { auth_http: { url: stub.url } } });
    try {
      const t0 = Date.now();
      assert.equal(await session(p.port, '127.0.0.1'), '250 2.1.5 Ok');
      assert.ok(Date.now() - t0 < 3000, 'bounded by the deadline');
      assert.equal(stub.requests.at(-1)!.get('Client-Host'), '[TEMPUNAVAIL]');
    } finally {
      await p.stop();
      await stub.stop();
      await backend.stop();
      await silent.close();
    }
  });
});
